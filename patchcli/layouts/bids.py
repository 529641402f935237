"""BIDS datasets: the raw dataset and its derivatives, to one file per image and subject.

Each image is chosen by BIDS entities (its ``bids`` mapping):

- ``suffix`` (required): ``T1w``, ``FLAIR``, ``dseg``, ``mask``, ``probseg``...
- ``scope``: ``raw`` (default: the dataset itself, not ``derivatives/``),
  ``derivatives`` (every pipeline under ``derivatives/``, nested ones included) or a
  pipeline's folder name (``fmriprep``: the pipelines so named, at any depth).
- ``datatype``: ``anat``, ``func``, ``dwi``...; any when not given.
- ``extension``: one or a list; ``.nii`` and ``.nii.gz`` when not given.
- any key-value entity (``acq``, ``ce``, ``rec``, ``run``, ``space``, ``desc``, ``res``,
  ``label``, ``echo``, ``hemi``...; pybids' long names such as ``acquisition`` too): a
  given entity must match (``run: 1`` matches ``run-01``); null means the file must not
  have it; one not given matches any value, but two files left for one image of one
  subject are an error that says which entity tells them apart.

Only names are read, each folder listed once (``os.scandir``): ``sub-*``, ``ses-*``,
datatype folders (BIDS's and any ``datatype`` asked for) and ``derivatives/*``. Files not
named as BIDS, whose ``sub`` or ``ses`` differ from their folders', hidden files,
sidecars, ``sourcedata/``, ``code/`` and ``stimuli/`` are never considered.

A subject (``sub-01`` or ``sub-01_ses-pre``) is a participant's session folder, or the
participant's folder when it has none, in any dataset an image reads from. Files directly
under a participant with sessions (subject-level outputs) belong to no subject.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, DataError
from .resolved import Collector, ResolvedLayout, check_image_name, check_type
from .resolved import scan as _scan

#: The BIDS datatype folders walked into (with any datatype an image asks for).
DATATYPES = frozenset("anat func dwi fmap perf meg eeg ieeg beh pet micr nirs motion mrs".split())
DEFAULT_EXTENSIONS = (".nii", ".nii.gz")
#: The BIDS entities in the order of file names (others follow, sorted).
ENTITY_ORDER = (
    "sub ses sample task tracksys acq nuc voi ce trc stain rec dir run mod echo flip inv mt "
    "part proc hemi space split recording chunk seg res den label desc"
).split()
#: pybids' long entity names.
LONG_NAMES = {
    "subject": "sub", "session": "ses", "acquisition": "acq", "ceagent": "ce",
    "tracer": "trc", "staining": "stain", "nucleus": "nuc", "volume": "voi",
    "reconstruction": "rec", "direction": "dir", "modality": "mod", "flip_angle": "flip",
    "inversion": "inv", "processing": "proc", "hemisphere": "hemi", "segmentation": "seg",
    "resolution": "res", "density": "den", "description": "desc",
}  # fmt: skip
#: Entities whose values are indices: ``run: 1`` matches ``run-01``.
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "split", "chunk"})
#: The type of an image whose entry gives none, by suffix (``intensity`` for the others).
DEFAULT_TYPES = dict.fromkeys(("dseg", "mask", "roi", "label"), "label") | {
    "probseg": "sampling_map"
}
_SELECTION = ("suffix", "scope", "datatype", "extension")

#: A file: (path, datatype or None, entities, extension, pipeline name or None for raw).
_File = tuple[str, "str | None", dict[str, str], str, "str | None"]


def _alnum(text: str) -> bool:
    return text.isascii() and text.isalnum()


def parse_bids_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """``(entities, suffix, extension)`` of a BIDS file name, None if it is not one.

    >>> parse_bids_name("sub-01_ses-pre_acq-mp2_T1w.nii.gz")
    ({'sub': '01', 'ses': 'pre', 'acq': 'mp2'}, 'T1w', '.nii.gz')
    >>> parse_bids_name("sub-01_T1w") is None
    True
    """
    stem, dot, rest = name.partition(".")
    parts = stem.split("_")
    if not dot or len(parts) < 2 or not _alnum(parts[-1]):
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, dash, value = part.partition("-")
        if not dash or not _alnum(key) or not _alnum(value) or key in entities:
            return None
        entities[key] = value
    return entities, parts[-1], "." + rest


@dataclass(frozen=True)
class _Image:
    name: str
    type: str
    suffix: str
    scope: str
    datatype: str | None
    extensions: tuple[str, ...]
    entities: tuple[tuple[str, str | None], ...]

    def matches(self, file: _File) -> bool:
        _, datatype, entities, extension, _ = file
        if extension not in self.extensions or self.datatype not in (None, datatype):
            return False
        for key, wanted in self.entities:
            value = entities.get(key)
            if wanted is None or value is None:
                if value != wanted:
                    return False
            elif value != wanted and not (
                key in INDEX_ENTITIES and wanted.isdigit() and value.isdigit()
                and int(value) == int(wanted)
            ):  # fmt: skip
                return False
        return True

    def expected(self, base: str, sub: str, ses: str | None) -> str:
        """A pattern of the file this image wants for one subject, for messages."""
        if self.scope != "raw":
            base += "/derivatives/" + ("*" if self.scope == "derivatives" else self.scope)
        folder = f"sub-{sub}" + (f"/ses-{ses}" if ses else "") + f"/{self.datatype or '*'}"
        name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        name += "".join(f"*_{key}-{value}" for key, value in self.entities if value is not None)
        usual = set(self.extensions) == set(DEFAULT_EXTENSIONS)
        return f"{base}/{folder}/{name}*_{self.suffix}" + (
            ".nii[.gz]" if usual else "|".join(self.extensions)
        )


def _entity_rank(key: str) -> tuple[int, str]:
    return (ENTITY_ORDER.index(key) if key in ENTITY_ORDER else len(ENTITY_ORDER), key)


class _Dataset:
    """One dataset's files, indexed by (participant, session) then suffix."""

    def __init__(self, path: str, pipeline: str | None) -> None:
        self.path = path
        self.pipeline = pipeline
        self.participants: set[str] = set()
        self.subjects: set[tuple[str, str | None]] = set()
        self.files: dict[tuple[str, str | None], dict[str, list[_File]]] = {}

    def walk(self, datatypes: frozenset[str], suffixes: frozenset[str], endings: tuple) -> None:
        """Index the files of the wanted suffixes and extensions, a folder listed once."""
        self._wanted = datatypes, suffixes, endings
        for entry in _scan(self.path) or ():
            if entry.name.startswith("sub-") and _alnum(entry.name[4:]) and entry.is_dir():
                sub = entry.name[4:]
                self.participants.add(sub)
                if not self._folder(entry.path, sub, None, None):
                    self.subjects.add((sub, None))

    def _folder(self, path: str, sub: str, ses: str | None, datatype: str | None) -> bool:
        """Index a participant's, session's or datatype's folder; True if it has sessions."""
        datatypes, suffixes, endings = self._wanted
        sessions = False
        for entry in _scan(path) or ():
            name = entry.name
            if name.endswith(endings) and not name.startswith("."):
                parsed = parse_bids_name(name)
                if parsed and parsed[1] in suffixes:
                    entities, suffix, extension = parsed
                    if entities.get("sub") == sub and entities.get("ses") == ses:
                        file = (entry.path, datatype, entities, extension, self.pipeline)
                        self.files.setdefault((sub, ses), {}).setdefault(suffix, []).append(file)
            elif datatype is not None:
                continue
            elif name in datatypes and entry.is_dir():
                self._folder(entry.path, sub, ses, name)
            elif ses is None and name.startswith("ses-") and _alnum(name[4:]) and entry.is_dir():
                sessions = True
                self.subjects.add((sub, name[4:]))
                self._folder(entry.path, sub, name[4:], None)
        return sessions


