"""Datasets in standard layouts (BIDS, nnU-Net v2 raw, Medical Segmentation Decathlon),
resolved to a sorted list of subjects with one file per image.

Resolution reads folder listings and the layouts' JSON files only, never an image, so
that a dataset of ten thousand subjects resolves in a few seconds. Every resolver
returns a :class:`ResolvedLayout`; :func:`resolve_layout` chooses one by name.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .bids import parse_bids_name, resolve_bids
from .decathlon import decathlon_image_types, resolve_decathlon
from .nnunet import nnunet_image_types, resolve_nnunet
from .resolved import IMAGE_TYPES, LayoutSubject, ResolvedLayout

#: The layouts :func:`resolve_layout` knows.
LAYOUTS = ("bids", "nnunet", "decathlon")

_RESOLVERS = {"bids": resolve_bids, "nnunet": resolve_nnunet, "decathlon": resolve_decathlon}

__all__ = [
    "IMAGE_TYPES",
    "LAYOUTS",
    "LayoutSubject",
    "ResolvedLayout",
    "layout_image_types",
    "layout_source",
    "parse_bids_name",
    "resolve_bids",
    "resolve_decathlon",
    "resolve_layout",
    "resolve_nnunet",
]


def resolve_layout(kind: str, root: str | os.PathLike[str], **options: Any) -> ResolvedLayout:
    """Resolve the dataset at ``root`` as a ``kind`` layout.

    Parameters
    ----------
    kind : {"bids", "nnunet", "decathlon"}
        The layout.
    root : path
        The dataset's folder.
    **options
        The resolver's other arguments (:func:`resolve_bids`, :func:`resolve_nnunet`,
        :func:`resolve_decathlon`).

    Raises
    ------
    ConfigError
        An unknown layout, or an option its resolver does not take.
    """
    if kind not in _RESOLVERS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, not {kind!r}")
    resolver = _RESOLVERS[kind]
    accepted = [name for name in inspect.signature(resolver).parameters if name != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"layout {kind!r} takes no option {', '.join(map(repr, unknown))} "
            f"(options: {', '.join(accepted)})"
        )
    return resolver(root, **options)


#: The options of each layout in a config's ``subjects`` mapping (beside its folder).
LAYOUT_OPTIONS = {
    "bids": ("participant_label", "session_label"),
    "nnunet": ("split",),
    "decathlon": ("split",),
}


def layout_source(subjects: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A config's ``subjects`` mapping as ``(layout, folder, options)``.

    Examples
    --------
    >>> layout_source({"nnunet": "/data/Dataset001", "split": "test"})
    ('nnunet', '/data/Dataset001', {'split': 'test'})

    Raises
    ------
    ConfigError
        No layout key or several, or an option the layout does not take.
    """
    kinds = [key for key in subjects if key in LAYOUTS]
    if len(kinds) != 1:
        raise ConfigError(
            "subjects must be a manifest (a CSV file or a list), or a dataset in one layout: "
            f"{{bids: DIR}}, {{nnunet: DIR}} or {{decathlon: DIR}}, not {dict(subjects)!r}"
        )
    kind = kinds[0]
    options = {key: value for key, value in subjects.items() if key != kind}
    unknown = [key for key in options if key not in LAYOUT_OPTIONS[kind]]
    if unknown:
        raise ConfigError(
            f"subjects: the {kind} layout takes no option {unknown[0]!r} "
            f"(options: {', '.join(LAYOUT_OPTIONS[kind])})"
        )
    return kind, str(subjects[kind]), options


def layout_image_types(
    kind: str, root: str | os.PathLike[str], images: Mapping[str, Any] | None = None, **options
) -> dict[str, str] | None:
    """The images a layout defines and their types, from its ``dataset.json`` alone
    (nnU-Net, Decathlon); None for BIDS, whose images the config names."""
    split = options.get("split", "train")
    if kind == "nnunet":
        return nnunet_image_types(root, split, images)
    if kind == "decathlon":
        return decathlon_image_types(root, split, images)
    return None
