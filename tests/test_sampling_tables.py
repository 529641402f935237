"""Sampling tables (patchcli.sampling.tables): the label runs, channel totals and row
totals of a volume store give exactly the distributions of the in-memory label and
weighted samplers."""

from __future__ import annotations

import numpy as np
import pytest

from patchcli.errors import DataError
from patchcli.sampling.label import label_candidates
from patchcli.sampling.tables import (
    ChannelDraw,
    ChannelTotals,
    LabelRuns,
    RowDraw,
    RowTotals,
    RunDraw,
)
from patchcli.sampling.weighted import weighted_candidates


def _label_map(rng, shape=(11, 9, 13), labels=(0, 1, 2, 5)):
    label_map = np.zeros(shape, dtype=np.uint8)
    for label in labels[1:]:
        centre = rng.integers(0, shape)
        size = rng.integers(1, 5, size=3)
        box = tuple(slice(max(c - s, 0), c + s) for c, s in zip(centre, size))
        label_map[box] = label
    return label_map


def _dense(region, region_shape, indices, weights, shape):
    """A candidates' probabilities as a (X, Y, Z) map."""
    inside = np.zeros(int(np.prod(region_shape)))
    inside[indices] = 1.0 if weights is None else weights
    dense = np.zeros(shape)
    dense[region] = inside.reshape(region_shape)
    return dense / dense.sum()


@pytest.mark.parametrize("seed", range(6))
def test_runs_hold_every_voxel_of_the_map(seed):
    label_map = _label_map(np.random.default_rng(seed))
    runs = LabelRuns.of(label_map)
    rebuilt = np.full(label_map.shape, 255, dtype=np.uint8).reshape(-1, label_map.shape[2])
    for label in runs.labels.tolist():
        rows, starts, stops = runs.of_label(label)
        for row, start, stop in zip(rows, starts, stops):
            rebuilt[row, start:stop] = label
    np.testing.assert_array_equal(rebuilt.reshape(label_map.shape), label_map)
    # Runs are maximal: two runs of one label never touch in a row.
    assert len(runs.rows) == int(
        (np.diff(label_map, axis=2) != 0).sum() + np.prod(label_map.shape[:2])
    )


@pytest.mark.parametrize(
    ("patch_size", "probabilities"),
    [
        ((3, 3, 3), None),
        ((5, 1, 7), None),
        ((3, 3, 3), {0: 1, 1: 2, 2: 3, 5: 4}),
        ((1, 5, 3), {1: 1, 5: 9}),
    ],
)
@pytest.mark.parametrize("seed", range(4))
# A class absent from the box is warned about by both samplers alike.
@pytest.mark.filterwarnings("ignore::patchcli.errors.PatchcliWarning")
def test_run_draws_have_the_label_samplers_probabilities(seed, patch_size, probabilities):
    label_map = _label_map(np.random.default_rng(seed))
    expected = _dense(
        *label_candidates(label_map[None], patch_size, probabilities), label_map.shape
    )
    got = RunDraw(LabelRuns.of(label_map), patch_size, probabilities).probabilities()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_run_draws_follow_their_probabilities():
    label_map = np.zeros((12, 12, 12), dtype=np.uint8)
    label_map[3:6, 3:6, 3:6] = 1
    label_map[6:9, 2:5, 6:10] = 2
    label_map[2:4, 7:10, 2:4] = 5
    draw = RunDraw(LabelRuns.of(label_map), (3, 3, 3), {0: 1, 1: 1, 2: 1, 5: 1})
    centres = draw.centres(40_000, np.random.default_rng(0))
    classes = label_map[tuple(centres.T)]
    shares = np.bincount(classes, minlength=6)[[0, 1, 2, 5]] / len(classes)
    # Four classes at 1/4 each: with 40,000 draws the standard error of a share is 0.0022;
    # 0.012 is over five of them.
    np.testing.assert_allclose(shares, 0.25, atol=0.012)
    box = draw.box
    assert all(
        (centres[:, a] >= box[a].start).all() and (centres[:, a] < box[a].stop).all()
        for a in range(3)
    )


def test_absent_classes_warn_and_an_empty_map_is_refused():
    label_map = np.zeros((9, 9, 9), dtype=np.uint8)
    label_map[0, 0, 0] = 1  # only on the border
    with pytest.warns(UserWarning, match=r"label 1 is requested .* \(only near the border"):
        RunDraw(LabelRuns.of(label_map), (3, 3, 3), {0: 1, 1: 1})
    with pytest.raises(DataError, match="no labelled voxel can be a patch centre"):
        RunDraw(LabelRuns.of(label_map), (3, 3, 3))
    with pytest.raises(DataError, match="single-channel"):
        LabelRuns.of(np.zeros((2, 4, 4, 4)))


