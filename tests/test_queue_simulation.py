"""Tests for patchcli.queue.simulation: the fills and pops of the queue, against TorchIO."""

from __future__ import annotations

import math

import numpy as np
import pytest

from patchcli.errors import ConfigError
from patchcli.queue import simulate_queue

from .helpers import ordered_trace as _ordered

# --- A hand-worked example ------------------------------------------------------------
#
# Three subjects of 3 patches, max_length 4, batch size 2, 2 epochs, no shuffles.
# fill 1 (pop 0):  s0 p0-2, s1 p0      -> s1 split, 2 owed
# fill 2 (pop 4):  s1 p1-2, s2 p0-1    -> s2 split, 1 owed; every subject fetched
# fill 3 (pop 8):  s2 p2, then a new pass: s0 p0-2
# fill 4 (pop 12): s1 p0-2, s2 p0      -> s2 split, 2 owed
# fill 5 (pop 16): s2 p1-2, then a new pass: s0 p0-1 (only 2 of these 4 are popped)


def test_hand_worked_example():
    trace = _ordered([3, 3, 3], 4, batch_size=2, num_epochs=2)
    expected_pairs = [
        (0, 0), (0, 1), (0, 2), (1, 0),
        (1, 1), (1, 2), (2, 0), (2, 1),
        (2, 2), (0, 0), (0, 1), (0, 2),
        (1, 0), (1, 1), (1, 2), (2, 0),
        (2, 1), (2, 2),
    ]  # fmt: skip
    assert list(zip(trace.subject.tolist(), trace.patch.tolist(), strict=True)) == expected_pairs
    assert trace.epoch.tolist() == [0] * 9 + [1] * 9
    assert trace.iteration.tolist() == list(range(9)) * 2
    assert trace.batch.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4] * 2
    assert trace.queue_length.tolist() == [3, 2, 1, 0] * 4 + [3, 2]
    assert trace.filled.tolist() == ([1, 0, 0, 0] * 5)[:18]
    assert trace.subject_epoch.tolist() == trace.epoch.tolist()

    fills = trace.fills
    assert fills.fill_step.tolist() == [0, 4, 8, 12, 16]
    assert fills.fill_queue_length.tolist() == [4, 4, 4, 4, 4]
    assert fills.fill_leftover.tolist() == [2, 1, 0, 2, 1]
    assert fills.take_subject.tolist() == [0, 1, 1, 2, 2, 0, 1, 2, 2, 0]
    assert fills.take_patches.tolist() == [3, 1, 2, 2, 1, 3, 3, 1, 2, 2]
    assert fills.take_first_patch.tolist() == [0, 0, 1, 0, 2, 0, 0, 0, 1, 0]
    assert fills.take_loaded.tolist() == [1, 1, 0, 1, 0, 1, 1, 1, 0, 1]
    assert fills.take_subject_epoch.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]

    summary = trace.summary()
    assert summary.iterations_per_epoch == 9
    assert summary.batches_per_epoch == 5
    assert summary.fills_per_epoch == [3, 2]
    assert summary.subject_loads_per_epoch == [4, 3]
    assert summary.splits_per_epoch == [2, 2]
    assert summary.peak_patches_in_queue == 4
    assert summary.peak_patches_held == 6
    assert summary.mean_subjects_per_batch == pytest.approx(1.2)
    assert summary.min_subjects_per_batch == 1
    assert summary.to_dict()["fills_per_epoch"] == [3, 2]


def test_leftover_exactly_filling_the_list_fetches_one_more_subject():
    # s1 owes 3 = max_length: like TorchIO, the fill still fetches s2 and takes
    # none of its patches; s2 becomes the leftover of the next fill.
    trace = _ordered([1, 5, 2], 3, num_epochs=1)
    fills = trace.fills
    assert fills.take_subject.tolist()[:5] == [0, 1, 1, 2, 2]
    assert fills.take_patches.tolist()[:5] == [1, 2, 3, 0, 2]
    assert fills.take_loaded.tolist()[:5] == [1, 1, 0, 1, 0]
    assert trace.subject.tolist() == [0, 1, 1, 1, 1, 1, 2, 2]
    assert trace.patch.tolist() == [0, 0, 1, 2, 3, 4, 0, 1]


def test_more_patches_than_max_length_every_subject_gives_all_patches():
    # TorchIO crashes on this (REFERENCE.md); here the leftover spreads over fills.
    trace = _ordered([10] * 4, 7, num_epochs=3, batch_size=4)
    assert len(trace) == 120
    assert trace.queue_length.max() <= 6
    assert trace.fills.fill_queue_length.max() == 7
    expected = np.repeat(np.arange(4), 10).tolist()
    for epoch in range(3):
        in_epoch = trace.epoch == epoch
        assert trace.subject[in_epoch].tolist() == expected
        assert trace.patch[in_epoch].tolist() == list(range(10)) * 4


