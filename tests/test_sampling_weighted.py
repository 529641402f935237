"""Weighted sampling: centres follow the border-cleared, normalised probability map."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from patchcli.errors import DataError
from patchcli.sampling import subject_rng, valid_centre_box, weighted_locations
from patchcli.sampling.weighted import draw_from_candidates

# Significance level of the goodness-of-fit tests. With a fixed seed each test is
# deterministic; alpha = 1e-3 means that a correct sampler would fail for only about
# one seed in a thousand. The defects looked for (no border clearing, centre/start
# off by one, a wrong channel, unnormalised weights) move whole cells of mass, which
# with the 10^4 draws used here gives p-values below 1e-10; the tests named
# *_has_power check this on the same counts.
ALPHA = 1e-3


def cleared_map(probability_map: np.ndarray, patch_size) -> np.ndarray:
    """The REFERENCE's expected distribution: zero the borders, normalise."""
    expected = np.zeros(probability_map.shape, dtype=np.float64)
    box = valid_centre_box(probability_map.shape, patch_size)
    expected[box] = probability_map[box]
    return expected / expected.sum()


def centre_histogram(locations: np.ndarray, shape, patch_size) -> np.ndarray:
    """Counts of patch centres (start + P // 2) over the volume."""
    centres = locations[:, :3] + np.asarray(patch_size) // 2
    counts = np.zeros(shape, dtype=np.int64)
    np.add.at(counts, tuple(centres.T), 1)
    return counts


def chi_square_pvalue(counts: np.ndarray, expected_probabilities: np.ndarray) -> float:
    """Goodness of fit on the cells of positive expected probability.

    Cells of zero probability are checked separately (they must be exactly empty).
    """
    support = expected_probabilities > 0
    observed = counts[support]
    expected = expected_probabilities[support] * counts.sum()
    return float(stats.chisquare(observed, expected).pvalue)


