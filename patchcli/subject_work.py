"""The subject's work: load -> preprocess -> locations -> crops, what a worker runs.

A worker (patchcli.pipeline), or the main process without workers, turns one
:class:`SubjectTask` into messages for the writer with
:func:`subject_messages`: it loads the subject's volumes (patchcli.subjects),
runs the config's ``preprocess`` on them (patchcli.transforms), checks that
they share one grid, pads them for a padded grid, casts each once to its output dtype in C order
(:func:`cast_volume`), draws its locations block by block
(patchcli.sampling.stream, seeded by the subject's manifest row), and crops
each block of patches into reused buffers, handing it over in the writer's
form (patchcli.handover): written in place, compressed into chunks, or as
arrays.

Everything a worker needs is in :class:`SamplingSettings` and the task (small
and picklable); no volume crosses between processes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, PatchcliWarning
from .handover import (
    Block,
    Chunks,
    InPlace,
    SubjectStart,
    VolumeChunks,
    compress_chunks,
    compress_volume,
)
from .io.space import write_error
from .sampling import copy_rng, pad_volume, subject_rng
from .sampling.geometry import Triplet, check_patch_fits
from .sampling.stream import LocationStream
from .sampling.tables import ChannelTotals, LabelRuns, RowTotals
from .subjects import SubjectSpec, check_same_geometry, load_subject
from .transforms import Image, Subject, Transform, apply_transforms
from .transforms.augment import Augmentation, Augmenter


@dataclass(frozen=True)
class SamplingSettings:
    """What a worker needs to turn a subject into locations (small and picklable)."""

    sampler: str
    patch_size: Triplet
    seed: int
    reader: str
    tolerance: float
    patch_overlap: Triplet = (0, 0, 0)
    padding_mode: str | float | None = None
    padding: Triplet = (0, 0, 0)
    probability_map: str | None = None
    label_name: str | None = None
    label_probabilities: Mapping[int, float] | None = None
    #: Image name -> dtype written (and used for cropping and sampling).
    output_dtypes: Mapping[str, str] = field(default_factory=dict)
    #: Image name -> type (``intensity``, ``label``, ``sampling_map``), for the transforms.
    image_types: Mapping[str, str] = field(default_factory=dict)
    #: Preprocessing, run after loading and before sampling (patchcli.transforms).
    transforms: tuple[Transform, ...] = ()
    #: Augmentation, run on each copy of a preprocessed subject (None without it).
    augmentation: Augmentation | None = None


@dataclass(frozen=True)
class SubjectTask:
    """One subject to crop: ``count`` patches from output row ``row``."""

    spec: SubjectSpec
    count: int
    row: int


@dataclass
class PreparedSubject:
    """A loaded subject (padded for a padded grid) and the stream of its locations."""

    spec: SubjectSpec
    volumes: dict[str, np.ndarray]
    affine: np.ndarray
    spatial_shape: tuple[int, int, int]
    locations: LocationStream
    count: int
    warnings: list[str] = field(default_factory=list)
    #: Image name -> ``(shape, affine)`` before preprocessing (None without it).
    source_grids: dict | None = None
    #: The augmented copy these volumes are (0 without augmentation).
    copy: int = 0


def cast_volume(
    array: np.ndarray, dtype: np.dtype, path: Path, out: np.ndarray | None = None
) -> np.ndarray:
    """``array`` as a C-ordered array of ``dtype``, refusing values that would not fit.

    numpy's casts wrap integers around and truncate floats silently; here
    floats are rounded to the nearest integer and out-of-range values are an
    error naming the file. ``out``, a C-ordered array of the result's shape
    and dtype, is filled and returned instead of a new array.
    """
    dtype = np.dtype(dtype)
    if array.dtype != dtype and dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f":
            if not np.isfinite(array).all():
                raise DataError(f"{path}: NaN or infinite values cannot be cast to {dtype}")
            array = np.rint(array)
        low, high = array.min(), array.max()
        limits = np.iinfo(dtype)
        if low < limits.min or high > limits.max:
            raise DataError(
                f"{path}: values from {low} to {high} do not fit output dtype {dtype} "
                f"({limits.min} to {limits.max})"
            )
    elif array.dtype != dtype and dtype.kind == "f" and array.dtype.kind == "f" and array.size:
        largest = np.abs(array[np.isfinite(array)]).max(initial=0)
        if largest > np.finfo(dtype).max:
            raise DataError(f"{path}: values up to {largest} overflow output dtype {dtype}")
    if array.flags.c_contiguous and array.dtype == dtype:
        return array
    if out is None:
        out = np.empty(array.shape, dtype)
    if array.ndim != 4 or array.flags.c_contiguous:
        np.copyto(out, array, casting="unsafe")
        return out
    # Tile by tile (64 x 4 x 64 voxels): from a Fortran-ordered volume, each tile is a
    # transpose that stays in cache, twice as fast as one whole-volume copy.
    _, size_x, size_y, size_z = array.shape
    for j in range(0, size_y, 4):
        for i in range(0, size_x, 64):
            for k in range(0, size_z, 64):
                tile = np.s_[:, i : i + 64, j : j + 4, k : k + 64]
                np.copyto(out[tile], array[tile], casting="unsafe")
    return out


def subject_locations(
    settings: SamplingSettings, volumes: Mapping[str, np.ndarray], rng: np.random.Generator
) -> LocationStream:
    """The stream of one subject's locations (drawn block by block, as they are cropped)."""
    return LocationStream(
        settings.sampler,
        volumes,
        settings.patch_size,
        rng,
        probability_map=settings.probability_map,
        label_name=settings.label_name,
        label_probabilities=settings.label_probabilities,
        patch_overlap=settings.patch_overlap,
    )


