"""Uniform sampling: each axis start uniform on [0, N - P] inclusive."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from patchcli.errors import DataError
from patchcli.sampling import subject_rng, uniform_locations

# Significance level of the goodness-of-fit tests. With a fixed seed each test is
# deterministic; alpha = 1e-3 means that a correct sampler would fail for only about
# one seed in a thousand, while the defects these tests look for (an excluded end,
# an off-by-one range, a dependence between axes) leave some cells with zero or
# doubled counts, which with thousands of draws gives p-values far below 1e-10.
ALPHA = 1e-3


def test_shape_dtype_and_exclusive_ends():
    locations = uniform_locations((20, 13, 7), (5, 1, 7), 50, np.random.default_rng(0))
    assert locations.shape == (50, 6)
    assert locations.dtype == np.int64
    np.testing.assert_array_equal(locations[:, 3:] - locations[:, :3], np.tile([5, 1, 7], (50, 1)))


def test_starts_cover_zero_to_n_minus_p_inclusive():
    shape, patch_size = (20, 13, 7), (5, 1, 3)
    # 3000 draws over at most 16 values per axis: the chance that one given value
    # is never drawn is (15/16) ** 3000 < 1e-80, so both ends must appear.
    locations = uniform_locations(shape, patch_size, 3000, np.random.default_rng(1))
    starts = locations[:, :3]
    for axis in range(3):
        highest = shape[axis] - patch_size[axis]
        assert starts[:, axis].min() == 0
        assert starts[:, axis].max() == highest
        assert set(starts[:, axis].tolist()) == set(range(highest + 1))
    assert (locations[:, 3:] <= np.array(shape)).all()


def test_patch_as_large_as_image_starts_at_zero():
    locations = uniform_locations((6, 5, 4), (6, 5, 4), 10, np.random.default_rng(0))
    assert (locations[:, :3] == 0).all()
    assert (locations[:, 3:] == [6, 5, 4]).all()


def test_two_dimensional_image_keeps_last_axis_at_zero():
    locations = uniform_locations((10, 10, 1), (4, 4, 1), 200, np.random.default_rng(0))
    assert (locations[:, 2] == 0).all()
    assert (locations[:, 5] == 1).all()
    assert locations[:, :2].max() == 6


def test_patch_larger_than_image_is_an_error():
    with pytest.raises(DataError, match=r"cannot be larger than image size \(6, 5, 4\)"):
        uniform_locations((6, 5, 4), (6, 6, 4), 1, np.random.default_rng(0))


def test_zero_patches():
    locations = uniform_locations((6, 5, 4), (2, 2, 2), 0, np.random.default_rng(0))
    assert locations.shape == (0, 6)
    assert locations.dtype == np.int64


def test_chi_square_joint_uniformity_on_a_small_volume():
    # Starts take 4 x 3 x 2 = 24 values; testing the joint histogram also checks
    # that the axes are independent. 24000 draws: 1000 expected per cell.
    shape, patch_size = (6, 5, 4), (3, 3, 3)
    locations = uniform_locations(shape, patch_size, 24000, np.random.default_rng(2024))
    counts = np.zeros((4, 3, 2), dtype=np.int64)
    np.add.at(counts, tuple(locations[:, :3].T), 1)
    assert counts.min() > 0
    result = stats.chisquare(counts.ravel())
    assert result.pvalue > ALPHA, result


def test_same_seed_same_locations_and_subjects_independent():
    def draw(subject_index: int) -> np.ndarray:
        return uniform_locations((30, 20, 10), (8, 8, 4), 25, subject_rng(3, subject_index))

    forward = [draw(index) for index in range(3)]
    backward = [draw(index) for index in reversed(range(3))][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0], forward[1])
    other_seed = uniform_locations((30, 20, 10), (8, 8, 4), 25, subject_rng(4, 0))
    assert not np.array_equal(forward[0], other_seed)


@pytest.mark.parametrize("sampler", ["uniform", "weighted", "label", "grid"])
@pytest.mark.parametrize("blocks", [[1, 1, 1, 37], [7, 33], [40]])
def test_location_streams_draw_what_one_call_draws(sampler, blocks):
    from patchcli.sampling import grid_locations, label_locations, weighted_locations
    from patchcli.sampling.stream import LocationStream

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (1, 30, 28, 26)).astype(np.uint8)
    weights = rng.random((1, 30, 28, 26))
    weights[0, :10] = 0
    volumes = {"seg": labels, "prob": weights}
    size = (8, 6, 5)
    total = sum(blocks)
    if sampler == "uniform":
        expected = uniform_locations((30, 28, 26), size, total, np.random.default_rng(9))
    elif sampler == "weighted":
        expected = weighted_locations(weights, size, total, np.random.default_rng(9))
    elif sampler == "label":
        probabilities = {0: 1, 2: 3}
        expected = label_locations(labels, size, total, np.random.default_rng(9), probabilities)
    else:
        expected = grid_locations((30, 28, 26), size, (2, 2, 2))[:total]
    stream = LocationStream(
        sampler,
        volumes,
        size,
        np.random.default_rng(9),
        probability_map="prob",
        label_name="seg",
        label_probabilities={0: 1, 2: 3},
        patch_overlap=(2, 2, 2),
    )
    drawn = np.concatenate([stream.take(count) for count in blocks])
    np.testing.assert_array_equal(drawn, expected)
