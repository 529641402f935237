"""Read patch outputs: one torch-free reader for every tool.

A patch output is an HDF5 file (one run, one shard, or a merge of shards) or
a NIfTI folder (docs/format.md). :func:`read_patch_output` reads its small
tables once (locations, subject of each row, subjects, attributes) and checks
the layout; :meth:`PatchOutput.read_rows` (patchcli.io.output) reads patches on demand
through a :class:`~patchcli.io.handles.HandleCache`, which opens each HDF5 file
once per process.

``PatchDataset``, ``aggregate``, ``merge`` and ``info`` all read through here.

A merge made by ``patchcli merge`` (virtual datasets over its shards) is read
from the shard files directly: with HDF5 1.14 (h5py 3.8 to 3.11 wheels) a
random read through a virtual dataset of 1,000 sources is 44 times slower
than from a plain file, and it keeps every source open (docs/cluster.md has
the measurements). A virtual dataset whose source is gone reads as zeros
without an error, so every shard is checked to exist first.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .atomic import FOLDER_MARKER
from .format import FORMAT_NAME, RUN_ATTRIBUTES, check_format
from .handles import HandleCache
from .hdf5 import damage_reason, decode_strings, open_hdf5, plain_value, read_skipped, read_subjects
from .nifti import CSV_NAME, read_nifti_patch
from .output import Part, PatchOutput
from .store import is_store, read_store
from .writer import SkippedSubject, SubjectRecord, source_grids_from_plain

#: How a user accepts a file that reads from outside its folder.
_ALLOW = "refused unless allowed: allow_external=True, or info --allow-external"


def _check_copy_index(
    copy_index: np.ndarray | None, copies: Any, rows: int, path: Path, what: str
) -> None:
    if copy_index is None:
        return
    if len(copy_index) != rows:
        raise DataError(f"{path}: {what} has {len(copy_index)} rows but there are {rows} patches")
    if len(copy_index) and (copy_index.min() < 0 or copy_index.max() >= int(copies)):
        raise DataError(f"{path}: {what} holds copies outside 0 to {int(copies) - 1}")


def read_patch_output(path: str | os.PathLike, *, allow_external: bool = False) -> PatchOutput:
    """Read the tables of a patch output (HDF5 file or NIfTI folder) and check its layout.

    Parameters
    ----------
    path : path-like
    allow_external : bool
        Accept virtual datasets and external links that point outside the
        file's folder (refused by default: a file should not read from places
        its name does not suggest).

    Raises
    ------
    DataError
        One line naming the file: missing, not a patch output, a newer format,
        incomplete, or a merge whose shards are missing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_nifti_folder(path)
    try:
        return _read_hdf5(path, allow_external)
    except DataError:
        raise
    except (
        OSError,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as error:
        # h5py's own errors on a damaged file (a bad attribute, a broken object header).
        raise DataError(f"{path}: damaged patch file ({damage_reason(error)})") from None


def _read_hdf5(path: Path, allow_external: bool) -> PatchOutput:
    with open_hdf5(path) as file:
        attributes = file.attrs
        plain = {key: plain_value(attributes[key]) for key in RUN_ATTRIBUTES if key in attributes}
        if is_store(file):
            if plain.get("merge") == "virtual":  # every shard there before reading through
                rows = len(file["subjects/id"]) if "subjects/id" in file else 0
                parts = _merge_parts(file, path, rows, allow_external)
            store = read_store(file, path, plain)
            if plain.get("merge") == "virtual":
                store.parts = parts
            return store
        found = decode_strings(attributes["format"])[0] if "format" in attributes else None
        if "patches" not in file:
            found = found if found != FORMAT_NAME else f"{found} without /patches"
        version = check_format(found, attributes.get("format_version"), path)
        subjects = read_subjects(file, path)
        skipped = read_skipped(file, path)
        try:
            images = decode_strings(attributes["images"])
            image_types = decode_strings(attributes["image_types"])
            patch_size = tuple(int(n) for n in attributes["patch_size"])
            padding = np.asarray(attributes.get("padding", np.zeros(3)), dtype=np.int64)
            locations = np.asarray(file["locations"][()], dtype=np.int64).reshape(-1, 6)
            subject_index = np.asarray(file["subject_index"][()], dtype=np.int64).reshape(-1)
            copy_index = None
            if "augment_copies" in attributes:
                copy_index = np.asarray(file["copy_index"][()], dtype=np.int64).reshape(-1)
            channels, dtypes = {}, {}
            for name in images:
                _check_link(file, f"patches/{name}", path, allow_external)
                dataset = file[f"patches/{name}"]
                if not hasattr(dataset, "ndim"):  # a group or a named type, not a dataset
                    raise DataError(f"{path}: /patches/{name} is not a dataset")
                if dataset.ndim != 5 or tuple(dataset.shape[2:]) != patch_size:
                    raise DataError(
                        f"{path}: /patches/{name} has shape {dataset.shape}, expected "
                        f"(N, C, {', '.join(map(str, patch_size))})"
                    )
                if dataset.shape[0] != len(locations):
                    raise DataError(
                        f"{path}: /patches/{name} has {dataset.shape[0]} rows but /locations "
                        f"has {len(locations)}"
                    )
                channels[name] = int(dataset.shape[1])
                dtypes[name] = dataset.dtype.newbyteorder("=")
                if dataset.is_virtual and plain.get("merge") != "virtual":
                    _check_virtual_sources(dataset, name, path, allow_external)
            if plain.get("merge") == "virtual":
                parts = _merge_parts(file, path, len(locations), allow_external)
            else:
                parts = [Part(path, 0, len(locations))]
        except KeyError as error:
            raise DataError(
                f"{path}: incomplete patchcli patch file (missing {error.args[0]!s})"
            ) from None
    if len(subject_index) != len(locations):
        raise DataError(
            f"{path}: /subject_index has {len(subject_index)} rows but /locations has "
            f"{len(locations)}"
        )
    if len(subject_index) and (subject_index.min() < 0 or subject_index.max() >= len(subjects)):
        raise DataError(f"{path}: /subject_index points outside the subjects table")
    _check_copy_index(copy_index, plain.get("augment_copies"), len(locations), path, "/copy_index")
    for subject in subjects:  # images without a recorded source path
        for name in images:
            subject.source.setdefault(name, "")
    return PatchOutput(
        path=path,
        kind="hdf5",
        version=version,
        images=images,
        image_types=image_types,
        patch_size=patch_size,  # type: ignore[arg-type]
        padding=padding.reshape(3),
        locations=locations,
        subject_index=subject_index,
        subjects=subjects,
        channels=channels,
        dtypes=dtypes,
        attributes=plain,
        parts=parts,
        skipped=skipped,
        copy_index=copy_index,
    )


def _inside(relative: str, folder: Path) -> bool:
    """Whether a link target named ``relative`` to ``folder`` stays inside it."""
    if not relative or os.path.isabs(relative):
        return False
    normal = os.path.normpath(relative)
    return normal != ".." and not normal.startswith(".." + os.sep)


def _check_link(file, name: str, path: Path, allow_external: bool) -> None:
    import h5py

    link = file.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        target = link.filename
        if not allow_external and not _inside(target, path.parent):
            raise DataError(
                f"{path}: /{name} is an external link to {target}, outside the file's folder "
                f"({_ALLOW})"
            )
        if not (path.parent / target).is_file():
            raise DataError(f"{path}: /{name} links to {target}, which does not exist")


def _check_virtual_sources(dataset, name: str, path: Path, allow_external: bool) -> None:
    for mapping in dataset.virtual_sources():
        target = mapping.file_name
        if target == ".":
            continue
        if not allow_external and not _inside(target, path.parent):
            raise DataError(
                f"{path}: /patches/{name} reads from {target}, outside the file's folder ({_ALLOW})"
            )
        if not (path.parent / target).is_file():
            raise DataError(
                f"{path}: /patches/{name} reads from {target}, which is missing (HDF5 would "
                "read its patches as zeros)"
            )


def _merge_parts(file, path: Path, rows: int, allow_external: bool) -> list[Part]:
    """The shards of a virtual merge, each checked to exist beside the merged file."""
    group = file["shards"]
    names = decode_strings(group["file"][()])
    starts = np.asarray(group["patch_start"][()], dtype=np.int64).reshape(-1)
    counts = np.asarray(group["patch_count"][()], dtype=np.int64).reshape(-1)
    # Merges of shards with fingerprints of their own record each (older ones share one).
    fingerprints = (
        decode_strings(group["fingerprint"][()]) if "fingerprint" in group else [None] * len(names)
    )
    if not len(names) == len(starts) == len(counts) == len(fingerprints):
        raise DataError(f"{path}: /shards tables differ in length")
    parts, missing = [], []
    expected_start = 0
    for name, start, count, fingerprint in zip(
        names, starts.tolist(), counts.tolist(), fingerprints, strict=True
    ):
        if not allow_external and not _inside(name, path.parent):
            raise DataError(f"{path}: merged from {name}, outside the file's folder ({_ALLOW})")
        if start != expected_start:
            raise DataError(f"{path}: /shards rows are not contiguous at {name}")
        expected_start += count
        source = path.parent / name
        if not source.is_file():
            missing.append(name)
        parts.append(Part(source, start, count, fingerprint))
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise DataError(
            f"{path}: {len(missing)} of the {len(names)} shards it reads are missing ({shown}); "
            "a virtual merge needs its shards beside it (merge --copy makes a standalone file)"
        )
    if expected_start != rows:
        raise DataError(f"{path}: /shards cover {expected_start} rows, the file has {rows}")
    return parts


def _read_nifti_folder(folder: Path) -> PatchOutput:
    import yaml

    metadata_path = folder / FOLDER_MARKER
    table_path = folder / CSV_NAME
    if not metadata_path.is_file():
        raise DataError(f"{folder}: not a patchcli NIfTI output folder (no {FOLDER_MARKER})")
    try:
        with open(metadata_path, encoding="utf-8") as stream:
            metadata = yaml.safe_load(stream)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DataError(f"{metadata_path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise DataError(f"{metadata_path}: not a patchcli output description")
    version = check_format(metadata.get("format"), metadata.get("format_version"), metadata_path)
    if not table_path.is_file():
        raise DataError(f"{folder}: no {CSV_NAME}; the output is incomplete")
    try:
        images = [str(name) for name in metadata["images"]]
        image_types = [str(kind) for kind in metadata["image_types"]]
        patch_size = tuple(int(n) for n in metadata["patch_size"])
        padding = np.asarray(metadata.get("padding") or [0, 0, 0], dtype=np.int64).reshape(3)
        subject_rows = metadata["subjects"] or []
        channels = {str(k): int(v) for k, v in (metadata.get("channels") or {}).items()}
        dtypes = {str(k): np.dtype(str(v)) for k, v in (metadata.get("dtypes") or {}).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{metadata_path}: missing or invalid entry ({error})") from None

    position_of = {str(row["id"]): number for number, row in enumerate(subject_rows)}
    locations = []
    subject_index = []
    copies = metadata.get("augment_copies")
    copy_index: list[int] | None = None if copies is None else []
    files: dict[str, list[str]] = {name: [] for name in images}
    with open(table_path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        copy_column = [] if copies is None else ["copy"]
        expected = ["subject", "patch", *copy_column, "i0", "j0", "k0", "i1", "j1", "k1", *images]
        if reader.fieldnames != expected:
            raise DataError(
                f"{table_path}: header {reader.fieldnames} does not match the images of "
                f"{FOLDER_MARKER} (expected {expected})"
            )
        for line_number, row in enumerate(reader, start=2):
            subject = row["subject"]
            if subject not in position_of:
                raise DataError(f"{table_path}: line {line_number}: unknown subject {subject!r}")
            subject_index.append(position_of[subject])
            try:
                locations.append([int(row[key]) for key in ("i0", "j0", "k0", "i1", "j1", "k1")])
            except (TypeError, ValueError):
                raise DataError(f"{table_path}: line {line_number}: invalid location") from None
            if copy_index is not None:
                try:
                    copy_index.append(int(row["copy"]))
                except (TypeError, ValueError):
                    raise DataError(f"{table_path}: line {line_number}: invalid copy") from None
            for name in images:
                relative = row[name] or ""
                if not _inside(relative, folder):
                    raise DataError(
                        f"{table_path}: line {line_number}: {relative!r} is not a file inside "
                        "the folder"
                    )
                files[name].append(relative)
    subject_array = np.asarray(subject_index, dtype=np.int64)
    subjects = []
    try:
        for number, row in enumerate(subject_rows):
            rows = np.flatnonzero(subject_array == number)
            manifest_row = row.get("manifest_row")
            subjects.append(
                SubjectRecord(
                    id=str(row["id"]),
                    affine=np.asarray(row["affine"], dtype=np.float64).reshape(4, 4),
                    shape=tuple(int(n) for n in row["shape"]),  # type: ignore[arg-type]
                    source={str(k): str(v) for k, v in (row.get("source") or {}).items()},
                    patch_start=int(rows[0]) if len(rows) else int(row.get("patch_start", 0)),
                    patch_count=len(rows),
                    manifest_row=None if manifest_row is None else int(manifest_row),
                    source_grids=source_grids_from_plain(row.get("source_grid")),
                )
            )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{metadata_path}: invalid subjects entry ({error})") from None
    try:
        skipped = [
            SkippedSubject(
                str(row["id"]),
                None if row.get("manifest_row") is None else int(row["manifest_row"]),
                str(row["reason"]),
                str(row["stage"]),
            )
            for row in metadata.get("skipped_subjects") or []
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{metadata_path}: invalid skipped_subjects entry ({error})") from None
    for subject in subjects:
        for name in images:
            subject.source.setdefault(name, "")
    attributes = {key: metadata[key] for key in RUN_ATTRIBUTES if key in metadata}
    copy_array = None if copy_index is None else np.asarray(copy_index, dtype=np.int64)
    _check_copy_index(copy_array, copies, len(locations), table_path, "the copy column")
    return PatchOutput(
        path=folder,
        kind="nifti",
        version=version,
        images=images,
        image_types=image_types,
        patch_size=patch_size,  # type: ignore[arg-type]
        padding=padding,
        locations=np.asarray(locations, dtype=np.int64).reshape(-1, 6),
        subject_index=subject_array,
        subjects=subjects,
        channels=channels,
        dtypes=dtypes,
        attributes=attributes,
        skipped=skipped,
        copy_index=copy_array,
        nifti_files={name: np.array(paths, dtype=str) for name, paths in files.items()},
    )


__all__ = [
    "CSV_NAME",
    "HandleCache",
    "Part",
    "PatchOutput",
    "check_format",
    "read_nifti_patch",
    "read_patch_output",
]
