"""A timing model on top of a simulated queue.

:func:`estimate_timing` replays the fills of a trace against given loading,
cropping and training-step times: how long the training loop waits on the
queue per epoch, and the share of time the GPU would be idle. The model is
stated in ``docs/queue.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from ..errors import ConfigError
from .simulation import FillSchedule, QueueTrace, _check_int

__all__ = ["TimingEstimate", "estimate_timing"]


@dataclass(frozen=True)
class TimingEstimate:
    """Per-epoch result of :func:`estimate_timing` (arrays of length ``num_epochs``).

    Attributes
    ----------
    wait_seconds : numpy.ndarray
        Seconds the training loop spends inside the queue (waiting for loaded
        subjects and cropping patches): the time the GPU is idle.
    train_seconds : numpy.ndarray
        Seconds of training steps (batches times ``step_seconds``).
    epoch_seconds : numpy.ndarray
        ``wait_seconds + train_seconds``.
    gpu_idle_share : numpy.ndarray
        ``wait_seconds / epoch_seconds`` (0 for an empty epoch).
    parameters : dict
        The model's inputs, for reports.
    """

    wait_seconds: np.ndarray
    train_seconds: np.ndarray
    epoch_seconds: np.ndarray
    gpu_idle_share: np.ndarray
    parameters: dict[str, float]

    @property
    def total_wait_seconds(self) -> float:
        return float(self.wait_seconds.sum())

    @property
    def total_seconds(self) -> float:
        return float(self.epoch_seconds.sum())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable types."""
        return {
            "wait_seconds": self.wait_seconds.tolist(),
            "train_seconds": self.train_seconds.tolist(),
            "epoch_seconds": self.epoch_seconds.tolist(),
            "gpu_idle_share": self.gpu_idle_share.tolist(),
            "parameters": dict(self.parameters),
        }


class _SubjectsLoader:
    """Completion times of a DataLoader over subjects, one pass at a time.

    TorchIO's internal loader is rebuilt for every pass over the subjects, so
    each pass starts with no subject loaded. With ``num_workers`` W > 0 the
    loader hands subject j to worker ``j % W`` as soon as it is dispatched: the
    first ``prefetch_factor * W`` at creation, then subject j when the main
    process takes subject ``j - prefetch_factor * W``. A worker loads its
    subjects one after the other. With W = 0 the main process loads each
    subject when it asks for it.
    """

    def __init__(
        self,
        num_workers: int,
        prefetch_factor: int,
        load_seconds: float,
        worker_start_seconds: float,
    ) -> None:
        self.num_workers = num_workers
        self.in_flight = prefetch_factor * num_workers
        self.load_seconds = load_seconds
        self.worker_start_seconds = worker_start_seconds
        self.subject_epoch = -1

    def _start_pass(self, subject_epoch: int, now: float) -> None:
        self.subject_epoch = subject_epoch
        # The first loader exists before training starts (TorchIO's
        # start_background); later ones are built when the pass begins.
        self.created = 0.0 if subject_epoch == 0 else now
        self.finished: list[float] = []
        self.taken: list[float] = []

    def take(self, subject_epoch: int, now: float) -> float:
        """Time at which the main process holds the next subject, asked for at ``now``."""
        if subject_epoch != self.subject_epoch:
            self._start_pass(subject_epoch, now)
        index = len(self.taken)
        if self.num_workers == 0:
            ready = now + self.load_seconds
        else:
            dispatched = (
                self.created if index < self.in_flight else self.taken[index - self.in_flight]
            )
            worker_free = (
                self.finished[index - self.num_workers]
                if index >= self.num_workers
                else self.created + self.worker_start_seconds
            )
            finished = max(dispatched, worker_free) + self.load_seconds
            self.finished.append(finished)
            ready = max(now, finished)
        self.taken.append(ready)
        return ready


