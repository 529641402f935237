"""The result of resolving a dataset layout, and what the resolvers share.

A resolver reads file names (and the layout's JSON files), never an image: it lists
each folder it needs once and matches names in memory. Its result, a
:class:`ResolvedLayout`, holds the complete subjects sorted by id (a plain string
sort, the same on every machine), the type of each image and the subjects left out
because an image is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..names import NOT_NAME_CHARACTERS, RESERVED_IMAGE_NAMES, image_name_problem

#: The types an image can have (those of the config's ``images``).
IMAGE_TYPES = ("intensity", "label", "sampling_map")


@dataclass(frozen=True)
class LayoutSubject:
    """One subject of a resolved layout.

    Attributes
    ----------
    id : str
        ``sub-01``, ``sub-01_ses-pre`` (BIDS) or the case identifier (nnU-Net, Decathlon).
    paths : dict of str to Path
        The absolute file of each image, in image order.
    """

    id: str
    paths: dict[str, Path]


@dataclass(frozen=True)
class ResolvedLayout:
    """A dataset in a standard layout, resolved to one file per image and subject.

    Attributes
    ----------
    layout : str
        ``"bids"``, ``"nnunet"`` or ``"decathlon"``.
    root : Path
        The dataset's absolute folder.
    subjects : list of LayoutSubject
        The complete subjects, sorted by id.
    image_types : dict of str to str
        The type of each image (``intensity``, ``label`` or ``sampling_map``), in image
        order.
    incomplete : list of (str, str)
        ``(subject id, reason)`` for each subject lacking an image, sorted by id; empty
        unless the resolver was called with ``fail_incomplete=False``.
    file_counts : dict of str to int, optional
        The files found per image, complete and incomplete subjects together; see
        :meth:`counts`.
    """

    layout: str
    root: Path
    subjects: list[LayoutSubject]
    image_types: dict[str, str]
    incomplete: list[tuple[str, str]] = field(default_factory=list)
    file_counts: dict[str, int] | None = field(default=None, repr=False)

    @property
    def image_names(self) -> list[str]:
        """The image names, in image order."""
        return list(self.image_types)

    def counts(self) -> dict[str, int]:
        """The number of files found for each image, complete and incomplete subjects
        together."""
        if self.file_counts is not None:
            return dict(self.file_counts)
        return {name: sum(name in s.paths for s in self.subjects) for name in self.image_types}

    def manifest(self) -> list[dict[str, str]]:
        """The complete subjects as an inline manifest: ``{"id": ..., image: path}`` each,
        in order."""
        return [
            {"id": subject.id, **{name: str(path) for name, path in subject.paths.items()}}
            for subject in self.subjects
        ]


def check_image_name(name: Any, where: str) -> str:
    """An image name usable by patchcli (letters, digits, ``_ . + -``, not starting with
    a symbol, not reserved); ConfigError naming ``where`` otherwise."""
    problem = image_name_problem(name)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return name


def make_image_name(text: Any, index: int, taken: set[str], reserved: frozenset[str]) -> str:
    """A valid image name made from ``text`` (a channel's name), unique among ``taken``.

    Runs of characters an image name cannot hold become ``_`` and leading ``.``, ``+``
    and ``-`` are dropped (``"T2 FLAIR"`` -> ``"T2_FLAIR"``); an empty result becomes
    ``channel_<index>``. A name already taken, reserved or equal to one of ``reserved``
    gets ``_<index>`` (four digits: ``"CT"``, ``"CT"`` -> ``"CT"``, ``"CT_0001"``), and
    ``_2``, ``_3``... after that while it is still taken.
    """
    name = NOT_NAME_CHARACTERS.sub("_", str(text).strip()).lstrip(".+-")
    if not name:
        name = f"channel_{index:04d}"
    if name in taken or name in reserved or name in RESERVED_IMAGE_NAMES:
        name = f"{name}_{index:04d}"
    base, number = name, 2
    while name in taken or name in reserved:
        name, number = f"{base}_{number}", number + 1
    taken.add(name)
    return name


def check_type(value: Any, where: str) -> str:
    """One of :data:`IMAGE_TYPES`; ConfigError naming ``where`` otherwise."""
    if value not in IMAGE_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(IMAGE_TYPES)}, not {value!r}")
    return value


def override_types(
    types: dict[str, str], images: Mapping[str, Any] | None, layout: str
) -> dict[str, str]:
    """``types`` with the types given in ``images`` (image name -> ``{"type": ...}``)."""
    if images is None:
        return types
    if not isinstance(images, Mapping):
        raise ConfigError(f"images: must map image names to {{type: ...}}, not {images!r}")
    types = dict(types)
    for name, entry in images.items():
        where = f"images: image {name!r}"
        if name not in types:
            raise ConfigError(f"{where} is not in this {layout} dataset (images: {list(types)})")
        if not isinstance(entry, Mapping) or set(entry) - {"type"}:
            raise ConfigError(f"{where}: only its type can be set, as {{type: ...}}, not {entry!r}")
        if "type" in entry:
            types[name] = check_type(entry["type"], where)
    return types


def check_choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``; ConfigError otherwise."""
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line DataError naming it if it is missing,
    unreadable, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8-sig") as stream:
            value = json.load(stream)
    except FileNotFoundError:
        raise DataError(f"{path}: not found ({what} needs one)") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({_reason(error)})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: must hold a JSON object, not {type(value).__name__}")
    return value


def scan(folder: str) -> list[os.DirEntry] | None:
    """The entries of ``folder`` (one ``os.scandir``), or None if it is not a folder."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise DataError(f"{folder}: cannot list ({_reason(error)})") from None


def list_names(folder: str) -> list[str] | None:
    """The names in ``folder`` that are not hidden (``.*``, macOS ``._*``), or None if it
    is not a folder."""
    entries = scan(folder)
    return None if entries is None else [e.name for e in entries if not e.name.startswith(".")]


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def missing_reason(missing: list[tuple[str, str]]) -> str:
    """One line for the images a subject lacks: ``(image name, expected file)`` each."""
    return "; ".join(
        f"no file for image {name!r} (expected {expected})" for name, expected in missing
    )


class Collector:
    """Gathers the subjects a resolver finds, then sorts, counts and checks them."""

    def __init__(self, layout: str, root: str, image_types: dict[str, str]) -> None:
        self.layout = layout
        self.root = root
        self.image_types = image_types
        self.found: dict[str, dict[str, str]] = {}
        self.missing: dict[str, list[tuple[str, str]]] = {}

    def add(self, subject_id: str, paths: dict[str, str], missing: list[tuple[str, str]]) -> None:
        """A subject with the files found (image name -> path) and those missing
        (``(image name, expected)``, in image order)."""
        self.found[subject_id] = paths
        if missing:
            self.missing[subject_id] = missing

    def result(self, fail_incomplete: bool, nothing: str) -> ResolvedLayout:
        """The resolved layout.

        Raises
        ------
        DataError
            For the first incomplete subject (by id) when ``fail_incomplete``; when there is
            no subject (``nothing`` says why, after the root) or no complete one.
        """
        if not self.found:
            raise DataError(f"{self.root}: {nothing}")
        incomplete = [(sid, missing_reason(self.missing[sid])) for sid in sorted(self.missing)]
        if incomplete and fail_incomplete:
            raise DataError(f"subject {incomplete[0][0]!r}: {incomplete[0][1]}")
        names = list(self.image_types)
        subjects = [
            LayoutSubject(sid, {name: Path(self.found[sid][name]) for name in names})
            for sid in sorted(self.found)
            if sid not in self.missing
        ]
        if not subjects:
            first, reason = incomplete[0]
            raise DataError(
                f"{self.root}: no complete subject ({len(incomplete)} incomplete; the first, "
                f"{first!r}: {reason})"
            )
        counts = dict.fromkeys(names, 0)
        for paths in self.found.values():
            for name in paths:
                counts[name] += 1
        return ResolvedLayout(
            layout=self.layout,
            root=Path(self.root),
            subjects=subjects,
            image_types=dict(self.image_types),
            incomplete=incomplete,
            file_counts=counts,
        )
