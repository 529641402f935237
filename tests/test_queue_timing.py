"""Tests for patchcli.queue.timing: how long training waits on the queue."""

from __future__ import annotations

import numpy as np
import pytest

from patchcli.errors import ConfigError
from patchcli.queue import FillSchedule, estimate_timing, simulate_queue

from .helpers import ordered_trace as _ordered


def test_timing_without_workers_waits_for_every_load():
    # 3 subjects of 4 patches, max_length 8, batch 4: fills load 2 then 1 subject
    # per epoch, all in the main process.
    trace = _ordered([4, 4, 4], 8, batch_size=4, num_epochs=2)
    timing = estimate_timing(trace, load_seconds=2.0, step_seconds=1.0, num_workers=0)
    assert timing.wait_seconds.tolist() == [6.0, 6.0]
    assert timing.train_seconds.tolist() == [3.0, 3.0]
    assert timing.epoch_seconds.tolist() == [9.0, 9.0]
    assert timing.gpu_idle_share.tolist() == pytest.approx([6 / 9, 6 / 9])


def test_timing_one_worker_without_overlap_waits_for_all_loads():
    # Training steps take no time, so nothing overlaps: the main process waits for
    # one worker to load 4 subjects one after the other, in each epoch.
    trace = _ordered([5] * 4, 7, batch_size=3, num_epochs=3)
    timing = estimate_timing(trace, load_seconds=1.5, step_seconds=0.0, num_workers=1)
    assert timing.wait_seconds.tolist() == pytest.approx([6.0, 6.0, 6.0])
    assert timing.gpu_idle_share.tolist() == [1.0, 1.0, 1.0]


def test_timing_prefetch_hides_loading_except_at_each_pass_start():
    # One worker, prefetch 2, load 1 s, step 5 s, one subject per batch and fill.
    # Epoch 0: subject 0 ready at 1 (wait 1); subjects 1-3 load during training.
    # Each new pass rebuilds the loader when asked, so its first subject waits 1 s.
    trace = _ordered([10] * 4, 10, batch_size=10, num_epochs=3)
    timing = estimate_timing(trace, load_seconds=1.0, step_seconds=5.0, num_workers=1)
    assert timing.wait_seconds.tolist() == [1.0, 1.0, 1.0]
    assert timing.train_seconds.tolist() == [20.0, 20.0, 20.0]
    assert timing.gpu_idle_share.tolist() == pytest.approx([1 / 21] * 3)


def test_timing_two_workers_hand_computed():
    # 4 subjects of 1 patch, max_length 1, batch 1; 2 workers x prefetch 2 = all 4
    # dispatched at once. Worker 0 loads s0 (0-4) then s2 (4-8), worker 1 s1 (0-4)
    # then s3 (4-8). Main: takes s0 at 4 (wait 4), steps to 5, s1 (ready) to 6, s2 at
    # 8 (wait 2), steps to 9, s3 (ready) to 10. Wait 6, training 4, per epoch.
    trace = _ordered([1] * 4, 1, batch_size=1, num_epochs=2)
    timing = estimate_timing(trace, load_seconds=4.0, step_seconds=1.0, num_workers=2)
    assert timing.wait_seconds.tolist() == [6.0, 6.0]
    assert timing.train_seconds.tolist() == [4.0, 4.0]
    # With prefetch 1 only s0 and s1 are dispatched first; s2 when s0 is taken (at 4)
    # and s3 when s1 is taken (at 5): s2 is ready at 8 and s3 at 9, taken at 9 and
    # 10 after the steps, so the main process again waits 4 + 0 + 2 + 0 = 6.
    timing = estimate_timing(
        trace, load_seconds=4.0, step_seconds=1.0, num_workers=2, prefetch_factor=1
    )
    assert timing.wait_seconds.tolist() == [6.0, 6.0]


def test_timing_prefetch_factor_limits_loading_ahead():
    # One worker, prefetch 1, load 2 s, step 3 s, one subject per batch and fill.
    # s0 dispatched at 0 -> ready 2 (wait 2), taken at 2: s1 dispatched, ready 4,
    # step to 5; s1 taken at 5, s2 dispatched, ready 7, step to 8; s2 taken at 8,
    # s3 ready 10; step to 11; s3 at 11. Wait 2 in epoch 0.
    trace = _ordered([1] * 4, 1, batch_size=1, num_epochs=1)
    fast = estimate_timing(
        trace, load_seconds=2.0, step_seconds=3.0, num_workers=1, prefetch_factor=1
    )
    assert fast.wait_seconds.tolist() == [2.0]
    # Loading slower than training: each subject after the first waits load - step.
    slow = estimate_timing(
        trace, load_seconds=5.0, step_seconds=3.0, num_workers=1, prefetch_factor=1
    )
    assert slow.wait_seconds.tolist() == [5.0 + 3 * 2.0]


def test_timing_counts_cropping_and_worker_start():
    trace = _ordered([4, 4], 8, batch_size=8, num_epochs=2)
    timing = estimate_timing(
        trace, load_seconds=0.0, step_seconds=1.0, num_workers=0, crop_seconds=0.25
    )
    assert timing.wait_seconds.tolist() == [2.0, 2.0]  # 8 crops of 0.25 s
    timing = estimate_timing(
        trace, load_seconds=1.0, step_seconds=1.0, num_workers=2, worker_start_seconds=3.0
    )
    assert timing.wait_seconds.tolist() == [4.0, 4.0]  # start 3 s, then both load in 1 s


def test_timing_accepts_a_fill_schedule_and_reports_parameters():
    trace = _ordered([3, 3], 4, batch_size=2, num_epochs=2)
    from_trace = estimate_timing(trace, load_seconds=1.0, step_seconds=0.5, num_workers=1)
    from_fills = estimate_timing(trace.fills, load_seconds=1.0, step_seconds=0.5, num_workers=1)
    assert isinstance(trace.fills, FillSchedule)
    assert from_trace.to_dict() == from_fills.to_dict()
    assert from_trace.to_dict()["parameters"]["num_workers"] == 1
    assert from_trace.total_seconds == pytest.approx(from_trace.epoch_seconds.sum())


@pytest.mark.parametrize(
    "options",
    [
        {"load_seconds": -1.0, "step_seconds": 1.0, "num_workers": 0},
        {"load_seconds": 1.0, "step_seconds": float("nan"), "num_workers": 0},
        {"load_seconds": 1.0, "step_seconds": 1.0, "num_workers": -1},
        {"load_seconds": 1.0, "step_seconds": 1.0, "num_workers": 1, "prefetch_factor": 0},
    ],
)
def test_timing_rejects_bad_values(options):
    with pytest.raises(ConfigError):
        estimate_timing(_ordered([2], 2), **options)


def test_more_workers_never_wait_longer():
    trace = simulate_queue([6] * 12, 20, batch_size=4, num_epochs=2, rng=np.random.default_rng(0))
    waits = [
        estimate_timing(
            trace, load_seconds=3.0, step_seconds=0.2, num_workers=workers
        ).total_wait_seconds
        for workers in range(0, 6)
    ]
    assert all(
        later <= earlier + 1e-9 for earlier, later in zip(waits[:-1], waits[1:], strict=True)
    ), waits
    assert waits[-1] < waits[0]