def _load_and_preprocess(
    settings: SamplingSettings, spec: SubjectSpec
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, int, int], dict | None]:
    """A subject's volumes after ``settings.transforms``, their shared affine and shape, and
    each image's grid before them (None without preprocessing)."""
    preprocess = bool(settings.transforms)
    loaded = load_subject(spec, settings.reader, settings.tolerance, same_grid=not preprocess)
    if not preprocess:
        return loaded.volumes, loaded.affine, loaded.spatial_shape, None
    subject = Subject(
        spec.id,
        {
            name: Image(
                name, settings.image_types[name], array, loaded.affines[name], spec.paths[name]
            )
            for name, array in loaded.volumes.items()
        },
        settings.tolerance,
    )
    del loaded  # the subject holds the volumes now: each transform may free the one before
    source_grids = {image.name: (image.spatial_shape, image.affine) for image in subject}
    apply_transforms(settings.transforms, subject)
    check_same_geometry(
        spec.id,
        {image.name: (image.spatial_shape, image.affine) for image in subject},
        settings.tolerance,
        spec.paths,
        after="after preprocessing",
    )
    first = next(iter(subject))
    if settings.sampler != "grid":
        try:
            check_patch_fits(settings.patch_size, first.spatial_shape)
        except DataError as error:
            raise DataError(
                f"{first.path}: subject {spec.id!r}: after preprocessing, {error}"
            ) from None
    volumes = {image.name: image.data for image in subject}
    return volumes, first.affine, first.spatial_shape, source_grids


