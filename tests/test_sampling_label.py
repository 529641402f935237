"""Label sampling: centres on labelled voxels, optionally balanced by class."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from patchcli.errors import DataError, PatchcliError, PatchcliWarning
from patchcli.sampling import (
    label_candidates,
    label_locations,
    subject_rng,
    valid_centre_box,
)

# Significance level of the goodness-of-fit tests. With a fixed seed each test is
# deterministic; alpha = 1e-3 means that a correct sampler would fail for only about
# one seed in a thousand, while the defects looked for (class shares following voxel
# counts instead of the requested probabilities, a class left out) shift shares by
# tens of percent, which with 10^4 draws gives p-values far below 1e-10.
ALPHA = 1e-3


def dense_map(label_map: np.ndarray, patch_size, label_probabilities=None) -> np.ndarray:
    """The normalised (X, Y, Z) centre distribution implied by label_candidates."""
    region, region_shape, flat_indices, weights = label_candidates(
        label_map, patch_size, label_probabilities
    )
    inside = np.zeros(int(np.prod(region_shape)), dtype=np.float64)
    inside[flat_indices] = 1.0 if weights is None else weights
    dense = np.zeros(label_map.shape[1:], dtype=np.float64)
    dense[region] = inside.reshape(region_shape)
    total = dense.sum()
    return dense / total if total else dense


def dense_map_quiet(label_map, patch_size, label_probabilities=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchcliWarning)
        return dense_map(label_map, patch_size, label_probabilities)


def centres_of(locations: np.ndarray, patch_size) -> tuple[np.ndarray, ...]:
    return tuple((locations[:, :3] + np.asarray(patch_size) // 2).T)


def three_class_map() -> np.ndarray:
    """12^3: class 0 the bulk, class 1 a block, class 2 a handful of voxels."""
    label_map = np.zeros((1, 12, 12, 12), dtype=np.uint8)
    label_map[0, 2:8, 3:9, 4:10] = 1
    label_map[0, 5, 5, 5] = 2
    label_map[0, 9, 9, 2:6] = 2
    label_map[0, 0, 0, 0] = 2  # on the border for P=3: never a centre
    return label_map


# ---------------------------------------------------------------------------
# REFERENCE fixtures


def test_fixture_one_axis_with_probabilities():
    label_map = np.array([0, 0, 1, 1, 2, 1, 0]).reshape(1, 1, 1, 7)
    with pytest.warns(PatchcliWarning, match="label 3"):
        dense = dense_map(label_map, (1, 1, 5), {0: 0, 1: 50, 2: 25, 3: 25})
    expected = np.array([0, 0, 1 / 4, 1 / 4, 1 / 4, 0, 0])
    np.testing.assert_allclose(dense.ravel(), expected / expected.sum())
    # The unnormalised weights are those of the reference too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchcliWarning)
        region, _, indices, weights = label_candidates(
            label_map, (1, 1, 5), {0: 0, 1: 50, 2: 25, 3: 25}
        )
    assert sorted(region[2].start + int(index) for index in indices) == [2, 3, 4]
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.25])


def test_fixture_multichannel():
    label_map = np.array([[[1, 1]], [[0, 1]]], dtype=np.float32)[..., np.newaxis]  # (2, 1, 2, 1)
    assert label_map.shape == (2, 1, 2, 1)
    dense = dense_map(label_map, (1, 1, 1), {0: 1, 1: 1})
    np.testing.assert_allclose(dense.ravel(), [1 / 4, 3 / 4])


@pytest.mark.parametrize("label_probabilities", [None, {1: 1}, {0: 0, 1: 1}])
def test_fixture_label_only_at_the_border_is_an_error(label_probabilities):
    label_map = np.zeros((1, 6, 6, 6), dtype=np.uint8)
    # Valid centres for P=4 are [2, 4] on each axis: all of these lie outside.
    for voxel in [(0, 0, 0), (5, 5, 5), (1, 3, 3), (3, 3, 5)]:
        label_map[(0, *voxel)] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="border") as error:
            label_locations(label_map, (4, 4, 4), 3, np.random.default_rng(0), label_probabilities)
    assert "\n" not in str(error.value)
    if label_probabilities is not None:
        # The class is present in the image but only near the border; say so.
        messages = [str(w.message) for w in caught if issubclass(w.category, PatchcliWarning)]
        assert any("label 1" in m and "border" in m for m in messages), messages


# ---------------------------------------------------------------------------
# Default: label > 0


def test_default_samples_only_positive_labels_uniformly():
    rng = np.random.default_rng(3)
    label_map = rng.integers(0, 4, size=(1, 6, 5, 4)).astype(np.int16)
    label_map[rng.random(label_map.shape) < 0.5] = 0
    patch_size = (3, 2, 1)
    locations = label_locations(label_map, patch_size, 6000, rng)
    assert locations.dtype == np.int64
    centres = centres_of(locations, patch_size)
    assert (label_map[0][centres] > 0).all()
    # Uniform over the positive voxels of the valid region (labels 1..3 weigh the same).
    expected = np.zeros(label_map.shape[1:])
    box = valid_centre_box(label_map.shape[1:], patch_size)
    expected[box] = label_map[0][box] > 0
    counts = np.zeros(label_map.shape[1:], dtype=np.int64)
    np.add.at(counts, centres, 1)
    assert counts[expected == 0].sum() == 0
    assert stats.chisquare(counts[expected > 0]).pvalue > ALPHA
    np.testing.assert_array_equal(dense_map(label_map, patch_size), expected / expected.sum())


def test_default_multichannel_uses_any_foreground_channel():
    # Channel 0 is the background of a one-hot map; TorchIO would sample there.
    label_map = np.zeros((3, 5, 5, 5), dtype=np.uint8)
    label_map[0] = 1
    label_map[0, 2, 2, 2] = 0
    label_map[1, 2, 2, 2] = 1
    label_map[0, 1, 3, 2] = 0
    label_map[2, 1, 3, 2] = 1
    label_map[0, 0, 0, 0] = 0  # foreground on the border: not a centre for P=3
    label_map[2, 0, 0, 0] = 1
    patch_size = (3, 3, 3)
    locations = label_locations(label_map, patch_size, 400, np.random.default_rng(0))
    centres = set(map(tuple, np.stack(centres_of(locations, patch_size), axis=1).tolist()))
    assert centres == {(2, 2, 2), (1, 3, 2)}
    expected = np.zeros((5, 5, 5))
    expected[2, 2, 2] = expected[1, 3, 2] = 0.5
    np.testing.assert_array_equal(dense_map(label_map, patch_size), expected)


def test_default_multichannel_soft_foreground():
    label_map = np.zeros((2, 3, 3, 3), dtype=np.float32)
    label_map[0] = 0.9
    label_map[1, 1, 1, 1] = 0.1
    locations = label_locations(label_map, (1, 1, 1), 50, np.random.default_rng(0))
    assert (locations[:, :3] == 1).all()


# ---------------------------------------------------------------------------
# With label_probabilities


def test_class_balance_statistics():
    label_map = three_class_map()
    patch_size = (3, 3, 3)
    draws = 30000
    locations = label_locations(
        label_map, patch_size, draws, np.random.default_rng(123), {0: 1, 1: 1, 2: 1}
    )
    labels = label_map[0][centres_of(locations, patch_size)]
    counts = np.bincount(labels, minlength=3)
    assert counts.sum() == draws
    assert stats.chisquare(counts).pvalue > ALPHA
    # Each share on its own: sd of a proportion 1/3 over 30000 draws is 0.0027,
    # so 0.015 is more than 5 sd (while voxel-count shares would be ~0.96/0.04/0.002).
    np.testing.assert_allclose(counts / draws, [1 / 3, 1 / 3, 1 / 3], atol=0.015)
    # The border voxel of class 2 at (0, 0, 0) is never a centre (its patch would start at -1).
    assert (locations[:, :3] >= 0).all()


def test_unequal_class_probabilities():
    label_map = three_class_map()
    patch_size = (3, 3, 3)
    draws = 20000
    locations = label_locations(
        label_map, patch_size, draws, np.random.default_rng(7), {0: 0.2, 1: 0.5, 2: 0.3}
    )
    counts = np.bincount(label_map[0][centres_of(locations, patch_size)], minlength=3)
    assert stats.chisquare(counts, np.array([0.2, 0.5, 0.3]) * draws).pvalue > ALPHA


def test_each_class_spread_evenly_over_its_voxels_in_the_region():
    label_map = three_class_map()
    patch_size = (3, 3, 3)
    dense = dense_map(label_map, patch_size, {0: 1, 1: 2, 2: 3})
    box = valid_centre_box(label_map.shape[1:], patch_size)
    inside = np.zeros(label_map.shape[1:], dtype=bool)
    inside[box] = True
    for label, probability in {0: 1 / 6, 1: 2 / 6, 2: 3 / 6}.items():
        members = (label_map[0] == label) & inside
        np.testing.assert_allclose(dense[members], probability / members.sum())
        assert dense[(label_map[0] == label) & ~inside].sum() == 0
    np.testing.assert_allclose(dense.sum(), 1.0)


def test_label_not_in_dict_or_with_zero_probability_is_never_sampled():
    label_map = three_class_map()
    patch_size = (3, 3, 3)
    for label_probabilities in ({1: 1, 2: 1}, {0: 0, 1: 1, 2: 1}):
        locations = label_locations(
            label_map, patch_size, 2000, np.random.default_rng(0), label_probabilities
        )
        assert (label_map[0][centres_of(locations, patch_size)] > 0).all()


def test_absent_label_warns_and_its_mass_goes_to_the_others():
    label_map = three_class_map()
    patch_size = (3, 3, 3)
    with pytest.warns(PatchcliWarning, match="label 9") as record:
        with_absent = dense_map(label_map, patch_size, {1: 1, 2: 1, 9: 5})
    assert all("\n" not in str(w.message) for w in record)
    without = dense_map(label_map, patch_size, {1: 1, 2: 1})
    np.testing.assert_allclose(with_absent, without)
    # The remaining classes keep their relative shares (1 : 1), not 1 : 1 : 5.
    shares = [with_absent[label_map[0] == label].sum() for label in (1, 2)]
    np.testing.assert_allclose(shares, [0.5, 0.5])


def test_absent_channel_warns_and_its_mass_goes_to_the_others():
    label_map = np.zeros((3, 5, 5, 5), dtype=np.float32)
    label_map[0] = 1
    label_map[1, 2, 2, 2] = 1
    with pytest.warns(PatchcliWarning, match="channel 2"):
        dense = dense_map(label_map, (3, 3, 3), {0: 1, 1: 1, 2: 2})
    assert dense[2, 2, 2] == pytest.approx(0.5 + 0.5 / 27)
    np.testing.assert_allclose(dense.sum(), 1.0)


def test_all_requested_labels_absent_is_an_error():
    label_map = three_class_map()
    with pytest.warns(PatchcliWarning):
        with pytest.raises(DataError, match="border"):
            label_locations(label_map, (3, 3, 3), 2, np.random.default_rng(0), {7: 1, 8: 1})


def test_all_requested_channels_absent_is_an_error():
    label_map = np.zeros((3, 5, 5, 5), dtype=np.uint8)
    label_map[0] = 1
    with pytest.warns(PatchcliWarning, match="channel"):
        with pytest.raises(DataError):
            label_locations(label_map, (3, 3, 3), 2, np.random.default_rng(0), {1: 1, 2: 1})


def test_empty_label_map_by_default_is_an_error():
    with pytest.raises(DataError, match="border"):
        label_locations(np.zeros((1, 5, 5, 5)), (3, 3, 3), 2, np.random.default_rng(0))


@pytest.mark.parametrize("channel", [3, 10, -1])
def test_channel_index_out_of_range_is_an_error(channel):
    label_map = np.zeros((3, 5, 5, 5), dtype=np.uint8)
    label_map[1] = 1
    with pytest.raises(DataError, match=f"channel {channel}") as error:
        label_locations(label_map, (3, 3, 3), 2, np.random.default_rng(0), {1: 1, channel: 1})
    assert "3 channels" in str(error.value)


@pytest.mark.parametrize("label_probabilities", [{1: -1, 2: 2}, {1: 0, 2: 0}, {}])
def test_invalid_probabilities_are_an_error(label_probabilities):
    with pytest.raises(DataError, match="label_probabilities"):
        label_locations(
            three_class_map(), (3, 3, 3), 2, np.random.default_rng(0), label_probabilities
        )


@pytest.mark.parametrize(
    "label_probabilities",
    [{1: float("nan"), 2: 1}, {1: float("inf"), 2: 1}, {1: float("nan")}, {1: 1, 2: -float("inf")}],
)
def test_non_finite_probabilities_are_an_error(label_probabilities):
    # YAML (.nan, .inf) and the config model both let these through; unchecked,
    # a NaN weight makes every draw pick the first candidate.
    with pytest.raises(PatchcliError, match="label_probabilities"):
        label_locations(
            three_class_map(), (3, 3, 3), 20, np.random.default_rng(0), label_probabilities
        )


def test_negative_or_nan_multichannel_values_are_an_error():
    label_map = np.zeros((2, 5, 5, 5), dtype=np.float32)
    label_map[1, 2, 2, 2] = 1
    label_map[0, 2, 2, 3] = -1
    with pytest.raises(DataError, match="negative"):
        label_locations(label_map, (3, 3, 3), 2, np.random.default_rng(0), {0: 1, 1: 1})
    label_map[0, 2, 2, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        label_locations(label_map, (3, 3, 3), 2, np.random.default_rng(0), {0: 1, 1: 1})


def test_patch_larger_than_label_map_is_an_error():
    with pytest.raises(DataError, match="cannot be larger than image size"):
        label_locations(np.ones((1, 4, 4, 4)), (5, 4, 4), 1, np.random.default_rng(0))


def test_probability_keys_and_values_may_be_numpy_numbers():
    # Values from YAML or the command line may arrive as floats or numpy numbers.
    label_map = three_class_map()
    a = dense_map(label_map, (3, 3, 3), {0: 1, 1: 1, 2: 2})
    b = dense_map(label_map, (3, 3, 3), {np.int64(0): 0.25, 1: np.float32(0.25), 2: 0.5})
    np.testing.assert_allclose(a, b)


def test_float_label_values_match_integer_keys():
    label_map = three_class_map()
    a = dense_map(label_map, (3, 3, 3), {1: 1, 2: 1})
    b = dense_map(label_map.astype(np.float32), (3, 3, 3), {1: 1, 2: 1})
    np.testing.assert_allclose(a, b)


def test_same_seed_same_locations():
    label_map = three_class_map()
    a = label_locations(label_map, (3, 3, 3), 100, subject_rng(1, 4), {0: 1, 1: 1, 2: 1})
    b = label_locations(label_map, (3, 3, 3), 100, subject_rng(1, 4), {0: 1, 1: 1, 2: 1})
    np.testing.assert_array_equal(a, b)
    c = label_locations(label_map, (3, 3, 3), 100, subject_rng(1, 5), {0: 1, 1: 1, 2: 1})
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------
# TorchIO parity


def _torchio_dense(torchio, torch, label_map, patch_size, label_probabilities) -> np.ndarray:
    probability_map = torchio.LabelSampler.get_probabilities_from_label_map(
        torch.from_numpy(label_map.astype(np.float32)),
        label_probabilities,
        np.array(patch_size),
    )
    dense = probability_map.numpy()[0].astype(np.float64)
    return dense / dense.sum()


def test_probabilities_equal_torchio_single_channel(torchio, torch):
    rng = np.random.default_rng(2024)
    compared = 0
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 9, size=3))
        patch_size = tuple(int(rng.integers(1, n + 1)) for n in shape)
        label_map = rng.integers(0, 4, size=(1, *shape)).astype(np.int16)
        keys = rng.choice(5, size=int(rng.integers(1, 5)), replace=False)  # label 4 never present
        label_probabilities = {int(key): float(rng.integers(0, 4)) for key in keys}
        if sum(label_probabilities.values()) == 0:
            continue
        ours = dense_map_quiet(label_map, patch_size, label_probabilities)
        if ours.sum() == 0:
            continue  # nothing to sample: we raise, TorchIO returns an all-zero map
        theirs = _torchio_dense(torchio, torch, label_map, patch_size, label_probabilities)
        # float32 in TorchIO, float64 here.
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
        compared += 1
    assert compared > 30


def test_probabilities_equal_torchio_multichannel(torchio, torch):
    rng = np.random.default_rng(99)
    compared = 0
    for case in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 8, size=3))
        patch_size = tuple(int(rng.integers(1, n + 1)) for n in shape)
        channels = int(rng.integers(2, 5))
        if case % 2:
            # One-hot.
            labels = rng.integers(0, channels, size=shape)
            label_map = (labels[np.newaxis] == np.arange(channels)[:, None, None, None]).astype(
                np.float32
            )
        else:
            # Soft, with zeros.
            label_map = rng.random((channels, *shape)).astype(np.float32)
            label_map[rng.random(label_map.shape) < 0.4] = 0
        keys = rng.choice(channels, size=int(rng.integers(1, channels + 1)), replace=False)
        label_probabilities = {int(key): float(rng.integers(1, 4)) for key in keys}
        ours = dense_map_quiet(label_map, patch_size, label_probabilities)
        if ours.sum() == 0:
            continue
        theirs = _torchio_dense(torchio, torch, label_map, patch_size, label_probabilities)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
        compared += 1
    assert compared > 20


def _torchio_default_map(torchio, torch, label_map, patch_size) -> np.ndarray:
    subject = torchio.Subject(label=torchio.LabelMap(tensor=torch.from_numpy(label_map)))
    sampler = torchio.LabelSampler(patch_size)
    return sampler.process_probability_map(sampler.get_probability_map(subject), subject)


def test_default_single_channel_equals_torchio(torchio, torch):
    rng = np.random.default_rng(5)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(3, 9, size=3))
        patch_size = tuple(int(rng.integers(1, n + 1)) for n in shape)
        label_map = rng.integers(0, 3, size=(1, *shape)).astype(np.int16)
        ours = dense_map(label_map, patch_size)
        if ours.sum() == 0:
            continue
        theirs = _torchio_default_map(torchio, torch, label_map, patch_size)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_default_multichannel_differs_from_torchio_on_purpose(torchio, torch):
    """TorchIO samples channel 0 (the background of a one-hot map); we sample foreground."""
    labels = np.zeros((5, 5, 5), dtype=np.int64)
    labels[2, 2, 2] = 1
    label_map = (labels[np.newaxis] == np.arange(2)[:, None, None, None]).astype(np.uint8)
    theirs = _torchio_default_map(torchio, torch, label_map, (3, 3, 3))
    assert theirs[2, 2, 2] == 0 and theirs.sum() > 0  # TorchIO: background only
    ours = dense_map(label_map, (3, 3, 3))
    assert ours[2, 2, 2] == 1.0


def test_error_names_the_requested_labels_when_none_is_present():
    label_map = np.zeros((1, 9, 9, 9), dtype=np.uint8)
    label_map[0, 4, 4, 4] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"none of the requested labels \[5, 7\]"):
            label_locations(label_map, (3, 3, 3), 2, np.random.default_rng(0), {5: 1, 7: 2})
