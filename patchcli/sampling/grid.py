"""Grid sampling: patches that tile the whole volume, for dense inference.

Locations are exactly TorchIO's GridSampler's. With a ``padding_mode`` the
volume is first padded by ``patch_overlap // 2`` on each side of each axis and
locations refer to the padded volume. Unlike TorchIO, the padding is applied
once (TorchIO pads twice when its sampler is iterated with padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np

from ..errors import ConfigError, DataError
from .geometry import Triplet, starts_to_locations

#: Padding modes: numpy's, less "empty" (its values are undefined, so results
#: would not be reproducible), plus TorchIO's whole-image statistics.
NUMPY_PADDING_MODES = ("constant", "edge", "linear_ramp", "reflect", "symmetric", "wrap")
STATISTIC_PADDING_MODES = ("maximum", "mean", "median", "minimum")
PADDING_MODES = NUMPY_PADDING_MODES + STATISTIC_PADDING_MODES

PaddingMode = str | float | None


def check_padding_mode(padding_mode: PaddingMode) -> PaddingMode:
    """Return ``padding_mode`` if valid (None, a number or a known mode name)."""
    if padding_mode is None or (
        isinstance(padding_mode, Real) and not isinstance(padding_mode, bool)
    ):
        return padding_mode
    if isinstance(padding_mode, str) and padding_mode in PADDING_MODES:
        return padding_mode
    raise ConfigError(
        f"padding_mode must be null, a number or one of {', '.join(PADDING_MODES)}; "
        f"not {padding_mode!r}"
    )


def grid_padding(patch_overlap: Triplet, padding_mode: PaddingMode) -> Triplet:
    """Voxels added on each side of each axis: ``overlap // 2`` when padding, else 0."""
    if padding_mode is None:
        return (0, 0, 0)
    return (patch_overlap[0] // 2, patch_overlap[1] // 2, patch_overlap[2] // 2)


def check_grid(spatial_shape: Sequence[int], patch_size: Triplet, patch_overlap: Triplet) -> None:
    """Check a grid's sizes, in TorchIO's order; ``spatial_shape`` is the padded shape."""
    if any(p > n for p, n in zip(patch_size, spatial_shape)):
        raise DataError(
            f"patch size {tuple(patch_size)} cannot be larger than image size "
            f"{tuple(int(n) for n in spatial_shape)}"
        )
    if any(o >= p for o, p in zip(patch_overlap, patch_size)):
        raise ConfigError(
            f"patch_overlap {tuple(patch_overlap)} must be smaller than patch_size "
            f"{tuple(patch_size)}"
        )
    if any(o % 2 for o in patch_overlap):
        raise ConfigError(f"patch_overlap must be even on every axis, not {tuple(patch_overlap)}")


def grid_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Patch starts along one axis.

    Examples
    --------
    >>> grid_starts(10, 5, 2)
    [0, 3, 5]
    >>> grid_starts(181, 64, 8)
    [0, 56, 112, 117]
    """
    starts = list(range(0, size + 1 - patch, patch - overlap))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def grid_locations(
    spatial_shape: Sequence[int], patch_size: Triplet, patch_overlap: Triplet
) -> np.ndarray:
    """All grid locations, in TorchIO's order (lexicographic: i slowest, k fastest).

    Examples
    --------
    >>> grid_locations((10, 20, 30), (5, 20, 20), (2, 4, 6))[:, :3].tolist()
    [[0, 0, 0], [0, 0, 10], [3, 0, 0], [3, 0, 10], [5, 0, 0], [5, 0, 10]]
    """
    check_grid(spatial_shape, patch_size, patch_overlap)
    axes = [grid_starts(int(n), p, o) for n, p, o in zip(spatial_shape, patch_size, patch_overlap)]
    mesh = np.meshgrid(*axes, indexing="ij")
    starts = np.stack([axis.ravel() for axis in mesh], axis=1)
    return starts_to_locations(starts, patch_size)


def count_grid_patches(
    spatial_shape: Sequence[int], patch_size: Triplet, patch_overlap: Triplet
) -> int:
    """Number of grid patches, without building the locations."""
    check_grid(spatial_shape, patch_size, patch_overlap)
    count = 1
    for n, p, o in zip(spatial_shape, patch_size, patch_overlap):
        count *= len(grid_starts(int(n), p, o))
    return count


def pad_volume(volume: np.ndarray, padding: Triplet, padding_mode: PaddingMode) -> np.ndarray:
    """Pad a (C, X, Y, Z) volume by ``padding`` voxels on each side of each spatial axis.

    A number pads with that constant; ``mean``, ``median``, ``minimum`` and
    ``maximum`` pad with that statistic of the whole image (TorchIO's meaning),
    cast to the image's dtype; other names are numpy's modes.

    Examples
    --------
    >>> pad_volume(np.ones((1, 2, 1, 1)), (1, 0, 0), 0).ravel().tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    if padding_mode is None or not any(padding):
        return volume
    widths = ((0, 0),) + tuple((p, p) for p in padding)
    if isinstance(padding_mode, str) and padding_mode not in STATISTIC_PADDING_MODES:
        return np.pad(volume, widths, mode=padding_mode)
    if isinstance(padding_mode, str):
        statistic = {
            "maximum": np.max,
            "minimum": np.min,
            "mean": np.mean,
            "median": np.median,
        }[padding_mode]
        constant = statistic(volume)
    else:
        constant = padding_mode
        if volume.dtype.kind in "iub":
            low, high = (
                (0, 1)
                if volume.dtype.kind == "b"
                else (np.iinfo(volume.dtype).min, np.iinfo(volume.dtype).max)
            )
            # np.pad would wrap the constant around silently (uint8: -1 pads 255).
            if not low <= constant <= high:
                raise DataError(
                    f"padding constant {constant} does not fit the image's dtype {volume.dtype}"
                )
    return np.pad(volume, widths, mode="constant", constant_values=constant)
