"""VolumeDataset: patches drawn from a volume store while training.

Every item must be the crop of the stored volume (and of the source, without
preprocessing) at its location, drawn with the rules of the CLI samplers: the
statistical tests compare the draws with the distributions TorchIO's samplers
define, as tests/test_sampling_label.py and tests/test_sampling_weighted.py do for
the in-memory samplers.
"""

from __future__ import annotations

import csv
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats

from patchcli.errors import ConfigError, DataError, PatchcliWarning
from patchcli.extract import extract
from patchcli.sampling.grid import grid_locations

from .helpers import make_patch_subjects, save_nifti, write_patch_file
from .test_volumes import (
    IMAGES,
    PATCH_SIZE,
    SHAPES,
    make_store_subjects,
    store_config,
    stored_volumes,
)

SUBJECTS = ["s0", "s1", "s2", "s3"]
# Significance level of the goodness-of-fit tests, as in test_sampling_label.py and
# test_sampling_weighted.py. With fixed seeds each test is deterministic; alpha = 1e-3
# means a correct sampler would fail for about one seed in a thousand, while the defects
# looked for (class shares following voxel counts instead of label_probabilities, border
# voxels drawn, a centre off by one voxel, weights ignored) move whole classes or cells of
# mass, which with thousands of draws gives p-values far below 1e-10.
ALPHA = 1e-3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_store_subjects(tmp_path_factory.mktemp("volume-dataset-data") / "data")


@pytest.fixture(scope="module")
def store(tmp_path_factory, data) -> Path:
    """A store of the four subjects (t1, seg, prob, two-channel dwi), tables for 8x6x5."""
    folder = tmp_path_factory.mktemp("volume-dataset-store")
    return extract(store_config(folder, data[0]), "volumes").path


@pytest.fixture(scope="module")
def stored(store) -> dict:
    return stored_volumes(store)


@pytest.fixture(scope="module")
def affines(store) -> dict:
    with h5py.File(store, "r") as file:
        ids = [value.decode() for value in file["subjects/id"][()]]
        return dict(zip(ids, file["subjects/affine"][()]))


@pytest.fixture
def volume_dataset(torch):
    """:class:`patchcli.VolumeDataset` (imported only where torch is installed)."""
    from patchcli import VolumeDataset

    return VolumeDataset


def crop(volume: np.ndarray, location) -> np.ndarray:
    i0, j0, k0, i1, j1, k1 = (int(n) for n in location)
    return volume[:, i0:i1, j0:j1, k0:k1]


