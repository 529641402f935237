"""nnU-Net v2 raw datasets: ``dataset.json``, ``imagesTr``, ``labelsTr`` and ``imagesTs``.

A case ``<case>`` has one file per channel, ``imagesTr/<case>_<XXXX><file_ending>``
(``XXXX`` the channel's index in four digits), and for training its segmentation,
``labelsTr/<case><file_ending>``. ``dataset.json`` gives the channels
(``channel_names``, ``{"0": "T1", "1": "FLAIR"}``) and ``file_ending`` (``.nii.gz``).

Images are named after the channels (type ``intensity``), in channel order, then
``label`` (type ``label``) for the training split. A channel name that is not a valid
image name is made one (:func:`patchcli.layouts.resolved.make_image_name`): characters
other than letters, digits, ``_ . + -`` become ``_`` (``"T2 FLAIR"`` -> ``"T2_FLAIR"``);
a name used by an earlier channel, reserved, or ``label`` (in both splits, so that the
names do not change with the split) gets the channel's index (``"CT"``, ``"CT"`` ->
``"CT"``, ``"CT_0001"``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..errors import DataError
from .resolved import (
    Collector,
    ResolvedLayout,
    check_choice,
    list_names,
    make_image_name,
    override_types,
    read_json_object,
)

SPLITS = ("train", "test")
_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", None)}
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")
#: The name of the segmentation, which no channel takes.
LABEL = "label"


def resolve_nnunet(
    root: str | os.PathLike[str],
    split: str = "train",
    images: Mapping[str, Any] | None = None,
    fail_incomplete: bool = True,
) -> ResolvedLayout:
    """The cases of an nnU-Net v2 raw dataset, one subject each.

    Parameters
    ----------
    root : path
        The dataset's folder (``nnUNet_raw/Dataset001_Name``), holding ``dataset.json``.
    split : {"train", "test"}
        ``train``: ``imagesTr`` and ``labelsTr``; ``test``: ``imagesTs``, no label.
    images : mapping, optional
        Image name -> ``{"type": ...}``, to change the type of an image (channels are
        ``intensity``, the segmentation ``label``).
    fail_incomplete : bool
        Raise for the first case missing a file (True), or leave such cases out and list
        them in ``incomplete`` (False).

    Returns
    -------
    ResolvedLayout
        Subjects named by case identifier, sorted.

    Raises
    ------
    DataError
        ``dataset.json`` missing or invalid; an image folder missing; a file of an image
        folder not named ``<case>_<XXXX><file_ending>``, or of a channel not in
        ``channel_names``; a case missing a file (with ``fail_incomplete``); no case.
    ConfigError
        An unknown split, or an ``images`` entry naming no image of the dataset.
    """
    base = os.path.abspath(os.fspath(root))
    description = os.path.join(base, "dataset.json")
    types = nnunet_image_types(root, split, images)
    channels, ending = _read_description(description)
    names = list(types)[: len(channels)]
    images_folder, labels_folder = _FOLDERS[split]

    image_dir = os.path.join(base, images_folder)
    files = _channel_files(image_dir, ending, {index for index, _ in channels}, description)
    labels: dict[str, str] = {}
    label_dir = os.path.join(base, labels_folder) if labels_folder else ""
    if labels_folder:
        listed = list_names(label_dir)
        if listed is None:
            raise DataError(f"{label_dir}: not found (split 'train' needs the segmentations)")
        labels = {
            name[: -len(ending)]: os.path.join(label_dir, name)
            for name in listed
            if name.endswith(ending) and len(name) > len(ending)
        }

    collector = Collector("nnunet", base, types)
    for case in set(files) | set(labels):
        paths: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        by_channel = files.get(case, {})
        for (index, _), name in zip(channels, names):
            if index in by_channel:
                paths[name] = by_channel[index]
            else:
                missing.append((name, os.path.join(image_dir, f"{case}_{index:04d}{ending}")))
        if labels_folder:
            if case in labels:
                paths[LABEL] = labels[case]
            else:
                missing.append((LABEL, os.path.join(label_dir, case + ending)))
        collector.add(case, paths, missing)
    return collector.result(
        fail_incomplete, f"no case in {images_folder} (files <case>_<XXXX>{ending})"
    )


def nnunet_image_types(
    root: str | os.PathLike[str], split: str = "train", images: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The images of an nnU-Net raw dataset and their types, from ``dataset.json`` alone:
    a channel each (``intensity``), then ``label`` for the training split; ``images``
    changes types."""
    check_choice(split, SPLITS, "split")
    description = os.path.join(os.path.abspath(os.fspath(root)), "dataset.json")
    channels, _ = _read_description(description)
    taken: set[str] = set()
    names = [make_image_name(text, index, taken, frozenset({LABEL})) for index, text in channels]
    types = dict.fromkeys(names, "intensity")
    if _FOLDERS[split][1]:
        types[LABEL] = "label"
    return override_types(types, images, "nnunet")


def _read_description(path: str) -> tuple[list[tuple[int, Any]], str]:
    """The channels (``(index, name)`` in index order) and file ending of dataset.json."""
    description = read_json_object(path, "an nnU-Net raw dataset")
    channels = description.get("channel_names", description.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        raise DataError(f'{path}: no channel_names (e.g. {{"0": "T1", "1": "FLAIR"}})')
    if any(not str(key).isdigit() for key in channels):
        raise DataError(f"{path}: channel_names keys must be channel indices, not {list(channels)}")
    indexed = sorted((int(key), value) for key, value in channels.items())
    if [index for index, _ in indexed] != list(range(len(indexed))):
        raise DataError(
            f"{path}: channel_names must number the channels 0 to {len(indexed) - 1}, "
            f"not {[index for index, _ in indexed]}"
        )
    ending = description.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
        raise DataError(
            f'{path}: file_ending must be a file extension such as ".nii.gz", not {ending!r}'
        )
    labels = description.get("labels")
    if labels is not None and not isinstance(labels, Mapping):
        raise DataError(f"{path}: labels must map label names to values, not {labels!r}")
    return indexed, ending


def _channel_files(
    folder: str, ending: str, indices: set[int], description: str
) -> dict[str, dict[int, str]]:
    """case -> channel index -> path, for the files of an image folder."""
    listed = list_names(folder)
    if listed is None:
        raise DataError(f"{folder}: not found (the dataset's images)")
    files: dict[str, dict[int, str]] = {}
    for name in listed:
        if not name.endswith(ending):
            continue
        path = os.path.join(folder, name)
        match = _CHANNEL_FILE.match(name[: -len(ending)])
        if match is None:
            raise DataError(f"{path}: not named <case>_<XXXX>{ending} (a 4-digit channel index)")
        case, index = match.group(1), int(match.group(2))
        if index not in indices:
            raise DataError(f"{path}: channel {index} is not in channel_names of {description}")
        files.setdefault(case, {})[index] = path
    return files