def _pipelines(path: str) -> list[tuple[str, str]]:
    """``(folder name, path)`` of the pipelines under ``path/derivatives``, nested ones
    included, sorted by path."""
    found = []
    for entry in _scan(os.path.join(path, "derivatives")) or ():
        if not entry.name.startswith(".") and entry.is_dir():
            found.append((entry.name, entry.path))
            found.extend(_pipelines(entry.path))
    return sorted(found, key=lambda item: item[1])


def resolve_bids(
    root: str | os.PathLike[str],
    images: Mapping[str, Mapping[str, Any]],
    participant_label: str | Sequence[str] | None = None,
    session_label: str | Sequence[str] | None = None,
    fail_incomplete: bool = True,
) -> ResolvedLayout:
    """One file per image for each participant (and session) of a BIDS dataset.

    Parameters
    ----------
    root : path
        The raw dataset's folder, holding ``dataset_description.json``.
    images : mapping
        Image name -> ``{"type": ..., "bids": {"suffix": ..., entity: value, ...}}``
        (see the module's documentation); ``type`` defaults by suffix (``DEFAULT_TYPES``).
    participant_label : str or list of str, optional
        The participants to resolve, with or without ``sub-``; all when not given.
    session_label : str or list of str, optional
        The sessions to resolve, with or without ``ses-``; all when not given (when
        given, participants without sessions are left out).
    fail_incomplete : bool
        Raise for the first subject lacking an image (True), or leave such subjects out
        and list them in ``incomplete`` (False).

    Returns
    -------
    ResolvedLayout
        Subjects ``sub-<label>[_ses-<label>]``, sorted.

    Raises
    ------
    DataError
        No ``dataset_description.json``; a participant or session label, or a pipeline,
        not found; two files matching one image of one subject; a subject lacking an image
        (with ``fail_incomplete``); no subject.
    ConfigError
        An invalid image entry.
    """
    base = os.path.abspath(os.fspath(root))
    description = os.path.join(base, "dataset_description.json")
    if not os.path.isfile(description):
        raise DataError(f"{description}: not found (a BIDS dataset needs one at its root)")
    selections = _parse_images(images)
    participants = _labels(participant_label, "sub", "participant_label")
    sessions = _labels(session_label, "ses", "session_label")

    datasets = _datasets(base, {image.scope for image in selections})
    datatypes = DATATYPES | {image.datatype for image in selections if image.datatype}
    suffixes = frozenset(image.suffix for image in selections)
    endings = tuple(sorted({ext for image in selections for ext in image.extensions}))
    walked = {id(d): d for ds in datasets.values() for d in ds}.values()
    for dataset in walked:
        dataset.walk(datatypes, suffixes, endings)
    subjects = {key for dataset in walked for key in dataset.subjects}
    if participants is not None:
        _check_found(participants, {sub for d in walked for sub in d.participants}, "sub", base)
        subjects = {key for key in subjects if key[0] in participants}
    if sessions is not None:
        _check_found(sessions, {ses for _, ses in subjects}, "ses", base)
        subjects = {key for key in subjects if key[1] in sessions}

    collector = Collector("bids", base, {image.name: image.type for image in selections})
    named = sorted(
        (f"sub-{sub}" + (f"_ses-{ses}" if ses else ""), sub, ses) for sub, ses in subjects
    )
    for subject, sub, ses in named:
        paths: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for image in selections:
            found = [
                file
                for dataset in datasets[image.scope]
                for file in dataset.files.get((sub, ses), {}).get(image.suffix, ())
                if image.matches(file)
            ]
            if len(found) > 1:
                raise DataError(_ambiguous(subject, image, found))
            if found:
                paths[image.name] = found[0][0]
            else:
                missing.append((image.name, image.expected(base, sub, ses)))
        collector.add(subject, paths, missing)
    selected = " selected" if participants is not None or sessions is not None else ""
    nothing = f"no{selected} participant folder (sub-*) in scope {', '.join(sorted(datasets))}"
    return collector.result(fail_incomplete, nothing)


