"""Sampling tables: exact label and weighted draws without reading whole volumes.

A volume store (patchcli.volumes) keeps, beside each subject's images, what
its samplers need to draw a patch centre without reading a whole label map
or probability map at training time:

- :class:`LabelRuns`, for the label sampler: every run of equal labels along
  the last axis, as ``(row, z0, z1)`` with ``row = x * Y + y``. Compact (a few
  runs per row, where a voxel list of the background would hold most of the
  volume), and valid for any patch size: clipped to the valid-centre box,
  the runs of a class hold exactly its candidate centres.
- :class:`RowTotals`, for the weighted sampler: the sum of the probability
  map along each row, over the valid-centre box of one patch size. A centre
  is drawn by choosing a row in proportion to its total, then a voxel of
  that row in proportion to its value (one row of the map read).
- :class:`ChannelTotals`, for the label sampler on a multi-channel (one-hot
  or soft) label map: the same row totals for each channel, and the count
  of foreground voxels along each row; a channel is chosen, then a row of
  it, then a voxel of that row (one row of the map read).

Both give exactly the distributions of the in-memory samplers
(patchcli.sampling.label, patchcli.sampling.weighted): the same candidates,
with the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .geometry import Triplet, check_patch_fits, starts_to_locations, valid_centre_box
from .label import check_channels, checked_probabilities, no_centre_error, warn_absent
from .weighted import EMPTY_MAP_HINT, check_probability_values


@dataclass(frozen=True)
class LabelRuns:
    """The runs of equal values along the last axis of a (X, Y, Z) label map.

    Attributes
    ----------
    shape : tuple of 3 ints
    labels : (L,) int64
        The label values present, sorted.
    offsets : (L + 1,) int64
        The runs of ``labels[i]`` are ``rows[offsets[i]:offsets[i + 1]]`` (and ``starts``,
        ``stops`` alike).
    rows, starts, stops : (R,) int32 (int64 for very large volumes)
        ``row = x * Y + y``; the run covers ``z`` in ``[start, stop)``.

    Examples
    --------
    >>> runs = LabelRuns.of(np.array([0, 0, 1, 1, 2, 1, 0]).reshape(1, 1, 7))
    >>> runs.labels.tolist(), runs.starts.tolist(), runs.stops.tolist()
    ([0, 1, 2], [0, 6, 2, 5, 4], [2, 7, 4, 6, 5])
    """

    shape: tuple[int, int, int]
    labels: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    starts: np.ndarray
    stops: np.ndarray

    @classmethod
    def of(cls, label_map: np.ndarray) -> LabelRuns:
        """The runs of a (X, Y, Z) integer label map (or (1, X, Y, Z))."""
        if label_map.ndim == 4:
            if label_map.shape[0] != 1:
                raise DataError(
                    f"a label table needs a single-channel label map, not {label_map.shape[0]} "
                    "channels"
                )
            label_map = label_map[0]
        shape = tuple(int(n) for n in label_map.shape)
        size_x, size_y, size_z = shape
        values = np.ascontiguousarray(label_map).reshape(size_x * size_y, size_z)
        if values.dtype.kind == "f":
            if not np.isfinite(values).all() or (values != np.round(values)).any():
                raise DataError("a label map must hold whole numbers")
            values = values.astype(np.int64)
        # A run starts at z = 0 and wherever the value changes along a row.
        new = np.ones(values.shape, dtype=bool)
        new[:, 1:] = values[:, 1:] != values[:, :-1]
        rows, starts = np.nonzero(new)
        run_values = values[rows, starts]
        # A run stops where the next one of its row starts, or at the row's end.
        stops = np.empty_like(starts)
        stops[:-1] = starts[1:]
        stops[rows != np.append(rows[1:], -1)] = size_z
        order = np.argsort(run_values, kind="stable")
        run_values = run_values[order]
        labels, first = np.unique(run_values, return_index=True)
        index_type = np.int32 if max(size_x * size_y, size_z) < 2**31 else np.int64
        return cls(
            shape,
            labels.astype(np.int64),
            np.append(first, len(run_values)).astype(np.int64),
            rows[order].astype(index_type),
            starts[order].astype(index_type),
            stops[order].astype(index_type),
        )

    def of_label(self, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, starts, stops)`` of one label's runs (empty when absent)."""
        found = np.searchsorted(self.labels, label)
        if found == len(self.labels) or self.labels[found] != label:
            empty = self.rows[:0]
            return empty, empty, empty
        part = slice(int(self.offsets[found]), int(self.offsets[found + 1]))
        return self.rows[part], self.starts[part], self.stops[part]