@contextmanager
def _collected_warnings(subject_id: str) -> Iterator[list[str]]:
    """patchcli's warnings in the block, as messages naming the subject (handed over to
    the writer, which may be in another process); other libraries' go on as they came."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatchcliWarning)
        yield messages
    for warning in caught:
        if not issubclass(warning.category, PatchcliWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    prefix = f"subject {subject_id!r}: "
    messages.extend(
        # (Transforms name the subject already.)
        str(warning.message)
        if str(warning.message).startswith(prefix)
        else f"{prefix}{warning.message}"
        for warning in caught
        if issubclass(warning.category, PatchcliWarning)
    )


#: This process's augmenter: TorchIO's transforms, made once per process.
_augmenter: list = []


def _augmenter_of(settings: SamplingSettings) -> Augmenter:
    if not _augmenter or _augmenter[0] != settings.augmentation:
        augmenter = Augmenter(settings.augmentation, settings.image_types)
        _augmenter[:] = [settings.augmentation, augmenter]
    return _augmenter[1]


def _sample(
    settings: SamplingSettings,
    spec: SubjectSpec,
    volumes: dict[str, np.ndarray],
    count: int,
    rng: np.random.Generator,
    buffers,
) -> tuple[dict[str, np.ndarray], LocationStream]:
    """Pad the volumes for a padded grid, cast them to their output dtypes, and prepare the
    stream of ``count`` locations."""
    if settings.padding_mode is not None:
        volumes = {
            name: pad_volume(array, settings.padding, settings.padding_mode)
            for name, array in volumes.items()
        }
    # One C-ordered copy in the output dtype: NIfTI volumes come in Fortran order,
    # and cropping them into C-ordered patches is a strided transpose per patch;
    # from a C-ordered volume every crop is a run of contiguous rows (8x faster
    # for 150 patches of 64^3), and needs no cast.
    cast = {}
    for name, array in volumes.items():
        dtype = np.dtype(settings.output_dtypes.get(name, array.dtype))
        out = None if buffers is None else buffers.get(f"volume {name}", array.shape, dtype)
        cast[name] = cast_volume(array, dtype, spec.paths[name], out)
    try:
        locations = subject_locations(settings, cast, rng)
    except DataError as error:
        image = settings.probability_map or settings.label_name
        path = spec.paths[image] if image else next(iter(spec.paths.values()))
        raise DataError(f"{path}: subject {spec.id!r}: {error}") from None
    if locations.grid is not None and len(locations.grid) != count:
        raise DataError(f"subject {spec.id!r}: expected {count} patches, got {len(locations.grid)}")
    return cast, locations


def prepared_copies(
    settings: SamplingSettings, spec: SubjectSpec, count: int, buffers=None, only=None
) -> Iterator[PreparedSubject]:
    """Load a subject and preprocess it; then the subject ready to crop, or with
    ``augment`` each augmented copy in turn (``count`` patches in all, shared equally).

    ``only``, a copy's number, gives that copy alone. ``buffers``, a :class:`Buffers`,
    lends the arrays the volumes are copied into, reused from one subject (and copy) to
    the next: a copy's volumes are valid until the next one is asked for.
    """
    with _collected_warnings(spec.id) as messages:
        volumes, affine, spatial_shape, source_grids = _load_and_preprocess(settings, spec)
        if settings.augmentation is None:
            rng = subject_rng(settings.seed, spec.index)
            volumes, locations = _sample(settings, spec, volumes, count, rng, buffers)
    if settings.augmentation is None:
        yield PreparedSubject(
            spec, volumes, affine, spatial_shape, locations, count, messages, source_grids
        )
        return
    augmenter = _augmenter_of(settings)
    subject = Subject(
        spec.id,
        {
            name: Image(name, settings.image_types[name], array, affine, spec.paths[name])
            for name, array in volumes.items()
        },
        settings.tolerance,
    )
    del volumes
    copies = settings.augmentation.copies
    per_copy = count // copies
    for copy in range(copies) if only is None else [only]:
        with _collected_warnings(spec.id) as copy_messages:
            augmented = augmenter.augment(subject, settings.seed, spec.index, copy)
            rng = copy_rng(settings.seed, spec.index, copy)
            volumes = {image.name: image.data for image in augmented}
            cast, locations = _sample(settings, spec, volumes, per_copy, rng, buffers)
            del augmented, volumes
        yield PreparedSubject(
            spec,
            cast,
            affine,
            spatial_shape,
            locations,
            per_copy,
            messages + [f"copy {copy}: {message}" for message in copy_messages],
            source_grids,
            copy,
        )
        messages = []


def prepare_subject(
    settings: SamplingSettings, spec: SubjectSpec, count: int, buffers=None, copy: int = 0
) -> PreparedSubject:
    """Load a subject, preprocess it (and with ``augment``, make its copy ``copy``), pad it
    for a padded grid, and prepare the stream of its locations.

    A top-level function so that worker processes can run it. ``buffers``, a
    :class:`Buffers`, lends the arrays the volumes are
    copied into, reused from one subject to the next.
    """
    only = None if settings.augmentation is None else copy
    return next(prepared_copies(settings, spec, count, buffers, only))


def crop_block(
    volumes: Mapping[str, np.ndarray], corners: list, buffers: Mapping[str, np.ndarray]
) -> None:
    """Copy each patch ``(i0, j0, k0, i1, j1, k1)`` of ``corners`` into the buffers' rows."""
    for name, buffer in buffers.items():
        volume = volumes[name]
        # One copy per patch, straight from the C-ordered volume into the block.
        for slot, (i0, j0, k0, i1, j1, k1) in enumerate(corners):
            buffer[slot] = volume[:, i0:i1, j0:j1, k0:k1]


