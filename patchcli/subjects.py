"""Subjects: the manifest (CSV or inline list) and loading a subject's images.

A subject is one id with one file per image of the config. Loading reads each
file once and checks that all images share spatial shape and affine.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import MAX_PATCHES, Config
from .errors import ConfigError, DataError
from .io.volumes import Header, read_header, read_volume
from .layouts import ResolvedLayout, layout_source, resolve_layout


@dataclass(frozen=True)
class SubjectSpec:
    """A row of the manifest: where a subject's images are."""

    index: int
    id: str
    paths: Mapping[str, Path]
    num_samples: int | None = None


@dataclass
class LoadedSubject:
    """A subject's images in memory, each ``(C, X, Y, Z)``, sharing ``affine`` and shape
    (those of the first image when loaded without the check, each in ``affines``)."""

    spec: SubjectSpec
    volumes: dict[str, np.ndarray]
    affine: np.ndarray
    spatial_shape: tuple[int, int, int]
    affines: dict[str, np.ndarray] | None = None


#: Files at the top of a NIfTI output folder: no subject folder may take their names.
RESERVED_SUBJECT_IDS = ("patches.csv", "patchcli.yaml")


def check_subject_id(subject_id: str, where: str) -> str:
    """Refuse ids that could not be a file name inside an output folder."""
    bad = (
        not subject_id
        or subject_id in (".", "..", *RESERVED_SUBJECT_IDS)
        or any(sep in subject_id for sep in ("/", "\\", "\0"))
        or subject_id != subject_id.strip()
    )
    if bad:
        raise DataError(
            f"{where}: subject id {subject_id!r} is not usable as a file name "
            "(empty, '.', '..', patches.csv, patchcli.yaml, surrounding spaces or a path separator)"
        )
    return subject_id


