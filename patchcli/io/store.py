"""The volume store: each subject's (preprocessed) images, chunked for patch reads.

Layout (docs/format.md, "Volume stores")::

    /volumes/<subject>/<image>          (C, X, Y, Z), chunks (C, 32, 32, 32), compressed
    /tables/<subject>/label/<image>/    labels, offsets, rows, starts, stops (label runs)
    /tables/<subject>/weights/<image>   (X * Y,) float64 row totals (for ``patch_size``)
    /tables/<subject>/channels/<image>/ totals, foreground (multi-channel label maps, for
                                        ``patch_size``)
    /subjects/...                       the subjects table of patch files
    /skipped_subjects/...

A store is written as a patch output is, by the same run (patchcli.extract):
one subject at a time, each subject a "row", checkpointed, resumable, sharded
and merged; :class:`VolumeStoreWriter` is its writer, and
:func:`read_store` reads its tables into a
:class:`~patchcli.io.output.PatchOutput` whose rows are whole volumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from ..handover import VolumeChunks, chunk_offsets, volume_chunk_shape
from ..sampling.tables import ChannelTotals, LabelRuns, RowTotals
from .hdf5 import (
    compression_options,
    decode_strings,
    filter_pipeline,
    open_partial,
    plain_value,
    read_skipped,
    read_subjects,
    write_skipped,
    write_subjects,
)
from .output import Part, PatchOutput
from .space import ensure_space, release
from .writer import PartialUnusable, PatchWriter, SkippedSubject, SubjectRecord

STORE_FORMAT_NAME = "patchcli-volumes"
STORE_FORMAT_VERSION = 1
#: The chunk of a stored volume (spatial; every channel in each chunk): 32^3 read 64^3
#: patches faster than 16^3 or 64^3 did, and made the smallest store
#: (bench/bench_volumes.py --chunk; docs/benchmarks.md).
DEFAULT_CHUNK_SHAPE = (32, 32, 32)
_METADATA_MARGIN = 4 * 2**20


class VolumeStoreWriter(PatchWriter):
    """Write a volume store: one subject's volumes (a "row") at a time.

    Parameters
    ----------
    path : Path
        The file to create (the ``.partial``).
    images : mapping
        Image name -> ``(channels, dtype, type)``.
    attributes : mapping
        Root attributes (sampler, config, seed, fingerprints, ...).
    compression : str
    compression_level : int, optional
    chunk_shape : tuple of 3 ints
    """

    def __init__(
        self,
        path: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        attributes: Mapping[str, Any],
        compression: str = "lz4",
        compression_level: int | None = None,
        chunk_shape: tuple[int, int, int] = DEFAULT_CHUNK_SHAPE,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.file = h5py.File(self.path, "w", locking=False, rdcc_nbytes=0)
        self._descriptor: int | None = os.open(self.path, os.O_RDWR)
        self.images = dict(images)
        self.chunk_shape = tuple(int(n) for n in chunk_shape)
        root = self.file.attrs
        root["format"] = STORE_FORMAT_NAME
        root["format_version"] = STORE_FORMAT_VERSION
        root["images"] = np.array(list(images), dtype=h5py.string_dtype("utf-8"))
        root["image_types"] = np.array(
            [spec[2] for spec in images.values()], dtype=h5py.string_dtype("utf-8")
        )
        root["compression"] = compression
        root["chunk_shape"] = np.asarray(self.chunk_shape, dtype=np.int64)
        for key, value in attributes.items():
            root[key] = value
        self.file.create_group("volumes")
        self.file.create_group("tables")
        self._options = _volume_options(compression, compression_level)
        self._filters = _filters_of(self.file, self._options, self.images)
        self._reserve(_METADATA_MARGIN, _METADATA_MARGIN)

    # ------------------------------------------------------------------ writing
    def target(self) -> VolumeChunks:
        """How workers hand over volumes for this store (patchcli.handover)."""
        return VolumeChunks(self._filters, self.chunk_shape)  # type: ignore[arg-type]

    def begin_subject(self, subject_id: str, *args: Any, **kwargs: Any) -> None:
        super().begin_subject(subject_id, *args, **kwargs)
        _remove_subject(self.file, subject_id)  # a subject begun and given up before

    def write_tables(self, tables: Mapping[str, object]) -> None:
        """Record the current subject's sampling tables (patchcli.sampling.tables)."""
        group = self.file.require_group(f"tables/{self.current.id}")
        for name, table in tables.items():
            if isinstance(table, LabelRuns):
                runs = group.create_group(f"label/{name}")
                runs.attrs["shape"] = np.asarray(table.shape, dtype=np.int64)
                for key in ("labels", "offsets", "rows", "starts", "stops"):
                    runs.create_dataset(key, data=getattr(table, key), **_TABLE_FILTERS)
            elif isinstance(table, RowTotals):
                dataset = group.create_dataset(
                    f"weights/{name}", data=table.totals, **_TABLE_FILTERS
                )
                dataset.attrs["shape"] = np.asarray(table.shape, dtype=np.int64)
                dataset.attrs["patch_size"] = np.asarray(table.patch_size, dtype=np.int64)
            elif isinstance(table, ChannelTotals):
                channels = group.create_group(f"channels/{name}")
                channels.attrs["shape"] = np.asarray(table.shape, dtype=np.int64)
                channels.attrs["patch_size"] = np.asarray(table.patch_size, dtype=np.int64)
                channels.attrs["present"] = table.present.astype(np.uint8)
                channels.attrs["problem"] = table.problem
                for key in ("totals", "foreground"):
                    channels.create_dataset(key, data=getattr(table, key), **_TABLE_FILTERS)

    def write_block(
        self,
        row: int,
        arrays: Mapping[str, Any],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        """Store the current subject's volumes: ``{image: [(filter mask, chunk bytes)]}``,
        chunk by chunk in C order of the chunk grid (``locations`` is the whole volume).

        Raises
        ------
        DiskFull
            Before anything is written, when their space cannot be reserved.
        """
        subject = self.current
        size = sum(len(data) for chunks in arrays.values() for _, data in chunks)
        self._reserve(size + _METADATA_MARGIN, size)
        for name, chunks in arrays.items():
            channels, dtype, _ = self.images[name]
            shape = (channels, *subject.shape)
            chunk = (channels, *volume_chunk_shape(self.chunk_shape, subject.shape))
            dataset = self.file.create_dataset(
                f"volumes/{subject.id}/{name}",
                shape,
                dtype=dtype,
                chunks=chunk,
                **self._options,
            )
            offsets = chunk_offsets(shape, chunk)
            if len(offsets) != len(chunks):
                raise RuntimeError(f"{len(chunks)} chunks for a volume of {len(offsets)}")
            for offset, (mask, data) in zip(offsets, chunks):
                dataset.id.write_direct_chunk(offset, data, mask)

    def skip_subject(self, skipped: SkippedSubject, patch_start: int, patch_count: int) -> None:
        """Give up a subject: its volumes and tables are removed."""
        begun = bool(self.subjects) and self.current.id == skipped.id
        super().skip_subject(skipped, patch_start, patch_count)
        self.holes = []  # nothing to compact: a subject's volumes are its own datasets
        if begun:
            _remove_subject(self.file, skipped.id)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if not self.file.id.valid:
            return
        for table in ("subjects", "skipped_subjects"):
            if table in self.file:
                del self.file[table]
        records = self.compacted_subjects()
        write_subjects(self.file, records, list(self.images))
        if self.skipped:
            write_skipped(self.file, self.skipped_in_manifest_order())
        self.file.close()
        self._release()

    def abort(self) -> None:
        try:
            if self.file.id.valid:
                self.file.close()
        finally:
            self._release()

    def _reserve(self, length: int, needed: int) -> None:
        end = max(os.fstat(self._descriptor).st_size, self.file.id.get_filesize())
        ensure_space(self._descriptor, self.path, end, length, max(needed, length))

    def _release(self) -> None:
        if self._descriptor is not None:
            release(self._descriptor)
            os.close(self._descriptor)
            self._descriptor = None

    # ----------------------------------------------------------------- resuming
    @classmethod
    def reopen(
        cls,
        path: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        done: Sequence[SubjectRecord],
        compression: str,
        compression_level: int | None = None,
    ) -> VolumeStoreWriter:
        """Continue a ``.partial`` store whose subjects ``done`` are complete; the volumes
        of any other subject are removed (written again).

        Raises
        ------
        PartialUnusable
            When the file cannot be opened, or lacks a volume ``done`` says was written.
        """
        import hdf5plugin  # noqa: F401  (writes the Blosc filters)

        path = Path(path)
        file = open_partial(path)
        self = cls.__new__(cls)
        PatchWriter.__init__(self)
        self.path, self.file, self.images = path, file, dict(images)
        self._descriptor = os.open(path, os.O_RDWR)
        try:
            if "subjects" in file:
                raise PartialUnusable(f"{path}: was closed before it was renamed")
            self.chunk_shape = tuple(int(n) for n in file.attrs["chunk_shape"])
            kept = {record.id for record in done}
            for group in ("volumes", "tables"):
                for subject in list(file[group]):
                    if subject not in kept:
                        del file[f"{group}/{subject}"]
            for record in done:
                for name in images:
                    if f"volumes/{record.id}/{name}" not in file:
                        raise PartialUnusable(
                            f"{path}: lacks the volume {name!r} of subject {record.id!r} its "
                            "progress record says was written"
                        )
            self._options = _volume_options(compression, compression_level)
            self._filters = _filters_of(file, self._options, self.images)
            self._reserve(_METADATA_MARGIN, _METADATA_MARGIN)
        except BaseException:
            self.abort()
            raise
        self.subjects = list(done)
        return self


def _volume_options(compression: str, level: int | None) -> dict[str, Any]:
    """How a store's volumes are made: the compression, and a Fletcher-32 checksum of each
    chunk (Blosc has none: without it a damaged lz4 chunk would read back as other values)."""
    return {**compression_options(compression, level), "fletcher32": True}


#: Sampling tables: small, compressed with gzip (any HDF5 reads them).
_TABLE_FILTERS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def _filters_of(file: h5py.File, options: Mapping[str, Any], images) -> dict:
    """Each image's filter pipeline as HDF5 records it for a chunked dataset of its dtype
    made with ``options`` (what the workers compress with)."""
    filters = {}
    scratch = file.require_group("_scratch")
    for name, (channels, dtype, _) in images.items():
        probe = scratch.create_dataset(
            name, (channels, 2, 2, 2), dtype=dtype, chunks=(channels, 2, 2, 2), **options
        )
        filters[name] = filter_pipeline(probe)
    del file["_scratch"]
    return filters


def _remove_subject(file: h5py.File, subject_id: str) -> None:
    for group in ("volumes", "tables"):
        if subject_id in file[group]:
            del file[f"{group}/{subject_id}"]


def write_merged_store(
    path: Path,
    shards: Sequence[PatchOutput],
    names: Sequence[str],
    mode: str,
    fingerprint: str,
    skipped: Sequence[SkippedSubject],
    config: str = "",
) -> None:
    """Write the merge of store shards at ``path``: each subject's groups linked to its
    shard (``virtual``: HDF5 external links, ``names`` relative to the merge's folder) or
    copied, chunks as they are (``copy``); the subjects table of them all."""
    first = shards[0]
    starts = np.cumsum([0] + [shard.num_patches for shard in shards]).tolist()
    with h5py.File(path, "w", locking=False) as merged:
        with h5py.File(first.path, "r", locking=False) as source:
            for key, value in source.attrs.items():
                if key != "shard_index":
                    merged.attrs[key] = value
        merged.attrs["merge"] = mode
        merged.attrs["shard_count"] = len(shards)
        merged.attrs["config_fingerprint"] = fingerprint
        merged.attrs["config"] = config  # the unsharded run's: no shard
        for group in ("volumes", "tables"):
            merged.create_group(group)
        for shard, name in zip(shards, names, strict=True):
            with h5py.File(shard.path, "r", locking=False) as source:
                for record in shard.subjects:
                    for group in ("volumes", "tables"):
                        key = f"{group}/{record.id}"
                        if key not in source:
                            continue
                        if mode == "virtual":
                            merged[key] = h5py.ExternalLink(name, key)
                        else:
                            source.copy(source[key], merged[group], name=record.id)
        records = [
            replace(record, patch_start=record.patch_start + start)
            for shard, start in zip(shards, starts, strict=False)
            for record in shard.subjects
        ]
        write_subjects(merged, records, first.images)
        if skipped:
            write_skipped(merged, skipped)
        table = merged.create_group("shards")
        string = h5py.string_dtype("utf-8")
        table["file"] = np.array(list(names), dtype=string)
        table["patch_start"] = np.array(starts[:-1], np.int64)
        table["patch_count"] = np.array([s.num_patches for s in shards], np.int64)
        table["fingerprint"] = np.array([s.fingerprint or "" for s in shards], dtype=string)


# ---------------------------------------------------------------------- reading
def is_store(file: h5py.File) -> bool:
    return plain_value(file.attrs.get("format", "")) == STORE_FORMAT_NAME


def read_store(file: h5py.File, path: Path, attributes: dict) -> PatchOutput:
    """The tables of an open volume store, as a PatchOutput whose rows are whole volumes
    (a row's location is ``[0, 0, 0, X, Y, Z]``)."""
    version = int(file.attrs.get("format_version", 0))
    if not 1 <= version <= STORE_FORMAT_VERSION:
        raise DataError(
            f"{path}: volume store format_version {version} cannot be read by this patchcli "
            f"(it reads versions 1 to {STORE_FORMAT_VERSION}); upgrade patchcli"
        )
    subjects = read_subjects(file, path)
    skipped = read_skipped(file, path)
    try:
        images = decode_strings(file.attrs["images"])
        image_types = decode_strings(file.attrs["image_types"])
        channels, dtypes = {}, {}
        for subject in subjects:
            for name in images:
                dataset = file.get(f"volumes/{subject.id}/{name}")
                if not isinstance(dataset, h5py.Dataset):
                    raise DataError(f"{path}: subject {subject.id!r} has no stored volume {name!r}")
                if tuple(dataset.shape[1:]) != tuple(subject.shape):
                    raise DataError(
                        f"{path}: subject {subject.id!r}: volume {name!r} is {dataset.shape}, "
                        f"its subject's shape {subject.shape}"
                    )
                channels.setdefault(name, int(dataset.shape[0]))
                dtypes.setdefault(name, dataset.dtype.newbyteorder("="))
    except KeyError as error:
        raise DataError(f"{path}: incomplete volume store (missing {error.args[0]!s})") from None
    except OSError as error:  # a merge's external link to a shard that is gone
        raise DataError(f"{path}: cannot read its volumes ({error})") from None
    locations = np.array(
        [[0, 0, 0, *subject.shape] for subject in subjects], dtype=np.int64
    ).reshape(-1, 6)
    return PatchOutput(
        path=path,
        kind="volumes",
        version=version,
        images=images,
        image_types=image_types,
        patch_size=(0, 0, 0),
        padding=np.zeros(3, dtype=np.int64),
        locations=locations,
        subject_index=np.arange(len(subjects), dtype=np.int64),
        subjects=subjects,
        channels=channels,
        dtypes=dtypes,
        attributes=attributes,
        parts=[Part(path, 0, len(subjects))],
        skipped=skipped,
    )


def _triplet(value) -> tuple[int, int, int]:
    """A table's ``shape`` or ``patch_size`` attribute as three ints."""
    first, second, third = (int(n) for n in value)
    return first, second, third


def read_label_runs(file: h5py.File, subject_id: str, image: str) -> LabelRuns | None:
    """A subject's label runs of ``image`` (None when the store has none)."""
    group = file.get(f"tables/{subject_id}/label/{image}")
    if group is None:
        return None
    return LabelRuns(
        _triplet(group.attrs["shape"]),
        *(group[key][()] for key in ("labels", "offsets", "rows", "starts", "stops")),
    )


def read_row_totals(file: h5py.File, subject_id: str, image: str) -> RowTotals | None:
    """A subject's row totals of ``image`` (None when the store has none)."""
    dataset = file.get(f"tables/{subject_id}/weights/{image}")
    if dataset is None:
        return None
    return RowTotals(
        _triplet(dataset.attrs["shape"]),
        _triplet(dataset.attrs["patch_size"]),
        dataset[()],
    )


def read_channel_totals(file: h5py.File, subject_id: str, image: str) -> ChannelTotals | None:
    """A subject's channel totals of a multi-channel label ``image`` (None when the store
    has none)."""
    group = file.get(f"tables/{subject_id}/channels/{image}")
    if group is None:
        return None
    return ChannelTotals(
        _triplet(group.attrs["shape"]),
        _triplet(group.attrs["patch_size"]),
        group["totals"][()],
        group["foreground"][()],
        np.asarray(group.attrs["present"]).astype(bool),
        plain_value(group.attrs["problem"]),
    )


__all__ = [
    "DEFAULT_CHUNK_SHAPE",
    "STORE_FORMAT_NAME",
    "STORE_FORMAT_VERSION",
    "VolumeStoreWriter",
    "is_store",
    "read_channel_totals",
    "read_label_runs",
    "read_row_totals",
    "read_store",
    "write_merged_store",
]
