"""Tests for patchcli.memory: TorchIO's figure, the itemised peak and budget inversion."""

from __future__ import annotations

import json
import tracemalloc
from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest

from patchcli.errors import ConfigError
from patchcli.memory import (
    MEMORY_ITEMS,
    ImageInfo,
    estimate_memory,
    estimate_memory_for_budget,
    max_length_for_budget,
    torchio_dtype,
    torchio_max_memory,
)
from patchcli.units import format_bytes_torchio


def _subject(shape, t1_dtype="int16", seg_dtype="uint16", seg_channels=1):
    return [
        ImageInfo("t1", "intensity", 1, shape, t1_dtype),
        ImageInfo("seg", "label", seg_channels, shape, seg_dtype),
    ]


# Three subjects; the middle one is twice as large. Held bytes per voxel: int16 t1
# (2) + uint16 seg read as int32 (4) = 6, so volumes are 6000, 12000 and 6000 bytes.
SUBJECTS = [_subject((10, 10, 10)), _subject((20, 10, 10)), _subject((10, 10, 10))]
OPTIONS = dict(patch_size=2, samples_per_volume=3, num_workers=1, batch_size=4, sampler="uniform")


# --- TorchIO's figure ------------------------------------------------------------------


def test_torchio_figure_from_the_reference():
    images = [ImageInfo(name, "intensity", 1, (181, 217, 181), "float32") for name in "abc"]
    assert torchio_max_memory(images, 96, 300) == 3185049600
    estimate = estimate_memory(
        [images], **{**OPTIONS, "patch_size": 96, "samples_per_volume": 10}, max_length=300
    )
    assert estimate.torchio_bytes == 3185049600
    assert estimate.torchio_pretty == "3.0 GiB"


@pytest.mark.parametrize("max_length", [1, 9, 300, 70_000])
def test_torchio_figure_equals_torchio(torchio, torch, max_length):
    # Channels of all images count, label and sampling map included, as float32.
    shape = (6, 7, 8)
    subject = torchio.Subject(
        t1=torchio.ScalarImage(tensor=torch.zeros(2, *shape, dtype=torch.int16)),
        seg=torchio.LabelMap(tensor=torch.zeros(1, *shape, dtype=torch.uint8)),
        prob=torchio.Image(tensor=torch.ones(1, *shape), type=torchio.SAMPLING_MAP),
    )
    queue = torchio.Queue(
        torchio.SubjectsDataset([subject]),
        max_length,
        2,
        torchio.data.UniformSampler((3, 4, 5)),
        num_workers=0,
    )
    images = [
        ImageInfo("t1", "intensity", 2, shape, "int16"),
        ImageInfo("seg", "label", 1, shape, "uint8"),
        ImageInfo("prob", "sampling_map", 1, shape, "float32"),
    ]
    assert torchio_max_memory(images, (3, 4, 5), max_length) == queue.get_max_memory()
    estimate = estimate_memory(
        [images], **{**OPTIONS, "patch_size": (3, 4, 5)}, max_length=max_length
    )
    assert estimate.torchio_bytes == queue.get_max_memory()
    assert estimate.torchio_pretty == queue.get_max_memory_pretty()
    assert format_bytes_torchio(queue.get_max_memory()) == queue.get_max_memory_pretty()


# --- The itemised peak -------------------------------------------------------------------


def test_items_hand_computed():
    estimate = estimate_memory(SUBJECTS, **OPTIONS, max_length=5)
    # A patch is 8 voxels x 6 bytes = 48 bytes. 5 is not a multiple of 3, so a
    # subject can be split. One worker prefetches 2 subjects: the two largest.
    assert estimate.items == {
        "queue_patches": 5 * 48,
        "batch_being_built": 4 * 48,
        "subject_being_sampled": 12000,
        "split_subject_kept_for_next_fill": 12000,
        "subjects_prefetched_by_workers": 12000 + 6000,
        "sampler_working_memory": 0,
    }
    assert list(estimate.items) == list(MEMORY_ITEMS)
    assert estimate.total_bytes == 240 + 192 + 12000 + 12000 + 18000
    assert estimate.torchio_bytes == 4 * 8 * 2 * 5
    assert estimate.max_length == 5