class RunDraw:
    """Centres drawn from label runs with the rules of the label sampler
    (:func:`patchcli.sampling.label.label_candidates`), for one patch size.

    Without ``label_probabilities`` every foreground voxel (label > 0) of the
    valid-centre box is equally likely; with them, each present class ``c`` is
    drawn with probability ``p_c`` (normalised over the present classes), then a
    voxel of it uniformly. A requested class absent from the box is skipped
    with a warning.

    Examples
    --------
    >>> runs = LabelRuns.of(np.array([0, 0, 1, 1, 2, 1, 0]).reshape(1, 1, 7))
    >>> draw = RunDraw(runs, (1, 1, 5), {0: 0, 1: 50, 2: 25})
    >>> sorted(set(draw.centres(200, np.random.default_rng(0))[:, 2].tolist()))
    [2, 3, 4]
    """

    def __init__(
        self,
        runs: LabelRuns,
        patch_size: Triplet,
        label_probabilities: Mapping[int, float] | None = None,
    ) -> None:
        check_patch_fits(patch_size, runs.shape)
        self.runs = runs
        self.patch_size = patch_size
        self.box = valid_centre_box(runs.shape, patch_size)
        if label_probabilities is None:
            labels = [int(label) for label in runs.labels if label > 0]
            pieces = [self._clipped(label) for label in labels]
            self.classes = [_concatenate(pieces)] if pieces else []
            self.classes = [c for c in self.classes if c[3][-1] > 0]
            self.class_weights = np.ones(len(self.classes))
        else:
            self.classes, weights = [], []
            for label, probability in checked_probabilities(label_probabilities).items():
                if probability == 0:
                    continue
                clipped = self._clipped(label)
                if clipped[3][-1] == 0:
                    warn_absent(f"label {label}", len(runs.of_label(label)[0]) > 0)
                    continue
                self.classes.append(clipped)
                weights.append(probability)
            self.class_weights = np.asarray(weights, dtype=np.float64)
        if not self.classes:
            raise DataError(
                "no labelled voxel can be a patch centre: "
                + EMPTY_MAP_HINT.format(patch_size=tuple(patch_size))
            )
        self.class_cdf = np.cumsum(self.class_weights)

    def _clipped(self, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A label's runs clipped to the valid-centre box: rows, starts, stops, and the
        cumulative lengths (with a leading 0)."""
        rows, starts, stops = self.runs.of_label(label)
        size_y = self.runs.shape[1]
        x, y = np.divmod(rows.astype(np.int64), size_y)
        box_x, box_y, box_z = self.box
        keep = (x >= box_x.start) & (x < box_x.stop) & (y >= box_y.start) & (y < box_y.stop)
        starts = np.maximum(starts[keep].astype(np.int64), box_z.start)
        stops = np.minimum(stops[keep].astype(np.int64), box_z.stop)
        lengths = np.maximum(stops - starts, 0)
        inside = lengths > 0
        rows = rows[keep][inside].astype(np.int64)
        starts, lengths = starts[inside], lengths[inside]
        return rows, starts, lengths, np.concatenate([[0], np.cumsum(lengths)])

    def probabilities(self) -> np.ndarray:
        """The probability of each voxel to be drawn, as a (X, Y, Z) float64 map."""
        result = np.zeros(self.runs.shape, dtype=np.float64).reshape(-1, self.runs.shape[2])
        shares = self.class_weights / self.class_weights.sum()
        for share, (rows, starts, lengths, cumulative) in zip(shares, self.classes):
            for row, start, length in zip(rows.tolist(), starts.tolist(), lengths.tolist()):
                result[row, start : start + length] += share / cumulative[-1]
        return result.reshape(self.runs.shape)

    def centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``(count, 3)`` int64 voxel indices of patch centres."""
        chosen = _choose(self.class_cdf, count, rng)
        centres = np.empty((count, 3), dtype=np.int64)
        size_y = self.runs.shape[1]
        for number, (rows, starts, _, cumulative) in enumerate(self.classes):
            which = np.flatnonzero(chosen == number)
            if not len(which):
                continue
            # A voxel of the class uniformly: its rank among the class's voxels, then its run.
            rank = rng.integers(0, cumulative[-1], size=len(which))
            run = np.searchsorted(cumulative, rank, side="right") - 1
            z = starts[run] + (rank - cumulative[run])
            x, y = np.divmod(rows[run], size_y)
            centres[which] = np.stack([x, y, z], axis=1)
        return centres

    def locations(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``(count, 6)`` locations of patches centred on drawn voxels."""
        return centres_to_starts(self.centres(count, rng), self.patch_size)


def _choose(cdf: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn in proportion to the weights whose cumulative sum is ``cdf``
    (no draw when there is one)."""
    if len(cdf) == 1:
        return np.zeros(count, dtype=np.int64)
    return np.searchsorted(cdf, (1.0 - rng.random(count)) * cdf[-1], side="left")


def _by_weight(values, rng: np.random.Generator, cumulative: bool = False) -> int:
    """One index drawn in proportion to ``values`` (or to the weights whose cumulative sum
    they are): weights of 0 are never drawn, as ``1 - random()`` is never 0."""
    cdf = values if cumulative else np.cumsum(np.asarray(values, dtype=np.float64))
    return int(np.searchsorted(cdf, (1.0 - rng.random()) * cdf[-1], side="left"))


def _concatenate(pieces):
    rows = np.concatenate([p[0] for p in pieces])
    starts = np.concatenate([p[1] for p in pieces])
    lengths = np.concatenate([p[2] for p in pieces])
    return rows, starts, lengths, np.concatenate([[0], np.cumsum(lengths)])


def centres_to_starts(centres: np.ndarray, patch_size: Triplet) -> np.ndarray:
    """Locations of patches whose centres (offset ``P // 2`` inside) are ``centres``."""
    return starts_to_locations(centres - np.asarray(patch_size) // 2, patch_size)


@dataclass(frozen=True)
class RowTotals:
    """The sum of a probability map (its first channel) along each row, over the
    valid-centre box of ``patch_size``: ``totals[x * Y + y]`` (0 outside the box)."""

    shape: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    totals: np.ndarray

    @classmethod
    def of(cls, probability_map: np.ndarray, patch_size: Triplet) -> RowTotals:
        values = probability_map[0] if probability_map.ndim == 4 else probability_map
        shape = tuple(int(n) for n in values.shape)
        check_patch_fits(patch_size, shape)
        check_probability_values(values)
        box_x, box_y, box_z = valid_centre_box(shape, patch_size)
        totals = np.zeros(shape[:2], dtype=np.float64)
        totals[box_x, box_y] = values[box_x, box_y, box_z].sum(axis=2, dtype=np.float64)
        if not totals.any():
            raise DataError(
                "probability map is empty after clearing its borders: "
                + EMPTY_MAP_HINT.format(patch_size=tuple(patch_size))
            )
        return cls(shape, tuple(int(n) for n in patch_size), totals.ravel())


class RowDraw:
    """Centres drawn in proportion to a probability map, from its :class:`RowTotals` and
    one row of the map per draw (``read_row(x, y, z0, z1)``, the values of
    ``map[0, x, y, z0:z1]``): a row in proportion to its total, then a voxel of it in
    proportion to its value. The distribution of the weighted sampler, exactly.
    """

    def __init__(self, totals: RowTotals, read_row) -> None:
        self.totals = totals
        self.read_row = read_row
        self.cdf = np.cumsum(totals.totals)
        self.box = valid_centre_box(totals.shape, totals.patch_size)

    def centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        draws = (1.0 - rng.random(count)) * self.cdf[-1]
        rows = np.searchsorted(self.cdf, draws, side="left")  # a row by its total
        size_y = self.totals.shape[1]
        box_z = self.box[2]
        centres = np.empty((count, 3), dtype=np.int64)
        for number, row in enumerate(rows.tolist()):
            x, y = divmod(row, size_y)
            values = self.read_row(x, y, box_z.start, box_z.stop)
            centres[number] = (x, y, box_z.start + _by_weight(values, rng))
        return centres

    def locations(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return centres_to_starts(self.centres(count, rng), self.totals.patch_size)


@dataclass(frozen=True)
class ChannelTotals:
    """What the label sampler draws from on a multi-channel (one-hot or soft) label map,
    for one patch size: along each row of the valid-centre box (0 outside it), the sum of
    each channel, ``totals[c, x * Y + y]``, and the number of foreground voxels (where any
    channel from 1 is positive), ``foreground[x * Y + y]``.

    Attributes
    ----------
    shape, patch_size : tuple of 3 ints
    totals : (C, X * Y) float64
    foreground : (X * Y,) float64
    present : (C,) bool
        Whether each channel is positive anywhere (for the warning of a channel absent
        from the valid-centre box).
    problem : str
        Why the values inside the box cannot be weights (negative, NaN), or ``""``: an
        error only when ``label_probabilities`` weight by them, as in
        :func:`patchcli.sampling.label.label_candidates`.

    Examples
    --------
    >>> one_hot = np.zeros((3, 1, 1, 7), dtype=np.uint8)
    >>> one_hot[0, 0, 0, [0, 1, 6]] = 1; one_hot[1, 0, 0, [2, 3, 5]] = 1; one_hot[2, 0, 0, 4] = 1
    >>> table = ChannelTotals.of(one_hot, (1, 1, 5))
    >>> table.totals.tolist(), table.foreground.tolist()
    ([[0.0], [2.0], [1.0]], [3.0])
    """

    shape: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    totals: np.ndarray
    foreground: np.ndarray
    present: np.ndarray
    problem: str = ""

    @classmethod
    def of(cls, label_map: np.ndarray, patch_size: Triplet) -> ChannelTotals:
        """The tables of a (C, X, Y, Z) label map of two channels or more."""
        channels = label_map.shape[0]
        shape = tuple(int(n) for n in label_map.shape[1:])
        check_patch_fits(patch_size, shape)
        box_x, box_y, box_z = valid_centre_box(shape, patch_size)
        inside = label_map[:, box_x, box_y, box_z]
        try:
            check_probability_values(inside, "multi-channel label map")
            problem = ""
        except DataError as error:
            problem = str(error)
        totals = np.zeros((channels, *shape[:2]), dtype=np.float64)
        foreground = np.zeros(shape[:2], dtype=np.float64)
        # One channel at a time: no float64 copy of the whole map.
        for channel in range(channels):
            totals[channel, box_x, box_y] = inside[channel].sum(axis=2, dtype=np.float64)
        foreground[box_x, box_y] = (inside[1:] > 0).any(axis=0).sum(axis=2)
        present = np.array([(label_map[c] > 0).any() for c in range(channels)], dtype=bool)
        return cls(
            shape,
            tuple(int(n) for n in patch_size),
            totals.reshape(channels, -1),
            foreground.ravel(),
            present,
            problem,
        )


class ChannelDraw:
    """Centres drawn with the rules of the label sampler on a multi-channel label map
    (:func:`patchcli.sampling.label.label_candidates`), from its :class:`ChannelTotals`
    and one row of the map per draw.

    Without ``label_probabilities``, every foreground voxel (any channel from 1
    positive) of the valid-centre box is equally likely: a row in proportion to its
    count, then one of its foreground voxels. With them (keys are channels), channel
    ``c`` is drawn with probability ``p_c`` (normalised over the channels present in the
    box), then a voxel in proportion to the channel's value: a row by its total, a voxel
    of the row by its value.

    ``read_row(channels, x, y, z0, z1)`` gives ``map[channels, x, y, z0:z1]``
    (``channels`` an int, or a slice).

    Examples
    --------
    >>> one_hot = np.zeros((3, 1, 1, 7), dtype=np.uint8)
    >>> one_hot[0, 0, 0, [0, 1, 6]] = 1; one_hot[1, 0, 0, [2, 3, 5]] = 1; one_hot[2, 0, 0, 4] = 1
    >>> table = ChannelTotals.of(one_hot, (1, 1, 5))
    >>> draw = ChannelDraw(table, lambda c, x, y, z0, z1: one_hot[c, x, y, z0:z1], {2: 1})
    >>> sorted(set(draw.centres(50, np.random.default_rng(0))[:, 2].tolist()))
    [4]
    """

    def __init__(
        self,
        totals: ChannelTotals,
        read_row: Callable[..., np.ndarray],
        label_probabilities: Mapping[int, float] | None = None,
    ) -> None:
        self.totals = totals
        self.read_row = read_row
        self.box = valid_centre_box(totals.shape, totals.patch_size)
        #: What each draw picks from: (channel, or None for the foreground; row CDF).
        self.parts: list[tuple[int | None, np.ndarray]] = []
        weights = []
        if label_probabilities is None:
            if totals.foreground.any():
                self.parts.append((None, np.cumsum(totals.foreground)))
                weights.append(1.0)
            else:
                raise DataError(
                    "no labelled voxel can be a patch centre: "
                    + EMPTY_MAP_HINT.format(patch_size=totals.patch_size)
                )
        else:
            probabilities = checked_probabilities(label_probabilities)
            check_channels(probabilities, len(totals.totals))
            if totals.problem:
                raise DataError(totals.problem)
            for channel, probability in probabilities.items():
                if probability == 0:
                    continue
                if not totals.totals[channel].any():
                    warn_absent(f"channel {channel}", bool(totals.present[channel]))
                    continue
                self.parts.append((channel, np.cumsum(totals.totals[channel])))
                weights.append(probability)
            if not self.parts:
                requested = [c for c, p in probabilities.items() if p > 0]
                raise no_centre_error(requested, "channels", totals.patch_size)
        self.part_cdf = np.cumsum(np.asarray(weights, dtype=np.float64))

    def centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``(count, 3)`` int64 voxel indices of patch centres."""
        chosen = _choose(self.part_cdf, count, rng)
        size_y = self.totals.shape[1]
        box_z = self.box[2]
        centres = np.empty((count, 3), dtype=np.int64)
        for number, part in enumerate(chosen.tolist()):
            channel, cdf = self.parts[part]
            x, y = divmod(_by_weight(cdf, rng, cumulative=True), size_y)
            if channel is None:
                values = self.read_row(slice(1, None), x, y, box_z.start, box_z.stop)
                values = (np.asarray(values) > 0).any(axis=0)
            else:
                values = self.read_row(channel, x, y, box_z.start, box_z.stop)
            centres[number] = (x, y, box_z.start + _by_weight(values, rng))
        return centres

    def locations(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``(count, 6)`` locations of patches centred on drawn voxels."""
        return centres_to_starts(self.centres(count, rng), self.totals.patch_size)


__all__ = [
    "ChannelDraw",
    "ChannelTotals",
    "LabelRuns",
    "RowDraw",
    "RowTotals",
    "RunDraw",
    "centres_to_starts",
]