def test_torchio_crashes_where_the_simulation_does_not(torchio, torch):
    subjects = [
        torchio.Subject(image=torchio.ScalarImage(tensor=torch.zeros(1, 1, 1, 1))) for _ in range(4)
    ]
    queue = torchio.Queue(
        torchio.SubjectsDataset(subjects),
        7,
        10,
        torchio.data.UniformSampler(1),
        num_workers=0,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    with pytest.raises(ValueError):
        for _ in range(len(queue)):
            queue[0]
    assert len(_ordered([10] * 4, 7)) == 40


def test_subjects_without_patches_do_not_empty_the_queue():
    # With [5, 0] and max_length 5 the second fill finds only subject 1 (no
    # patches); TorchIO then pops from an empty list. Here it fills again.
    trace = _ordered([5, 0], 5, num_epochs=3)
    assert trace.subject.tolist() == [0] * 15
    assert trace.patch.tolist() == list(range(5)) * 3
    assert trace.fills.fill_step.tolist() == [0, 5, 5, 10, 10]
    assert trace.fills.fill_queue_length.tolist() == [5, 0, 5, 0, 5]
    assert trace.filled.tolist() == [1, 0, 0, 0, 0] * 3


def test_long_queue_holds_one_pass():
    trace = _ordered([2, 3], 100, num_epochs=2)
    assert trace.fills.fill_step.tolist() == [0, 5]
    assert trace.fills.fill_queue_length.tolist() == [5, 5]
    assert trace.summary().peak_patches_held == 5


# --- Exact order against TorchIO ------------------------------------------------------


class _Harness:
    """Builds TorchIO subjects and a sampler whose patches say where they came from."""

    def __init__(self, torchio, torch):
        self.torch = torch
        self.torchio = torchio

        class CountingSampler(torchio.data.PatchSampler):
            # TorchIO re-samples a split subject from scratch, so a per-subject
            # counter across calls gives each patch its index in the pass.
            def __init__(self):
                super().__init__(1)
                self.drawn = {}

            def _generate_patches(self, subject, num_patches=None):
                subject_id = int(subject["subject_id"])
                count = int(subject["num_samples"])
                while True:
                    drawn = self.drawn.get(subject_id, 0)
                    self.drawn[subject_id] = drawn + 1
                    yield subject_id, drawn % count

        self.sampler_class = CountingSampler

    def pops(self, num_samples, max_length, num_epochs, shuffle=False):
        torchio = self.torchio
        subjects = [
            torchio.Subject(
                image=torchio.ScalarImage(tensor=self.torch.zeros(1, 1, 1, 1)),
                subject_id=index,
                num_samples=count,
            )
            for index, count in enumerate(num_samples)
        ]
        queue = torchio.Queue(
            torchio.SubjectsDataset(subjects),
            max_length,
            1,
            self.sampler_class(),
            num_workers=0,
            shuffle_subjects=shuffle,
            shuffle_patches=shuffle,
        )
        rows = []
        for _ in range(num_epochs * len(queue)):
            filled = int(len(queue.patches_list) == 0)
            subject, patch = queue[0]
            rows.append((subject, patch, len(queue.patches_list), filled))
        return rows


@pytest.mark.parametrize(
    ("num_samples", "max_length", "num_epochs"),
    [
        ([3, 3, 3, 3], 5, 3),  # splits
        ([4, 4, 4, 4, 4], 6, 2),
        ([4, 4, 4, 4, 4], 8, 2),  # multiple of the count: no split
        ([3, 3, 3], 100, 2),  # one fill per epoch
        ([2, 5, 3], 4, 3),  # per-subject counts
        ([1, 5, 2], 3, 2),  # a leftover exactly filling the list
        ([6, 1, 1, 6], 5, 2),
        ([0, 3, 0, 2], 2, 3),  # subjects without patches
        ([2, 2, 7], 6, 3),
    ],
)
def test_order_equals_torchio_without_shuffles(torchio, torch, num_samples, max_length, num_epochs):
    expected = _Harness(torchio, torch).pops(num_samples, max_length, num_epochs)
    trace = _ordered(num_samples, max_length, num_epochs=num_epochs)
    simulated = list(
        zip(
            trace.subject.tolist(),
            trace.patch.tolist(),
            trace.queue_length.tolist(),
            trace.filled.tolist(),
            strict=True,
        )
    )
    assert simulated == expected


def test_batch_mixing_matches_torchio_with_shuffles(torchio, torch):
    # 8 subjects of 4 patches, max_length 16: each fill holds 4 whole subjects,
    # shuffled, and batches of 4 are 4 random patches of one fill, so the
    # expected number of distinct subjects per batch is 4 * (1 - C(12,4)/C(16,4)).
    expected = 4 * (1 - math.comb(12, 4) / math.comb(16, 4))  # 2.912
    num_epochs = 50  # 400 batches; the per-batch sd is about 0.6, so the mean's sd is
    # about 0.03 and 0.15 is 5 standard deviations.
    trace = simulate_queue(
        [4] * 8, 16, batch_size=4, num_epochs=num_epochs, rng=np.random.default_rng(1)
    )
    assert trace.summary().mean_subjects_per_batch == pytest.approx(expected, abs=0.15)

    torch.manual_seed(1)
    rows = _Harness(torchio, torch).pops([4] * 8, 16, num_epochs, shuffle=True)
    subjects = np.array([row[0] for row in rows]).reshape(-1, 4)
    torchio_mean = np.mean([len(set(batch)) for batch in subjects.tolist()])
    assert torchio_mean == pytest.approx(expected, abs=0.15)
    # Both also give every subject all its patches in each pass.
    pairs = [row[:2] for row in rows]
    assert (
        sorted(pairs[:32]) == sorted(pairs[32:64]) == [(s, p) for s in range(8) for p in range(4)]
    )


# --- Shuffles ---------------------------------------------------------------------------


def test_shuffles_keep_every_patch_once_per_pass():
    counts = [3, 7, 2, 5, 4]
    trace = simulate_queue(counts, 6, num_epochs=8, rng=np.random.default_rng(0))
    for subject_epoch in range(7):  # the last pass may be cut by the end of epoch 7
        taken = trace.subject_epoch == subject_epoch
        pairs = sorted(zip(trace.subject[taken].tolist(), trace.patch[taken].tolist(), strict=True))
        assert pairs == [(s, p) for s, n in enumerate(counts) for p in range(n)]


def test_shuffle_patches_permutes_within_fills_only():
    counts = [3, 7, 2, 5, 4]
    ordered = _ordered(counts, 6, num_epochs=4)
    shuffled = simulate_queue(
        counts, 6, num_epochs=4, shuffle_subjects=False, rng=np.random.default_rng(3)
    )
    assert shuffled.fills.fill_step.tolist() == ordered.fills.fill_step.tolist()
    assert shuffled.filled.tolist() == ordered.filled.tolist()
    assert shuffled.queue_length.tolist() == ordered.queue_length.tolist()
    assert shuffled.subject.tolist() != ordered.subject.tolist()
    bounds = np.r_[ordered.fills.fill_step, len(ordered)]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        assert sorted(
            zip(shuffled.subject[start:stop], shuffled.patch[start:stop], strict=True)
        ) == sorted(zip(ordered.subject[start:stop], ordered.patch[start:stop], strict=True))


def test_shuffle_subjects_draws_a_uniform_order_each_pass():
    # 400 passes of 4 subjects: the first subject of a pass is each subject about
    # 100 times (binomial sd 8.7); 35 is 4 sd.
    trace = simulate_queue(
        [1] * 4, 4, num_epochs=400, shuffle_patches=False, rng=np.random.default_rng(5)
    )
    first = trace.subject[trace.iteration == 0]
    counts = np.bincount(first, minlength=4)
    assert np.all(np.abs(counts - 100) < 35), counts
    # Each pass is a permutation of the subjects.
    assert np.all(np.sort(trace.subject.reshape(400, 4), axis=1) == np.arange(4))


def test_shuffle_patches_places_a_patch_uniformly_in_its_fill():
    # 600 fills of 6 patches: subject 0's first patch lands at each position about
    # 100 times (binomial sd 9.1); 40 is over 4 sd.
    trace = simulate_queue(
        [2, 2, 2], 6, num_epochs=600, shuffle_subjects=False, rng=np.random.default_rng(7)
    )
    positions = trace.iteration[(trace.subject == 0) & (trace.patch == 0)]
    counts = np.bincount(positions, minlength=6)
    assert np.all(np.abs(counts - 100) < 40), counts


def test_same_seed_same_trace():
    first = simulate_queue([3, 4, 5], 5, num_epochs=3, rng=np.random.default_rng(11))
    second = simulate_queue([3, 4, 5], 5, num_epochs=3, rng=np.random.default_rng(11))
    third = simulate_queue([3, 4, 5], 5, num_epochs=3, rng=np.random.default_rng(12))
    assert first.subject.tolist() == second.subject.tolist()
    assert first.patch.tolist() == second.patch.tolist()
    assert (first.subject.tolist(), first.patch.tolist()) != (
        third.subject.tolist(),
        third.patch.tolist(),
    )


def test_shuffles_need_a_generator():
    with pytest.raises(ValueError, match="rng"):
        simulate_queue([3, 3], 4)
    with pytest.raises(ValueError, match="rng"):
        simulate_queue([3, 3], 4, shuffle_subjects=False)


@pytest.mark.parametrize(
    ("num_samples", "max_length", "options"),
    [
        ([], 4, {}),
        ([0, 0], 4, {}),
        ([3, -1], 4, {}),
        ([3, 1.5], 4, {}),
        ([3, 3], 0, {}),
        ([3, 3], 4, {"batch_size": 0}),
        ([3, 3], 4, {"num_epochs": 0}),
        ([3, 3], True, {}),
    ],
)
def test_bad_settings_raise_config_error(num_samples, max_length, options):
    with pytest.raises(ConfigError):
        _ordered(num_samples, max_length, **options)
