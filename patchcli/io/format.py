"""The patch output format's name and versions, shared by its HDF5 and NIfTI layouts.

Both layouts (docs/format.md) record ``format`` and ``format_version``: in the
HDF5 file's root attributes, in a NIfTI folder's ``patchcli.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError

FORMAT_NAME = "patchcli-patches"
#: 2 added the fingerprint, shard and merge records (docs/format.md); 1 is still read.
FORMAT_VERSION = 2
#: Root attributes a reader keeps (when present), in either layout.
RUN_ATTRIBUTES = (
    "patchcli_version",
    "sampler",
    "config",
    "seed",
    "compression",
    "patch_overlap",
    "padding_mode",
    "padding",
    "config_fingerprint",
    "settings_fingerprint",
    "total_subjects",
    "shard_index",
    "shard_count",
    "merge",
    "augment_copies",
    "patch_size",
)


def check_format(found: Any, version: Any, where: Path) -> int:
    """The format version of an output whose ``format``/``format_version`` were read."""
    if found != FORMAT_NAME:
        raise DataError(
            f"{where}: not a patchcli patch file (format attribute {found!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    try:
        number = int(version)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {version} cannot be read by this patchcli "
            f"(it reads versions 1 to {FORMAT_VERSION}); upgrade patchcli"
        )
    return number


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "RUN_ATTRIBUTES", "check_format"]