class Buffers:
    """Arrays kept from one subject to the next in a process, by name.

    Fresh arrays of tens of MiB cost page faults on every subject (the
    allocator gives them back to the system when freed); reusing them avoids
    that. An array is replaced when the shape or dtype asked for changes.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array

    def clear(self) -> None:
        self._arrays.clear()


#: This process's buffers (each worker process has its own).
process_buffers = Buffers()


def subject_messages(
    settings: SamplingSettings, task: SubjectTask, target, block_patches: int
) -> Iterator[SubjectStart | Block]:
    """Load, sample and crop one subject: a :class:`SubjectStart`, then its blocks (with
    ``augment``, those of each copy in turn: copy ``c`` has rows ``[c * n, (c + 1) * n)``
    of the subject's ``copies * n``); for a volume store, its whole volumes."""
    if settings.sampler == "volumes":
        yield from volume_messages(settings, task, target)
        return
    copies = prepared_copies(settings, task.spec, task.count, process_buffers)
    prepared = next(copies)
    yield SubjectStart(
        prepared.affine,
        prepared.spatial_shape,
        task.count,
        prepared.warnings,
        prepared.source_grids,
    )
    if not task.count:
        return
    descriptor = os.open(target.path, os.O_WRONLY) if isinstance(target, InPlace) else None
    try:
        first_row = 0
        while True:
            row = task.row + first_row
            yield from _copy_blocks(
                settings, prepared, row, first_row, target, descriptor, block_patches
            )
            first_row += prepared.count
            prepared = next(copies, None)
            if prepared is None:
                break
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _copy_blocks(
    settings: SamplingSettings,
    prepared: PreparedSubject,
    row: int,
    first_row: int,
    target,
    descriptor: int | None,
    block_patches: int,
) -> Iterator[Block]:
    """The blocks of one prepared subject (or copy), whose first patch is output row ``row``
    and row ``first_row`` of its subject."""
    count = prepared.count
    block_patches = max(1, min(block_patches, count))
    volumes = prepared.volumes
    buffers = {
        name: process_buffers.get(
            f"block {name}", (block_patches, volume.shape[0], *settings.patch_size), volume.dtype
        )
        for name, volume in volumes.items()
    }
    # The first block of a copy after the first carries its warnings.
    warnings_to_hand = prepared.warnings if first_row else []
    for first in range(0, count, block_patches):
        locations = prepared.locations.take(min(block_patches, count - first))
        corners = locations.tolist()
        taken = len(corners)
        crop_block(volumes, corners, buffers)
        if descriptor is not None:
            for name, buffer in buffers.items():
                offset = target.offsets[name] + (row + first) * target.row_bytes[name]
                _write_all(descriptor, memoryview(buffer[:taken]).cast("B"), offset, target)
            payload = None
        elif isinstance(target, Chunks):
            payload = {
                name: compress_chunks(buffer[:taken], target.filters[name])
                for name, buffer in buffers.items()
            }
        else:
            payload = {name: buffer[:taken] for name, buffer in buffers.items()}
        yield Block(first_row + first, taken, payload, locations, tuple(warnings_to_hand))
        warnings_to_hand = []


def volume_messages(
    settings: SamplingSettings, task: SubjectTask, target: VolumeChunks
) -> Iterator[SubjectStart | Block]:
    """One subject of a volume store: its :class:`SubjectStart` (with its sampling tables),
    then one block holding each image's whole volume, compressed chunk by chunk."""
    spec = task.spec
    with _collected_warnings(spec.id) as messages:
        volumes, affine, spatial_shape, source_grids = _load_and_preprocess(settings, spec)
        volumes = {
            name: cast_volume(
                array, np.dtype(settings.output_dtypes.get(name, array.dtype)), spec.paths[name]
            )
            for name, array in volumes.items()
        }
        tables = sampling_tables(settings, volumes, spec)
    yield SubjectStart(affine, spatial_shape, task.count, messages, source_grids, tables)
    if isinstance(target, VolumeChunks):
        payload = {
            name: compress_volume(volume, target.chunk_shape, target.filters[name])
            for name, volume in volumes.items()
        }
    else:  # the arrays (a dry run's measure of the sizes)
        payload = {name: volume[None] for name, volume in volumes.items()}
    yield Block(0, 1, payload, np.array([[0, 0, 0, *spatial_shape]], dtype=np.int64))


def sampling_tables(
    settings: SamplingSettings, volumes: Mapping[str, np.ndarray], spec: SubjectSpec
) -> dict[str, object]:
    """What a volume store keeps to draw patches at training time
    (patchcli.sampling.tables): the label runs of each single-channel label image, and
    with a ``patch_size``, the channel totals of each multi-channel label image and the
    row totals of each sampling map."""
    tables: dict[str, object] = {}
    for name, volume in volumes.items():
        kind = settings.image_types.get(name)
        try:
            if kind == "label" and volume.shape[0] == 1:
                tables[name] = LabelRuns.of(volume)
            elif kind == "label" and any(settings.patch_size):
                tables[name] = ChannelTotals.of(volume, settings.patch_size)
            elif kind == "sampling_map" and any(settings.patch_size):
                tables[name] = RowTotals.of(volume, settings.patch_size)
        except DataError as error:
            raise DataError(f"{spec.paths[name]}: subject {spec.id!r}: {error}") from None
    return tables


def _write_all(descriptor: int, data: memoryview, offset: int, target: InPlace) -> None:
    written = 0
    try:
        while written < len(data):
            written += os.pwrite(descriptor, data[written:], offset + written)
    except OSError as error:
        raise write_error(target.path, error) from None


__all__ = [
    "Buffers",
    "PreparedSubject",
    "SamplingSettings",
    "SubjectTask",
    "cast_volume",
    "crop_block",
    "prepare_subject",
    "prepared_copies",
    "process_buffers",
    "subject_locations",
    "subject_messages",
    "volume_messages",
]
