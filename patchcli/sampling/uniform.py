"""Uniform sampling: every patch position inside the volume is equally likely."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .geometry import Triplet, check_patch_fits, starts_to_locations


def uniform_locations(
    spatial_shape: Sequence[int],
    patch_size: Triplet,
    num_patches: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``num_patches`` locations uniformly: each start on ``[0, N - P]``.

    Parameters
    ----------
    spatial_shape : sequence of 3 ints
        The volume's size ``(X, Y, Z)``.
    patch_size : tuple of 3 ints
    num_patches : int
    rng : numpy.random.Generator

    Returns
    -------
    locations : (num_patches, 6) int64 array

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> locations = uniform_locations((10, 10, 1), (4, 4, 1), 5, rng)
    >>> locations.shape, int(locations[:, :3].max()) <= 6
    ((5, 6), True)
    """
    check_patch_fits(patch_size, spatial_shape)
    highest_start = np.asarray(spatial_shape, dtype=np.int64) - np.asarray(patch_size)
    starts = rng.integers(0, highest_start, size=(num_patches, 3), endpoint=True)
    return starts_to_locations(starts, patch_size)