def _parse_num_samples(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise DataError(f"{where}: num_samples must be a positive integer, not {value!r}") from None
    if isinstance(value, bool) or number < 1:
        raise DataError(f"{where}: num_samples must be a positive integer, not {value!r}")
    if number > MAX_PATCHES:
        raise DataError(f"{where}: num_samples must be at most {MAX_PATCHES}, not {number}")
    return number


@dataclass(frozen=True)
class Manifest:
    """A run's subjects as its config gives them: ``subjects`` in manifest order, and for a
    dataset in a standard layout, the layout resolved and the subjects it left out."""

    subjects: list[SubjectSpec]
    #: ``(subject id, reason)`` of each subject a layout left out for a missing file.
    incomplete: list[tuple[str, str]] = field(default_factory=list)
    layout: ResolvedLayout | None = None


def config_manifest(config: Config, fail_incomplete: bool | None = None) -> Manifest:
    """The subjects of ``config``: its CSV manifest or inline list, or its dataset
    (``subjects: {bids: DIR}``, ``{nnunet: DIR}``, ``{decathlon: DIR}``) resolved to the
    same ordered manifest on every machine (sorted by subject id).

    A layout's subject missing a file fails the run, or with ``fail_incomplete`` False
    (default: ``on_error: skip``) is left out and listed in ``incomplete``.

    Raises
    ------
    DataError, ConfigError
        Naming the file (manifest, dataset description) and the problem.
    """
    subjects = config.subjects
    if not isinstance(subjects, Mapping):
        return Manifest(read_manifest(subjects, list(config.images)))
    fail = config.on_error != "skip" if fail_incomplete is None else fail_incomplete
    kind, root, options = layout_source(subjects)
    images = {
        name: {"type": spec.type, **({"bids": spec.bids} if spec.bids else {})}
        for name, spec in config.images.items()
    }
    resolved = resolve_layout(kind, root, images=images, fail_incomplete=fail, **options)
    specs = read_manifest(resolved.manifest(), list(config.images))
    return Manifest(specs, list(resolved.incomplete), resolved)


def describe_manifest(manifest: Manifest) -> str:
    """Where a run's subjects come from, on one line: ``bids dataset /data/ds: 12
    subjects; files: t1 12, seg 11; 1 incomplete: 'sub-05' (...)``."""
    subjects = manifest.subjects
    text = f"{len(subjects)} subject{'s' if len(subjects) != 1 else ''}"
    layout = manifest.layout
    if layout is None:
        return text
    files = ", ".join(f"{name} {number}" for name, number in layout.counts().items())
    text = f"{layout.layout} dataset {layout.root}: {text}; files: {files}"
    if manifest.incomplete:
        subject, reason = manifest.incomplete[0]
        more = f" and {len(manifest.incomplete) - 1} more" if len(manifest.incomplete) > 1 else ""
        text += f"; {len(manifest.incomplete)} incomplete: {subject!r} ({reason}){more}"
    return text


def write_manifest(specs: Sequence[SubjectSpec], image_names: Sequence[str], path: Path) -> None:
    """Write subjects as a CSV manifest (``subject``, one absolute path per image, and
    ``num_samples`` where any subject has one), to a temporary name renamed when complete:
    a run reading it finds the same subjects, rows and fingerprint."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    with_samples = any(spec.num_samples for spec in specs)
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            write_manifest_rows(specs, image_names, stream, with_samples)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write the manifest ({error.strerror})") from None
    temporary.replace(path)


def write_manifest_rows(specs, image_names, stream, with_samples: bool = False) -> None:
    """The CSV rows of :func:`write_manifest`, to an open text stream."""
    writer = csv.writer(stream)
    writer.writerow(["subject", *image_names, *(["num_samples"] if with_samples else [])])
    for spec in specs:
        samples = [spec.num_samples or ""] if with_samples else []
        writer.writerow([spec.id, *(str(spec.paths[name]) for name in image_names), *samples])


def read_manifest(
    subjects: Path | Sequence[Mapping[str, Any]] | None,
    image_names: Sequence[str],
) -> list[SubjectSpec]:
    """The subjects of a run, from a CSV manifest or an inline list.

    CSV: a ``subject`` column with the id, one column per image holding its
    path (relative to the CSV file), an optional ``num_samples`` column.
    Inline: mappings with ``id``, one key per image, optional ``num_samples``.

    Raises
    ------
    DataError
        Naming the file (and row) of a missing column, value or duplicate id.
    """
    if subjects is None:
        raise ConfigError("subjects is required: a CSV manifest or a list of subjects")
    if isinstance(subjects, (str, Path)):
        rows, base, source = _read_csv(Path(subjects), image_names)
    else:
        rows, base, source = list(subjects), None, "subjects"
    specs: list[SubjectSpec] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows):
        where = f"{source}: row {number + (2 if base else 1)}"
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: each subject must be a mapping with an id and image paths")
        subject_id = str(row.get("subject", row.get("id", "")) or "").strip()
        if base is None:
            unknown = set(row) - set(image_names) - {"id", "num_samples"}
            if unknown:
                raise DataError(
                    f"{where}: unknown keys {sorted(unknown)}; images are {list(image_names)}"
                )
            if "id" not in row:
                raise DataError(f"{where}: missing id")
            subject_id = str(row["id"])
        check_subject_id(subject_id, where)
        if subject_id in seen:
            raise DataError(f"{where}: duplicate subject id {subject_id!r}")
        seen[subject_id] = number
        paths = {}
        for name in image_names:
            value = row.get(name)
            if value is None or not str(value).strip():
                raise DataError(f"{where}: subject {subject_id!r} has no path for image {name!r}")
            path = Path(os.path.expanduser(str(value).strip()))
            paths[name] = path if path.is_absolute() or base is None else base / path
        specs.append(
            SubjectSpec(
                index=number,
                id=subject_id,
                paths=paths,
                num_samples=_parse_num_samples(row.get("num_samples"), where),
            )
        )
    if not specs:
        raise DataError(f"{source}: no subjects")
    return specs


def _read_csv(path: Path, image_names: Sequence[str]):
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: subjects manifest not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read subjects manifest ({error})") from None
    if "subject" not in columns:
        raise DataError(f"{path}: the manifest needs a 'subject' column (columns: {columns})")
    missing = [name for name in image_names if name not in columns]
    if missing:
        raise DataError(f"{path}: no column for images {missing} (columns: {columns})")
    return rows, path.resolve().parent, str(path)


def read_subject_headers(
    spec: SubjectSpec, reader: str, tolerance: float, same_grid: bool = True
) -> dict[str, Header]:
    """Headers of a subject's images (no voxels read), checked to share one grid unless
    ``same_grid`` is False (preprocessing puts them on one)."""
    headers = {name: read_header(path, reader) for name, path in spec.paths.items()}
    if not same_grid:
        return headers
    check_same_geometry(
        spec.id,
        {name: (h.spatial_shape, h.affine) for name, h in headers.items()},
        tolerance,
        spec.paths,
    )
    return headers


def check_same_geometry(
    subject_id: str,
    geometry: Mapping[str, tuple[Sequence[int], np.ndarray]],
    tolerance: float,
    paths: Mapping[str, Path] | None = None,
    after: str = "",
) -> None:
    """All images of a subject must share spatial shape and affine (within ``tolerance`` mm).

    The error names the file of the image that differs from the first one; ``after``
    (``"after preprocessing"``) says when, and the error then suggests a ``Resample``.
    """
    names = list(geometry)
    first = names[0]
    shape0, affine0 = geometry[first]
    when = f"{after}, " if after else ""
    hint = f"; preprocess with Resample: {{target: {first}}}" if after else ""
    for name in names[1:]:
        shape, affine = geometry[name]
        where = f"{paths[name]}: " if paths else ""
        if tuple(shape) != tuple(shape0):
            raise DataError(
                f"{where}subject {subject_id!r}: {when}images {first!r} and {name!r} differ in "
                f"spatial shape: {tuple(int(n) for n in shape0)} vs "
                f"{tuple(int(n) for n in shape)}{hint}"
            )
        if not np.allclose(affine, affine0, rtol=0, atol=tolerance):
            raise DataError(
                f"{where}subject {subject_id!r}: {when}images {first!r} and {name!r} differ in "
                f"affine (tolerance {tolerance}): {_flat(affine0)} vs {_flat(affine)}{hint}"
            )


def _flat(affine: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in np.asarray(affine)[:3].ravel()) + "]"


def load_subject(
    spec: SubjectSpec, reader: str = "auto", tolerance: float = 1e-4, same_grid: bool = True
) -> LoadedSubject:
    """Read every image of a subject once and check that they share one grid (unless
    ``same_grid`` is False: preprocessing will put them on one)."""
    volumes = {}
    geometry = {}
    for name, path in spec.paths.items():
        volume = read_volume(path, reader)
        volumes[name] = volume.array
        geometry[name] = (volume.spatial_shape, volume.affine)
    if same_grid:
        check_same_geometry(spec.id, geometry, tolerance, spec.paths)
    first = next(iter(geometry.values()))
    return LoadedSubject(
        spec=spec,
        volumes=volumes,
        affine=first[1],
        spatial_shape=tuple(int(n) for n in first[0]),  # type: ignore[arg-type]
        affines={name: affine for name, (_, affine) in geometry.items()},
    )
