"""Sampling tables (patchcli.sampling.tables): the label runs and row totals of a volume
store give exactly the distributions of the in-memory label and weighted samplers."""

from __future__ import annotations

import numpy as np
import pytest

from patchcli.errors import DataError
from patchcli.sampling.label import label_candidates
from patchcli.sampling.tables import LabelRuns, RowDraw, RowTotals, RunDraw
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
