"""A simulation of TorchIO's patches queue that needs no image data.

TorchIO's :class:`torchio.Queue` keeps a list of at most ``max_length`` patches.
When a training iteration pops from an empty list, the queue *fills* it: first
with the rest of a subject split by the previous fill, then with whole subjects
in loader order, taking ``min(num_samples, free slots)`` patches of each, and it
shuffles the list. :func:`simulate_queue` replays that state machine for a list
of per-subject patch counts, so the order of the patches, the fills and the
batch composition can be inspected before any training run:

>>> trace = simulate_queue([3, 3, 3], max_length=4, batch_size=2,
...                        shuffle_subjects=False, shuffle_patches=False)
>>> trace.subject.tolist()
[0, 0, 0, 1, 1, 1, 2, 2, 2]
>>> trace.filled.tolist()
[1, 0, 0, 0, 1, 0, 0, 0, 1]
>>> trace.summary().fills_per_epoch
[3]

With both shuffles off the popped order equals TorchIO's exactly. With shuffles
on, the same random structure is drawn from a :class:`numpy.random.Generator`
(TorchIO draws from torch's global generator), so the statistics match but not
the individual draws.

Differences from TorchIO (both are crashes there):

- A subject with more patches than ``max_length`` leaves a leftover larger than
  the list, and TorchIO's next fill fails (negative free space). Here the
  leftover is spread over as many fills as it needs, ``max_length`` at a time,
  so every subject still gives all its patches in every pass.
- A fill that finds only subjects with zero patches leaves the list empty and
  TorchIO's pop fails. Here the queue fills again until it holds a patch.

The result, a :class:`QueueTrace`, holds one row per popped patch (the columns
:data:`TRACE_COLUMNS`) and a :class:`FillSchedule` of what each fill took.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = [
    "TRACE_COLUMNS",
    "FillSchedule",
    "QueueSummary",
    "QueueTrace",
    "simulate_queue",
]

#: The per-pop columns of a :class:`QueueTrace`, in order (those of the trace CSV).
TRACE_COLUMNS = ("epoch", "iteration", "batch", "subject", "patch", "queue_length", "filled")


@dataclass(frozen=True)
class FillSchedule:
    """What each fill of the queue took, in order.

    A fill is a sequence of *takes*: a number of patches of one subject. A take
    either *loads* its subject (the queue asks the subjects loader for the next
    subject, which a worker must have read and transformed) or continues a
    subject split by an earlier fill (no loading: TorchIO keeps that subject in
    memory until then).

    Attributes
    ----------
    iterations_per_epoch, batch_size, num_epochs, max_length : int
        The simulated settings.
    fill_step : numpy.ndarray
        (F,) int64, the global pop index (``epoch * iterations_per_epoch +
        iteration``) that triggered each fill.
    fill_queue_length : numpy.ndarray
        (F,) int64, patches in the list right after each fill.
    fill_leftover : numpy.ndarray
        (F,) int64, patches of a split subject still owed to later fills.
    take_fill : numpy.ndarray
        (K,) int64, the fill each take belongs to (non-decreasing).
    take_subject : numpy.ndarray
        (K,) int64, subject index.
    take_first_patch : numpy.ndarray
        (K,) int64, index of the take's first patch among the subject's patches
        in that pass over the subjects.
    take_patches : numpy.ndarray
        (K,) int64, number of patches taken (0 is possible: TorchIO fetches one
        subject more when a leftover exactly fills the list, and takes nothing).
    take_loaded : numpy.ndarray
        (K,) bool, True when the take fetched its subject from the loader.
    take_subject_epoch : numpy.ndarray
        (K,) int64, the pass over the subjects (the subjects loader's epoch) the
        take belongs to.
    """

    iterations_per_epoch: int
    batch_size: int
    num_epochs: int
    max_length: int
    fill_step: np.ndarray
    fill_queue_length: np.ndarray
    fill_leftover: np.ndarray
    take_fill: np.ndarray
    take_subject: np.ndarray
    take_first_patch: np.ndarray
    take_patches: np.ndarray
    take_loaded: np.ndarray
    take_subject_epoch: np.ndarray

    @property
    def num_fills(self) -> int:
        return int(self.fill_step.size)

    @property
    def fill_epoch(self) -> np.ndarray:
        """(F,) int64, the training epoch of the pop that triggered each fill."""
        return self.fill_step // self.iterations_per_epoch


@dataclass(frozen=True)
class QueueSummary:
    """Headline numbers of a simulated queue (see :meth:`QueueTrace.summary`).

    Attributes
    ----------
    iterations_per_epoch : int
        Patches popped per epoch, TorchIO's ``len(queue)``.
    batches_per_epoch : int
        ``ceil(iterations_per_epoch / batch_size)`` (the last batch may be short).
    fills_per_epoch : list of int
        Fills triggered by the pops of each epoch.
    subject_loads_per_epoch : list of int
        Subjects fetched from the subjects loader by those fills.
    splits_per_epoch : list of int
        Fills of each epoch that left a subject split for a later fill.
    peak_patches_in_queue : int
        Most patches ever in the list (at most ``max_length``).
    peak_patches_held : int
        Most patches ever in the list plus the patches still owed by a split
        subject at that moment (the queue's whole backlog).
    mean_subjects_per_batch, min_subjects_per_batch : float, int
        Distinct subjects per batch, over every batch of every epoch: how well
        batches mix subjects.
    """

    iterations_per_epoch: int
    batches_per_epoch: int
    fills_per_epoch: list[int]
    subject_loads_per_epoch: list[int]
    splits_per_epoch: list[int]
    peak_patches_in_queue: int
    peak_patches_held: int
    mean_subjects_per_batch: float
    min_subjects_per_batch: int

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-serialisable types."""
        return {
            "iterations_per_epoch": self.iterations_per_epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "fills_per_epoch": list(self.fills_per_epoch),
            "subject_loads_per_epoch": list(self.subject_loads_per_epoch),
            "splits_per_epoch": list(self.splits_per_epoch),
            "peak_patches_in_queue": self.peak_patches_in_queue,
            "peak_patches_held": self.peak_patches_held,
            "mean_subjects_per_batch": self.mean_subjects_per_batch,
            "min_subjects_per_batch": self.min_subjects_per_batch,
        }


@dataclass(frozen=True)
class QueueTrace:
    """One row per popped patch, as arrays of equal length.

    Attributes
    ----------
    epoch : numpy.ndarray
        Training epoch, from 0.
    iteration : numpy.ndarray
        Pop index within the epoch, from 0 to ``iterations_per_epoch - 1``.
    batch : numpy.ndarray
        Batch index within the epoch (``iteration // batch_size``).
    subject : numpy.ndarray
        0-based subject index (position in ``num_samples``).
    patch : numpy.ndarray
        Index of the patch among its subject's patches in that pass over the
        subjects (0 to ``num_samples[subject] - 1``).
    queue_length : numpy.ndarray
        Patches left in the list after the pop.
    filled : numpy.ndarray
        1 when the queue was filled right before this pop, else 0.
    subject_epoch : numpy.ndarray
        The pass over the subjects that produced the patch. It equals ``epoch``
        except with ``shuffle_patches`` when a subject split at the end of a
        pass shares a fill with the next pass: then a few patches cross the
        epoch boundary, as in TorchIO.
    num_samples : numpy.ndarray
        (S,) patches per subject per pass.
    fills : FillSchedule
        What each fill took, for :func:`~patchcli.queue.timing.estimate_timing`.

    All per-pop arrays are int64 and ``len(trace)`` is
    ``num_epochs * iterations_per_epoch``.
    """

    epoch: np.ndarray
    iteration: np.ndarray
    batch: np.ndarray
    subject: np.ndarray
    patch: np.ndarray
    queue_length: np.ndarray
    filled: np.ndarray
    subject_epoch: np.ndarray
    num_samples: np.ndarray
    fills: FillSchedule

    def __len__(self) -> int:
        return int(self.subject.size)

    @property
    def iterations_per_epoch(self) -> int:
        return self.fills.iterations_per_epoch

    @property
    def batch_size(self) -> int:
        return self.fills.batch_size

    @property
    def num_epochs(self) -> int:
        return self.fills.num_epochs

    @property
    def max_length(self) -> int:
        return self.fills.max_length

    @property
    def step(self) -> np.ndarray:
        """Global pop index, ``epoch * iterations_per_epoch + iteration``."""
        return self.epoch * self.iterations_per_epoch + self.iteration

    def subjects_per_batch(self) -> np.ndarray:
        """Distinct subjects in each batch, over all epochs in order."""
        batches_per_epoch = math.ceil(self.iterations_per_epoch / self.batch_size)
        batch_id = self.epoch * batches_per_epoch + self.batch
        num_subjects = self.num_samples.size
        pairs = np.unique(batch_id * num_subjects + self.subject)
        return np.bincount(pairs // num_subjects, minlength=self.num_epochs * batches_per_epoch)

    def summary(self) -> QueueSummary:
        """Iterations, fills, peak patches held and batch mixing."""
        fills = self.fills
        num_epochs = self.num_epochs
        fill_epoch = fills.fill_epoch
        take_epoch = fill_epoch[fills.take_fill]
        loads = np.bincount(take_epoch[fills.take_loaded], minlength=num_epochs)
        left_split = fills.fill_leftover > 0
        subjects_per_batch = self.subjects_per_batch()
        return QueueSummary(
            iterations_per_epoch=self.iterations_per_epoch,
            batches_per_epoch=math.ceil(self.iterations_per_epoch / self.batch_size),
            fills_per_epoch=np.bincount(fill_epoch, minlength=num_epochs).tolist(),
            subject_loads_per_epoch=loads.tolist(),
            splits_per_epoch=np.bincount(fill_epoch[left_split], minlength=num_epochs).tolist(),
            peak_patches_in_queue=int(fills.fill_queue_length.max()),
            peak_patches_held=int((fills.fill_queue_length + fills.fill_leftover).max()),
            mean_subjects_per_batch=float(subjects_per_batch.mean()),
            min_subjects_per_batch=int(subjects_per_batch.min()),
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The CSV columns (:data:`TRACE_COLUMNS`) by name."""
        return {name: getattr(self, name) for name in TRACE_COLUMNS}


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value!r}")
    return int(value)


def _check_num_samples(num_samples: Sequence[int]) -> np.ndarray:
    values = list(num_samples)
    if not values:
        raise ConfigError("the queue needs at least one subject")
    counts = np.array(
        [
            _check_int(value, f"num_samples of subject {index}", 0)
            for index, value in enumerate(values)
        ],
        dtype=np.int64,
    )
    if counts.sum() == 0:
        raise ConfigError("every subject has num_samples 0: the queue would never yield a patch")
    return counts


class _QueueModel:
    """TorchIO's fill state machine, over subject indices instead of subjects."""

    def __init__(
        self,
        counts: np.ndarray,
        max_length: int,
        shuffle_subjects: bool,
        rng: np.random.Generator | None,
    ) -> None:
        self.counts = counts
        self.max_length = max_length
        self.shuffle_subjects = shuffle_subjects
        self.rng = rng
        # TorchIO creates its subjects loader (and draws the first order) when
        # the queue is built.
        self.subject_epoch = 0
        self.order = self._subject_order()
        self.position = 0
        self.num_fetched = 0  # TorchIO's _num_sampled_subjects: reset with each loader
        # (subject, patches still owed, index of the next patch, subject_epoch)
        self.leftover: tuple[int, int, int, int] | None = None

    def _subject_order(self) -> np.ndarray:
        if self.shuffle_subjects:
            assert self.rng is not None
            return self.rng.permutation(self.counts.size)
        return np.arange(self.counts.size)

    def _fetch(self) -> tuple[int, int]:
        if self.position == self.counts.size:
            # The loader is exhausted: TorchIO builds a new one (a new pass).
            self.subject_epoch += 1
            self.order = self._subject_order()
            self.position = 0
            self.num_fetched = 0
        subject = int(self.order[self.position])
        self.position += 1
        return subject, self.subject_epoch

    def fill(self) -> list[tuple[int, int, int, bool, int]]:
        """One fill: a list of takes (subject, first patch, patches, loaded, subject_epoch)."""
        takes = []
        length = 0
        if self.leftover is not None:
            subject, owed, first, subject_epoch = self.leftover
            # TorchIO takes the whole leftover, and crashes when it exceeds
            # max_length; take at most a full list and carry the rest.
            taken = min(owed, self.max_length)
            takes.append((subject, first, taken, False, subject_epoch))
            length += taken
            if taken < owed:
                self.leftover = (subject, owed - taken, first + taken, subject_epoch)
                return takes
            self.leftover = None
        while True:
            # Like TorchIO, fetch at least one subject after a leftover, even when
            # the leftover filled the list (that subject then becomes the leftover).
            subject, subject_epoch = self._fetch()
            wanted = int(self.counts[subject])
            taken = min(wanted, self.max_length - length)
            if taken < wanted:
                self.leftover = (subject, wanted - taken, taken, subject_epoch)
            takes.append((subject, 0, taken, True, subject_epoch))
            length += taken
            self.num_fetched += 1
            if length >= self.max_length or self.num_fetched >= self.counts.size:
                return takes

    @property
    def owed(self) -> int:
        return 0 if self.leftover is None else self.leftover[1]


def simulate_queue(
    num_samples: Sequence[int],
    max_length: int,
    *,
    batch_size: int = 1,
    num_epochs: int = 1,
    shuffle_subjects: bool = True,
    shuffle_patches: bool = True,
    rng: np.random.Generator | None = None,
) -> QueueTrace:
    """Simulate the patches popped from a TorchIO Queue, without image data.

    Parameters
    ----------
    num_samples : sequence of int
        Patches per subject per epoch (the subject's ``num_samples``, else the
        queue's ``samples_per_volume``), in subject order. Zero is allowed.
    max_length : int
        The queue's ``max_length``.
    batch_size : int
        Batch size of the DataLoader that pops from the queue (``drop_last``
        false: the last batch of an epoch may be short).
    num_epochs : int
        Epochs to simulate; each pops ``sum(num_samples)`` patches.
    shuffle_subjects, shuffle_patches : bool
        As in TorchIO's Queue.
    rng : numpy.random.Generator, optional
        Source of the shuffles; required when either shuffle is on.

    Returns
    -------
    QueueTrace

    Raises
    ------
    ConfigError
        For a non-positive ``max_length``, ``batch_size`` or ``num_epochs``, a
        negative count, or counts that are all zero.

    Examples
    --------
    >>> trace = simulate_queue([2, 2], max_length=3, shuffle_subjects=False,
    ...                        shuffle_patches=False)
    >>> list(zip(trace.subject.tolist(), trace.patch.tolist()))
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> trace.queue_length.tolist()  # the last fill starts the next pass
    [2, 1, 0, 2]
    """
    counts = _check_num_samples(num_samples)
    max_length = _check_int(max_length, "max_length", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    num_epochs = _check_int(num_epochs, "num_epochs", 1)
    if (shuffle_subjects or shuffle_patches) and rng is None:
        raise ValueError("simulate_queue needs rng (a numpy Generator) when a shuffle is on")

    iterations_per_epoch = int(counts.sum())
    total_pops = num_epochs * iterations_per_epoch
    model = _QueueModel(counts, max_length, shuffle_subjects, rng)

    subjects: list[np.ndarray] = []
    patches: list[np.ndarray] = []
    subject_epochs: list[np.ndarray] = []
    chunk_sizes: list[int] = []
    fill_step: list[int] = []
    fill_queue_length: list[int] = []
    fill_leftover: list[int] = []
    takes_rows: list[tuple[int, int, int, int, bool, int]] = []

    popped = 0
    while popped < total_pops:
        # The list is empty: fill it (again, if the fill found only empty subjects).
        chunk_subject: list[np.ndarray] = []
        chunk_patch: list[np.ndarray] = []
        chunk_epoch: list[np.ndarray] = []
        length = 0
        while length == 0:
            takes = model.fill()
            fill_index = len(fill_step)
            fill_length = sum(take[2] for take in takes)
            fill_step.append(popped)
            fill_queue_length.append(fill_length)
            fill_leftover.append(model.owed)
            for subject, first, taken, loaded, subject_epoch in takes:
                takes_rows.append((fill_index, subject, first, taken, loaded, subject_epoch))
                chunk_subject.append(np.full(taken, subject, dtype=np.int64))
                chunk_patch.append(np.arange(first, first + taken, dtype=np.int64))
                chunk_epoch.append(np.full(taken, subject_epoch, dtype=np.int64))
            length = fill_length
        chunk = (
            np.concatenate(chunk_subject),
            np.concatenate(chunk_patch),
            np.concatenate(chunk_epoch),
        )
        if shuffle_patches:
            assert rng is not None
            permutation = rng.permutation(length)
            chunk = tuple(values[permutation] for values in chunk)
        subjects.append(chunk[0])
        patches.append(chunk[1])
        subject_epochs.append(chunk[2])
        chunk_sizes.append(length)
        popped += length

    # The last fill may hold more patches than the remaining pops need.
    subject = np.concatenate(subjects)[:total_pops]
    patch = np.concatenate(patches)[:total_pops]
    subject_epoch = np.concatenate(subject_epochs)[:total_pops]
    queue_length = np.concatenate(
        [np.arange(size - 1, -1, -1, dtype=np.int64) for size in chunk_sizes]
    )[:total_pops]
    filled = np.concatenate(
        [np.r_[1, np.zeros(size - 1, dtype=np.int64)] for size in chunk_sizes]
    ).astype(np.int64)[:total_pops]
    step = np.arange(total_pops, dtype=np.int64)
    epoch = step // iterations_per_epoch
    iteration = step % iterations_per_epoch

    takes_array = np.array(takes_rows, dtype=np.int64).reshape(-1, 6)
    fills = FillSchedule(
        iterations_per_epoch=iterations_per_epoch,
        batch_size=batch_size,
        num_epochs=num_epochs,
        max_length=max_length,
        fill_step=np.array(fill_step, dtype=np.int64),
        fill_queue_length=np.array(fill_queue_length, dtype=np.int64),
        fill_leftover=np.array(fill_leftover, dtype=np.int64),
        take_fill=takes_array[:, 0].copy(),
        take_subject=takes_array[:, 1].copy(),
        take_first_patch=takes_array[:, 2].copy(),
        take_patches=takes_array[:, 3].copy(),
        take_loaded=takes_array[:, 4].astype(bool),
        take_subject_epoch=takes_array[:, 5].copy(),
    )
    return QueueTrace(
        epoch=epoch,
        iteration=iteration,
        batch=iteration // batch_size,
        subject=subject,
        patch=patch,
        queue_length=queue_length,
        filled=filled,
        subject_epoch=subject_epoch,
        num_samples=counts,
        fills=fills,
    )
