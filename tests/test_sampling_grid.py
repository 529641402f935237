"""Grid sampling: TorchIO's GridSampler locations, checks and padding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from patchcli.errors import ConfigError, DataError
from patchcli.sampling import count_grid_patches, grid_locations, grid_padding, pad_volume
from patchcli.sampling.grid import PADDING_MODES, check_padding_mode, grid_starts

# ---------------------------------------------------------------------------
# REFERENCE examples


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "starts"),
    [
        (10, 5, 2, [0, 3, 5]),
        (181, 64, 8, [0, 56, 112, 117]),
        (10, 5, 0, [0, 5]),
        (10, 10, 0, [0]),
        (10, 10, 8, [0]),
        (11, 5, 0, [0, 5, 6]),
        (7, 1, 0, [0, 1, 2, 3, 4, 5, 6]),
        (1, 1, 0, [0]),
    ],
)
def test_grid_starts_along_one_axis(size, patch, overlap, starts):
    assert grid_starts(size, patch, overlap) == starts
    locations = grid_locations((size, 1, 1), (patch, 1, 1), (overlap, 0, 0))
    assert locations[:, 0].tolist() == starts
    assert (locations[:, 3] - locations[:, 0] == patch).all()


def test_grid_fixture_three_axes():
    locations = grid_locations((10, 20, 30), (5, 20, 20), (2, 4, 6))
    assert locations.dtype == np.int64
    starts = [(i, j, k) for i in (0, 3, 5) for j in (0,) for k in (0, 10)]
    assert locations[:, :3].tolist() == [list(start) for start in starts]
    np.testing.assert_array_equal(locations[:, 3:], locations[:, :3] + [5, 20, 20])


def test_grid_locations_are_lexicographic_unique_and_cover_the_volume():
    rng = np.random.default_rng(0)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 25, size=3))
        patch_size = tuple(int(rng.integers(1, n + 1)) for n in shape)
        overlap = tuple(int(2 * rng.integers(0, (p + 1) // 2)) for p in patch_size)
        locations = grid_locations(shape, patch_size, overlap)
        as_list = [tuple(row) for row in locations.tolist()]
        assert as_list == sorted(set(as_list)), (shape, patch_size, overlap)
        assert (locations[:, :3] >= 0).all() and (locations[:, 3:] <= shape).all()
        covered = np.zeros(shape, dtype=bool)
        for i0, j0, k0, i1, j1, k1 in locations:
            covered[i0:i1, j0:j1, k0:k1] = True
        assert covered.all(), (shape, patch_size, overlap)
        # Neighbouring patches overlap by at least the requested overlap.
        for axis in range(3):
            starts = np.unique(locations[:, axis])
            assert (np.diff(starts) <= patch_size[axis] - overlap[axis]).all()
        assert count_grid_patches(shape, patch_size, overlap) == len(locations)


def test_count_grid_patches_examples():
    assert count_grid_patches((10, 20, 30), (5, 20, 20), (2, 4, 6)) == 6
    assert count_grid_patches((181, 181, 181), (64, 64, 64), (8, 8, 8)) == 64
    assert count_grid_patches((4, 4, 4), (4, 4, 4), (0, 0, 0)) == 1


# ---------------------------------------------------------------------------
# Errors, in TorchIO's order


def test_patch_larger_than_image_comes_first():
    # All three problems at once: the size is reported.
    with pytest.raises(DataError, match="cannot be larger than image size"):
        grid_locations((4, 10, 10), (5, 5, 5), (5, 5, 3))
    with pytest.raises(DataError, match="cannot be larger than image size"):
        count_grid_patches((4, 10, 10), (5, 5, 5), (5, 5, 3))


@pytest.mark.parametrize("overlap", [(5, 0, 0), (6, 0, 0), (0, 0, 7), (4, 5, 6)])
def test_overlap_not_smaller_than_patch_comes_second(overlap):
    with pytest.raises(ConfigError, match="smaller than patch_size"):
        grid_locations((10, 10, 10), (5, 5, 5), overlap)
    with pytest.raises(ConfigError, match="smaller than patch_size"):
        count_grid_patches((10, 10, 10), (5, 5, 5), overlap)


@pytest.mark.parametrize("overlap", [(1, 0, 0), (0, 2, 3), (3, 3, 3)])
def test_odd_overlap_is_an_error(overlap):
    with pytest.raises(ConfigError, match="even") as error:
        grid_locations((10, 10, 10), (5, 5, 5), overlap)
    assert str(overlap) in str(error.value)


# ---------------------------------------------------------------------------
# Padding


def test_grid_padding():
    assert grid_padding((4, 6, 0), None) == (0, 0, 0)
    assert grid_padding((4, 6, 0), "edge") == (2, 3, 0)
    assert grid_padding((4, 6, 0), 0) == (2, 3, 0)  # 0 is a constant fill, not "no padding"


@pytest.mark.parametrize("padding_mode", [None, 0, 3.5, -1, "constant", "edge", "reflect", "mean"])
def test_check_padding_mode_accepts(padding_mode):
    assert check_padding_mode(padding_mode) == padding_mode


@pytest.mark.parametrize("padding_mode", ["empty", "foo", "Edge", True, [0], ""])
def test_check_padding_mode_rejects(padding_mode):
    with pytest.raises(ConfigError, match="padding_mode"):
        check_padding_mode(padding_mode)


def _volume(dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 100, size=(2, 4, 5, 3)).astype(dtype)


def _interior(padded: np.ndarray, padding) -> np.ndarray:
    (a, b, c) = padding
    return padded[:, a : padded.shape[1] - a, b : padded.shape[2] - b, c : padded.shape[3] - c]


def _border_values(padded: np.ndarray, padding) -> np.ndarray:
    mask = np.ones(padded.shape, dtype=bool)
    _interior(mask, padding)[...] = False
    return padded[mask]


def test_pad_volume_constant_number():
    volume = _volume()
    padded = pad_volume(volume, (1, 2, 0), 7)
    assert padded.shape == (2, 6, 9, 3)
    np.testing.assert_array_equal(_interior(padded, (1, 2, 0)), volume)
    assert (_border_values(padded, (1, 2, 0)) == 7).all()


def test_pad_volume_constant_string_is_zero():
    padded = pad_volume(_volume() + 1, (1, 1, 1), "constant")
    assert (_border_values(padded, (1, 1, 1)) == 0).all()


@pytest.mark.parametrize("mode", ["edge", "reflect", "symmetric", "wrap", "linear_ramp"])
def test_pad_volume_numpy_modes(mode):
    volume = _volume()
    padding = (2, 1, 2)
    padded = pad_volume(volume, padding, mode)
    expected = np.pad(volume, ((0, 0), (2, 2), (1, 1), (2, 2)), mode=mode)
    np.testing.assert_array_equal(padded, expected)
    np.testing.assert_array_equal(_interior(padded, padding), volume)


def test_pad_volume_edge_repeats_the_border_voxels():
    volume = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    assert pad_volume(volume, (2, 0, 0), "edge").ravel().tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    assert pad_volume(volume, (2, 0, 0), "reflect").ravel().tolist() == [2, 1, 0, 1, 2, 3, 2, 1]


@pytest.mark.parametrize(
    ("mode", "statistic"),
    [("mean", np.mean), ("median", np.median), ("minimum", np.min), ("maximum", np.max)],
)
def test_pad_volume_statistics_are_whole_image_constants(mode, statistic):
    volume = _volume()
    volume[1] += 1000  # the statistic is of the whole image, all channels together
    padding = (1, 0, 2)
    padded = pad_volume(volume, padding, mode)
    border = _border_values(padded, padding)
    assert border.size > 0
    np.testing.assert_allclose(border, statistic(volume))
    np.testing.assert_array_equal(_interior(padded, padding), volume)


@pytest.mark.parametrize("mode", ["mean", "median", "maximum", 2.7])
def test_pad_volume_keeps_the_dtype(mode):
    volume = _volume(np.uint8)
    padded = pad_volume(volume, (1, 1, 1), mode)
    assert padded.dtype == np.uint8
    np.testing.assert_array_equal(_interior(padded, (1, 1, 1)), volume)


def test_pad_volume_without_padding_is_unchanged():
    volume = _volume()
    assert pad_volume(volume, (2, 2, 2), None) is volume
    assert pad_volume(volume, (0, 0, 0), "edge") is volume


def test_padded_grid_locations_refer_to_the_padded_volume():
    shape, patch_size, overlap = (10, 20, 30), (5, 20, 20), (2, 4, 6)
    padding = grid_padding(overlap, "edge")
    padded_shape = tuple(n + 2 * p for n, p in zip(shape, padding, strict=True))
    assert padded_shape == (12, 24, 36)
    locations = grid_locations(padded_shape, patch_size, overlap)
    assert sorted(set(locations[:, 0].tolist())) == [0, 3, 6, 7]
    assert sorted(set(locations[:, 1].tolist())) == [0, 4]
    assert sorted(set(locations[:, 2].tolist())) == [0, 14, 16]


# ---------------------------------------------------------------------------
# TorchIO parity


def _random_grid_case(rng, padded: bool):
    """A random valid (shape, patch_size, overlap); with ``padded`` the patch may
    exceed the unpadded size, up to the padded size n + 2 * (o // 2) = n + o."""
    shape = tuple(int(n) for n in rng.integers(1, 30, size=3))
    patch_size, overlap = [], []
    for n in shape:
        largest_overlap = 10 if padded else min(10, n - 1)
        o = int(2 * rng.integers(0, largest_overlap // 2 + 1))
        largest_patch = min(o + 15, n + o if padded else n)
        patch_size.append(int(rng.integers(o + 1, largest_patch + 1)))
        overlap.append(o)
    return shape, tuple(patch_size), tuple(overlap)


def _tio_subject(torchio, torch, volume: np.ndarray):
    return torchio.Subject(image=torchio.ScalarImage(tensor=torch.from_numpy(volume)))


def test_locations_equal_torchio(torchio, torch):
    rng = np.random.default_rng(7)
    for _ in range(80):
        shape, patch_size, overlap = _random_grid_case(rng, padded=False)
        subject = _tio_subject(torchio, torch, np.zeros((1, *shape), dtype=np.float32))
        sampler = torchio.GridSampler(subject, patch_size, overlap)
        ours = grid_locations(shape, patch_size, overlap)
        np.testing.assert_array_equal(
            ours, np.asarray(sampler.locations), err_msg=str((shape, patch_size, overlap))
        )
        assert count_grid_patches(shape, patch_size, overlap) == len(sampler)


def test_locations_equal_torchio_examples(torchio, torch):
    for shape, patch_size, overlap in [
        ((10, 20, 30), (5, 20, 20), (2, 4, 6)),
        ((181, 10, 10), (64, 10, 10), (8, 0, 0)),
        ((197, 233, 189), (64, 64, 64), (16, 16, 16)),
    ]:
        subject = _tio_subject(torchio, torch, np.zeros((1, *shape), dtype=np.uint8))
        sampler = torchio.GridSampler(subject, patch_size, overlap)
        np.testing.assert_array_equal(grid_locations(shape, patch_size, overlap), sampler.locations)


TORCHIO_PADDING_MODES = [
    0,
    2.5,
    "constant",
    "edge",
    "reflect",
    "symmetric",
    "wrap",
    "mean",
    "median",
    "minimum",
    "maximum",
]


@pytest.mark.parametrize("padding_mode", TORCHIO_PADDING_MODES)
def test_padded_locations_and_volume_equal_torchio(torchio, torch, padding_mode):
    rng = np.random.default_rng(TORCHIO_PADDING_MODES.index(padding_mode))
    for _ in range(8):
        shape, patch_size, overlap = _random_grid_case(rng, padded=True)
        volume = rng.integers(0, 50, size=(2, *shape)).astype(np.float32)
        subject = _tio_subject(torchio, torch, volume)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = torchio.GridSampler(subject, patch_size, overlap, padding_mode=padding_mode)
        padding = grid_padding(overlap, padding_mode)
        padded = pad_volume(volume, padding, padding_mode)
        case = str((shape, patch_size, overlap, padding_mode))
        assert padded.shape[1:] == tuple(sampler.subject.spatial_shape), case
        np.testing.assert_array_equal(
            grid_locations(padded.shape[1:], patch_size, overlap), sampler.locations, err_msg=case
        )
        # TorchIO's statistics are float32 (ours float64, then cast): allow rounding.
        np.testing.assert_allclose(
            padded, sampler.subject["image"].data.numpy(), rtol=1e-6, err_msg=case
        )


def test_torchio_errors_in_the_same_cases(torchio, torch):
    subject = _tio_subject(torchio, torch, np.zeros((1, 10, 10, 10), dtype=np.float32))
    for patch_size, overlap, ours in [
        ((11, 5, 5), (5, 5, 3), DataError),
        ((5, 5, 5), (5, 0, 0), ConfigError),
        ((5, 5, 5), (3, 0, 0), ConfigError),
    ]:
        with pytest.raises(ours):
            grid_locations((10, 10, 10), patch_size, overlap)
        with pytest.raises(ValueError):
            torchio.GridSampler(subject, patch_size, overlap)


def test_padding_modes_cover_torchios():
    # Every TorchIO mode a user may write, except numpy's "empty" (undefined values).
    for mode in (
        "constant",
        "edge",
        "wrap",
        "linear_ramp",
        "maximum",
        "mean",
        "median",
        "minimum",
        "reflect",
        "symmetric",
    ):
        assert mode in PADDING_MODES


@pytest.mark.parametrize(
    "dtype, constant", [(np.uint8, -1), (np.uint8, 300), (np.int16, 40000), (bool, 2)]
)
def test_padding_constant_that_does_not_fit_the_dtype_is_refused(dtype, constant):
    with pytest.raises(DataError, match="does not fit"):
        pad_volume(np.zeros((1, 3, 3, 3), dtype), (1, 1, 1), constant)
