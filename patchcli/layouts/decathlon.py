"""Medical Segmentation Decathlon datasets: the files ``dataset.json`` lists.

``dataset.json`` lists the training cases (``training``: ``[{"image":
"./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]``) and the test images
(``test``: ``["./imagesTs/y.nii.gz", ...]``), with paths relative to the dataset's
folder. Images: ``image`` (``intensity``, one file holding every channel of
``modality``) and, for training, ``label`` (``label``). A subject is named by its image's
file name without ``.nii.gz`` or ``.nii``. Files not listed, such as the macOS ``._*``
files of the Decathlon's archives, are never looked at.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

from ..errors import DataError
from .resolved import (
    Collector,
    ResolvedLayout,
    check_choice,
    list_names,
    override_types,
    read_json_object,
)

SPLITS = ("train", "test")
_LIST = {"train": "training", "test": "test"}
_IMAGES = {"train": ("image", "label"), "test": ("image",)}
_TYPES = {"image": "intensity", "label": "label"}


def resolve_decathlon(
    root: str | os.PathLike[str],
    split: str = "train",
    images: Mapping[str, Any] | None = None,
    fail_incomplete: bool = True,
) -> ResolvedLayout:
    """The cases a Decathlon ``dataset.json`` lists, one subject each.

    Parameters
    ----------
    root : path
        The task's folder (``Task01_BrainTumour``), holding ``dataset.json``.
    split : {"train", "test"}
        ``train``: the ``training`` list (``image`` and ``label``); ``test``: the ``test``
        list (``image`` only).
    images : mapping, optional
        Image name -> ``{"type": ...}``, to change the type of ``image`` or ``label``.
    fail_incomplete : bool
        Raise for the first case whose listed file does not exist (True), or leave such
        cases out and list them in ``incomplete`` (False).

    Returns
    -------
    ResolvedLayout
        Subjects named by image file name, sorted.

    Raises
    ------
    DataError
        ``dataset.json`` missing or invalid; a listed path that is absolute or leaves the
        dataset's folder; two cases with one name; a listed file missing (with
        ``fail_incomplete``); an empty list.
    ConfigError
        An unknown split, or an ``images`` entry naming no image of the split.
    """
    check_choice(split, SPLITS, "split")
    base = os.path.abspath(os.fspath(root))
    description = os.path.join(base, "dataset.json")
    content = read_json_object(description, "a Medical Segmentation Decathlon dataset")
    key = _LIST[split]
    entries = content.get(key)
    if not isinstance(entries, list):
        raise DataError(f"{description}: no {key!r} list (split {split!r})")
    names = _IMAGES[split]
    types = decathlon_image_types(root, split, images)

    listings: dict[str, set[str]] = {}
    collector = Collector("decathlon", base, types)
    for number, entry in enumerate(entries):
        where = f"{description}: {key}[{number}]"
        if isinstance(entry, str) and split == "test":
            entry = {"image": entry}
        if not isinstance(entry, Mapping):
            raise DataError(f"{where} must be an object with {' and '.join(names)}, not {entry!r}")
        paths: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for name in names:
            path = _inside(base, entry.get(name), f"{where}.{name}")
            folder, file = os.path.split(path)
            if folder not in listings:
                listings[folder] = set(list_names(folder) or ())
            if file in listings[folder]:
                paths[name] = path
            else:
                missing.append((name, f"{path}, listed in dataset.json"))
        subject = _case_name(os.path.basename(_inside(base, entry.get("image"), where)))
        if subject in collector.found:
            raise DataError(f"{where}: a second case named {subject!r}")
        collector.add(subject, paths, missing)
    return collector.result(fail_incomplete, f"the {key!r} list of dataset.json is empty")


def decathlon_image_types(
    root: str | os.PathLike[str], split: str = "train", images: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The images of a Decathlon dataset and their types: ``image`` (``intensity``, the
    modalities as channels) and, for the training split, ``label``; ``images`` changes
    types. ``root`` is not read: the layout fixes the names."""
    check_choice(split, SPLITS, "split")
    return override_types({name: _TYPES[name] for name in _IMAGES[split]}, images, "decathlon")


def _inside(base: str, value: Any, where: str) -> str:
    """The absolute path of a listed file, refused if it is not a relative path inside
    ``base``."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where} must be a file path, not {value!r}")
    relative = value.strip().replace("\\", "/")
    normal = posixpath.normpath(relative)
    if posixpath.isabs(relative) or normal == ".." or normal.startswith("../") or normal == ".":
        raise DataError(f"{where}: {value!r} is not a file inside the dataset's folder")
    return os.path.join(base, *normal.split("/"))


def _case_name(file_name: str) -> str:
    for extension in (".nii.gz", ".nii"):
        if file_name.endswith(extension) and len(file_name) > len(extension):
            return file_name[: -len(extension)]
    return file_name
