"""How much memory a TorchIO patches queue needs, from image headers only.

TorchIO's ``Queue.get_max_memory`` counts ``max_length`` float32 patches of all
images (:func:`torchio_max_memory`). The realistic peak of a training process
holds more: :func:`estimate_memory` itemises it from the facts a header gives
(channels, spatial shape, dtype) without reading any voxel. The items, in the
order they are reported:

``queue_patches``
    The patches in the queue at their real dtypes: ``min(max_length, patches
    per epoch)`` patches (a longer queue never holds more than one pass).
``batch_being_built``
    ``batch_size`` patches popped from the queue and waiting to be collated.
``subject_being_sampled``
    The whole subject the main process is cropping patches from (with
    ``num_workers=0`` the main process also loads it). The largest subject.
``split_subject_kept_for_next_fill``
    A subject split by a fill stays in memory until the next fill takes its
    remaining patches, and is still referenced while that fill fetches the
    next subject. The largest subject, counted when a split can happen.
``subjects_prefetched_by_workers``
    The subjects loaded ahead by the loader's workers:
    ``num_workers * prefetch_factor`` (at most the number of subjects) of the
    largest subjects. Zero with ``num_workers=0``.
``sampler_working_memory``
    Temporary arrays of the sampler on the largest subject: for the weighted
    sampler four float64 volumes (probability map, its flattened copy, the
    normalised copy and the CDF); for the label sampler the same plus the
    probability map built from the label map, or the float32 copy of the label
    map if that stage is larger; for the grid sampler with padding, the padded
    copy of the subject; nothing for the uniform sampler.

Volumes are counted at the dtype TorchIO holds them in: the file's dtype, with
uint16 read as int32 and uint32 as int64 (torch has no such tensors), or
``cast_dtype`` for intensity images when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .errors import ConfigError
from .sampling.geometry import to_triplet
from .units import format_bytes, format_bytes_torchio

__all__ = [
    "IMAGE_TYPES",
    "MEMORY_ITEMS",
    "SAMPLERS",
    "ImageInfo",
    "MemoryEstimate",
    "estimate_memory",
    "estimate_memory_for_budget",
    "max_length_for_budget",
    "torchio_dtype",
    "torchio_max_memory",
]

IMAGE_TYPES = ("intensity", "label", "sampling_map")
SAMPLERS = ("uniform", "weighted", "label", "grid")
#: Names of :attr:`MemoryEstimate.items`, in order.
MEMORY_ITEMS = (
    "queue_patches",
    "batch_being_built",
    "subject_being_sampled",
    "split_subject_kept_for_next_fill",
    "subjects_prefetched_by_workers",
    "sampler_working_memory",
)

_FLOAT64 = 8
_FLOAT32 = 4


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about one image of a subject.

    Parameters
    ----------
    name : str
        The image's name in the config (``t1``, ``seg``...).
    type : str
        ``"intensity"``, ``"label"`` or ``"sampling_map"``.
    channels : int
        Number of channels (1 for a plain 3D image).
    spatial_shape : tuple of 3 ints
        Voxels along each axis.
    dtype : numpy.dtype
        The voxel type stored in the file.

    Examples
    --------
    >>> ImageInfo("t1", "intensity", 1, (181, 217, 181), "int16").nbytes
    14218274
    """

    name: str
    type: str
    channels: int
    spatial_shape: tuple[int, int, int]
    dtype: np.dtype

    def __post_init__(self) -> None:
        if self.type not in IMAGE_TYPES:
            raise ConfigError(
                f"image {self.name!r}: type must be one of {', '.join(IMAGE_TYPES)}, "
                f"not {self.type!r}"
            )
        if (
            isinstance(self.channels, bool)
            or not isinstance(self.channels, Integral)
            or self.channels < 1
        ):
            raise ConfigError(
                f"image {self.name!r}: channels must be a positive integer, not {self.channels!r}"
            )
        shape = to_triplet(tuple(self.spatial_shape), f"spatial shape of image {self.name!r}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise ConfigError(f"image {self.name!r}: unknown dtype {self.dtype!r}") from None
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "spatial_shape", shape)
        object.__setattr__(self, "dtype", dtype)

    @classmethod
    def from_header(cls, name: str, type: str, header: Any) -> ImageInfo:
        """Build from an object with ``channels``, ``spatial_shape`` and ``dtype`` (a header)."""
        return cls(name, type, header.channels, tuple(header.spatial_shape), header.dtype)

    @property
    def num_voxels(self) -> int:
        """Spatial voxels (one channel)."""
        return int(np.prod(self.spatial_shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Size of the voxel data in the file's dtype."""
        return self.channels * self.num_voxels * self.dtype.itemsize


def torchio_dtype(dtype: DTypeLike) -> np.dtype:
    """The dtype TorchIO holds an image of file dtype ``dtype`` in.

    Torch has no uint16 or uint32 tensors, so TorchIO reads them as int32 and
    int64; other dtypes are kept.

    Examples
    --------
    >>> torchio_dtype("uint16")
    dtype('int32')
    >>> torchio_dtype("int16")
    dtype('int16')
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint16:
        return np.dtype(np.int32)
    if dtype == np.uint32:
        return np.dtype(np.int64)
    return dtype


def torchio_max_memory(
    images: Sequence[ImageInfo], patch_size: int | Sequence[int], max_length: int
) -> int:
    """TorchIO's ``Queue.get_max_memory`` for a subject with these images.

    ``4 * prod(patch_size) * (channels of all images) * max_length``: float32
    patches of every image (intensity, label and sampling maps alike), nothing
    else.

    Examples
    --------
    >>> images = [ImageInfo(name, "intensity", 1, (200, 200, 200), "float32")
    ...           for name in ("t1", "t2", "flair")]
    >>> torchio_max_memory(images, 96, 300)
    3185049600
    """
    patch = to_triplet(patch_size, "patch_size")
    channels = sum(image.channels for image in images)
    return 4 * int(np.prod(patch, dtype=np.int64)) * channels * int(max_length)


@dataclass(frozen=True)
class MemoryEstimate:
    """The realistic peak memory of a queue, itemised, next to TorchIO's figure.

    Attributes
    ----------
    items : dict of str to int
        Bytes per item, named as in :data:`MEMORY_ITEMS`.
    total_bytes : int
        Sum of the items: the realistic peak.
    torchio_bytes : int
        TorchIO's ``get_max_memory`` for the first subject.
    torchio_pretty : str
        The same, as TorchIO's ``get_max_memory_pretty`` prints it.
    max_length : int
        The queue length the estimate is for.
    budget_bytes : int or None
        The budget asked for, when ``max_length`` is the answer to one.
    """

    items: dict[str, int]
    total_bytes: int
    torchio_bytes: int
    torchio_pretty: str
    max_length: int
    budget_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-serialisable types.

        Keys ``torchio_bytes``, ``torchio_pretty``, ``total_bytes``,
        ``total_pretty``, ``items`` and ``max_length``, plus ``budget_bytes``
        when the estimate answers a budget.
        """
        result: dict[str, Any] = {
            "torchio_bytes": int(self.torchio_bytes),
            "torchio_pretty": self.torchio_pretty,
            "total_bytes": int(self.total_bytes),
            "total_pretty": format_bytes(self.total_bytes),
            "items": {name: int(value) for name, value in self.items.items()},
            "max_length": int(self.max_length),
        }
        if self.budget_bytes is not None:
            result["budget_bytes"] = int(self.budget_bytes)
        return result


def _held_dtype(image: ImageInfo, cast_dtype: np.dtype | None) -> np.dtype:
    if cast_dtype is not None and image.type == "intensity":
        return cast_dtype
    return torchio_dtype(image.dtype)


def _subject_bytes(
    images: Sequence[ImageInfo], cast_dtype: np.dtype | None, padding=(0, 0, 0)
) -> int:
    total = 0
    for image in images:
        voxels = int(np.prod(np.add(image.spatial_shape, np.multiply(2, padding)), dtype=np.int64))
        total += image.channels * voxels * _held_dtype(image, cast_dtype).itemsize
    return total


def _patch_bytes(
    images: Sequence[ImageInfo], patch_voxels: int, cast_dtype: np.dtype | None
) -> int:
    return sum(
        image.channels * patch_voxels * _held_dtype(image, cast_dtype).itemsize for image in images
    )


def _label_image(images: Sequence[ImageInfo], label_name: str | None, subject: int) -> ImageInfo:
    for image in images:
        if (label_name is None and image.type == "label") or image.name == label_name:
            return image
    if label_name is None:
        raise ConfigError(f"subject {subject}: the label sampler needs an image of type label")
    raise ConfigError(f"subject {subject}: no image named {label_name!r} for the label sampler")


def _sampler_bytes(
    images: Sequence[ImageInfo],
    subject: int,
    sampler: str,
    cast_dtype: np.dtype | None,
    label_name: str | None,
    label_probabilities: bool,
    grid_padding: tuple[int, int, int],
) -> int:
    if sampler == "uniform":
        return 0
    if sampler == "grid":
        return _subject_bytes(images, cast_dtype, grid_padding) if any(grid_padding) else 0
    voxels = images[0].num_voxels
    # Probability map as float64, flattened copy, normalised copy and CDF coexist
    # while TorchIO builds the CDF.
    cdf_stage = 4 * _FLOAT64 * voxels
    if sampler == "weighted":
        return cdf_stage
    label = _label_image(images, label_name, subject)
    label_voxels = label.channels * voxels
    # TorchIO converts the label map to float32 first (no copy if it already is).
    float_copy = 0 if _held_dtype(label, cast_dtype) == np.float32 else _FLOAT32 * label_voxels
    if label_probabilities:
        # float32 copy, zero-filled probability map and one boolean mask; then a
        # one-channel float32 map stays alive during the CDF stage.
        conversion_stage = float_copy + _FLOAT32 * label_voxels + label_voxels
        map_bytes = _FLOAT32 * voxels
    else:
        # float32 copy and the boolean "label > 0" map, which stays alive.
        conversion_stage = float_copy + label_voxels
        map_bytes = label_voxels
    return max(conversion_stage, map_bytes + cdf_stage)


def _counts(samples_per_volume: int | Sequence[int], num_subjects: int) -> np.ndarray:
    if isinstance(samples_per_volume, Integral) and not isinstance(samples_per_volume, bool):
        values = [int(samples_per_volume)] * num_subjects
    else:
        values = list(samples_per_volume)
        if len(values) != num_subjects:
            raise ConfigError(
                f"samples_per_volume has {len(values)} values for {num_subjects} subjects"
            )
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ConfigError(
                f"subject {index}: num_samples must be a non-negative integer, not {value!r}"
            )
    counts = np.array(values, dtype=np.int64)
    if counts.sum() == 0:
        raise ConfigError("every subject has num_samples 0: the queue would never yield a patch")
    return counts


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer of at least {minimum}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class _MemoryModel:
    """The max_length-independent parts of the estimate."""

    patch_bytes: int
    patches_per_epoch: int
    equal_count: int | None  # the common count when all non-zero counts are equal
    batch_bytes: int
    largest_subject_bytes: int
    prefetched_bytes: int
    sampler_bytes: int
    torchio_bytes_per_length: int

    def split_possible(self, max_length: int) -> bool:
        """Whether some fill can leave a subject split (conservative).

        No split when one fill holds a whole pass, or when every subject gives
        the same count and max_length is a multiple of it; otherwise some
        subject order splits one.
        """
        if max_length >= self.patches_per_epoch:
            return False
        return not (self.equal_count is not None and max_length % self.equal_count == 0)

    def items(self, max_length: int) -> dict[str, int]:
        held = min(max_length, self.patches_per_epoch)
        split = self.largest_subject_bytes if self.split_possible(max_length) else 0
        values = (
            held * self.patch_bytes,
            self.batch_bytes,
            self.largest_subject_bytes,
            split,
            self.prefetched_bytes,
            self.sampler_bytes,
        )
        return {name: int(value) for name, value in zip(MEMORY_ITEMS, values, strict=True)}

    def total(self, max_length: int) -> int:
        return sum(self.items(max_length).values())

    def fixed(self) -> int:
        """Every item except the queue's patches and the split subject."""
        return (
            self.batch_bytes
            + self.largest_subject_bytes
            + self.prefetched_bytes
            + self.sampler_bytes
        )


def _build_model(
    subjects: Sequence[Sequence[ImageInfo]],
    *,
    patch_size: int | Sequence[int],
    samples_per_volume: int | Sequence[int],
    num_workers: int,
    batch_size: int,
    sampler: str,
    prefetch_factor: int = 2,
    cast_dtype: DTypeLike | None = None,
    label_name: str | None = None,
    label_probabilities: bool = False,
    grid_padding: int | Sequence[int] = 0,
) -> _MemoryModel:
    if len(subjects) == 0:
        raise ConfigError("the memory estimate needs at least one subject")
    for index, images in enumerate(subjects):
        if len(images) == 0:
            raise ConfigError(f"subject {index} has no images")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    patch = to_triplet(patch_size, "patch_size")
    padding = to_triplet(grid_padding, "grid_padding", minimum=0)
    num_workers = _check_count(num_workers, "num_workers", 0)
    batch_size = _check_count(batch_size, "batch_size", 1)
    prefetch_factor = _check_count(prefetch_factor, "prefetch_factor", 1)
    cast = None if cast_dtype is None else np.dtype(cast_dtype)
    counts = _counts(samples_per_volume, len(subjects))

    patch_voxels = int(np.prod(patch, dtype=np.int64))
    patch_bytes = max(_patch_bytes(images, patch_voxels, cast) for images in subjects)
    volumes = sorted((_subject_bytes(images, cast) for images in subjects), reverse=True)
    prefetched = sum(volumes[: min(num_workers * prefetch_factor, len(volumes))])
    sampler_bytes = max(
        _sampler_bytes(images, index, sampler, cast, label_name, label_probabilities, padding)
        for index, images in enumerate(subjects)
    )
    positive = np.unique(counts[counts > 0])
    return _MemoryModel(
        patch_bytes=patch_bytes,
        patches_per_epoch=int(counts.sum()),
        equal_count=int(positive[0]) if positive.size == 1 else None,
        batch_bytes=batch_size * patch_bytes,
        largest_subject_bytes=volumes[0],
        prefetched_bytes=prefetched,
        sampler_bytes=sampler_bytes,
        torchio_bytes_per_length=torchio_max_memory(subjects[0], patch, 1),
    )


def _estimate(model: _MemoryModel, max_length: int, budget_bytes: int | None) -> MemoryEstimate:
    items = model.items(max_length)
    torchio_bytes = model.torchio_bytes_per_length * max_length
    return MemoryEstimate(
        items=items,
        total_bytes=sum(items.values()),
        torchio_bytes=torchio_bytes,
        torchio_pretty=format_bytes_torchio(torchio_bytes),
        max_length=max_length,
        budget_bytes=budget_bytes,
    )


def estimate_memory(
    subjects: Sequence[Sequence[ImageInfo]],
    *,
    patch_size: int | Sequence[int],
    max_length: int,
    samples_per_volume: int | Sequence[int],
    num_workers: int,
    batch_size: int,
    sampler: str,
    prefetch_factor: int = 2,
    cast_dtype: DTypeLike | None = None,
    label_name: str | None = None,
    label_probabilities: bool = False,
    grid_padding: int | Sequence[int] = 0,
) -> MemoryEstimate:
    """Itemise the peak memory of training from a TorchIO queue.

    Parameters
    ----------
    subjects : sequence of sequences of ImageInfo
        The images of each subject.
    patch_size : int or 3 ints
    max_length : int
        The queue's ``max_length``.
    samples_per_volume : int or sequence of int
        Patches per subject per epoch: one number, or one per subject (their
        ``num_samples``).
    num_workers : int
        Workers loading subjects (the queue's ``num_workers``).
    batch_size : int
    sampler : {"uniform", "weighted", "label", "grid"}
    prefetch_factor : int
        Subjects each worker loads ahead (torch's DataLoader default, 2).
    cast_dtype : numpy dtype, optional
        The dtype intensity images are converted to (by a transform or the
        output config); None keeps each file's dtype.
    label_name : str, optional
        The label sampler's label map; by default the first image of type label.
    label_probabilities : bool
        Whether the label sampler is given ``label_probabilities``.
    grid_padding : int or 3 ints
        Voxels the grid sampler pads on each side of each axis (0: none).

    Returns
    -------
    MemoryEstimate

    Raises
    ------
    ConfigError
        For an unknown sampler, bad counts or sizes, or a label sampler without
        a label map.

    Examples
    --------
    >>> subject = [ImageInfo("t1", "intensity", 1, (100, 100, 100), "float32"),
    ...            ImageInfo("seg", "label", 1, (100, 100, 100), "uint8")]
    >>> estimate = estimate_memory([subject] * 4, patch_size=10, max_length=8,
    ...                            samples_per_volume=4, num_workers=0,
    ...                            batch_size=2, sampler="uniform")
    >>> estimate.items["queue_patches"]  # 8 patches of 1000 voxels, 4 + 1 bytes each
    40000
    >>> estimate.torchio_bytes, estimate.torchio_pretty
    (64000, '62.5 KiB')
    """
    model = _build_model(
        subjects,
        patch_size=patch_size,
        samples_per_volume=samples_per_volume,
        num_workers=num_workers,
        batch_size=batch_size,
        sampler=sampler,
        prefetch_factor=prefetch_factor,
        cast_dtype=cast_dtype,
        label_name=label_name,
        label_probabilities=label_probabilities,
        grid_padding=grid_padding,
    )
    return _estimate(model, _check_count(max_length, "max_length", 1), None)


def _largest_fitting(model: _MemoryModel, budget_bytes: int) -> int:
    """Largest max_length whose total fits, or 0 when none does."""
    per_epoch = model.patches_per_epoch
    if model.total(per_epoch) <= budget_bytes:
        # A queue longer than one pass never holds more patches.
        return per_epoch
    best = 0
    # Lengths below one pass where a split is possible: affine in max_length.
    room = budget_bytes - model.fixed() - model.largest_subject_bytes
    if room >= model.patch_bytes:
        best = min(room // model.patch_bytes, per_epoch - 1)
    # Multiples of a common count never split, so they may fit where others do not.
    if model.equal_count is not None:
        room = budget_bytes - model.fixed()
        if room >= model.patch_bytes:
            length = min(room // model.patch_bytes, per_epoch - 1)
            length -= length % model.equal_count
            best = max(best, length)
    # The two families cover every length below one pass; guard the arithmetic.
    while best > 0 and model.total(best) > budget_bytes:  # pragma: no cover
        best -= 1
    return int(best)


def max_length_for_budget(
    budget_bytes: int,
    subjects: Sequence[Sequence[ImageInfo]],
    *,
    patch_size: int | Sequence[int],
    samples_per_volume: int | Sequence[int],
    num_workers: int,
    batch_size: int,
    sampler: str,
    prefetch_factor: int = 2,
    cast_dtype: DTypeLike | None = None,
    label_name: str | None = None,
    label_probabilities: bool = False,
    grid_padding: int | Sequence[int] = 0,
) -> int:
    """The largest ``max_length`` whose realistic peak fits in ``budget_bytes``.

    Same parameters as :func:`estimate_memory`, without ``max_length``. When
    even a whole pass of patches fits, the answer is the number of patches per
    epoch: a longer queue holds no more.

    Raises
    ------
    ConfigError
        When no ``max_length`` fits: the whole volumes, batch and sampler arrays
        alone exceed the budget.

    Examples
    --------
    >>> subject = [ImageInfo("t1", "intensity", 1, (100, 100, 100), "float32")]
    >>> max_length_for_budget(30_000_000, [subject] * 100, patch_size=10,
    ...                       samples_per_volume=100, num_workers=2, batch_size=4,
    ...                       sampler="uniform")  # a multiple of 100 never splits a subject
    2400
    """
    budget = _check_count(budget_bytes, "budget", 0)
    model = _build_model(
        subjects,
        patch_size=patch_size,
        samples_per_volume=samples_per_volume,
        num_workers=num_workers,
        batch_size=batch_size,
        sampler=sampler,
        prefetch_factor=prefetch_factor,
        cast_dtype=cast_dtype,
        label_name=label_name,
        label_probabilities=label_probabilities,
        grid_padding=grid_padding,
    )
    return _length_for_budget(model, budget)


def _length_for_budget(model: _MemoryModel, budget: int) -> int:
    """The largest max_length that fits ``budget``; ConfigError when none does."""
    length = _largest_fitting(model, budget)
    if length == 0:
        # The total grows with max_length within each family of lengths (those
        # that can split a subject, multiples of a common count, whole passes),
        # so the smallest peak is at the start of one of them.
        candidates = {1, model.patches_per_epoch}
        if model.equal_count is not None and model.equal_count < model.patches_per_epoch:
            candidates.add(model.equal_count)
        smallest = min(candidates, key=lambda candidate: (model.total(candidate), candidate))
        raise ConfigError(
            f"budget {format_bytes(budget)} is too small: the smallest peak is "
            f"{format_bytes(model.total(smallest))}, with max_length {smallest} "
            "(whole volumes, batch and sampler arrays included)"
        )
    return length


def estimate_memory_for_budget(
    budget_bytes: int,
    subjects: Sequence[Sequence[ImageInfo]],
    **options: Any,
) -> MemoryEstimate:
    """:func:`max_length_for_budget`, then :func:`estimate_memory` at that length.

    The returned estimate has ``budget_bytes`` set, so its JSON holds the budget
    and the answer (``max_length``).
    """
    options.pop("max_length", None)
    budget = _check_count(budget_bytes, "budget", 0)
    model = _build_model(subjects, **options)  # once, for the answer and its estimate
    return _estimate(model, _length_for_budget(model, budget), budget)
