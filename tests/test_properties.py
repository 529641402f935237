"""Properties of the samplers over random shapes, patch sizes, overlaps and maps (hypothesis).

Each test draws its cases from a fixed seed (``derandomize``), so every run
checks the same cases and a failure reproduces.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchcli.errors import DataError, PatchcliWarning
from patchcli.sampling import (
    count_grid_patches,
    grid_locations,
    label_locations,
    uniform_locations,
    weighted_locations,
)
from patchcli.sampling.stream import LocationStream
from patchcli.subject_work import crop_block

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def geometry(draw, max_size: int = 14):
    """A spatial shape and a patch size that fits it."""
    shape = tuple(draw(st.integers(1, max_size)) for _ in range(3))
    patch = tuple(draw(st.integers(1, n)) for n in shape)
    return shape, patch


def _assert_valid(locations: np.ndarray, shape, patch) -> None:
    assert locations.dtype == np.int64 and locations.shape[1] == 6
    starts, ends = locations[:, :3], locations[:, 3:]
    assert (starts >= 0).all() and (ends <= np.array(shape)).all()
    assert (ends - starts == np.array(patch)).all()


def _centres(locations: np.ndarray, patch) -> np.ndarray:
    return locations[:, :3] + np.array(patch) // 2


@PROPERTY
@given(geometry(), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_uniform_locations_lie_inside_the_volume(case, count, seed):
    shape, patch = case
    locations = uniform_locations(shape, patch, count, np.random.default_rng(seed))
    assert len(locations) == count
    _assert_valid(locations, shape, patch)


@PROPERTY
@given(geometry(), st.integers(1, 30), st.integers(0, 2**32 - 1), st.floats(0.05, 0.9))
def test_weighted_centres_never_fall_on_zero_probability(case, count, seed, density):
    shape, patch = case
    rng = np.random.default_rng(seed)
    probability = rng.random(shape) * (rng.random(shape) < density)
    try:
        locations = weighted_locations(probability, patch, count, rng)
    except DataError:
        # Refused only when no positive voxel can be a centre.
        from patchcli.sampling import valid_centre_box

        assert not probability[valid_centre_box(shape, patch)].any()
        return
    _assert_valid(locations, shape, patch)
    centres = _centres(locations, patch)
    assert (probability[tuple(centres.T)] > 0).all()


@PROPERTY
@given(
    geometry(),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
    st.dictionaries(st.integers(0, 3), st.sampled_from([0, 0.5, 1, 3]), min_size=1),
)
def test_label_centres_fall_on_requested_labels(case, count, seed, probabilities):
    shape, patch = case
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=(1, *shape)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchcliWarning)
        try:
            locations = label_locations(labels, patch, count, rng, probabilities)
        except DataError:
            return  # no requested label where a centre can lie (checked by test_sampling_label)
    _assert_valid(locations, shape, patch)
    centres = _centres(locations, patch)
    wanted = [label for label, weight in probabilities.items() if weight > 0]
    assert np.isin(labels[0][tuple(centres.T)], wanted).all()


@st.composite
def grid_geometry(draw):
    shape, patch = draw(geometry())
    overlap = tuple(2 * draw(st.integers(0, (p - 1) // 2)) for p in patch)
    return shape, patch, overlap


@PROPERTY
@given(grid_geometry())
def test_the_grid_covers_every_voxel(case):
    shape, patch, overlap = case
    locations = grid_locations(shape, patch, overlap)
    _assert_valid(locations, shape, patch)
    assert len(locations) == count_grid_patches(shape, patch, overlap)
    covered = np.zeros(shape, dtype=bool)
    for i0, j0, k0, i1, j1, k1 in locations.tolist():
        covered[i0:i1, j0:j1, k0:k1] = True
    assert covered.all()


@PROPERTY
@given(
    geometry(),
    st.sampled_from(["uniform", "weighted", "grid"]),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
)
def test_cropped_patches_equal_the_source_at_their_locations(case, sampler, block, seed):
    shape, patch = case
    rng = np.random.default_rng(seed)
    volumes = {
        "t1": rng.integers(-500, 500, size=(2, *shape)).astype(np.int16),
        "prob": rng.random((1, *shape)) + 0.01,
    }
    stream = LocationStream(sampler, volumes, patch, rng, probability_map="prob")
    count = len(stream.grid) if sampler == "grid" else 12
    buffers = {"t1": np.empty((block, 2, *patch), np.int16)}
    done = 0
    while done < count:
        locations = stream.take(min(block, count - done))
        crop_block(volumes, locations.tolist(), buffers)
        for slot, (i0, j0, k0, i1, j1, k1) in enumerate(locations.tolist()):
            expected = volumes["t1"][:, i0:i1, j0:j1, k0:k1]
            np.testing.assert_array_equal(buffers["t1"][slot], expected)
        done += len(locations)


@pytest.mark.parametrize("sampler", ["weighted", "label"])
def test_a_map_zero_but_for_one_voxel_always_gives_that_centre(sampler):
    shape, patch = (9, 8, 7), (3, 4, 5)
    volume = np.zeros((1, *shape), np.uint8)
    volume[0, 4, 3, 3] = 1
    rng = np.random.default_rng(0)
    if sampler == "weighted":
        locations = weighted_locations(volume, patch, 20, rng)
    else:
        locations = label_locations(volume, patch, 20, rng)
    assert (_centres(locations, patch) == [4, 3, 3]).all()
