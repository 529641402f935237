"""Weighted sampling: patch centres drawn from a probability map.

The map is TorchIO's: the first channel, with the borders where no centre can
lie cleared (see :func:`~patchcli.sampling.geometry.valid_centre_box`). Instead of
TorchIO's dense float64 map and CDF over every voxel, only the positive voxels
of the valid region are kept, which gives the same distribution (adding a zero
does not change a cumulative sum) with far less memory on sparse maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .geometry import Triplet, check_patch_fits, starts_to_locations, valid_centre_box

EMPTY_MAP_HINT = (
    "positive voxels may be too close to the border for patch size {patch_size}; "
    "consider padding the images by half the patch size"
)


class CandidateDraw:
    """Draws from ``flat_indices``, each with probability proportional to its weight.

    Inverse transform sampling, vectorised: one ``searchsorted`` over the
    cumulative weights for all draws of a call. Draws ``u`` lie in ``(0, 1]``,
    never 0, so a zero-weight candidate can never be chosen. ``weights=None``
    means equal weights drawn with ``rng.integers``. The cumulative sum is
    made once, and successive calls with one generator give the draws one call
    for their total would give (``rng.random`` is consumed value by value).

    Examples
    --------
    >>> draw = CandidateDraw(np.array([7, 9]), np.array([0.0, 1.0]))
    >>> draw(4, np.random.default_rng(0)).tolist()
    [9, 9, 9, 9]
    """

    def __init__(self, flat_indices: np.ndarray, weights: np.ndarray | None) -> None:
        self.flat_indices = flat_indices
        self.uniform = weights is None
        self.equal = False
        self.cdf = None
        if weights is None:
            return
        largest = weights.max()
        if weights.min() == largest and len(weights) < 2**53:
            # Equal weights (a mask): the scaled cumulative sums would be exactly 1, 2, ..., n,
            # so the search is a ceiling; the same draws, without a pass over the candidates.
            self.equal = True
            return
        # Scaled by the largest weight so that huge finite values cannot overflow the sum.
        self.cdf = np.cumsum(weights.astype(np.float64, copy=False) / largest, dtype=np.float64)

    def __call__(self, num_draws: int, rng: np.random.Generator) -> np.ndarray:
        indices = self.flat_indices
        if self.uniform:
            return indices[rng.integers(0, len(indices), size=num_draws)]
        if self.equal:
            draws = (1.0 - rng.random(num_draws)) * float(len(indices))
            return indices[np.ceil(draws).astype(np.int64) - 1]
        draws = (1.0 - rng.random(num_draws)) * self.cdf[-1]
        return indices[np.searchsorted(self.cdf, draws, side="left")]


def draw_from_candidates(
    flat_indices: np.ndarray,
    weights: np.ndarray | None,
    num_draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``num_draws`` of ``flat_indices``, each with probability proportional to its weight.

    See :class:`CandidateDraw`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> draws = draw_from_candidates(np.array([7, 9]), np.array([0.0, 1.0]), 4, rng)
    >>> draws.tolist()
    [9, 9, 9, 9]
    """
    return CandidateDraw(flat_indices, weights)(num_draws, rng)


def centres_to_locations(
    flat_indices: np.ndarray,
    region: tuple[slice, ...],
    region_shape: Sequence[int],
    patch_size: Triplet,
) -> np.ndarray:
    """Locations of patches centred on voxels given as flat indices into ``region``.

    The centre of a patch of size ``P`` is at offset ``P // 2`` inside it.
    """
    centres = np.stack(np.unravel_index(flat_indices, tuple(region_shape)), axis=1)
    centres += np.array([box.start for box in region], dtype=np.int64)
    return starts_to_locations(centres - np.asarray(patch_size) // 2, patch_size)


def check_probability_values(values: np.ndarray, name: str = "probability map") -> None:
    """Refuse negative, NaN or infinite probabilities."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError(f"{name} contains NaN or infinite values")
    if values.dtype.kind in "fi" and values.size and values.min() < 0:
        raise DataError(f"{name} contains negative values (minimum {values.min()})")


def weighted_candidates(
    probability_map: np.ndarray, patch_size: Triplet
) -> tuple[tuple[slice, ...], tuple[int, ...], np.ndarray, np.ndarray]:
    """The centres a weighted sampler draws from: ``(region, region shape, flat indices
    into the region, their weights)``; see :func:`weighted_locations`."""
    values = probability_map[0] if probability_map.ndim == 4 else probability_map
    check_patch_fits(patch_size, values.shape)
    check_probability_values(values)
    region = valid_centre_box(values.shape, patch_size)
    # A C-ordered copy of the valid region only: the cleared borders never enter.
    inside = np.ascontiguousarray(values[region])
    flat_indices = np.flatnonzero(inside)
    if flat_indices.size == 0:
        raise DataError(
            "probability map is empty after clearing its borders: "
            + EMPTY_MAP_HINT.format(patch_size=tuple(patch_size))
        )
    return region, inside.shape, flat_indices, inside.ravel()[flat_indices]


def weighted_locations(
    probability_map: np.ndarray,
    patch_size: Triplet,
    num_patches: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw patch locations whose centres follow a probability map.

    Parameters
    ----------
    probability_map : (C, X, Y, Z) or (X, Y, Z) array
        Non-negative, finite values; need not be normalised. Only the first
        channel is used, as in TorchIO.
    patch_size : tuple of 3 ints
    num_patches : int
    rng : numpy.random.Generator

    Returns
    -------
    locations : (num_patches, 6) int64 array

    Examples
    --------
    A single positive voxel at (3, 3, 3) of a 7^3 map: every patch of size 5
    starts at (1, 1, 1).

    >>> probability_map = np.zeros((7, 7, 7)); probability_map[3, 3, 3] = 1
    >>> weighted_locations(probability_map, (5, 5, 5), 2, np.random.default_rng(0))
    array([[1, 1, 1, 6, 6, 6],
           [1, 1, 1, 6, 6, 6]])
    """
    region, region_shape, flat_indices, weights = weighted_candidates(probability_map, patch_size)
    drawn = draw_from_candidates(flat_indices, weights, num_patches, rng)
    return centres_to_locations(drawn, region, region_shape, patch_size)