def _check_seconds(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{name} must be a non-negative number of seconds, not {value!r}")
    return float(value)


def estimate_timing(
    trace_or_fills: QueueTrace | FillSchedule,
    *,
    load_seconds: float,
    step_seconds: float,
    num_workers: int,
    prefetch_factor: int = 2,
    crop_seconds: float = 0.0,
    worker_start_seconds: float = 0.0,
) -> TimingEstimate:
    """Estimate per epoch how long training waits on the queue, and the GPU's idle share.

    The model (stated in ``docs/queue.md``):

    - The training loop is one process: it pops ``batch_size`` patches, then runs
      a training step of ``step_seconds`` (a short last batch too). Popping is
      free unless the list is empty; then the fill runs in the main process.
    - A fill takes its subjects in order. For a subject it fetches from the
      subjects loader it waits until that subject is loaded; every patch it
      takes (also those of a leftover) costs ``crop_seconds`` of cropping.
    - Loading a subject (reading and transforming it) takes ``load_seconds`` of
      one worker. ``num_workers=0`` loads in the main process, when asked.
      With W workers, the loader dispatches ``prefetch_factor * W`` subjects
      ahead of the main process, round-robin over the workers, each worker
      loading its subjects one at a time, in the background of training.
    - TorchIO rebuilds its subjects loader at each pass over the subjects: the
      first pass's loader starts at time 0 (the queue exists before training),
      later ones start only when a fill asks for the first subject of the pass,
      plus ``worker_start_seconds`` for the new worker processes to start.

    Parameters
    ----------
    trace_or_fills : QueueTrace or FillSchedule
        From :func:`~patchcli.queue.simulation.simulate_queue`.
    load_seconds : float
        Seconds for one worker to load and transform one subject.
    step_seconds : float
        Seconds per training step (forward, backward, optimiser) on one batch.
    num_workers : int
        The queue's ``num_workers``.
    prefetch_factor : int
        Subjects each worker may load ahead (torch's DataLoader default, 2).
    crop_seconds : float
        Seconds to crop one patch in the main process.
    worker_start_seconds : float
        Seconds for a new pass's workers to start before they can load.

    Returns
    -------
    TimingEstimate

    Examples
    --------
    Without workers, every load happens while training waits:

    >>> from patchcli.queue.simulation import simulate_queue
    >>> trace = simulate_queue([4, 4, 4], 8, batch_size=4, shuffle_subjects=False,
    ...                        shuffle_patches=False)
    >>> timing = estimate_timing(trace, load_seconds=2.0, step_seconds=1.0, num_workers=0)
    >>> timing.wait_seconds.tolist(), timing.train_seconds.tolist()
    ([6.0], [3.0])
    """
    fills = trace_or_fills.fills if isinstance(trace_or_fills, QueueTrace) else trace_or_fills
    load_seconds = _check_seconds(load_seconds, "load_seconds")
    step_seconds = _check_seconds(step_seconds, "step_seconds")
    crop_seconds = _check_seconds(crop_seconds, "crop_seconds")
    worker_start_seconds = _check_seconds(worker_start_seconds, "worker_start_seconds")
    num_workers = _check_int(num_workers, "num_workers", 0)
    prefetch_factor = _check_int(prefetch_factor, "prefetch_factor", 1)

    per_epoch = fills.iterations_per_epoch
    batch_size = fills.batch_size
    num_epochs = fills.num_epochs
    batches_per_epoch = math.ceil(per_epoch / batch_size)
    loader = _SubjectsLoader(num_workers, prefetch_factor, load_seconds, worker_start_seconds)

    # Takes grouped by fill (take_fill is non-decreasing).
    take_start = np.searchsorted(fills.take_fill, np.arange(fills.num_fills), side="left")
    take_stop = np.searchsorted(fills.take_fill, np.arange(fills.num_fills), side="right")

    wait = np.zeros(num_epochs)
    train = np.zeros(num_epochs)
    now = 0.0
    next_fill = 0
    for epoch in range(num_epochs):
        for batch in range(batches_per_epoch):
            batch_end = epoch * per_epoch + min((batch + 1) * batch_size, per_epoch)
            while next_fill < fills.num_fills and fills.fill_step[next_fill] < batch_end:
                started = now
                for take in range(take_start[next_fill], take_stop[next_fill]):
                    if fills.take_loaded[take]:
                        now = loader.take(int(fills.take_subject_epoch[take]), now)
                    now += int(fills.take_patches[take]) * crop_seconds
                wait[epoch] += now - started
                next_fill += 1
            now += step_seconds
            train[epoch] += step_seconds
    total = wait + train
    with np.errstate(invalid="ignore", divide="ignore"):
        idle = np.where(total > 0, wait / np.where(total > 0, total, 1), 0.0)
    return TimingEstimate(
        wait_seconds=wait,
        train_seconds=train,
        epoch_seconds=total,
        gpu_idle_share=idle,
        parameters={
            "load_seconds": load_seconds,
            "step_seconds": step_seconds,
            "num_workers": num_workers,
            "prefetch_factor": prefetch_factor,
            "crop_seconds": crop_seconds,
            "worker_start_seconds": worker_start_seconds,
        },
    )
