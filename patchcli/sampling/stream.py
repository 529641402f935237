"""A subject's patch locations, drawn a block at a time.

A subject may be asked for millions of patches; its locations are drawn in
blocks, as the patches are cropped, so that memory never grows with their
number. Drawing ``k`` then ``m`` locations from one generator gives what
drawing ``k + m`` at once gives (each sampler consumes the generator value by
value, and the candidates and cumulative weights are prepared once), so the
block size never changes a run's patches.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .geometry import Triplet
from .grid import grid_locations
from .label import label_centres
from .uniform import uniform_locations
from .weighted import CandidateDraw, centres_to_locations, weighted_candidates


class LocationStream:
    """Locations of one subject's patches, drawn by :meth:`take`.

    Parameters
    ----------
    sampler : {"uniform", "weighted", "label", "grid"}
    volumes : mapping of str to (C, X, Y, Z) arrays
        The subject's images (padded, for a padded grid).
    patch_size : tuple of 3 ints
    rng : numpy.random.Generator
    probability_map, label_name : str, optional
        The image a weighted or label sampler draws from.
    label_probabilities : mapping of int to float, optional
    patch_overlap : tuple of 3 ints, optional
        For the grid, whose locations are all made at once (at most a few
        thousand per volume).

    Examples
    --------
    >>> volumes = {"t1": np.zeros((1, 10, 10, 10))}
    >>> first = LocationStream("uniform", volumes, (4, 4, 4), np.random.default_rng(0))
    >>> second = LocationStream("uniform", volumes, (4, 4, 4), np.random.default_rng(0))
    >>> blocks = np.concatenate([second.take(2), second.take(3)])
    >>> bool((first.take(5) == blocks).all())
    True
    """

    def __init__(
        self,
        sampler: str,
        volumes: Mapping[str, np.ndarray],
        patch_size: Triplet,
        rng: np.random.Generator,
        *,
        probability_map: str | None = None,
        label_name: str | None = None,
        label_probabilities: Mapping[int, float] | None = None,
        patch_overlap: Triplet | None = None,
    ) -> None:
        self.patch_size = patch_size
        self.rng = rng
        self.grid: np.ndarray | None = None
        self._taken = 0
        shape = next(iter(volumes.values())).shape[1:]
        if sampler == "uniform":
            self._shape = shape
        elif sampler in ("weighted", "label"):
            if sampler == "weighted":
                candidates = weighted_candidates(volumes[probability_map], patch_size)
            else:
                candidates = label_centres(volumes[label_name], patch_size, label_probabilities)
            self._region, self._region_shape, indices, weights = candidates
            self._draw = CandidateDraw(indices, weights)
        elif sampler == "grid":
            self.grid = grid_locations(shape, patch_size, patch_overlap or (0, 0, 0))
        else:
            raise ValueError(f"unknown sampler {sampler!r}")
        self.sampler = sampler

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` locations, ``(count, 6)`` int64."""
        if self.sampler == "uniform":
            locations = uniform_locations(self._shape, self.patch_size, count, self.rng)
        elif self.grid is not None:
            locations = self.grid[self._taken : self._taken + count]
        else:
            drawn = self._draw(count, self.rng)
            locations = centres_to_locations(
                drawn, self._region, self._region_shape, self.patch_size
            )
        self._taken += count
        return locations


__all__ = ["LocationStream"]
