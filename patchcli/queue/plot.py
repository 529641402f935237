"""A picture of a simulated queue over time (PNG).

Drawing needs matplotlib, an optional extra (``pip install 'patchcli[plot]'``):
:func:`plot_queue` imports it when called, so the rest of :mod:`patchcli.queue`
works without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_output
from .simulation import QueueTrace, _check_int

__all__ = ["plot_queue"]


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
