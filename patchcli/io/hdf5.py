"""The HDF5 patch file: one file per run (layout in docs/format.md), written and read.

Patches are written in blocks straight from the buffers they were cropped
into. Each patch is one chunk, so reading a random patch touches exactly one
chunk (h5py's automatic chunking cut patches across chunks and made random
reads hundreds of times slower).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from ..handover import Chunks, InPlace
from .compact import compact_rows, compacting_path
from .format import FORMAT_NAME, FORMAT_VERSION
from .space import ensure_space, extend_to_allocated, release
from .writer import PartialUnusable, PatchWriter, SkippedSubject, SubjectRecord, copy_index

#: Space kept reserved past the end of a file being written, for HDF5's metadata.
_METADATA_MARGIN = 4 * 2**20
#: How patch files store strings: variable-length UTF-8.
STRING_DTYPE = h5py.string_dtype("utf-8")


def compression_options(compression: str, level: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``create_dataset`` for a compression name."""
    if compression == "none":
        return {}
    if compression == "gzip":
        return {
            "compression": "gzip",
            "compression_opts": 4 if level is None else level,
            "shuffle": True,
        }
    if compression in ("lz4", "zstd"):
        import hdf5plugin

        default_level = 5 if compression == "lz4" else 3
        return dict(
            hdf5plugin.Blosc(
                cname=compression,
                clevel=default_level if level is None else min(level, 9),
                shuffle=hdf5plugin.Blosc.SHUFFLE,
            )
        )
    raise ValueError(f"unknown compression {compression!r}")