def test_cast_dtype_applies_to_intensity_images_only():
    estimate = estimate_memory(SUBJECTS, **OPTIONS, max_length=5, cast_dtype=np.float32)
    # t1 held as float32 (4 bytes), seg still int32 (4): 8 bytes per voxel.
    assert estimate.items["queue_patches"] == 5 * 8 * 8
    assert estimate.items["subject_being_sampled"] == 2000 * 8


def test_no_split_when_max_length_is_a_multiple_or_a_whole_pass():
    assert (
        estimate_memory(SUBJECTS, **OPTIONS, max_length=6).items["split_subject_kept_for_next_fill"]
        == 0
    )
    long_queue = estimate_memory(SUBJECTS, **OPTIONS, max_length=100)
    assert long_queue.items["split_subject_kept_for_next_fill"] == 0
    # The queue never holds more than one pass (9 patches), TorchIO's figure still
    # counts max_length.
    assert long_queue.items["queue_patches"] == 9 * 48
    assert long_queue.torchio_bytes == 4 * 8 * 2 * 100
    # Unequal counts can split at any length below a pass.
    unequal = estimate_memory(
        SUBJECTS, **{**OPTIONS, "samples_per_volume": [3, 6, 3]}, max_length=6
    )
    assert unequal.items["split_subject_kept_for_next_fill"] == 12000
    assert unequal.items["queue_patches"] == 6 * 48


@pytest.mark.parametrize(
    ("num_workers", "prefetch_factor", "expected"),
    [(0, 2, 0), (1, 1, 12000), (1, 2, 18000), (5, 2, 24000)],
)
def test_prefetched_subjects(num_workers, prefetch_factor, expected):
    estimate = estimate_memory(
        SUBJECTS,
        **{**OPTIONS, "num_workers": num_workers, "prefetch_factor": prefetch_factor},
        max_length=5,
    )
    assert estimate.items["subjects_prefetched_by_workers"] == expected
    # The main process holds a subject whatever the number of workers.
    assert estimate.items["subject_being_sampled"] == 12000


def _sampler_bytes(sampler, subjects=SUBJECTS, **options):
    estimate = estimate_memory(subjects, **{**OPTIONS, "sampler": sampler}, max_length=5, **options)
    return estimate.items["sampler_working_memory"]


def test_sampler_working_memory_hand_computed():
    voxels = 2000  # the largest subject
    assert _sampler_bytes("uniform") == 0
    assert _sampler_bytes("grid") == 0
    # Padded copy of the largest subject: (24, 14, 14) voxels x 6 bytes.
    assert _sampler_bytes("grid", grid_padding=2) == 24 * 14 * 14 * 6
    # Four float64 volumes.
    assert _sampler_bytes("weighted") == 32 * voxels
    # Label map > 0 (bool) kept while the four float64 volumes exist.
    assert _sampler_bytes("label") == voxels + 32 * voxels
    # With label_probabilities a one-channel float32 map instead.
    assert _sampler_bytes("label", label_probabilities=True) == 4 * voxels + 32 * voxels
    # A 16-channel label map: its float32 copy (64 bytes/voxel) plus the zero-filled
    # map and a mask outweigh the CDF stage.
    wide = [_subject((20, 10, 10), seg_channels=16)]
    assert _sampler_bytes("label", wide, label_probabilities=True) == (64 + 64 + 16) * voxels
    assert _sampler_bytes("label", wide) == max((64 + 16) * voxels, (16 + 32) * voxels)


def test_label_sampler_needs_a_label_map():
    no_label = [[ImageInfo("t1", "intensity", 1, (4, 4, 4), "float32")]]
    with pytest.raises(ConfigError, match="type label"):
        _sampler_bytes("label", no_label)
    with pytest.raises(ConfigError, match="'mask'"):
        _sampler_bytes("label", label_name="mask")
    assert _sampler_bytes("label", label_name="t1") == 33 * 2000  # any image can be named