@pytest.mark.parametrize("patch_size", [(3, 3, 3), (1, 7, 5)])
@pytest.mark.parametrize("seed", range(4))
def test_row_draws_have_the_weighted_samplers_probabilities(seed, patch_size):
    rng = np.random.default_rng(seed)
    probability_map = rng.random((10, 9, 12)) * (rng.random((10, 9, 12)) > 0.6)
    totals = RowTotals.of(probability_map, patch_size)
    expected = _dense(*weighted_candidates(probability_map, patch_size), probability_map.shape)
    # A voxel's probability: its row's share of the total, times its share of its row.
    rows = totals.totals.reshape(probability_map.shape[:2])
    box = RowDraw(totals, None).box
    got = np.zeros(probability_map.shape)
    inside = probability_map[box[0], box[1], box[2]]
    got[box[0], box[1], box[2]] = (
        rows[box[0], box[1], None]
        / rows.sum()
        * inside
        / inside.sum(axis=2, keepdims=True).clip(1e-300)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)


def test_row_draws_follow_the_map_and_read_one_row_each():
    probability_map = np.zeros((6, 6, 6))
    probability_map[2, 3, 2] = 1.0
    probability_map[3, 2, 3] = 3.0
    reads = []

    def read_row(x, y, z0, z1):
        reads.append((x, y, z0, z1))
        return probability_map[x, y, z0:z1]

    draw = RowDraw(RowTotals.of(probability_map, (3, 3, 3)), read_row)
    centres = draw.centres(4000, np.random.default_rng(1))
    heavy = (centres == [3, 2, 3]).all(axis=1).mean()
    # 3/4 expected; the standard error with 4000 draws is 0.007.
    assert abs(heavy - 0.75) < 0.035
    assert len(reads) == 4000 and all(z0 == 1 and z1 == 5 for _, _, z0, z1 in reads)
    with pytest.raises(DataError, match="empty after clearing its borders"):
        RowTotals.of(np.zeros((5, 5, 5)), (3, 3, 3))


# ------------------------------------------------------- multi-channel label maps
def _channels(rng, soft: bool, shape=(11, 9, 13)) -> np.ndarray:
    """A (4, X, Y, Z) label map: one-hot (uint8) of a map of labels 0, 1, 2, 5, or soft
    (float32 values in [0, 1), about half of them 0)."""
    if soft:
        values = rng.random((4, *shape)).astype(np.float32)
        return values * (rng.random(values.shape) > 0.5)
    label_map = _label_map(rng, shape)
    return np.stack([label_map == label for label in (0, 1, 2, 5)]).astype(np.uint8)


def _reader(label_map, reads=None):
    def read_row(channels, x, y, z0, z1):
        if reads is not None:
            reads.append((channels, x, y, z0, z1))
        return label_map[channels, x, y, z0:z1]

    return read_row


def _channel_probabilities(draw: ChannelDraw, label_map: np.ndarray) -> np.ndarray:
    """The probability of each voxel under ``draw``: a part (channel, or the foreground) by
    its weight, a row by its total, a voxel of the row by its value."""
    shape = label_map.shape[1:]
    weights = np.diff(np.concatenate([[0.0], draw.part_cdf]))
    box_x, box_y, box_z = draw.box
    result = np.zeros(shape)
    for share, (channel, cdf) in zip(weights / weights.sum(), draw.parts):
        rows = np.diff(np.concatenate([[0.0], cdf])).reshape(shape[:2])
        values = (label_map[1:] > 0).any(axis=0) if channel is None else label_map[channel]
        inside = values[box_x, box_y, box_z].astype(np.float64)
        result[box_x, box_y, box_z] += (
            share
            * rows[box_x, box_y, None]
            / rows.sum()
            * inside
            / inside.sum(axis=2, keepdims=True).clip(1e-300)
        )
    return result


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize(
    ("patch_size", "probabilities"),
    [
        ((3, 3, 3), None),
        ((1, 5, 3), None),
        ((3, 3, 3), {0: 1, 1: 2, 2: 3, 3: 4}),
        ((5, 1, 7), {1: 1, 3: 9}),
    ],
)
@pytest.mark.parametrize("seed", range(4))
# A channel absent from the box is warned about by both samplers alike.
@pytest.mark.filterwarnings("ignore::patchcli.errors.PatchcliWarning")
def test_channel_draws_have_the_label_samplers_probabilities(seed, patch_size, probabilities, soft):
    label_map = _channels(np.random.default_rng(seed), soft)
    expected = _dense(*label_candidates(label_map, patch_size, probabilities), label_map.shape[1:])
    totals = ChannelTotals.of(label_map, patch_size)
    got = _channel_probabilities(ChannelDraw(totals, _reader(label_map), probabilities), label_map)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)


