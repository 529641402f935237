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

:func:`estimate_timing` adds a simple timing model on top of a trace: how long
the training loop waits on the queue per epoch for given loading and step times.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .io.atomic import atomic_output

__all__ = [
    "TRACE_COLUMNS",
    "FillSchedule",
    "QueueSummary",
    "QueueTrace",
    "TimingEstimate",
    "estimate_timing",
    "plot_queue",
    "simulate_queue",
    "write_trace_csv",
]

#: Columns of :func:`write_trace_csv`, in order.
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
        What each fill took, for :func:`estimate_timing`.

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


def write_trace_csv(trace: QueueTrace, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write the trace as CSV, one row per popped patch.

    The header is ``epoch,iteration,batch,subject,patch,queue_length,filled``
    (:data:`TRACE_COLUMNS`); every value is an integer.

    The file is written under a temporary name (``<path>.partial``) and renamed
    when complete, so a reader never sees half a trace.

    Parameters
    ----------
    trace : QueueTrace
    path : str or path-like
    overwrite : bool
        Replace an existing file (else :class:`~patchcli.errors.DataError`).
    """
    table = np.column_stack([trace.columns()[name] for name in TRACE_COLUMNS]).astype(np.int64)

    with atomic_output(Path(path), overwrite) as temporary:
        with open(temporary, "w", newline="") as file:
            file.write(",".join(TRACE_COLUMNS) + "\n")
            if table.size:
                np.savetxt(file, table, fmt="%d", delimiter=",")


def plot_queue(
    trace: QueueTrace,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_pops: int | None = 5000,
    overwrite: bool = True,
) -> None:
    """Save a PNG picture of the queue over time.

    Top: patches in the list after each pop, with a marker at each fill and
    dashed lines at epoch boundaries. Bottom: the subject each popped patch came
    from, coloured by subject.

    Parameters
    ----------
    trace : QueueTrace
    path : str or path-like
        Output file (PNG).
    title : str, optional
        Figure title; by default the main settings.
    max_pops : int or None
        Show only the first ``max_pops`` pops (the title says so); a picture
        of a million pops shows nothing. None shows them all.
    overwrite : bool
        Replace an existing file (else :class:`~patchcli.errors.DataError`).

    Raises
    ------
    ImportError
        When matplotlib is missing, with the command that installs it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'patchcli[plot]'") from error

    shown = len(trace) if max_pops is None else min(len(trace), _check_int(max_pops, "max_pops", 1))
    step = trace.step[:shown]
    subject = trace.subject[:shown]
    queue_length = trace.queue_length[:shown]
    filled = trace.filled[:shown].astype(bool)
    num_subjects = trace.num_samples.size

    # A Figure with its own Agg canvas: no pyplot, no global backend change.
    figure = Figure(figsize=(11, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    length_axes, subject_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]}
    )

    # Queue length just before each pop (after a fill) and after it, as a step line.
    before = queue_length + 1
    times = np.repeat(step, 2).astype(float)
    times[1::2] += 1
    lengths = np.empty(2 * shown)
    lengths[0::2] = before
    lengths[1::2] = queue_length
    length_axes.plot(times, lengths, color="tab:blue", linewidth=1, label="patches in queue")
    length_axes.plot(
        step[filled],
        before[filled],
        linestyle="none",
        marker="v",
        color="tab:red",
        markersize=5,
        label="fill",
    )
    length_axes.set_ylabel("patches in queue")
    length_axes.set_ylim(0, trace.max_length * 1.08 + 0.5)
    length_axes.axhline(trace.max_length, color="grey", linewidth=0.8, linestyle=":")

    colour_map = "tab10" if num_subjects <= 10 else "tab20" if num_subjects <= 20 else "viridis"
    subject_axes.scatter(
        step,
        subject,
        c=subject,
        cmap=colour_map,
        vmin=0,
        vmax=max(num_subjects - 1, 1),
        s=max(2.0, min(30.0, 4000 / max(shown, 1))),
        marker="s",
        linewidths=0,
    )
    subject_axes.set_ylabel("subject of popped patch")
    subject_axes.set_xlabel("iteration (patches popped)")
    subject_axes.set_ylim(-0.7, num_subjects - 0.3)
    if num_subjects <= 30:
        subject_axes.set_yticks(range(num_subjects))

    boundaries = range(trace.iterations_per_epoch, shown, trace.iterations_per_epoch)
    for axes in (length_axes, subject_axes):
        for index, boundary in enumerate(boundaries):
            axes.axvline(
                boundary,
                color="black",
                linewidth=0.8,
                linestyle="--",
                label="epoch boundary" if index == 0 else None,
            )
        axes.set_xlim(0, max(shown, 1))
    length_axes.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
    if title is None:
        title = (
            f"Queue: {num_subjects} subjects, {trace.iterations_per_epoch} patches/epoch, "
            f"max_length {trace.max_length}, batch size {trace.batch_size}, "
            f"{trace.num_epochs} epoch(s)"
        )
        if shown < len(trace):
            title += f"; first {shown} of {len(trace)} pops"
    figure.suptitle(title)
    with atomic_output(Path(path), overwrite) as temporary:
        figure.savefig(temporary, format="png")


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
        From :func:`simulate_queue`.
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