def patch_affine(affine: np.ndarray, start) -> np.ndarray:
    """The affine of a patch whose first voxel is ``start`` of the volume of ``affine``."""
    moved = affine.copy()
    moved[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return moved


def locations_of(dataset, indices=None) -> np.ndarray:
    indices = range(len(dataset)) if indices is None else indices
    return np.array([dataset[i]["location"].numpy() for i in indices]).reshape(-1, 6)


def item_key(item: dict) -> tuple:
    return (
        item["subject"],
        tuple(item["location"].tolist()),
        item["t1"]["data"].numpy().tobytes(),
        item["seg"]["data"].numpy().tobytes(),
    )


def store_of(folder: Path, volumes: dict, images: dict, **keys) -> Path:
    """A store of ``volumes`` (``{subject: {image: (X, Y, Z) array}}``), each saved as NIfTI
    with the same affine."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for subject, arrays in volumes.items():
        row = {"subject": subject}
        for name, array in arrays.items():
            row[name] = save_nifti(folder / f"{subject}_{name}.nii.gz", array).name
        rows.append(row)
    manifest = folder / "subjects.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys.setdefault("patch_size", None)
    return extract(store_config(folder, manifest, images=images, **keys), "volumes").path


# -------------------------------------------------------------------- items
@pytest.mark.parametrize("sampler", ["uniform", "label", "weighted"])
def test_items_equal_crops_of_the_store_and_of_the_sources(
    volume_dataset, store, stored, data, affines, torch, sampler
):
    _, sources = data
    dataset = volume_dataset(
        store, sampler=sampler, patch_size=PATCH_SIZE, samples_per_volume=6, seed=3
    )
    assert len(dataset) == 6 * len(SUBJECTS)
    assert [record.id for record in dataset.subjects] == SUBJECTS
    for index in range(len(dataset)):
        item = dataset[index]
        subject = SUBJECTS[index // 6]
        assert set(item) == {*IMAGES, "location", "subject"}
        assert item["subject"] == subject and dataset.subject_of(index) == index // 6
        location = item["location"]
        assert location.dtype == torch.int64 and tuple(location.shape) == (6,)
        start, stop = location.numpy()[:3], location.numpy()[3:]
        shape = SHAPES[index // 6]
        assert (stop - start == PATCH_SIZE).all() and (start >= 0).all() and (stop <= shape).all()
        for name in IMAGES:
            data_ = item[name]["data"]
            channels = 2 if name == "dwi" else 1
            assert type(data_) is torch.Tensor and tuple(data_.shape) == (channels, *PATCH_SIZE)
            assert data_.numpy().dtype == sources[subject][name].dtype
            np.testing.assert_array_equal(data_.numpy(), crop(stored[subject][name], location))
            np.testing.assert_array_equal(data_.numpy(), crop(sources[subject][name], location))
            affine = item[name]["affine"]
            assert affine.dtype == torch.float64 and tuple(affine.shape) == (4, 4)
            np.testing.assert_allclose(affine.numpy(), patch_affine(affines[subject], start))
        centre = tuple(start + np.asarray(PATCH_SIZE) // 2)
        if sampler == "label":  # without label_probabilities: labelled voxels only
            assert sources[subject]["seg"][(0, *centre)] > 0


def test_items_default_collate_into_batches(volume_dataset, store, torch):
    dataset = volume_dataset(store, sampler="uniform", patch_size=PATCH_SIZE, samples_per_volume=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [len(batch["subject"]) for batch in batches] == [4, 4, 4]
    first = batches[0]
    assert tuple(first["dwi"]["data"].shape) == (4, 2, *PATCH_SIZE)
    assert first["t1"]["data"].dtype == torch.int16 and first["prob"]["data"].dtype == torch.float32
    assert tuple(first["seg"]["affine"].shape) == (4, 4, 4)
    assert tuple(first["location"].shape) == (4, 6)
    assert first["subject"] == ["s0", "s0", "s0", "s1"]
    np.testing.assert_array_equal(first["location"].numpy(), locations_of(dataset, range(4)))


def test_images_selection_and_transform(volume_dataset, store, stored):
    def shift(item):
        item["seg"]["data"] = item["seg"]["data"] + 10
        item["flag"] = True
        return item

    dataset = volume_dataset(
        store, sampler="label", patch_size=4, samples_per_volume=2, images=["seg"], transform=shift
    )
    item = dataset[3]
    assert set(item) == {"seg", "location", "subject", "flag"}
    np.testing.assert_array_equal(
        item["seg"]["data"].numpy(), crop(stored[item["subject"]]["seg"], item["location"]) + 10
    )
    # The same locations as without the selection: images do not enter the draws.
    every = volume_dataset(store, sampler="label", patch_size=4, samples_per_volume=2)
    np.testing.assert_array_equal(locations_of(dataset), locations_of(every))
    with pytest.raises(ConfigError, match="no image 'flair'"):
        volume_dataset(store, images=["flair"])


# ---------------------------------------------------------- reproducibility
@pytest.mark.parametrize("sampler", ["uniform", "label", "weighted"])
def test_epochs_differ_and_seeds_repeat(volume_dataset, store, sampler):
    def make(seed):
        return volume_dataset(
            store, sampler=sampler, patch_size=PATCH_SIZE, samples_per_volume=8, seed=seed
        )

    first, again, other = make(7), make(7), make(8)
    epoch_0 = locations_of(first)
    np.testing.assert_array_equal(locations_of(again), epoch_0)
    # Item i depends on (seed, epoch, i) alone: read backwards, the same locations.
    backwards = locations_of(again, range(len(again) - 1, -1, -1))[::-1]
    np.testing.assert_array_equal(backwards, epoch_0)
    assert (locations_of(other) != epoch_0).any(axis=1).mean() > 0.5
    first.set_epoch(1)
    epoch_1 = locations_of(first)
    assert (epoch_1 != epoch_0).any(axis=1).mean() > 0.5
    again.set_epoch(1)
    np.testing.assert_array_equal(locations_of(again), epoch_1)
    first.set_epoch(0)
    np.testing.assert_array_equal(locations_of(first), epoch_0)
    # A copy (as a spawned loader worker gets) draws the same.
    copy = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(locations_of(copy), epoch_0)


def test_loader_workers_give_the_items_of_the_dataset(volume_dataset, store, torch):
    dataset = volume_dataset(
        store, sampler="label", patch_size=PATCH_SIZE, samples_per_volume=5, seed=11
    )
    dataset.set_epoch(3)
    # Read in the parent first: its open file and cached tables must not reach the workers.
    expected = [item_key(dataset[index]) for index in range(len(dataset))]
    DataLoader = torch.utils.data.DataLoader
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
        assert [item_key(item) for item in loader] == expected, f"num_workers={workers}"
    loader = DataLoader(dataset, batch_size=5, shuffle=False, num_workers=2)
    locations = np.concatenate([batch["location"].numpy() for batch in loader])
    np.testing.assert_array_equal(locations, [key[1] for key in expected])
    # Shuffled, every item once.
    loader = DataLoader(dataset, batch_size=None, shuffle=True, num_workers=2)
    assert sorted(item_key(item) for item in loader) == sorted(expected)


# --------------------------------------------------------------- statistics
def class_map() -> np.ndarray:
    """12^3: class 0 the bulk, class 1 a block, class 2 five voxels inside and one on the
    border, class 3 on the border only (for patches of 3, centres lie in [1, 10])."""
    label_map = np.zeros((12, 12, 12), dtype=np.uint8)
    label_map[2:8, 3:9, 4:10] = 1
    label_map[5, 5, 5] = 2
    label_map[9, 9, 2:6] = 2
    label_map[0, 0, 0] = 2
    label_map[11, 4, 4] = label_map[4, 0, 7] = label_map[6, 6, 11] = 3
    return label_map


@pytest.fixture(scope="module")
def label_store(tmp_path_factory) -> Path:
    edge = np.zeros((10, 10, 10), dtype=np.uint8)
    edge[0, :, :] = edge[:, 9, :] = 1  # every labelled voxel too near the border
    return store_of(
        tmp_path_factory.mktemp("label-store"),
        {"classes": {"seg": class_map()}, "edge": {"seg": edge}},
        {"seg": "label"},
    )


def centres_of(locations: np.ndarray, patch_size) -> tuple:
    return tuple((locations[:, :3] + np.asarray(patch_size) // 2).T)


LABEL_PROBABILITIES = {0: 1, 1: 1, 2: 2}
LABEL_DRAWS = 8000


def label_draws(volume_dataset, label_store) -> np.ndarray:
    """The centres of the first subject's items, drawn with :data:`LABEL_PROBABILITIES`."""
    dataset = volume_dataset(
        label_store,
        sampler="label",
        patch_size=3,
        samples_per_volume=LABEL_DRAWS,
        label_probabilities=LABEL_PROBABILITIES,
        seed=123,
    )
    locations = locations_of(dataset, range(LABEL_DRAWS))
    assert ((locations[:, :3] >= 0) & (locations[:, 3:] <= 12)).all()
    return centres_of(locations, (3, 3, 3))


def test_label_draws_follow_label_probabilities(volume_dataset, label_store):
    counts = np.bincount(class_map()[label_draws(volume_dataset, label_store)], minlength=4)
    assert counts[3] == 0  # only on the border
    shares = np.array([1, 1, 2]) / 4
    assert stats.chisquare(counts[:3], shares * LABEL_DRAWS).pvalue > ALPHA
    # Each share on its own: the sd of a share of 1/2 over 8000 draws is 0.0056, so 0.03
    # is more than 5 sd (voxel-count shares would be about 0.78 / 0.21 / 0.005).
    np.testing.assert_allclose(counts[:3] / LABEL_DRAWS, shares, atol=0.03)


def test_label_draws_follow_torchio_label_sampler(volume_dataset, label_store, torchio, torch):
    label_map = class_map()
    centres = label_draws(volume_dataset, label_store)
    # TorchIO's LabelSampler defines the distribution: its map, binned into class 0,
    # class 1 and each voxel of class 2 (too few draws per voxel for the big classes).
    theirs = torchio.LabelSampler.get_probabilities_from_label_map(
        torch.from_numpy(label_map[np.newaxis].astype(np.float32)),
        LABEL_PROBABILITIES,
        np.array([3, 3, 3]),
    )
    theirs = theirs.numpy()[0].astype(np.float64)
    theirs /= theirs.sum()
    observed = np.zeros(label_map.shape, dtype=np.int64)
    np.add.at(observed, centres, 1)
    assert observed[theirs == 0].sum() == 0  # no centre TorchIO could not draw
    assert observed[0, 0, 0] == 0 and theirs[0, 0, 0] == 0  # class 2, on the border
    singles = np.argwhere((label_map == 2) & (theirs > 0))
    assert len(singles) == 5
    cells_observed = [observed[label_map == 0].sum(), observed[label_map == 1].sum()]
    cells_expected = [theirs[label_map == 0].sum(), theirs[label_map == 1].sum()]
    for voxel in map(tuple, singles):
        cells_observed.append(observed[voxel])
        cells_expected.append(theirs[voxel])
    np.testing.assert_allclose(sum(cells_expected), 1.0)
    expected = np.array(cells_expected) * LABEL_DRAWS
    assert stats.chisquare(cells_observed, expected).pvalue > ALPHA


def test_label_draws_without_probabilities_are_uniform_over_labelled_voxels(
    volume_dataset, label_store
):
    draws = 6000
    dataset = volume_dataset(
        label_store, sampler="label", patch_size=3, samples_per_volume=draws, seed=5
    )
    centres = centres_of(locations_of(dataset, range(draws)), (3, 3, 3))
    label_map = class_map()
    counts = np.bincount(label_map[centres], minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    # Every labelled voxel of the valid box alike: 215 of class 1, 5 of class 2.
    assert stats.chisquare(counts[1:3], np.array([215, 5]) / 220 * draws).pvalue > ALPHA


def test_labels_only_near_the_border_are_never_centres(volume_dataset, label_store):
    dataset = volume_dataset(
        label_store,
        sampler="label",
        patch_size=3,
        samples_per_volume=300,
        label_probabilities={1: 1, 3: 5},
        seed=2,
    )
    with pytest.warns(PatchcliWarning, match=r"label 3 .*only near the border"):
        locations = locations_of(dataset, range(300))
    assert (class_map()[centres_of(locations, (3, 3, 3))] == 1).all()
    # A subject whose labels all lie near the border has no centre: an error naming it.
    default = volume_dataset(label_store, sampler="label", patch_size=3, samples_per_volume=2)
    assert default.subject_of(2) == 1
    with pytest.raises(DataError, match=r"subject 'edge'.*border") as caught:
        default[2]
    assert str(caught.value).startswith(f"{label_store}: ") and "\n" not in str(caught.value)


@pytest.fixture(scope="module", params=["tables", "no tables"])
def channel_store(request, tmp_path_factory) -> Path:
    """:func:`class_map` one-hot, four channels, in a store with its channel totals for
    patches of 3, or with none (made again by the dataset)."""
    label_map = class_map()
    one_hot = np.stack([label_map == c for c in range(4)]).astype(np.uint8)
    return store_of(
        tmp_path_factory.mktemp("channel-store"),
        {"classes": {"seg": one_hot}},
        {"seg": "label"},
        patch_size=3 if request.param == "tables" else None,
    )


def test_one_hot_label_maps_draw_channels_as_label_maps_draw_labels(volume_dataset, channel_store):
    with h5py.File(channel_store, "r") as file:
        assert file["volumes/classes/seg"].shape == (4, 12, 12, 12)
        totals = file.get("tables/classes/channels/seg/totals")
        if "patch_size" in file.attrs:  # the store made with a patch size
            assert totals.shape == (4, 144) and "label" not in file["tables/classes"]
        else:
            assert totals is None
    dataset = volume_dataset(
        channel_store,
        sampler="label",
        patch_size=3,
        samples_per_volume=LABEL_DRAWS,
        label_probabilities=LABEL_PROBABILITIES,  # keys are channels here
        seed=123,
    )
    centres = centres_of(locations_of(dataset, range(LABEL_DRAWS)), (3, 3, 3))
    counts = np.bincount(class_map()[centres], minlength=4)
    assert counts[3] == 0  # only on the border
    # As test_label_draws_follow_label_probabilities: the same shares, the same bounds.
    shares = np.array([1, 1, 2]) / 4
    assert stats.chisquare(counts[:3], shares * LABEL_DRAWS).pvalue > ALPHA
    np.testing.assert_allclose(counts[:3] / LABEL_DRAWS, shares, atol=0.03)
    # Without probabilities, every voxel of channels 1 and up alike: 215 of 1, 5 of 2.
    draws = 6000
    uniform = volume_dataset(
        channel_store, sampler="label", patch_size=3, samples_per_volume=draws, seed=5
    )
    counts = np.bincount(class_map()[centres_of(locations_of(uniform), (3, 3, 3))], minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    assert stats.chisquare(counts[1:3], np.array([215, 5]) / 220 * draws).pvalue > ALPHA
    with pytest.warns(PatchcliWarning, match=r"subject 'classes': channel 3 .*near the border"):
        volume_dataset(
            channel_store, sampler="label", patch_size=3, label_probabilities={1: 1, 3: 1}
        )[0]
    bad = volume_dataset(channel_store, sampler="label", patch_size=3, label_probabilities={4: 1})
    with pytest.raises(DataError, match=r"subject 'classes'.*refers to channel 4 but the label"):
        bad[0]


def test_channel_draws_do_not_depend_on_where_the_totals_come_from(
    volume_dataset, tmp_path_factory
):
    rng = np.random.default_rng(8)
    soft = rng.random((3, 9, 8, 7)).astype(np.float32) * (rng.random((3, 9, 8, 7)) > 0.4)
    stores = [
        store_of(
            tmp_path_factory.mktemp("channel-totals"),
            {"soft": {"seg": soft}},
            {"seg": "label"},
            patch_size=size,
        )
        for size in ([3, 2, 1], None, [5, 5, 5])  # the dataset's, none, another
    ]
    found = [
        locations_of(
            volume_dataset(
                path,
                sampler="label",
                patch_size=(3, 2, 1),
                samples_per_volume=200,
                label_probabilities={0: 1, 2: 3},
                seed=4,
            )
        )
        for path in stores
    ]
    np.testing.assert_array_equal(found[1], found[0])
    np.testing.assert_array_equal(found[2], found[0])


@pytest.fixture(scope="module")
def weighted_maps() -> dict:
    two = np.zeros((9, 9, 9), dtype=np.float32)
    two[3, 4, 5], two[5, 4, 3] = 1, 3
    two[0, 4, 4] = 100  # on the border for patches of 3: never a centre
    rng = np.random.default_rng(7)
    noisy = rng.integers(0, 6, size=(7, 6, 5)).astype(np.float32)
    noisy[rng.random(noisy.shape) < 0.3] = 0
    return {"two": two, "noisy": noisy}


@pytest.fixture(scope="module", params=["tables", "no tables"])
def weighted_store(request, tmp_path_factory, weighted_maps) -> Path:
    """The maps in a store with row totals for patches of 3, or with none (made again by
    the dataset)."""
    return store_of(
        tmp_path_factory.mktemp("weighted-store"),
        {name: {"prob": values} for name, values in weighted_maps.items()},
        {"prob": "sampling_map"},
        patch_size=3 if request.param == "tables" else None,
    )


def test_weighted_draws_follow_the_map(volume_dataset, weighted_store):
    draws = 4000
    dataset = volume_dataset(
        weighted_store, sampler="weighted", patch_size=3, samples_per_volume=draws, seed=9
    )
    centres = np.stack(centres_of(locations_of(dataset, range(draws)), (3, 3, 3)), axis=1)
    first = (centres == [3, 4, 5]).all(axis=1).sum()
    second = (centres == [5, 4, 3]).all(axis=1).sum()
    assert first + second == draws  # the border voxel of weight 100 never
    # sd of a share of 1/4 over 4000 draws: 0.0068; 0.035 is 5 sd (equal shares: 0.5).
    np.testing.assert_allclose([first / draws, second / draws], [0.25, 0.75], atol=0.035)
    assert stats.chisquare([first, second], [draws / 4, 3 * draws / 4]).pvalue > ALPHA


def test_weighted_draws_do_not_depend_on_where_the_row_totals_come_from(
    volume_dataset, tmp_path_factory, weighted_maps
):
    stores = [
        store_of(
            tmp_path_factory.mktemp("weighted-totals"),
            {"noisy": {"prob": weighted_maps["noisy"]}},
            {"prob": "sampling_map"},
            patch_size=size,
        )
        for size in ([3, 2, 1], None, [5, 5, 5])  # the dataset's, none, another
    ]
    found = [
        locations_of(
            volume_dataset(
                path, sampler="weighted", patch_size=(3, 2, 1), samples_per_volume=200, seed=4
            )
        )
        for path in stores
    ]
    np.testing.assert_array_equal(found[1], found[0])
    np.testing.assert_array_equal(found[2], found[0])


def test_weighted_statistics_match_torchio(
    volume_dataset, weighted_store, weighted_maps, torchio, torch
):
    probability_map = weighted_maps["noisy"]
    patch_size = (3, 2, 1)
    draws = 4000
    dataset = volume_dataset(
        weighted_store,
        sampler="weighted",
        patch_size=patch_size,
        samples_per_volume=draws,
        seed=17,
    )
    ours = locations_of(dataset, range(draws, 2 * draws))  # the second subject's items
    tensor = torch.from_numpy(probability_map[np.newaxis])
    subject = torchio.Subject(
        image=torchio.ScalarImage(tensor=torch.zeros_like(tensor)),
        sampling_map=torchio.Image(tensor=tensor, type=torchio.SAMPLING_MAP),
    )
    sampler = torchio.WeightedSampler(patch_size, "sampling_map")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sampler.process_probability_map(sampler.get_probability_map(subject), subject)
    expected = np.asarray(expected, dtype=np.float64)
    expected /= expected.sum()
    torch.manual_seed(17)
    theirs = np.array(
        [patch[torchio.LOCATION].numpy() for patch in sampler(subject, num_patches=draws)]
    )

    def histogram(locations):
        counts = np.zeros(probability_map.shape, dtype=np.int64)
        np.add.at(counts, centres_of(locations, patch_size), 1)
        return counts

    support = expected > 0
    for counts in (histogram(ours), histogram(theirs)):
        assert counts[~support].sum() == 0
        assert stats.chisquare(counts[support], expected[support] * draws).pvalue > ALPHA
    table = np.stack([histogram(ours)[support], histogram(theirs)[support]])
    assert stats.chi2_contingency(table).pvalue > ALPHA


# --------------------------------------------------------------------- grid
@pytest.mark.parametrize("padding_mode", [None, "constant", "edge", "reflect", "symmetric", 7.5])
def test_grid_items_tile_each_subject(volume_dataset, store, stored, affines, padding_mode):
    patch_size, overlap = (8, 8, 6), (4, 2, 2)
    dataset = volume_dataset(
        store,
        sampler="grid",
        patch_size=patch_size,
        patch_overlap=overlap,
        padding_mode=padding_mode,
        images=["t1", "dwi"],
    )
    padding = np.zeros(3, dtype=int) if padding_mode is None else np.array(overlap) // 2
    first = 0
    for number, (subject, shape) in enumerate(zip(SUBJECTS, SHAPES)):
        expected = grid_locations(tuple(np.add(shape, 2 * padding)), patch_size, overlap)
        indices = range(first, first + len(expected))
        assert [dataset.subject_of(i) for i in indices] == [number] * len(expected)
        np.testing.assert_array_equal(dataset.indices_of_subject(subject), list(indices))
        locations = locations_of(dataset, indices)
        np.testing.assert_array_equal(locations, expected)
        widths = [(0, 0)] + [(int(p), int(p)) for p in padding]
        for name in ("t1", "dwi"):
            volume = stored[subject][name]
            if padding_mode is None or padding_mode == "constant":
                padded = np.pad(volume, widths)
            elif isinstance(padding_mode, float):
                padded = np.pad(volume, widths, constant_values=padding_mode)
            else:
                padded = np.pad(volume, widths, mode=padding_mode)
            for index, location in zip(indices, locations):
                item = dataset[index]
                np.testing.assert_array_equal(
                    item[name]["data"].numpy(), crop(padded, location), err_msg=f"{index} {name}"
                )
        # Affines of the first voxels in the volume, the padding taken off.
        item = dataset[indices[-1]]
        start = locations[-1][:3] - padding
        np.testing.assert_allclose(
            item["t1"]["affine"].numpy(), patch_affine(affines[subject], start)
        )
        first += len(expected)
    assert len(dataset) == first


@pytest.mark.parametrize("overlap_mode", ["crop", "average", "hann"])
def test_grid_items_aggregate_back_to_the_stored_volume(
    volume_dataset, store, stored, torch, overlap_mode
):
    dataset = volume_dataset(
        store, sampler="grid", patch_size=8, patch_overlap=4, padding_mode="edge", images=["dwi"]
    )
    for subject in ("s1", "s2"):
        aggregator = dataset.grid_aggregator(subject, overlap_mode=overlap_mode)
        items = [dataset[index] for index in dataset.indices_of_subject(subject)]
        aggregator.add_batch(
            torch.stack([item["dwi"]["data"] for item in items]),
            torch.stack([item["location"] for item in items]),
        )
        output = np.asarray(aggregator.get_output())
        if overlap_mode == "crop":  # exactly
            np.testing.assert_array_equal(output, stored[subject]["dwi"])
        else:  # weighted means of equal float32 values
            np.testing.assert_allclose(output, stored[subject]["dwi"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["wrap", "mean", "median", "minimum", "linear_ramp"])
def test_padding_modes_that_need_whole_volumes_are_refused(volume_dataset, store, padding_mode):
    with pytest.raises(ConfigError, match=f"padding_mode '{padding_mode}' needs whole volumes"):
        volume_dataset(
            store, sampler="grid", patch_size=8, patch_overlap=2, padding_mode=padding_mode
        )


# ------------------------------------------------------------------ ranks
@pytest.mark.parametrize("sampler", ["uniform", "grid"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_split_by_subject_gives_whole_subjects_to_one_rank(volume_dataset, store, sampler, ranks):
    dataset = volume_dataset(
        store, sampler=sampler, patch_size=PATCH_SIZE, samples_per_volume=3, patch_overlap=2
    )
    parts = [dataset.split_by_subject(ranks, rank) for rank in range(ranks)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(dataset)))
    owners = [{dataset.subject_of(int(i)) for i in part} for part in parts]
    for number, owner in enumerate(owners):
        assert owner, f"rank {number} has no subject"
        for other in owners[number + 1 :]:
            assert not owner & other
        # Each of its subjects whole.
        for subject in owner:
            whole = [i for i in range(len(dataset)) if dataset.subject_of(i) == subject]
            assert set(whole) <= set(parts[number].tolist())
    # The same split on every call (every rank computes it alone).
    np.testing.assert_array_equal(dataset.split_by_subject(ranks, 1), parts[1])
    if sampler == "uniform" and ranks == 2:
        assert [len(part) for part in parts] == [6, 6]


# ----------------------------------------------------------------- errors
def test_a_store_without_the_image_a_sampler_needs_is_refused(volume_dataset, tmp_path, data):
    manifest, _ = data
    images = {"t1": "intensity", "prob": "sampling_map"}
    no_labels = extract(store_config(tmp_path, manifest, "no-labels.h5", images=images), "volumes")
    with pytest.raises(DataError, match="the store has no label image") as caught:
        volume_dataset(no_labels.path, sampler="label", patch_size=4)
    assert str(no_labels.path) in str(caught.value)
    images = {"t1": "intensity", "seg": "label"}
    no_map = extract(store_config(tmp_path, manifest, "no-map.h5", images=images), "volumes")
    with pytest.raises(DataError, match="the store has no sampling_map image"):
        volume_dataset(no_map.path, sampler="weighted", patch_size=4)
    # Each store serves the samplers it has images for.
    assert volume_dataset(no_labels.path, sampler="weighted", patch_size=4)[0]["subject"] == "s0"
    assert volume_dataset(no_map.path, sampler="label", patch_size=4)[0]["subject"] == "s0"
    with pytest.raises(ConfigError, match="no image 'nope'"):
        volume_dataset(no_map.path, sampler="label", patch_size=4, label_name="nope")


@pytest.mark.parametrize("sampler", ["uniform", "label", "weighted", "grid"])
def test_a_patch_larger_than_a_stored_volume_is_refused_naming_the_subject(
    volume_dataset, store, sampler
):
    with pytest.raises(DataError, match=r"subject 's2': patch size \(20, 8, 8\)") as caught:
        volume_dataset(store, sampler=sampler, patch_size=(20, 8, 8))
    assert str(caught.value).startswith(f"{store}: ") and "\n" not in str(caught.value)
    # 19 voxels fit s2 (with a grid padded by 1, 21 do).
    volume_dataset(store, sampler=sampler, patch_size=(19, 8, 8))


def test_bad_arguments_are_refused(volume_dataset, store):
    with pytest.raises(ConfigError, match="sampler must be one of"):
        volume_dataset(store, sampler="queue")
    with pytest.raises(ConfigError, match="samples_per_volume"):
        volume_dataset(store, sampler="uniform", patch_size=4, samples_per_volume=0)
    dataset = volume_dataset(store, sampler="uniform", patch_size=4, samples_per_volume=2)
    with pytest.raises(IndexError, match="out of range"):
        dataset[len(dataset)]


def test_a_patch_output_is_not_a_store(volume_dataset, tmp_path):
    patches = write_patch_file(
        tmp_path / "patches.h5", make_patch_subjects(np.random.default_rng(0))
    )
    with pytest.raises(DataError, match="not a volume store") as caught:
        volume_dataset(patches, sampler="uniform", patch_size=4)
    assert str(patches) in str(caught.value)
    with pytest.raises(DataError, match="no such file"):
        volume_dataset(tmp_path / "missing.h5")


def _damage_a_chunk(path: Path, dataset: str) -> None:
    """Overwrite 64 bytes in the middle of the largest chunk of ``dataset``."""
    with h5py.File(path, "r") as file:
        chunks = []
        file[dataset].id.chunk_iter(chunks.append)
        largest = max(chunks, key=lambda info: info.size)
    with open(path, "r+b") as stream:
        stream.seek(largest.byte_offset + largest.size // 2)
        stream.write(bytes(range(64)))


@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_a_damaged_chunk_is_an_error_naming_the_file_and_the_subject(
    volume_dataset, tmp_path, data, compression
):
    manifest, volumes = data
    config = store_config(tmp_path, manifest, output={"compression": compression})
    path = extract(config, "volumes").path
    _damage_a_chunk(path, "volumes/s1/t1")
    dataset = volume_dataset(path, sampler="grid", patch_size=8, images=["t1"])
    with pytest.raises(DataError) as caught:
        for index in dataset.indices_of_subject("s1"):  # together, they read every chunk
            item = dataset[index]
            same = np.array_equal(
                item["t1"]["data"].numpy(), crop(volumes["s1"]["t1"], item["location"])
            )
            assert same, (
                f"item {index} (subject 's1') holds other values than were stored, read "
                "from the damaged chunk without an error"
            )
    message = str(caught.value)
    assert message.startswith(f"{path}: subject 's1'") and "'t1'" in message
    assert "\n" not in message


def test_damaged_sampling_tables_are_an_error_naming_the_file_and_the_subject(
    volume_dataset, tmp_path, data
):
    manifest, _ = data
    path = extract(store_config(tmp_path, manifest), "volumes").path
    _damage_a_chunk(path, "tables/s2/label/seg/rows")  # gzip, as every table
    dataset = volume_dataset(path, sampler="label", patch_size=4, samples_per_volume=2)
    dataset[0]  # s0's tables are intact
    with pytest.raises(DataError) as caught:
        dataset[4]
    message = str(caught.value)
    assert message.startswith(f"{path}: subject 's2': cannot read its sampling tables")
    assert "\n" not in message


def test_a_truncated_store_is_an_error_naming_the_file(volume_dataset, tmp_path, data):
    manifest, _ = data
    path = extract(store_config(tmp_path, manifest), "volumes").path
    size = path.stat().st_size
    with open(path, "r+b") as stream:
        stream.truncate(size * 2 // 3)
    with pytest.raises(DataError) as caught:
        volume_dataset(path, sampler="uniform", patch_size=4)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as stream:
        stream.truncate(path.stat().st_size * 2 // 3)


def test_a_store_truncated_while_open_is_an_error_naming_the_file_and_the_subject(
    volume_dataset, tmp_path, data
):
    manifest, _ = data
    path = extract(store_config(tmp_path, manifest), "volumes").path
    dataset = volume_dataset(path, sampler="grid", patch_size=8, images=["t1"])
    dataset[0]
    _truncate(path)
    # The first item whose volume is gone fails, naming its subject (not a raw h5py error).
    with pytest.raises(DataError) as caught:
        for index in range(len(dataset)):
            dataset[index]
    subject = dataset.subjects[dataset.subject_of(index)].id
    message = str(caught.value)
    assert message.startswith(f"{path}: subject {subject!r}: ") and "\n" not in message


def test_a_store_truncated_before_it_is_opened_is_an_error_naming_the_file_and_the_subject(
    volume_dataset, tmp_path, data
):
    manifest, _ = data
    path = extract(store_config(tmp_path, manifest), "volumes").path
    dataset = volume_dataset(path, sampler="uniform", patch_size=4, samples_per_volume=2)
    dataset[0]
    dataset.close()  # as a loader worker, which opens the store after the damage
    _truncate(path)
    with pytest.raises(DataError) as caught:
        dataset[0]
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "subject 's0'" in message, message


# ------------------------------------------------------------------- merges
def test_a_merged_store_gives_the_items_of_the_unsharded_store(
    volume_dataset, tmp_path, data, store, monkeypatch
):
    from patchcli.merge import merge

    manifest, _ = data
    folder = tmp_path / "run"
    config = store_config(folder, manifest)
    for index in range(2):
        extract(config.model_copy(update={"shard": f"{index}/2"}), "volumes")
    merge(folder / "store.h5")
    merge(folder / "copy.h5", sorted(folder.glob("store.shard-*")), copy=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # links are found beside the merge, not in the working folder
    for sampler in ("label", "weighted"):
        reference = volume_dataset(
            store, sampler=sampler, patch_size=PATCH_SIZE, samples_per_volume=3, seed=2
        )
        expected = [item_key(reference[i]) for i in range(len(reference))]
        for merged in ("store.h5", "copy.h5"):
            dataset = volume_dataset(
                folder / merged,
                sampler=sampler,
                patch_size=PATCH_SIZE,
                samples_per_volume=3,
                seed=2,
            )
            assert [item_key(dataset[i]) for i in range(len(dataset))] == expected, merged
    # A virtual merge whose shard is gone: refused naming the merge.
    (folder / "store.shard-1-of-2.h5").unlink()
    with pytest.raises(DataError, match="store.shard-1-of-2.h5") as caught:
        volume_dataset(folder / "store.h5", sampler="uniform", patch_size=4)
    assert str(folder / "store.h5") in str(caught.value)


# ----------------------------------------------------------------- training
def test_a_model_trains_on_batches_of_the_dataset(volume_dataset, store, torch):
    torch.manual_seed(0)
    dataset = volume_dataset(
        store,
        sampler="label",
        patch_size=8,
        samples_per_volume=4,
        label_probabilities={0: 1, 1: 1, 2: 1},
        images=["t1", "seg"],
        seed=1,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    losses = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for batch in loader:
            image = batch["t1"]["data"].float() / 1000
            target = batch["seg"]["data"][:, 0].long()
            loss = torch.nn.functional.cross_entropy(model(image), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert any(
        not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True)
    )