def small_random_map(seed: int = 0, shape=(6, 5, 4)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    probability_map = rng.integers(0, 6, size=shape).astype(np.float64)
    probability_map[rng.random(shape) < 0.3] = 0  # some holes inside the valid region
    return probability_map


# ---------------------------------------------------------------------------
# Exact cases


@pytest.mark.parametrize(
    ("patch_size", "start"),
    [
        ((5, 5, 5), (1, 1, 1)),
        ((4, 4, 4), (1, 1, 1)),
        ((5, 4, 1), (1, 1, 3)),
        ((7, 7, 7), (0, 0, 0)),
    ],
)
def test_single_voxel_map_7_cubed(patch_size, start):
    probability_map = np.zeros((7, 7, 7))
    probability_map[3, 3, 3] = 1
    locations = weighted_locations(probability_map, patch_size, 20, np.random.default_rng(0))
    assert locations.dtype == np.int64
    assert locations.shape == (20, 6)
    assert (locations[:, :3] == start).all()
    assert (locations[:, 3:] == np.add(start, patch_size)).all()


def test_even_patch_centre_is_at_offset_half_the_size():
    # Positive voxel at (2, 2, 2): a patch of size 4 centred there starts at 0
    # (centre offset 4 / 2 = 2); the voxel at (1, 1, 1) cannot be a centre for P=4.
    probability_map = np.zeros((6, 6, 6))
    probability_map[2, 2, 2] = 1
    probability_map[1, 1, 1] = 100
    locations = weighted_locations(probability_map, (4, 4, 4), 50, np.random.default_rng(0))
    assert (locations[:, :3] == 0).all()


def test_locations_lie_inside_the_volume():
    probability_map = np.ones((9, 8, 7))
    patch_size = (4, 5, 7)
    locations = weighted_locations(probability_map, patch_size, 5000, np.random.default_rng(3))
    assert (locations[:, :3] >= 0).all()
    assert (locations[:, 3:] <= [9, 8, 7]).all()
    # With a uniform map every valid start is reachable, including both extremes.
    for axis, (size, patch) in enumerate(zip((9, 8, 7), patch_size, strict=True)):
        assert set(locations[:, axis].tolist()) == set(range(size - patch + 1))


# ---------------------------------------------------------------------------
# Statistics


def test_chi_square_centres_follow_the_cleared_normalised_map():
    probability_map = small_random_map(0)
    patch_size = (3, 2, 3)
    locations = weighted_locations(probability_map, patch_size, 20000, np.random.default_rng(11))
    counts = centre_histogram(locations, probability_map.shape, patch_size)
    expected = cleared_map(probability_map, patch_size)
    # Cells of zero probability (borders, holes) are never drawn.
    assert counts[expected == 0].sum() == 0
    assert chi_square_pvalue(counts, expected) > ALPHA


def test_chi_square_has_power():
    """The same counts clearly reject the raw (uncleared) map and a flat map."""
    probability_map = small_random_map(0)
    patch_size = (3, 2, 3)
    locations = weighted_locations(probability_map, patch_size, 20000, np.random.default_rng(11))
    counts = centre_histogram(locations, probability_map.shape, patch_size)
    uncleared = probability_map / probability_map.sum()
    assert chi_square_pvalue(counts, uncleared) < 1e-10
    flat = (cleared_map(probability_map, patch_size) > 0).astype(np.float64)
    assert chi_square_pvalue(counts, flat / flat.sum()) < 1e-10


def test_seed_documentation_2x9_example():
    # The seed documentation's map, as a (2, 9, 1) volume. Patch (1, 1, 1) clears
    # nothing, so the histogram follows the raw map: proportions over 29.
    probability_map = np.array(
        [[0, 0, 1, 1, 5, 2, 1, 1, 0], [2, 2, 2, 2, 2, 2, 2, 2, 2]], dtype=np.float64
    )[..., np.newaxis]
    assert probability_map.sum() == 29
    draws = 29000
    locations = weighted_locations(probability_map, (1, 1, 1), draws, np.random.default_rng(29))
    counts = centre_histogram(locations, probability_map.shape, (1, 1, 1))[..., 0]
    assert counts[0, [0, 1, 8]].tolist() == [0, 0, 0]
    assert chi_square_pvalue(counts, probability_map[..., 0] / 29) > ALPHA
    # Also each proportion on its own: the standard deviation of a proportion p
    # over 29000 draws is at most sqrt(0.25 / 29000) = 0.003, so 0.012 is 4 sd.
    np.testing.assert_allclose(counts / draws, probability_map[..., 0] / 29, atol=0.012)


def test_zero_probability_voxels_are_never_chosen():
    rng = np.random.default_rng(4)
    shape = (10, 9, 8)
    probability_map = rng.random(shape)
    probability_map[rng.random(shape) < 0.8] = 0
    # Tiny positive weights next to large ones are still positive, zeros stay zero.
    probability_map[5, 5, 5] = 1e-300
    patch_size = (3, 3, 3)
    locations = weighted_locations(probability_map, patch_size, 50000, rng)
    centres = locations[:, :3] + 1
    assert (probability_map[tuple(centres.T)] > 0).all()


def test_huge_finite_values_do_not_overflow_the_cumulative_sum():
    # Each value is finite but their float64 sum is not: a raw cumulative sum ends
    # in inf and every draw lands on the last voxel. Equal weights must stay equal.
    probability_map = np.zeros((1, 1, 4))
    probability_map[0, 0, [1, 3]] = 1e308
    locations = weighted_locations(probability_map, (1, 1, 1), 2000, np.random.default_rng(0))
    counts = np.bincount(locations[:, 2], minlength=4)
    assert counts[[0, 2]].tolist() == [0, 0]
    # 1000 expected each, sd 22: 800 is 9 sd away.
    assert counts[1] > 800 and counts[3] > 800, counts


class ExtremeDraws:
    """A stand-in generator whose ``random`` returns chosen values in [0, 1)."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, size):
        assert size == len(self.values)
        return self.values.copy()


def test_extreme_uniform_draws_never_pick_zero_probability_voxels():
    # Zeros before, between and after the positive voxels in C order. A draw of
    # exactly 0 (u = 0 in TorchIO's terms) must not select the leading zeros, and
    # the largest draw must not run past the last positive voxel.
    probability_map = np.zeros((1, 1, 8))
    probability_map[0, 0, [2, 5]] = [1.0, 2.0]
    largest_below_one = np.nextafter(1.0, 0.0)
    locations = weighted_locations(
        probability_map, (1, 1, 1), 3, ExtremeDraws([0.0, largest_below_one, 0.5])
    )
    assert locations[:, 2].tolist() == [5, 2, 5]


def test_draw_from_candidates_equal_weights():
    candidates = np.array([3, 8, 13])
    draws = draw_from_candidates(candidates, None, 3000, np.random.default_rng(0))
    assert set(draws.tolist()) == {3, 8, 13}


# ---------------------------------------------------------------------------
# Input forms and errors


def test_first_channel_only():
    probability_map = np.ones((3, 7, 7, 7))
    probability_map[0] = 0
    probability_map[0, 3, 2, 4] = 1
    locations = weighted_locations(probability_map, (3, 3, 3), 100, np.random.default_rng(0))
    assert (locations[:, :3] == [2, 1, 3]).all()


def test_three_and_four_dimensional_maps_agree():
    probability_map = small_random_map(1)
    patch_size = (3, 3, 1)
    three = weighted_locations(probability_map, patch_size, 200, np.random.default_rng(5))
    four = weighted_locations(
        probability_map[np.newaxis], patch_size, 200, np.random.default_rng(5)
    )
    np.testing.assert_array_equal(three, four)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_map_dtype_does_not_change_the_draws(dtype):
    probability_map = small_random_map(2)
    patch_size = (3, 2, 1)
    reference = weighted_locations(probability_map, patch_size, 300, np.random.default_rng(9))
    result = weighted_locations(
        probability_map.astype(dtype), patch_size, 300, np.random.default_rng(9)
    )
    np.testing.assert_array_equal(result, reference)


def test_boolean_map_is_uniform_over_true_voxels():
    probability_map = np.zeros((5, 5, 5), dtype=bool)
    probability_map[2, 1:4, 2] = True
    locations = weighted_locations(probability_map, (3, 3, 3), 3000, np.random.default_rng(1))
    centres = locations[:, :3] + 1
    assert (centres[:, [0, 2]] == 2).all()
    assert set(centres[:, 1].tolist()) == {1, 2, 3}
    # 1000 expected per voxel; see ALPHA.
    assert stats.chisquare(np.bincount(centres[:, 1])[1:]).pvalue > ALPHA


@pytest.mark.parametrize(
    ("value", "match"),
    [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")],
)
@pytest.mark.parametrize("where", [(3, 3, 3), (0, 0, 0)])  # inside, and on the cleared border
def test_invalid_values_are_errors(value, match, where):
    probability_map = np.ones((1, 7, 7, 7))
    probability_map[(0, *where)] = value
    with pytest.raises(DataError, match=match) as error:
        weighted_locations(probability_map, (3, 3, 3), 5, np.random.default_rng(0))
    assert "\n" not in str(error.value)


def test_negative_integer_map_is_an_error():
    probability_map = np.ones((7, 7, 7), dtype=np.int16)
    probability_map[1, 2, 3] = -2
    with pytest.raises(DataError, match="negative"):
        weighted_locations(probability_map, (1, 1, 1), 5, np.random.default_rng(0))


@pytest.mark.parametrize(
    "positive_voxels",
    [
        [(0, 0, 0), (5, 5, 5), (1, 3, 3)],  # all within the cleared border for P=4
        [],  # an all-zero map
    ],
)
def test_empty_after_border_clearing_is_an_error_mentioning_the_border(positive_voxels):
    probability_map = np.zeros((6, 6, 6))
    for voxel in positive_voxels:
        probability_map[voxel] = 1
    with pytest.raises(DataError, match="border") as error:
        weighted_locations(probability_map, (4, 4, 4), 5, np.random.default_rng(0))
    message = str(error.value)
    assert "(4, 4, 4)" in message
    assert "\n" not in message


def test_patch_larger_than_map_is_an_error():
    with pytest.raises(DataError, match="cannot be larger than image size"):
        weighted_locations(np.ones((1, 4, 5, 6)), (5, 5, 5), 1, np.random.default_rng(0))


def test_zero_patches():
    locations = weighted_locations(np.ones((4, 4, 4)), (2, 2, 2), 0, np.random.default_rng(0))
    assert locations.shape == (0, 6)


# ---------------------------------------------------------------------------
# Determinism


def test_same_seed_same_locations():
    probability_map = small_random_map(3, shape=(12, 11, 10))
    a = weighted_locations(probability_map, (5, 4, 3), 100, subject_rng(42, 0))
    b = weighted_locations(probability_map, (5, 4, 3), 100, subject_rng(42, 0))
    np.testing.assert_array_equal(a, b)
    c = weighted_locations(probability_map, (5, 4, 3), 100, subject_rng(43, 0))
    assert not np.array_equal(a, c)


def test_subjects_are_independent_of_each_other():
    maps = [small_random_map(seed, shape=(12, 11, 10)) for seed in range(4)]

    def draw(index: int, num_patches: int = 50) -> np.ndarray:
        return weighted_locations(maps[index], (3, 3, 3), num_patches, subject_rng(5, index))

    forward = [draw(index) for index in range(4)]
    # Processing order (e.g. workers or shards) and other subjects' patch counts
    # do not matter: each subject depends only on (seed, its index).
    backward = {index: draw(index) for index in (3, 1, 2, 0)}
    for index in range(4):
        np.testing.assert_array_equal(forward[index], backward[index])
    draw(0, num_patches=999)
    np.testing.assert_array_equal(draw(1), forward[1])
    # The same map under two subject indices gives different draws.
    same_map_other_subject = weighted_locations(maps[0], (3, 3, 3), 50, subject_rng(5, 1))
    assert not np.array_equal(forward[0], same_map_other_subject)


def test_first_draws_do_not_depend_on_the_number_of_patches():
    probability_map = small_random_map(6)
    few = weighted_locations(probability_map, (3, 3, 1), 10, np.random.default_rng(8))
    many = weighted_locations(probability_map, (3, 3, 1), 500, np.random.default_rng(8))
    np.testing.assert_array_equal(few, many[:10])


# ---------------------------------------------------------------------------
# TorchIO parity


def test_border_clearing_equals_torchio(torchio):
    shape = (7, 6, 5)
    for pi in range(1, 8):
        for pj in range(1, 7):
            for pk in (1, 2, 3, 4, 5):
                patch_size = (pi, pj, pk)
                cleared = np.ones(shape)
                torchio.WeightedSampler.clear_probability_borders(
                    cleared, np.array(patch_size, dtype=np.uint16)
                )
                ours = np.zeros(shape, dtype=bool)
                ours[valid_centre_box(shape, patch_size)] = True
                np.testing.assert_array_equal(cleared > 0, ours, err_msg=str(patch_size))


def _torchio_subject(torchio, torch, probability_map: np.ndarray):
    tensor = torch.from_numpy(probability_map[np.newaxis].astype(np.float32))
    return torchio.Subject(
        image=torchio.ScalarImage(tensor=torch.zeros_like(tensor)),
        sampling_map=torchio.Image(tensor=tensor, type=torchio.SAMPLING_MAP),
    )


def test_statistics_match_torchio(torchio, torch):
    """Our centres and TorchIO's WeightedSampler's both fit the same distribution."""
    probability_map = small_random_map(7, shape=(5, 4, 3))
    patch_size = (3, 2, 1)
    expected = cleared_map(probability_map, patch_size)
    # 4000 draws over about ten cells: at least ~100 expected per cell (chi-square
    # approximation is good), and fast through TorchIO's per-patch cropping.
    draws = 4000

    ours = weighted_locations(probability_map, patch_size, draws, np.random.default_rng(17))
    ours_counts = centre_histogram(ours, probability_map.shape, patch_size)

    subject = _torchio_subject(torchio, torch, probability_map)
    sampler = torchio.WeightedSampler(patch_size, "sampling_map")
    torch.manual_seed(17)
    theirs = np.array(
        [patch[torchio.LOCATION].numpy() for patch in sampler(subject, num_patches=draws)]
    )
    theirs_counts = centre_histogram(theirs, probability_map.shape, patch_size)

    for counts in (ours_counts, theirs_counts):
        assert counts[expected == 0].sum() == 0
        assert chi_square_pvalue(counts, expected) > ALPHA
    # And the two histograms are consistent with each other (contingency test).
    support = expected > 0
    table = np.stack([ours_counts[support], theirs_counts[support]])
    assert stats.chi2_contingency(table).pvalue > ALPHA


def test_same_uniform_draw_gives_the_same_centre_as_torchio(torchio, torch):
    """Inverse transform sampling is the same function of u as TorchIO's."""
    probability_map = small_random_map(8, shape=(6, 5, 4))
    patch_size = (3, 2, 3)
    sampler = torchio.WeightedSampler(patch_size, "sampling_map")
    subject = _torchio_subject(torchio, torch, probability_map)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed = sampler.process_probability_map(sampler.get_probability_map(subject), subject)
    cdf = sampler.get_cumulative_distribution_function(processed)
    compared = 0
    for seed in range(300):
        torch.manual_seed(seed)
        u = torch.rand(1).item()
        # Skip draws within rounding distance of a CDF step, where the two
        # (equivalent) CDFs may round differently.
        if np.abs(cdf - u * cdf[-1]).min() < 1e-9:
            continue
        torch.manual_seed(seed)
        their_centre = torchio.WeightedSampler.sample_probability_map(processed, cdf)
        # Our draws are 1 - random(), so feed random() = 1 - u.
        ours = weighted_locations(probability_map, patch_size, 1, ExtremeDraws([1.0 - u]))
        np.testing.assert_array_equal(ours[0, :3] + np.array(patch_size) // 2, their_centre)
        compared += 1
    assert compared > 290


@pytest.mark.parametrize("count", [1, 2, 7, 1000, 100_003])
@pytest.mark.parametrize("value", [1, 0.25, 200])
def test_equal_weights_draw_exactly_what_the_cumulative_search_draws(count, value):
    # Masks take a shortcut (no cumulative sum); it must give the very same draws.
    indices = np.arange(count, dtype=np.int64) * 3
    weights = np.full(count, value, dtype=np.asarray(value).dtype)
    for seed in range(4):
        fast = draw_from_candidates(indices, weights, 300, np.random.default_rng(seed))
        scaled = weights.astype(np.float64) / weights.max()
        cdf = np.cumsum(scaled)
        rng = np.random.default_rng(seed)
        draws = (1.0 - rng.random(300)) * cdf[-1]
        expected = indices[np.searchsorted(cdf, draws, side="left")]
        np.testing.assert_array_equal(fast, expected)
