"""Patch sizes, locations and the valid-centre region shared by every sampler.

A *location* is ``[i0, j0, k0, i1, j1, k1]``: int64 voxel indices with exclusive
ends, so that ``volume[..., i0:i1, j0:j1, k0:k1]`` is the patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np

from ..errors import ConfigError, DataError

Triplet = tuple[int, int, int]


def to_triplet(value: int | Sequence[int], name: str, *, minimum: int = 1) -> Triplet:
    """Parse an int ``n`` as ``(n, n, n)``, or a sequence of three ints.

    Parameters
    ----------
    value : int or sequence of 3 ints
        The value to parse. Booleans and floats (even ``2.0``) are refused.
    name : str
        The parameter's name, used in error messages.
    minimum : int
        The smallest value allowed on each axis (1 for sizes, 0 for overlaps).

    Examples
    --------
    >>> to_triplet(64, "patch_size")
    (64, 64, 64)
    >>> to_triplet([32, 32, 1], "patch_size")
    (32, 32, 1)
    """
    if isinstance(value, Integral) and not isinstance(value, bool):
        values = [int(value)] * 3
    elif isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3:
        values = list(value)
    else:
        raise ConfigError(f"{name} must be an int or a list of 3 ints, not {value!r}")
    result = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, Integral):
            raise ConfigError(f"{name} must hold integers, not {value!r}")
        if item < minimum:
            raise ConfigError(f"{name} values must be at least {minimum}, not {value!r}")
        result.append(int(item))
    return (result[0], result[1], result[2])


def check_patch_fits(patch_size: Triplet, spatial_shape: Sequence[int]) -> None:
    """Raise :class:`DataError` if the patch is larger than the volume on any axis."""
    if any(p > n for p, n in zip(patch_size, spatial_shape)):
        raise DataError(
            f"patch size {tuple(patch_size)} cannot be larger than image size "
            f"{tuple(int(n) for n in spatial_shape)}"
        )


def valid_centre_box(spatial_shape: Sequence[int], patch_size: Triplet) -> tuple[slice, ...]:
    """Slices of the voxels that can be the centre of a patch lying inside the volume.

    On an axis of size ``N`` and patch size ``P`` the centres are
    ``[P // 2, N - 1 - (P - 1) // 2]``: TorchIO's border clearing, which zeroes the
    first ``P // 2`` and the last ``(P - 1) // 2`` voxels.

    Examples
    --------
    >>> valid_centre_box((7, 7, 7), (5, 4, 1))
    (slice(2, 5, None), slice(2, 6, None), slice(0, 7, None))
    """
    return tuple(slice(p // 2, n - (p - 1) // 2) for n, p in zip(spatial_shape, patch_size))


def starts_to_locations(starts: np.ndarray, patch_size: Triplet) -> np.ndarray:
    """Turn an ``(n, 3)`` array of patch starts into ``(n, 6)`` int64 locations."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
    return np.concatenate([starts, starts + np.asarray(patch_size, dtype=np.int64)], axis=1)


def patch_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """The affine of a patch that starts at voxel ``start`` of a volume.

    The rotation and zooms are kept; the translation becomes the world position
    of the patch's first voxel.

    Examples
    --------
    >>> affine = np.diag([2.0, 3.0, 4.0, 1.0]); affine[:3, 3] = (5, 6, 7)
    >>> patch_affine(affine, (0, 10, 9))[:3, 3]
    array([ 5., 36., 43.])
    """
    result = np.array(affine, dtype=np.float64, copy=True)
    result[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return result