class Hdf5PatchWriter(PatchWriter):
    """Write a run's patches, locations and subjects table to an HDF5 file.

    Parameters
    ----------
    path : Path
        The file to create (normally the ``.partial`` temporary name).
    images : mapping
        Image name -> ``(channels, dtype, type)``.
    patch_size : tuple of 3 ints
    num_patches : int
        Total rows of the file (known before writing starts).
    num_subjects : int
    attributes : mapping
        Root attributes (sampler, config, seed, ...).
    compression : str
    compression_level : int, optional
    """

    #: Whether :meth:`close` continued in a compacted copy of the file.
    _compacted = False

    def __init__(
        self,
        path: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        patch_size: Sequence[int],
        num_patches: int,
        num_subjects: int,
        attributes: Mapping[str, Any],
        compression: str = "none",
        compression_level: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        # Without a chunk cache: each chunk is written once, and the file's size then
        # follows the writes, which space reservations rely on (io/space.py).
        self.file = h5py.File(self.path, "w", locking=False, rdcc_nbytes=0)
        self._descriptor = os.open(self.path, os.O_RDWR)
        self.image_names = list(images)
        filters = compression_options(compression, compression_level)
        root = self.file.attrs
        root["format"] = FORMAT_NAME
        root["format_version"] = FORMAT_VERSION
        root["images"] = np.array(self.image_names, dtype=STRING_DTYPE)
        root["image_types"] = np.array([spec[2] for spec in images.values()], dtype=STRING_DTYPE)
        root["patch_size"] = np.asarray(patch_size, dtype=np.int64)
        root["compression"] = compression
        for key, value in attributes.items():
            root[key] = value
        patches = self.file.create_group("patches")
        self.patches: dict[str, h5py.Dataset] = {}
        for name, (channels, dtype, image_type) in images.items():
            shape = (num_patches, channels, *patch_size)
            if filters and num_patches:
                layout = {"chunks": (1, channels, *patch_size), **filters}
            else:
                # Uncompressed: one contiguous block, allocated now, that workers write
                # into in place (patchcli.pipeline); nothing is filled in beforehand.
                layout = {"dcpl": _allocated_now(), "fill_time": "never"}
            dataset = patches.create_dataset(name, shape=shape, dtype=dtype, **layout)
            dataset.attrs["type"] = image_type
            self.patches[name] = dataset
        # Allocated now too, so that their space can be reserved before any patch is written.
        self.locations = self.file.create_dataset(
            "locations", (num_patches, 6), dtype=np.int64, dcpl=_allocated_now()
        )
        self.subject_index = self.file.create_dataset(
            "subject_index", (num_patches,), dtype=np.int64, dcpl=_allocated_now()
        )
        self.num_subjects = num_subjects
        # Workers write the contiguous datasets in place: a run killed before its last
        # rows were written must still reopen for resume.
        extend_to_allocated(self.file, self._descriptor)
        self._reserve_own_space(num_subjects)

    def _reserve_own_space(self, num_subjects: int) -> None:
        """Reserve what HDF5 itself writes: the tables of locations, and room past the
        end for the subjects table and the metadata written at close.

        Patches written in place by workers may fill the disk; HDF5's own writes must
        never be the ones that find it full (io/space.py), so their space is taken
        first. Raises DiskFull when even that is not there.
        """
        for dataset in (self.locations, self.subject_index):
            offset = dataset.id.get_offset()
            if offset is not None:
                ensure_space(self._descriptor, self.path, offset, dataset.nbytes, dataset.nbytes, 0)
        self._own_reserve = _METADATA_MARGIN + 600 * num_subjects
        self._reserve(self._own_reserve, self._own_reserve)

    def target(self):
        """How workers hand over patches for this file (patchcli.handover)."""
        datasets = self.patches
        offsets = {name: dataset.id.get_offset() for name, dataset in datasets.items()}
        if all(dataset.chunks is None for dataset in datasets.values()):
            if any(offset is None for offset in offsets.values()):  # nothing to write
                return Chunks({name: () for name in datasets})
            return InPlace(
                str(self.path),
                offsets,
                {
                    name: int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize
                    for name, dataset in datasets.items()
                },
            )
        return Chunks({name: filter_pipeline(dataset) for name, dataset in datasets.items()})

    def write_rows(self, row: int, locations: np.ndarray, subject_index: int) -> None:
        """Record ``len(locations)`` rows whose patches workers wrote in place."""
        selection = np.s_[row : row + len(locations)]
        self.locations[selection] = locations
        self.subject_index[selection] = subject_index

    def write_chunks(
        self,
        row: int,
        chunks: Mapping[str, Sequence[tuple[int, bytes]]],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        """Store chunks made by :func:`patchcli.pipeline.compress_chunks`, one per row.

        Raises
        ------
        DiskFull
            Before anything is written, when their space cannot be reserved.
        """
        size = sum(len(data) for rows in chunks.values() for _, data in rows)
        count = len(locations)
        self._reserve(size + _METADATA_MARGIN + 64 * count * len(chunks), size)
        for name, rows in chunks.items():
            dataset = self.patches[name].id
            zeros = (0,) * (len(self.patches[name].shape) - 1)
            for offset, (mask, data) in enumerate(rows):
                dataset.write_direct_chunk((row + offset, *zeros), data, mask)
        self.write_rows(row, locations, subject_index)

    @classmethod
    def reopen(
        cls,
        path: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        patch_size: Sequence[int],
        num_patches: int,
        done: Sequence[SubjectRecord],
    ) -> Hdf5PatchWriter:
        """Continue writing a ``.partial`` file whose subjects ``done`` are complete.

        The file must have the datasets this run would create, and every row of
        the subjects ``done`` must be stored; rows after them are written again
        (and rows of skipped subjects between them are left out at close).

        Raises
        ------
        PartialUnusable
            When the file cannot be opened (a kill can leave it unreadable) or
            does not hold what ``done`` says: the run must start again.
        DataError
            When its datasets are not the ones this run writes.
        """
        # Blosc (lz4, zstd) is an optional filter: without its plugin registered, HDF5
        # silently stores the chunks written from now on uncompressed.
        import hdf5plugin  # noqa: F401

        path = Path(path)
        file = open_partial(path)
        self = cls.__new__(cls)
        PatchWriter.__init__(self)
        self.path, self.file, self.image_names = path, file, list(images)
        self._descriptor = os.open(path, os.O_RDWR)
        try:
            self.patches = {}
            for name, (channels, dtype, _) in images.items():
                dataset = file.get(f"patches/{name}")
                expected = (num_patches, channels, *patch_size)
                if dataset is None or dataset.shape != expected or dataset.dtype != dtype:
                    if "subjects" in file:
                        # Closed and compacted over skipped subjects, but not yet renamed.
                        raise PartialUnusable(f"{path}: was closed before it was renamed")
                    found = "missing" if dataset is None else f"{dataset.shape} {dataset.dtype}"
                    raise DataError(
                        f"{path}: /patches/{name} is {found}, this run writes {expected} "
                        f"{np.dtype(dtype)}"
                    )
                self.patches[name] = dataset
            self.locations, self.subject_index = file["locations"], file["subject_index"]
            rows = sum(record.patch_count for record in done)
            for name, dataset in self.patches.items():
                missing = _unstored_rows(dataset, done)
                if missing:
                    raise PartialUnusable(
                        f"{path}: /patches/{name} lacks {missing} of the {rows} rows its "
                        "progress record says were written"
                    )
            self._reserve_own_space(len(done) + 1)
        except BaseException:
            self.abort()
            raise
        self.subjects = list(done)
        return self

    def flush(self) -> None:
        """Hand every write so far to the operating system (a checkpoint)."""
        self.file.flush()

    def write_block(
        self,
        row: int,
        arrays: Mapping[str, np.ndarray],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        """Write ``len(locations)`` patches starting at ``row``; arrays are (b, C, X, Y, Z).

        Raises
        ------
        DiskFull
            Before anything is written, when the block's space cannot be reserved.
        """
        count = len(locations)
        row_bytes = sum(array[0].nbytes for array in arrays.values()) + 56  # + location, index
        chunks = count * len(arrays)
        needed = (len(self.locations) - row) * row_bytes
        self._reserve(count * row_bytes + _METADATA_MARGIN + 64 * chunks, needed)
        selection = np.s_[row : row + count]
        for name, array in arrays.items():
            self.patches[name].write_direct(array, np.s_[0:count], selection)
        self.write_rows(row, locations, subject_index)

    def _reserve(self, length: int, needed: int) -> None:
        end = max(os.fstat(self._descriptor).st_size, self.file.id.get_filesize())
        ensure_space(self._descriptor, self.path, end, length, max(needed, length))

    def close(self) -> None:
        """Write the subjects table and close the file (compacted first over the rows
        of skipped subjects)."""
        if not self.file.id.valid:
            return
        for table in ("subjects", "skipped_subjects", "copy_index"):
            if table in self.file:  # closed once already (a run stopped before its rename)
                del self.file[table]
        if self.holes:
            self._compact()
        rows = self.subjects
        table = sum(
            200
            + sum(len(p) for p in r.source.values())
            + 160 * len(r.source_grids or ())
            + 8 * r.patch_count * ("augment_copies" in self.file.attrs)
            for r in rows
        )
        if _METADATA_MARGIN + table > self._own_reserve:
            self._reserve(_METADATA_MARGIN + table, _METADATA_MARGIN + table)
        write_subjects(self.file, rows, self.image_names)
        if "augment_copies" in self.file.attrs:
            copies = int(self.file.attrs["augment_copies"])
            self.file.create_dataset("copy_index", data=copy_index(rows, copies))
        if self.skipped:
            write_skipped(self.file, self.skipped_in_manifest_order())
        self.file.close()
        self._release()
        if self._compacted:
            os.replace(compacting_path(self.path), self.path)

    def _compact(self) -> None:
        """Continue in a copy of the file without the holes' rows (io/compact.py)."""
        keep = [(record.patch_start, record.patch_count) for record in self.subjects]
        target = compacting_path(self.path)
        file, descriptor = compact_rows(self.file, target, keep)
        self.abort()
        self.file, self._descriptor, self.holes = file, descriptor, []
        self._compacted = True
        self.subjects = self.compacted_subjects()
        self.locations, self.subject_index = file["locations"], file["subject_index"]
        self.patches = {name: file[f"patches/{name}"] for name in self.image_names}
        self._own_reserve = 0  # reserved with the copy

    def abort(self) -> None:
        try:
            if self.file.id.valid:
                self.file.close()
        finally:
            self._release()
            if self._compacted:  # the copy was not finished: the .partial stays as it was
                compacting_path(self.path).unlink(missing_ok=True)

    def _release(self) -> None:
        if self._descriptor is not None:
            release(self._descriptor)
            os.close(self._descriptor)
            self._descriptor = None


# -- the layout's tables and helpers ---------------------------------------------


def open_partial(path: Path) -> h5py.File:
    """A ``.partial`` HDF5 file opened to be continued (PartialUnusable when a kill left it
    unreadable: the run must start again)."""
    try:
        return h5py.File(path, "r+", locking=False, rdcc_nbytes=0)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PartialUnusable(f"{path}: cannot be reopened ({reason})") from None


def _allocated_now():
    """Dataset creation properties that allocate the dataset's space when it is made."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def filter_pipeline(dataset: h5py.Dataset) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """A chunked dataset's filters, in order: ``(filter id, flags, client values)``."""
    dcpl = dataset.id.get_create_plist()
    return tuple(
        (int(code), int(flags), tuple(int(v) for v in values))
        for code, flags, values, _ in (dcpl.get_filter(i) for i in range(dcpl.get_nfilters()))
    )


def _unstored_rows(dataset: h5py.Dataset, done: Sequence[SubjectRecord]) -> int:
    """How many rows (one chunk each) of the subjects ``done`` are not stored in ``dataset``."""
    rows = max((record.patch_start + record.patch_count for record in done), default=0)
    if rows == 0 or dataset.chunks is None:  # contiguous: written in place, nothing to look up
        return 0
    needed = np.zeros(rows, dtype=bool)
    for record in done:
        needed[record.patch_start : record.patch_start + record.patch_count] = True
    stored = np.zeros(rows, dtype=bool)

    def visit(info) -> None:
        row = info.chunk_offset[0]
        if row < rows and info.byte_offset is not None:
            stored[row] = True

    dataset.id.chunk_iter(visit)
    return int((needed & ~stored).sum())


def write_subjects(
    file: h5py.File, records: Sequence[SubjectRecord], image_names: Sequence[str]
) -> None:
    """The ``/subjects`` table: id, affine, shape, rows, manifest row and source paths of
    each subject, and the grid of each image before preprocessing where there was some
    (``/subjects/source_grid/<image>/shape`` and ``affine``)."""
    group = file.create_group("subjects")
    tables = {
        "id": np.array([r.id for r in records], dtype=STRING_DTYPE),
        "affine": np.array([r.affine for r in records], np.float64).reshape(-1, 4, 4),
        "shape": np.array([r.shape for r in records], np.int64).reshape(-1, 3),
        "patch_start": np.array([r.patch_start for r in records], np.int64),
        "patch_count": np.array([r.patch_count for r in records], np.int64),
        "manifest_row": np.array(
            [-1 if r.manifest_row is None else r.manifest_row for r in records], np.int64
        ),
    }
    for key, values in tables.items():
        group.create_dataset(key, data=values)
    sources = group.create_group("source")
    for name in image_names:
        paths = np.array([r.source.get(name, "") for r in records], dtype=STRING_DTYPE)
        sources.create_dataset(name, data=paths)
    if records and any(r.source_grids is not None for r in records):
        grids = group.create_group("source_grid")
        for name in image_names:
            # A subject without a record of its own (none in one run's file) gets -1 and NaN.
            shapes = np.full((len(records), 3), -1, np.int64)
            affines = np.full((len(records), 4, 4), np.nan)
            for row, record in enumerate(records):
                if record.source_grids is not None and name in record.source_grids:
                    shapes[row], affines[row] = record.source_grids[name]
            grids.create_dataset(f"{name}/shape", data=shapes)
            grids.create_dataset(f"{name}/affine", data=affines)


def write_skipped(file: h5py.File, skipped: Sequence[SkippedSubject]) -> None:
    """The ``/skipped_subjects`` table: id, manifest row (-1: unknown), reason and stage
    (``plan`` or ``run``) of each."""
    group = file.create_group("skipped_subjects")
    group["id"] = np.array([s.id for s in skipped], dtype=STRING_DTYPE)
    group["manifest_row"] = np.array(
        [-1 if s.manifest_row is None else s.manifest_row for s in skipped], np.int64
    )
    group["reason"] = np.array([s.reason for s in skipped], dtype=STRING_DTYPE)
    group["stage"] = np.array([s.stage for s in skipped], dtype=STRING_DTYPE)


def read_skipped(file: h5py.File, path: str | os.PathLike) -> list[SkippedSubject]:
    """The ``/skipped_subjects`` table of an open patch file ([] when there is none)."""
    if "skipped_subjects" not in file:
        return []
    group = file["skipped_subjects"]
    columns = {}
    for name in ("id", "manifest_row", "reason", "stage"):
        if not isinstance(group.get(name), h5py.Dataset):
            raise DataError(f"{path}: /skipped_subjects has no {name} column")
        columns[name] = group[name][()]
    ids, reasons, stages = (decode_strings(columns[n]) for n in ("id", "reason", "stage"))
    rows = np.asarray(columns["manifest_row"], dtype=np.int64).reshape(-1)
    if not len(ids) == len(rows) == len(reasons) == len(stages):
        raise DataError(f"{path}: /skipped_subjects has columns of different lengths")
    return [
        SkippedSubject(subject, None if row < 0 else int(row), reason, stage)
        for subject, row, reason, stage in zip(ids, rows, reasons, stages, strict=True)
    ]


def damage_reason(error: BaseException) -> str:
    """One line from an h5py error (its messages run over several lines)."""
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def plain_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, list, int, float)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return decode_strings(value)
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_strings(values) -> list[str]:
    """HDF5 strings (bytes or str, any shape) as a flat list of str."""
    return [
        value.decode("utf-8") if isinstance(value, bytes) else str(value)
        for value in np.asarray(values, dtype=object).reshape(-1)
    ]


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading, with the Blosc filters registered.

    Without a chunk cache: patchcli reads each chunk (one patch) once per pass,
    so a cache never hits, and h5py's default (1 MiB per dataset) would hold
    about 0.5 GiB for the 1,000 files of a merge's shards (bench_merge.py).
    With HDF5's best-effort file locking, the flags of a plain ``h5py.File(path)``
    (HDF5 refuses a second open of a file in one process with other flags), and
    without locks where the file system refuses them (some NFS and Lustre
    mounts; reading does not need them). Errors are one-line :class:`DataError`.
    """
    import hdf5plugin  # noqa: F401  (registers the Blosc filters of lz4 and zstd files)

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an HDF5 file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        try:
            return h5py.File(path, "r", locking="best-effort", rdcc_nbytes=0)
        except OSError as error:
            if "lock" not in str(error).lower():
                raise
            return h5py.File(path, "r", locking=False, rdcc_nbytes=0)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not an HDF5 file ({reason})") from None


def read_subjects(file: h5py.File, path: str | os.PathLike) -> list[SubjectRecord]:
    """The subjects table of an open patch file (``/subjects``)."""
    try:
        group = file["subjects"]
        ids = decode_strings(group["id"][()])
        affines = np.asarray(group["affine"][()], dtype=np.float64).reshape(-1, 4, 4)
        shapes = np.asarray(group["shape"][()], dtype=np.int64).reshape(-1, 3)
        starts = np.asarray(group["patch_start"][()], dtype=np.int64).reshape(-1)
        counts = np.asarray(group["patch_count"][()], dtype=np.int64).reshape(-1)
        manifest_rows = (
            np.asarray(group["manifest_row"][()], dtype=np.int64).reshape(-1)
            if "manifest_row" in group
            else np.full(len(ids), -1, dtype=np.int64)
        )
        sources = {
            name: decode_strings(group["source"][name][()])
            for name in (group["source"] if "source" in group else ())
        }
        grids = {
            name: (
                np.asarray(group[f"source_grid/{name}/shape"][()], np.int64).reshape(-1, 3),
                np.asarray(group[f"source_grid/{name}/affine"][()], np.float64).reshape(-1, 4, 4),
            )
            for name in (group["source_grid"] if "source_grid" in group else ())
        }
    except KeyError as error:
        raise DataError(
            f"{path}: incomplete patchcli patch file (missing {error.args[0]!s})"
        ) from None
    return [
        SubjectRecord(
            id=ids[row],
            affine=affines[row],
            shape=tuple(int(n) for n in shapes[row]),  # type: ignore[arg-type]
            source={name: paths[row] for name, paths in sources.items()},
            patch_start=int(starts[row]),
            patch_count=int(counts[row]),
            manifest_row=None if manifest_rows[row] < 0 else int(manifest_rows[row]),
            source_grids={
                name: (tuple(int(n) for n in shapes_[row]), affines_[row])
                for name, (shapes_, affines_) in grids.items()
                if shapes_[row][0] >= 0
            }
            or None,
        )
        for row in range(len(ids))
    ]
