"""What an image name may be: the one rule the config and the dataset layouts share.

Image names become file names (NIfTI patches), HDF5 dataset names and manifest
columns, so they stay plain: letters, digits, ``_``, ``.``, ``+`` and ``-``, not
starting with a symbol, and none of the manifest's and the reader's own keys.
"""

from __future__ import annotations

import re
from typing import Any

#: Names that an image cannot take: manifest columns and reader item keys.
RESERVED_IMAGE_NAMES = frozenset(
    {"subject", "id", "num_samples", "patch", "location", "i0", "j0", "k0", "i1", "j1", "k1"}
)
IMAGE_NAME = re.compile(r"^\w[\w.+-]*$")
#: Runs of characters an image name cannot hold.
NOT_NAME_CHARACTERS = re.compile(r"[^\w.+-]+")


def image_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be an image name, or None when it can.

    Examples
    --------
    >>> image_name_problem("t1") is None, image_name_problem("id") is not None
    (True, True)
    """
    if isinstance(name, str) and IMAGE_NAME.match(name) and name not in RESERVED_IMAGE_NAMES:
        return None
    return (
        f"image name {name!r} must be letters, digits, '_', '.', '+' or '-' (not starting "
        f"with a symbol) and not one of {sorted(RESERVED_IMAGE_NAMES)}"
    )


__all__ = ["IMAGE_NAME", "NOT_NAME_CHARACTERS", "RESERVED_IMAGE_NAMES", "image_name_problem"]