def _check_found(labels: set[str], present: set, prefix: str, base: str) -> None:
    for label in sorted(labels - present):
        what = "participant" if prefix == "sub" else "session"
        raise DataError(f"{base}: {what} {label!r} not found (no {prefix}-{label} folder)")


def _datasets(base: str, scopes: set[str]) -> dict[str, list[_Dataset]]:
    """The datasets each scope reads, walked once each however many scopes read them."""
    pipelines = (
        [_Dataset(path, name) for name, path in _pipelines(base)] if scopes - {"raw"} else []
    )
    chosen: dict[str, list[_Dataset]] = {"raw": [_Dataset(base, None)], "derivatives": pipelines}
    for scope in sorted(scopes - {"raw", "derivatives"}):
        chosen[scope] = [dataset for dataset in pipelines if dataset.pipeline == scope]
    for scope in sorted(scopes - {"raw"}):
        if not chosen[scope]:
            names = ", ".join(sorted({str(dataset.pipeline) for dataset in pipelines})) or "none"
            raise DataError(
                f"{base}/derivatives: no pipeline folder for scope {scope!r} (pipelines: {names})"
            )
    return {scope: chosen[scope] for scope in scopes}


def _ambiguous(subject: str, image: _Image, found: list[_File]) -> str:
    paths = sorted(file[0] for file in found)
    shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    keys = sorted({key for file in found for key in file[2]} - {"sub", "ses"}, key=_entity_rank)
    differ = [key for key in keys if len({file[2].get(key) for file in found}) > 1]
    absent = any(None in {file[2].get(key) for file in found} for key in differ)
    for what, column in (("datatype", 1), ("extension", 3), ("scope", 4)):
        if len({file[column] for file in found}) > 1:
            differ.append(what)
    message = f"{subject}: image {image.name!r} matches {len(found)} files ({shown})"
    if differ:
        message += f"; add {' or '.join(map(repr, differ))} to its bids entities to choose"
    return message + (" (null for the file without it)" if absent else "")


