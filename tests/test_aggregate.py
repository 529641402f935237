"""Tests of patchcli.aggregate.aggregator: GridAggregator, hann_window and output_affine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchcli.aggregate import GridAggregator, hann_window, output_affine
from patchcli.errors import ConfigError, DataError

from .aggregate_helpers import grid_patches, make_affine, pool, reference_locations

# --- Helpers ----------------------------------------------------------------------


def naive_average(shape, patches, locations, weights=None) -> np.ndarray:
    """float64 reference: per-voxel weighted mean, one voxel at a time."""
    channels = patches.shape[1]
    sums = np.zeros((channels, *shape))
    counts = np.zeros(shape)
    window = np.ones(patches.shape[2:]) if weights is None else weights
    for patch, (a, b, c, d, e, f) in zip(patches.astype(np.float64), locations, strict=True):
        sums[:, a:d, b:e, c:f] += patch * window
        counts[a:d, b:e, c:f] += window
    return sums / counts


def aggregate(shape, patch_size, overlap, patches, locations, batch_size=3, **kwargs):
    aggregator = GridAggregator(shape, patch_size, overlap, **kwargs)
    for first in range(0, len(patches), batch_size):
        aggregator.add_batch(
            patches[first : first + batch_size], locations[first : first + batch_size]
        )
    return aggregator.get_output()


# --- TorchIO's fixture (REFERENCE.md) --------------------------------------------


def fixture_batch():
    """1x4x4 volume, patch (1, 3, 3), overlap (0, 2, 2), patches 0, 2, 4, 6 by origin."""
    locations = reference_locations((1, 4, 4), (1, 3, 3), (0, 2, 2))
    values = {(0, 0): 0, (0, 1): 2, (1, 0): 4, (1, 1): 6}
    patches = np.stack(
        [np.full((1, 1, 3, 3), values[(j, k)], np.float32) for _, j, k, *_ in locations]
    )
    return patches, locations


FIXTURE_EXPECTED = {
    "crop": [[0, 0, 2, 2], [0, 0, 2, 2], [4, 4, 6, 6], [4, 4, 6, 6]],
    "average": [[0, 1, 1, 2], [2, 3, 3, 4], [2, 3, 3, 4], [4, 5, 5, 6]],
    "hann": [[(v + 4 * r) / 3 for v in (0, 2, 4, 6)] for r in range(4)],
}


@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
def test_torchio_fixture(mode):
    patches, locations = fixture_batch()
    output = aggregate((1, 4, 4), (1, 3, 3), (0, 2, 2), patches, locations, overlap_mode=mode)
    assert output.shape == (1, 1, 4, 4)
    # float32 arithmetic on small values: 1e-6 covers the Hann window's rounding.
    np.testing.assert_allclose(output[0, 0], FIXTURE_EXPECTED[mode], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
def test_torchio_fixture_matches_torchio(torchio, torch, mode):
    patches, locations = fixture_batch()
    subject = torchio.Subject(image=torchio.ScalarImage(tensor=torch.zeros(1, 1, 4, 4)))
    sampler = torchio.GridSampler(subject, (1, 3, 3), (0, 2, 2))
    theirs = torchio.GridAggregator(sampler, overlap_mode=mode)
    theirs.add_batch(torch.from_numpy(patches), torch.from_numpy(locations))
    ours = aggregate((1, 4, 4), (1, 3, 3), (0, 2, 2), patches, locations, overlap_mode=mode)
    np.testing.assert_allclose(ours, theirs.get_output_tensor().numpy(), rtol=0, atol=1e-6)


def test_hann_window_profiles():
    # REFERENCE.md: s=1 -> [1], s=2 -> [.75, .75], s=3 -> [.5, 1, .5]
    np.testing.assert_allclose(hann_window((1, 2, 3))[0, 0], [0.75 * 0.5, 0.75, 0.75 * 0.5])
    np.testing.assert_allclose(hann_window((3, 1, 1)).ravel(), [0.5, 1, 0.5])
    assert hann_window((4, 5, 6)).shape == (4, 5, 6)


# --- Direct comparison with TorchIO's GridAggregator on random grids ------------

TORCHIO_CASES = [
    # spatial shape, patch size, overlap, padding mode
    ((10, 9, 7), (5, 4, 3), (2, 2, 0), None),
    ((12, 11, 8), (6, 5, 4), (4, 2, 2), None),
    ((9, 10, 6), (5, 6, 4), (2, 4, 2), "constant"),
    ((11, 8, 7), (4, 4, 5), (2, 2, 4), "reflect"),
    ((8, 8, 8), (8, 4, 3), (6, 2, 0), "edge"),
]


@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
@pytest.mark.parametrize("shape, patch_size, overlap, padding_mode", TORCHIO_CASES)
def test_matches_torchio_on_random_patches(
    torchio, torch, mode, shape, patch_size, overlap, padding_mode
):
    # Random patch values (a model's outputs): every overlap decision shows.
    rng = np.random.default_rng(sum(shape) + sum(patch_size))
    subject = torchio.Subject(image=torchio.ScalarImage(tensor=torch.zeros(1, *shape)))
    sampler = torchio.GridSampler(subject, patch_size, overlap, padding_mode=padding_mode)
    locations = np.asarray(sampler.locations, dtype=np.int64)
    padding = (0, 0, 0) if padding_mode is None else tuple(o // 2 for o in overlap)
    padded_shape = tuple(n + 2 * p for n, p in zip(shape, padding, strict=True))
    np.testing.assert_array_equal(locations, reference_locations(padded_shape, patch_size, overlap))
    patches = rng.normal(size=(len(locations), 2, *patch_size)).astype(np.float32)

    theirs = torchio.GridAggregator(sampler, overlap_mode=mode)
    for first in range(0, len(patches), 4):
        theirs.add_batch(
            torch.from_numpy(patches[first : first + 4]),
            torch.from_numpy(locations[first : first + 4]),
        )
    expected = theirs.get_output_tensor().numpy()
    ours = aggregate(
        shape,
        patch_size,
        overlap,
        patches,
        locations,
        padding=padding_mode is not None,
        overlap_mode=mode,
    )
    assert ours.shape == expected.shape == (2, *shape)
    assert ours.dtype == np.float32
    if mode == "crop":
        np.testing.assert_array_equal(ours, expected)
    else:
        # Same float32 arithmetic; the Hann windows differ in the last bit (numpy vs torch).
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_torchio_average_overflows_where_ours_does_not(torchio, torch):
    # The TorchIO quirk this module fixes (REFERENCE.md): uint8 sums wrap around.
    volume = np.full((1, 8, 8, 4), 200, dtype=np.uint8)
    patches, locations, _ = grid_patches(volume, (4, 4, 4), (2, 2, 0))
    subject = torchio.Subject(image=torchio.ScalarImage(tensor=torch.from_numpy(volume)))
    theirs = torchio.GridAggregator(torchio.GridSampler(subject, (4, 4, 4), (2, 2, 0)), "average")
    theirs.add_batch(torch.from_numpy(patches), torch.from_numpy(locations))
    assert not np.array_equal(theirs.get_output_tensor().numpy(), volume)
    ours = aggregate((8, 8, 4), (4, 4, 4), (2, 2, 0), patches, locations, overlap_mode="average")
    np.testing.assert_array_equal(ours, volume.astype(np.float32))


# --- Crop mode gives the source back exactly --------------------------------------

IDENTITY_CASES = [
    ((10, 9, 7), (5, 4, 3), (2, 2, 0)),
    ((12, 12, 12), (6, 6, 6), (4, 2, 0)),
    ((11, 13, 5), (4, 6, 5), (2, 4, 4)),
    ((7, 8, 9), (7, 8, 9), (0, 0, 0)),
    ((16, 9, 4), (8, 3, 1), (6, 2, 0)),
]


@pytest.mark.parametrize("padding_mode", [None, 0, 3.5, "constant", "reflect", "edge", "symmetric"])
@pytest.mark.parametrize("shape, patch_size, overlap", IDENTITY_CASES)
def test_crop_identity(shape, patch_size, overlap, padding_mode):
    rng = np.random.default_rng(7)
    volume = rng.normal(size=(2, *shape)).astype(np.float32)
    patches, locations, _ = grid_patches(volume, patch_size, overlap, padding_mode)
    output = aggregate(
        shape, patch_size, overlap, patches, locations, padding=padding_mode is not None
    )
    np.testing.assert_array_equal(output, volume)
    assert output.dtype == volume.dtype


@settings(max_examples=40, deadline=None, derandomize=True)  # same cases on every run
@given(
    data=st.data(),
    padded=st.booleans(),
    dtype=st.sampled_from([np.uint8, np.int16, np.float64]),
)
def test_crop_identity_any_grid(data, padded, dtype):
    shape, patch_size, overlap = [], [], []
    for _ in range(3):
        size = data.draw(st.integers(1, 12))
        patch = data.draw(st.integers(1, size))
        half = data.draw(st.integers(0, (patch - 1) // 2))
        shape.append(size), patch_size.append(patch), overlap.append(2 * half)
    seed = data.draw(st.integers(0, 2**16))
    volume = np.random.default_rng(seed).integers(0, 120, size=(1, *shape)).astype(dtype)
    patches, locations, _ = grid_patches(volume, patch_size, overlap, "edge" if padded else None)
    output = aggregate(shape, patch_size, overlap, patches, locations, padding=padded)
    np.testing.assert_array_equal(output, volume)
    assert output.dtype == dtype


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mode", ["average", "hann"])
def test_average_and_hann_of_identity_give_source(mode, padded):
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(1, 11, 10, 9)).astype(np.float32)
    patches, locations, _ = grid_patches(
        volume, (5, 4, 5), (2, 2, 2), "reflect" if padded else None
    )
    output = aggregate(
        (11, 10, 9), (5, 4, 5), (2, 2, 2), patches, locations, padding=padded, overlap_mode=mode
    )
    # A weighted mean of equal float32 values: off by a few float32 ulps at most.
    np.testing.assert_allclose(output, volume, rtol=1e-6, atol=1e-6)


# --- Integer patches and dtypes ----------------------------------------------------


@pytest.mark.parametrize("mode", ["average", "hann"])
def test_uint8_weighted_modes_do_not_overflow(mode):
    rng = np.random.default_rng(11)
    shape, patch_size, overlap = (13, 12, 10), (6, 6, 4), (4, 2, 2)
    locations = reference_locations(shape, patch_size, overlap)
    # Independent random uint8 patches near the top of the range: sums far beyond 255.
    patches = rng.integers(180, 256, size=(len(locations), 1, *patch_size)).astype(np.uint8)
    output = aggregate(shape, patch_size, overlap, patches, locations, overlap_mode=mode)
    weights = hann_window(patch_size) if mode == "hann" else None
    expected = naive_average(shape, patches, locations, weights)
    assert output.dtype == np.float32
    # float64 sums, float32 result: within float32 rounding of values below 256.
    np.testing.assert_allclose(output, expected, rtol=1e-6)
    assert output.min() >= 180 and output.max() <= 255


def test_uint8_identity_average_with_uint8_output_is_exact():
    rng = np.random.default_rng(5)
    volume = rng.integers(0, 256, size=(1, 15, 14, 9)).astype(np.uint8)
    patches, locations, _ = grid_patches(volume, (6, 8, 5), (4, 6, 2))
    for mode in ("average", "hann"):
        output = aggregate(
            (15, 14, 9), (6, 8, 5), (4, 6, 2), patches, locations, overlap_mode=mode, dtype=np.uint8
        )
        assert output.dtype == np.uint8
        np.testing.assert_array_equal(output, volume)


def test_integer_output_rounds_to_nearest():
    # Two patches of 1 and 2 overlapping on one voxel: average 1.5 rounds to 2 (half to even).
    locations = np.array([[0, 0, 0, 2, 1, 1], [1, 0, 0, 3, 1, 1]])
    patches = np.array([1, 1, 2, 2], dtype=np.int16).reshape(2, 1, 2, 1, 1)
    # Any in-bounds locations are accepted, not only the grid's.
    aggregator = GridAggregator(
        (4, 1, 1), (2, 1, 1), (0, 0, 0), overlap_mode="average", dtype=np.int16
    )
    aggregator.add_batch(patches, locations)
    output = aggregator.get_output()
    assert output.dtype == np.int16
    assert output.ravel().tolist() == [1, 2, 2, 0]


@pytest.mark.parametrize(
    "patches_dtype, mode, expected",
    [
        (np.uint8, "crop", np.uint8),
        (np.int16, "crop", np.int16),
        (np.float64, "crop", np.float64),
        (np.uint8, "average", np.float32),
        (np.int32, "average", np.float32),
        (np.float16, "average", np.float32),
        (np.float32, "hann", np.float32),
        (np.float64, "average", np.float64),
        (np.float64, "hann", np.float64),
    ],
)
def test_default_output_dtypes(patches_dtype, mode, expected):
    volume = np.arange(6 * 6 * 4).reshape(1, 6, 6, 4).astype(patches_dtype)
    patches, locations, _ = grid_patches(volume, (4, 4, 4), (2, 2, 0))
    output = aggregate((6, 6, 4), (4, 4, 4), (2, 2, 0), patches, locations, overlap_mode=mode)
    assert output.dtype == expected
    np.testing.assert_allclose(output, volume.astype(np.float64), rtol=1e-3)


def test_int32_average_is_exact_in_float64():
    # float32 sums would lose these large values' last digits; float64 sums do not.
    volume = np.full((1, 6, 6, 4), 2**30 + 1, dtype=np.int32)
    patches, locations, _ = grid_patches(volume, (4, 4, 4), (2, 2, 0))
    output = aggregate(
        (6, 6, 4),
        (4, 4, 4),
        (2, 2, 0),
        patches,
        locations,
        overlap_mode="average",
        dtype=np.float64,
    )
    np.testing.assert_array_equal(output, volume.astype(np.float64))


def test_output_channels_and_dtype_may_differ_from_input():
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 256, size=(1, 10, 8, 6)).astype(np.uint8)
    patches, locations, _ = grid_patches(volume, (4, 4, 4), (2, 2, 2))
    # A 'model': uint8 in, 3 float32 logits out.
    floats = patches.astype(np.float32)
    logits = np.concatenate([floats, -floats, floats / 2], axis=1)
    source = volume.astype(np.float32)
    expected = np.concatenate([source, -source, source / 2])
    for mode in ("crop", "average", "hann"):
        output = aggregate(
            (10, 8, 6), (4, 4, 4), (2, 2, 2), logits, locations, overlap_mode=mode, channels=3
        )
        assert output.shape == (3, 10, 8, 6) and output.dtype == np.float32
        np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-4)


def test_accepts_torch_tensors(torch):
    volume = np.random.default_rng(0).normal(size=(1, 8, 6, 5)).astype(np.float32)
    patches, locations, _ = grid_patches(volume, (4, 4, 5), (2, 2, 0))
    tensor = torch.from_numpy(patches).requires_grad_(True) * 1  # a tensor in a graph
    aggregator = GridAggregator((8, 6, 5), (4, 4, 5), (2, 2, 0))
    aggregator.add_batch(tensor, torch.from_numpy(locations))
    np.testing.assert_array_equal(aggregator.get_output(), volume)
    # bfloat16 outputs of mixed-precision models: exact for these small integers.
    small = np.arange(8 * 6 * 5, dtype=np.float32).reshape(1, 8, 6, 5) % 64
    patches, locations, _ = grid_patches(small, (4, 4, 5), (2, 2, 0))
    aggregator = GridAggregator((8, 6, 5), (4, 4, 5), (2, 2, 0), overlap_mode="average")
    aggregator.add_batch(torch.from_numpy(patches).to(torch.bfloat16), locations)
    np.testing.assert_array_equal(aggregator.get_output(), small)


def test_unvisited_voxels_are_zero_and_get_output_is_a_copy():
    aggregator = GridAggregator((4, 4, 4), (2, 4, 4), 0, overlap_mode="average")
    aggregator.add_batch(np.ones((1, 1, 2, 4, 4)), np.array([[0, 0, 0, 2, 4, 4]]))
    first = aggregator.get_output()
    assert first[:, :2].min() == 1 and not first[:, 2:].any()
    first[:] = 7
    assert aggregator.get_output()[:, 2:].max() == 0


# --- Downsampling ---------------------------------------------------------------

DOWNSAMPLING_CASES = [
    # shape, patch size, overlap, padding mode, factor
    ((16, 12, 8), (8, 8, 4), (4, 4, 0), None, (2, 2, 2)),
    ((16, 12, 8), (8, 8, 4), (4, 4, 0), "reflect", (2, 2, 2)),
    ((16, 16, 6), (8, 8, 6), (4, 4, 2), None, (4, 2, 1)),
    ((24, 8, 8), (8, 8, 8), (4, 0, 0), "edge", (2, 4, 8)),
]


@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
@pytest.mark.parametrize("shape, patch_size, overlap, padding_mode, factor", DOWNSAMPLING_CASES)
def test_downsampled_outputs(mode, shape, patch_size, overlap, padding_mode, factor):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(1, *shape)).astype(np.float32)
    patches, locations, _ = grid_patches(volume, patch_size, overlap, padding_mode)
    pooled_patches = pool(patches, factor).astype(np.float32)  # the 'model'
    output = aggregate(
        shape,
        patch_size,
        overlap,
        pooled_patches,
        locations,
        padding=padding_mode is not None,
        overlap_mode=mode,
        downsampling_factor=factor,
    )
    expected = pool(volume, factor).astype(np.float32)
    assert (
        output.shape == expected.shape == (1, *(n // f for n, f in zip(shape, factor, strict=True)))
    )
    if mode == "crop":
        # Patch starts are multiples of the factor: pooled patches are pooled source blocks.
        np.testing.assert_array_equal(output, expected)
    else:
        # Weighted means of equal float32 values.
        np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)


def test_downsampled_crop_with_random_outputs_matches_crop_at_full_resolution():
    # A model whose output is constant on each factor^3 block: aggregating the blocks at
    # low resolution equals aggregating the upsampled outputs and pooling.
    rng = np.random.default_rng(4)
    shape, patch_size, overlap, factor = (16, 16, 8), (8, 8, 8), (4, 4, 0), (2, 2, 2)
    locations = reference_locations(shape, patch_size, overlap)
    small = rng.normal(size=(len(locations), 1, 4, 4, 4)).astype(np.float32)
    big = small.repeat(2, axis=2).repeat(2, axis=3).repeat(2, axis=4)
    low = aggregate(shape, patch_size, overlap, small, locations, downsampling_factor=factor)
    high = aggregate(shape, patch_size, overlap, big, locations)
    np.testing.assert_array_equal(low, pool(high, factor))


@pytest.mark.parametrize(
    "shape, patch_size, overlap, padding, factor",
    [
        ((10, 8, 8), (5, 4, 4), (0, 0, 0), False, 2),  # patch size 5
        ((11, 8, 8), (4, 4, 4), (0, 0, 0), False, 2),  # last start 7
        ((12, 8, 8), (4, 4, 4), (2, 0, 0), True, 2),  # padding 1
        ((18, 6, 6), (6, 6, 6), (2, 0, 0), False, 3),  # step 4
    ],
)
def test_downsampling_factor_must_divide_the_grid(shape, patch_size, overlap, padding, factor):
    with pytest.raises(ConfigError, match=f"downsampling factor {factor} does not divide the grid"):
        GridAggregator(shape, patch_size, overlap, padding=padding, downsampling_factor=factor)


def test_output_affine_of_downsampled_volume():
    affine = make_affine(3)
    scaled = output_affine(affine, (2, 2, 1))
    # Output voxel (0, 0, 0) is the centre of source voxels 0..1, 0..1, 0.
    np.testing.assert_allclose(scaled @ [0, 0, 0, 1], affine @ [0.5, 0.5, 0, 1])
    np.testing.assert_allclose(scaled @ [1, 2, 3, 1], affine @ [2.5, 4.5, 3, 1])


# --- Errors of the class ----------------------------------------------------------


def test_bad_arguments_and_batches():
    with pytest.raises(ConfigError, match="overlap_mode"):
        GridAggregator((8, 8, 8), 4, 2, overlap_mode="max")
    with pytest.raises(ConfigError, match="overlap must be even"):
        GridAggregator((8, 8, 8), 4, 1)
    with pytest.raises(DataError, match="cannot be larger"):
        GridAggregator((3, 8, 8), 4, 2)
    with pytest.raises(ConfigError, match="padding"):
        GridAggregator((8, 8, 8), 4, 2, padding=(2, 2, 2))
    aggregator = GridAggregator((8, 8, 8), 4, 2, channels=2)
    location = np.array([[0, 0, 0, 4, 4, 4]])
    with pytest.raises(DataError, match="1 channels, expected 2"):
        aggregator.add_batch(np.zeros((1, 1, 4, 4, 4)), location)
    with pytest.raises(DataError, match=r"spatial shape \(4, 4, 3\)"):
        aggregator.add_batch(np.zeros((1, 2, 4, 4, 3)), location)
    with pytest.raises(DataError, match="outside"):
        aggregator.add_batch(np.zeros((1, 2, 4, 4, 4)), location + 6)
    with pytest.raises(DataError, match=r"shape \(1, 6\)"):
        aggregator.add_batch(np.zeros((1, 2, 4, 4, 4)), location[:, :3])
    with pytest.raises(DataError, match="no patches"):
        aggregator.get_output()


def test_module_does_not_import_torch():
    code = "import sys, patchcli.aggregate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