def test_weighted_working_memory_matches_torchio(torchio, torch):
    # tracemalloc sees NumPy's allocations: TorchIO's float64 map, flattened copy,
    # normalised copy and CDF. 64 KiB covers the small Python objects around them.
    shape = (30, 40, 50)
    subject = torchio.Subject(
        t1=torchio.ScalarImage(tensor=torch.rand(1, *shape)),
        prob=torchio.Image(tensor=torch.rand(1, *shape), type=torchio.SAMPLING_MAP),
    )
    sampler = torchio.data.WeightedSampler(4, "prob")
    tracemalloc.start()
    try:
        list(islice(sampler(subject), 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    images = [
        ImageInfo("t1", "intensity", 1, shape, "float32"),
        ImageInfo("prob", "sampling_map", 1, shape, "float32"),
    ]
    predicted = _sampler_bytes("weighted", [images])
    assert predicted <= peak <= predicted + 64 * 1024


def test_label_working_memory_covers_torchio(torchio, torch):
    # The NumPy part of TorchIO's label sampler is the same four float64 volumes;
    # its torch temporaries are not traced, so the model must be at least this.
    shape = (30, 40, 50)
    subject = torchio.Subject(
        seg=torchio.LabelMap(tensor=(torch.rand(1, *shape) > 0.5).to(torch.uint8)),
    )
    sampler = torchio.data.LabelSampler(4, "seg")
    tracemalloc.start()
    try:
        list(islice(sampler(subject), 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    predicted = _sampler_bytes("label", [[ImageInfo("seg", "label", 1, shape, "uint8")]])
    assert peak - 64 * 1024 <= predicted
    assert predicted <= 1.1 * peak  # and not far above it (1 byte/voxel of 32)


def test_to_json_parses():
    estimate = estimate_memory(SUBJECTS, **OPTIONS, max_length=5)
    data = json.loads(json.dumps(estimate.to_json()))
    assert data["torchio_bytes"] == 320
    assert data["torchio_pretty"] == "320 Bytes"
    assert data["total_bytes"] == estimate.total_bytes == sum(data["items"].values())
    assert data["items"] == estimate.items
    assert data["max_length"] == 5
    assert "budget_bytes" not in data


# --- Budget --------------------------------------------------------------------------------


def _total(max_length, subjects=SUBJECTS, **options):
    return estimate_memory(subjects, **{**OPTIONS, **options}, max_length=max_length).total_bytes


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"samples_per_volume": [3, 6, 4]},
        {"samples_per_volume": [3, 6, 4], "patch_size": 8},
        {"samples_per_volume": 40, "num_workers": 0},
        {"sampler": "weighted", "num_workers": 3, "cast_dtype": np.float32, "patch_size": 6},
    ],
)
def test_budget_inversion_is_the_largest_length_that_fits(options):
    # Brute force over every length up to one pass (longer queues hold no more).
    counts = np.broadcast_to(options.get("samples_per_volume", 3), 3)
    per_epoch = int(np.sum(counts))
    totals = {length: _total(length, **options) for length in range(1, per_epoch + 1)}
    rng = np.random.default_rng(0)
    low, high = min(totals.values()) - 100, max(totals.values()) + 100
    for budget in rng.integers(low, high, size=60).tolist() + [low + 100, high - 100]:
        fitting = [length for length, total in totals.items() if total <= budget]
        if not fitting:
            with pytest.raises(ConfigError):
                max_length_for_budget(budget, SUBJECTS, **{**OPTIONS, **options})
            continue
        length = max_length_for_budget(budget, SUBJECTS, **{**OPTIONS, **options})
        assert length == max(fitting)
        assert _total(length, **options) <= budget
        if length < per_epoch:
            assert _total(length + 1, **options) > budget


def test_budget_prefers_a_length_that_never_splits_a_subject():
    subject = [ImageInfo("t1", "intensity", 1, (100, 100, 100), "float32")]
    options = dict(
        patch_size=10, samples_per_volume=100, num_workers=2, batch_size=4, sampler="uniform"
    )
    length = max_length_for_budget(30_000_000, [subject] * 100, **options)
    assert length == 2400
    assert _total(2400, [subject] * 100, **options) <= 30_000_000
    # Lengths just above split subjects and pay for a kept subject.
    assert all(_total(n, [subject] * 100, **options) > 30_000_000 for n in (2401, 2450, 2499))


def test_budget_too_small_is_a_config_error():
    options = {**OPTIONS, "samples_per_volume": [3, 6, 4]}
    smallest = min(
        estimate_memory(SUBJECTS, **options, max_length=length).total_bytes
        for length in range(1, 14)
    )
    with pytest.raises(ConfigError, match="too small") as error:
        max_length_for_budget(smallest - 1, SUBJECTS, **options)
    assert "\n" not in str(error.value)
    assert max_length_for_budget(smallest, SUBJECTS, **options) == 13


def test_a_whole_pass_can_fit_where_short_queues_do_not():
    # With large volumes and small patches, a queue holding one whole pass keeps
    # no split subject, so it needs less than a 1-patch queue: the answer is 9.
    assert _total(9) < _total(1)
    assert max_length_for_budget(_total(9), SUBJECTS, **OPTIONS) == 9
    assert max_length_for_budget(10**12, SUBJECTS, **OPTIONS) == 9


def test_estimate_for_budget_json():
    # Patches of 512 voxels x 6 bytes; unequal counts, so every length below 13 splits.
    options = {"samples_per_volume": [3, 6, 4], "patch_size": 8}
    budget = _total(4, **options) + 10
    assert _total(5, **options) > budget and _total(13, **options) > budget
    estimate = estimate_memory_for_budget(budget, SUBJECTS, **{**OPTIONS, **options})
    data = json.loads(json.dumps(estimate.to_json()))
    assert data["max_length"] == 4
    assert data["budget_bytes"] == budget
    assert data["total_bytes"] == _total(4, **options) <= budget
    assert data["torchio_bytes"] == 4 * 512 * 2 * 4
    assert set(data) >= {"torchio_bytes", "torchio_pretty", "total_bytes", "items", "max_length"}


# --- Inputs --------------------------------------------------------------------------------


def test_image_info_normalises_and_validates():
    info = ImageInfo("t1", "intensity", 2, [4, 5, 6], "uint8")
    assert info.spatial_shape == (4, 5, 6)
    assert info.dtype == np.dtype(np.uint8)
    assert info.nbytes == 2 * 120
    header = SimpleNamespace(channels=1, spatial_shape=(3, 3, 3), dtype=np.dtype("int16"))
    assert ImageInfo.from_header("seg", "label", header).nbytes == 54
    for bad in (
        dict(type="mask"),
        dict(channels=0),
        dict(channels=1.0),
        dict(spatial_shape=(4, 5)),
        dict(spatial_shape=(4, 0, 5)),
        dict(dtype="not-a-dtype"),
    ):
        arguments = dict(name="t1", type="intensity", channels=1, spatial_shape=(4, 5, 6))
        arguments["dtype"] = "float32"
        arguments.update(bad)
        with pytest.raises(ConfigError):
            ImageInfo(**arguments)


def test_torchio_dtype():
    assert torchio_dtype(np.uint16) == np.int32
    assert torchio_dtype("uint32") == np.int64
    assert torchio_dtype("uint8") == np.uint8
    assert torchio_dtype("float64") == np.float64


@pytest.mark.parametrize(
    "changes",
    [
        {"sampler": "random"},
        {"samples_per_volume": [3, 3]},
        {"samples_per_volume": [0, 0, 0]},
        {"samples_per_volume": -1},
        {"num_workers": -1},
        {"batch_size": 0},
        {"prefetch_factor": 0},
        {"patch_size": 0},
        {"max_length": 0},
    ],
)
def test_bad_settings_raise_config_error(changes):
    arguments = {**OPTIONS, "max_length": 5, **changes}
    with pytest.raises(ConfigError):
        estimate_memory(SUBJECTS, **arguments)


def test_no_subjects_is_a_config_error():
    with pytest.raises(ConfigError):
        estimate_memory([], **OPTIONS, max_length=5)
    with pytest.raises(ConfigError):
        estimate_memory([[]], **OPTIONS, max_length=5)