def _word(value: Any, where: str, what: str) -> str:
    """A BIDS label, letters and digits (an integer is taken as its digits)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _alnum(text):
        raise ConfigError(f"{where}: {what} must be letters and digits, not {value!r}")
    return text


def _labels(value: Any, prefix: str, option: str) -> set[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, (str, int)) else value
    if not isinstance(values, (list, tuple, set)) or not values:
        raise ConfigError(f"{option}: must be a label or a non-empty list of labels, not {value!r}")
    return {
        _word(
            item.strip().removeprefix(f"{prefix}-") if isinstance(item, str) else item,
            option,
            "a label",
        )
        for item in values
    }


def _parse_images(images: Any) -> list[_Image]:
    if not isinstance(images, Mapping) or not images:
        raise ConfigError("images: give at least one image as name -> {type, bids: {suffix, ...}}")
    return [_parse_image(name, entry) for name, entry in images.items()]


def _parse_image(name: Any, entry: Any) -> _Image:
    where = f"images: image {name!r}"
    check_image_name(name, "images")
    valid = isinstance(entry, Mapping) and not set(entry) - {"type", "bids"}
    bids = entry.get("bids") if valid else None
    if not isinstance(bids, Mapping) or "suffix" not in bids:
        raise ConfigError(
            f"{where}: must be {{type: ..., bids: {{suffix: ..., ...}}}}, not {entry!r}"
        )
    suffix = _word(bids["suffix"], where, "suffix")
    scope = bids.get("scope", "raw")
    if not isinstance(scope, str) or not scope or scope.startswith(".") or "/" in scope:
        raise ConfigError(f"{where}: scope must be raw, derivatives or a pipeline, not {scope!r}")
    datatype = bids.get("datatype")
    entities: dict[str, str | None] = {}
    for key, value in bids.items():
        short = LONG_NAMES.get(key, key)
        if key in _SELECTION:
            continue
        if short in ("sub", "ses") or short in entities:
            raise ConfigError(
                f"{where}: {key!r} cannot be chosen here (twice, or sub and ses, which "
                "participant_label and session_label choose)"
            )
        entities[_word(short, where, "an entity")] = (
            None if value is None else _word(value, where, key)
        )
    return _Image(
        name=name,
        type=check_type(entry.get("type", DEFAULT_TYPES.get(suffix, "intensity")), where),
        suffix=suffix,
        scope=scope,
        datatype=None if datatype is None else _word(datatype, where, "datatype"),
        extensions=_extensions(bids.get("extension"), where),
        entities=tuple(sorted(entities.items(), key=lambda item: _entity_rank(item[0]))),
    )


def _extensions(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_EXTENSIONS
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(
            f"{where}: extension must be one or a list, such as .nii.gz, not {value!r}"
        )
    extensions = tuple("." + str(item).strip().lstrip(".") for item in values)
    for item, extension in zip(values, extensions):
        if (
            not isinstance(item, str)
            or extension == "."
            or "/" in extension
            or extension in (".json", ".tsv")
        ):
            raise ConfigError(f"{where}: extension {item!r} is not an image file's extension")
    return extensions