def test_channel_draws_follow_their_probabilities_and_read_one_row_each():
    one_hot = np.zeros((3, 12, 12, 12), dtype=np.uint8)
    one_hot[1, 3:6, 3:6, 3:6] = 1
    one_hot[2, 6:9, 2:5, 6:10] = 1
    one_hot[0] = 1 - one_hot[1] - one_hot[2]
    reads = []
    draw = ChannelDraw(
        ChannelTotals.of(one_hot, (3, 3, 3)), _reader(one_hot, reads), {0: 1, 1: 1, 2: 2}
    )
    centres = draw.centres(20_000, np.random.default_rng(0))
    channels = one_hot[:, centres[:, 0], centres[:, 1], centres[:, 2]].argmax(axis=0)
    shares = np.bincount(channels, minlength=3) / len(channels)
    # Shares 1/4, 1/4, 1/2 over 20,000 draws: standard errors below 0.0036; 0.018 is five.
    np.testing.assert_allclose(shares, [0.25, 0.25, 0.5], atol=0.018)
    assert len(reads) == 20_000 and all(z0 == 1 and z1 == 11 for *_, z0, z1 in reads)
    assert {channels for channels, *_ in reads} == {0, 1, 2}

    soft = np.zeros((2, 6, 6, 6), dtype=np.float32)
    soft[1, 2, 3, 2], soft[1, 2, 3, 4] = 0.25, 0.75  # one row: a voxel by its value
    draw = ChannelDraw(ChannelTotals.of(soft, (3, 3, 3)), _reader(soft), {1: 1})
    heavy = (draw.centres(4000, np.random.default_rng(1)) == [2, 3, 4]).all(axis=1).mean()
    # 3/4 expected; the standard error with 4000 draws is 0.007.
    assert abs(heavy - 0.75) < 0.035


def test_channel_draws_without_probabilities_take_any_foreground_channel():
    one_hot = np.zeros((3, 7, 7, 7), dtype=np.uint8)
    one_hot[1, 3, 3, 2] = one_hot[2, 3, 4, 4] = one_hot[1, 3, 4, 4] = 1
    one_hot[0, 2:5, 2:5, 2:5] = 1  # the background channel is never a centre by itself
    reads = []
    draw = ChannelDraw(ChannelTotals.of(one_hot, (3, 3, 3)), _reader(one_hot, reads))
    centres = draw.centres(3000, np.random.default_rng(2))
    first = (centres == [3, 3, 2]).all(axis=1).mean()
    assert ((centres == [3, 3, 2]) | (centres == [3, 4, 4])).all(axis=1).all()
    # Two voxels alike (the second in two channels counts once): sd 0.009 over 3000 draws.
    assert abs(first - 0.5) < 0.045
    assert all(channels == slice(1, None) for channels, *_ in reads)


def test_channel_tables_refuse_what_the_in_memory_sampler_refuses():
    one_hot = np.zeros((3, 9, 9, 9), dtype=np.uint8)
    one_hot[1, 4, 4, 4] = 1
    one_hot[2, 0, 0, 0] = 1  # only on the border
    totals = ChannelTotals.of(one_hot, (3, 3, 3))
    assert totals.present.tolist() == [False, True, True]
    with pytest.warns(UserWarning, match=r"channel 2 is requested .* \(only near the border"):
        ChannelDraw(totals, _reader(one_hot), {1: 1, 2: 1})
    with pytest.warns(UserWarning, match=r"channel 0 is requested .* absent$"):
        ChannelDraw(totals, _reader(one_hot), {0: 1, 1: 1})
    with pytest.raises(DataError, match="refers to channel 3 but the label map has 3 channels"):
        ChannelDraw(totals, _reader(one_hot), {1: 1, 3: 1})
    with pytest.raises(DataError, match=r"none of the requested channels \[2\]"):
        with pytest.warns(UserWarning):
            ChannelDraw(totals, _reader(one_hot), {2: 1})
    with pytest.raises(DataError, match="positive sum"):
        ChannelDraw(totals, _reader(one_hot), {1: 0})
    empty = np.zeros((2, 5, 5, 5), dtype=np.uint8)
    empty[1, 0, 2, 2] = 1
    with pytest.raises(DataError, match="no labelled voxel can be a patch centre"):
        ChannelDraw(ChannelTotals.of(empty, (3, 3, 3)), _reader(empty))
    # Negative values: an error when they would weigh the draws, as in memory.
    negative = np.zeros((2, 5, 5, 5), dtype=np.float32)
    negative[1, 2, 2, 2], negative[0, 2, 2, 1] = 1, -1
    table = ChannelTotals.of(negative, (3, 3, 3))
    with pytest.raises(DataError, match="negative values"):
        label_candidates(negative, (3, 3, 3), {1: 1})
    with pytest.raises(DataError, match="multi-channel label map contains negative values"):
        ChannelDraw(table, _reader(negative), {1: 1})
    centres = ChannelDraw(table, _reader(negative)).centres(5, np.random.default_rng(0))
    assert (centres == [2, 2, 2]).all()
