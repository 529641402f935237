"""Patch sizes, the valid-centre region, locations and patch affines."""

from __future__ import annotations

import numpy as np
import pytest

from patchcli.errors import ConfigError, DataError
from patchcli.sampling import patch_affine, subject_rng, to_triplet, valid_centre_box
from patchcli.sampling.geometry import check_patch_fits, starts_to_locations

# ---------------------------------------------------------------------------
# to_triplet


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (64, (64, 64, 64)),
        (1, (1, 1, 1)),
        ([32, 32, 1], (32, 32, 1)),
        ((5, 6, 7), (5, 6, 7)),
        (np.int64(4), (4, 4, 4)),
        (np.array([3, 2, 1]), (3, 2, 1)),
        ([np.int32(2), np.uint8(3), 4], (2, 3, 4)),
    ],
)
def test_to_triplet_parses_ints_and_sequences(value, expected):
    result = to_triplet(value, "patch_size")
    assert result == expected
    # Plain Python ints, so that they print and serialise (YAML, HDF5 attrs) cleanly.
    assert all(type(item) is int for item in result)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        1.5,
        2.0,
        True,
        False,
        None,
        "64",
        "abc",
        [32, 32],
        [1, 2, 3, 4],
        [],
        [1, 0, 1],
        [1, -1, 1],
        [1, 1.5, 1],
        [1, 2.0, 3],
        [True, 1, 1],
        [1, "2", 3],
        np.array([1.0, 2.0, 3.0]),
    ],
)
def test_to_triplet_rejects_bad_values(value):
    with pytest.raises(ConfigError) as error:
        to_triplet(value, "patch_size")
    message = str(error.value)
    assert "patch_size" in message
    assert "\n" not in message


def test_to_triplet_minimum_zero_allows_zero_overlap():
    assert to_triplet(0, "patch_overlap", minimum=0) == (0, 0, 0)
    assert to_triplet([0, 2, 4], "patch_overlap", minimum=0) == (0, 2, 4)
    with pytest.raises(ConfigError, match="patch_overlap"):
        to_triplet(-2, "patch_overlap", minimum=0)
    with pytest.raises(ConfigError, match="patch_overlap"):
        to_triplet([0, -2, 0], "patch_overlap", minimum=0)


# ---------------------------------------------------------------------------
# Patch larger than the image


@pytest.mark.parametrize(
    ("patch_size", "shape"),
    [((5, 5, 5), (4, 5, 5)), ((1, 1, 2), (10, 10, 1)), ((11, 1, 1), (10, 10, 10))],
)
def test_patch_larger_than_image_is_an_error(patch_size, shape):
    with pytest.raises(DataError, match=r"cannot be larger than image size") as error:
        check_patch_fits(patch_size, shape)
    message = str(error.value)
    assert str(tuple(patch_size)) in message
    assert str(tuple(shape)) in message


@pytest.mark.parametrize("patch_size", [(4, 5, 5), (1, 1, 1), (4, 1, 5)])
def test_patch_as_large_as_image_or_smaller_fits(patch_size):
    check_patch_fits(patch_size, (4, 5, 5))  # no error


# ---------------------------------------------------------------------------
# Locations


def test_starts_to_locations_have_exclusive_ends_and_int64():
    locations = starts_to_locations(np.array([[0, 10, 9], [1, 2, 3]], dtype=np.int32), (2, 3, 4))
    assert locations.dtype == np.int64
    assert locations.tolist() == [[0, 10, 9, 2, 13, 13], [1, 2, 3, 3, 5, 7]]


def test_starts_to_locations_empty():
    locations = starts_to_locations(np.empty((0, 3)), (2, 2, 2))
    assert locations.shape == (0, 6)
    assert locations.dtype == np.int64


# ---------------------------------------------------------------------------
# patch_affine


def test_patch_affine_reference_example():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (5, 6, 7)
    result = patch_affine(affine, (0, 10, 9))
    np.testing.assert_array_equal(result[:3, 3], [5, 36, 43])
    np.testing.assert_array_equal(result[:3, :3], np.diag([2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(result[3], [0, 0, 0, 1])
    # The input is not modified.
    np.testing.assert_array_equal(affine[:3, 3], [5, 6, 7])


def test_patch_affine_oblique_maps_patch_voxels_to_the_same_world_points():
    rng = np.random.default_rng(12)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3) * 50
    start = np.array([3, 17, 8])
    result = patch_affine(affine, start)
    # Voxel v of the patch is voxel start + v of the volume: same world point.
    patch_voxels = rng.integers(0, 10, size=(20, 3))
    homogeneous = np.c_[patch_voxels, np.ones(20)]
    volume_homogeneous = np.c_[patch_voxels + start, np.ones(20)]
    np.testing.assert_allclose(homogeneous @ result.T, volume_homogeneous @ affine.T, atol=1e-9)
    np.testing.assert_array_equal(result[:3, :3], affine[:3, :3])


def test_patch_affine_at_origin_is_unchanged():
    affine = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
    np.testing.assert_array_equal(patch_affine(affine, (0, 0, 0)), affine)


# ---------------------------------------------------------------------------
# valid_centre_box: REFERENCE's border rules on a 7-voxel axis


@pytest.mark.parametrize(
    ("patch", "first", "last"),
    [
        (1, 0, 6),  # P=1 clears nothing
        (2, 1, 6),  # P=2 clears the first voxel
        (3, 1, 5),  # P=3 clears one at each end
        (4, 2, 5),  # P=4 clears two then one
        (5, 2, 4),  # P=5 clears two and two
    ],
)
def test_valid_centre_box_border_rules(patch, first, last):
    box = valid_centre_box((7, 7, 7), (patch, patch, patch))
    for axis in box:
        assert list(range(7))[axis] == list(range(first, last + 1))
    # Mixed sizes per axis.
    box = valid_centre_box((7, 9, 1), (patch, 1, 1))
    assert list(range(7))[box[0]] == list(range(first, last + 1))
    assert list(range(9))[box[1]] == list(range(9))
    assert list(range(1))[box[2]] == [0]


def test_valid_centre_box_is_a_bijection_with_valid_starts():
    """Every centre in the box gives a patch inside the volume, and every start has one centre."""
    for size in range(1, 13):
        for patch in range(1, size + 1):
            (box,) = valid_centre_box((size,), (patch,))
            centres = np.arange(size)[box]
            starts = centres - patch // 2
            assert starts.tolist() == list(range(size - patch + 1)), (size, patch)
            # Same as TorchIO's rule: c in [P // 2, N - 1 - (P - 1) // 2].
            assert centres[0] == patch // 2
            assert centres[-1] == size - 1 - (patch - 1) // 2


# ---------------------------------------------------------------------------
# subject_rng


def test_subject_rng_is_reproducible_and_distinct():
    first = subject_rng(7, 2).integers(0, 2**31, size=8)
    again = subject_rng(7, 2).integers(0, 2**31, size=8)
    np.testing.assert_array_equal(first, again)
    other_subject = subject_rng(7, 3).integers(0, 2**31, size=8)
    other_seed = subject_rng(8, 2).integers(0, 2**31, size=8)
    assert not np.array_equal(first, other_subject)
    assert not np.array_equal(first, other_seed)
    # (seed, index) is not collapsed into a single number.
    assert not np.array_equal(
        subject_rng(1, 2).integers(0, 2**31, size=8), subject_rng(2, 1).integers(0, 2**31, size=8)
    )


@pytest.mark.parametrize(("seed", "index"), [(-1, 0), (0, -1)])
def test_subject_rng_rejects_negative(seed, index):
    with pytest.raises(ValueError):
        subject_rng(seed, index)
