"""The trace of a simulated queue as CSV: one row per popped patch.

:func:`write_trace_csv` writes the columns :data:`TRACE_COLUMNS`, every value an
integer. They are the per-pop arrays of a
:class:`~patchcli.queue.simulation.QueueTrace`, so they are defined with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_output
from .simulation import TRACE_COLUMNS, QueueTrace

__all__ = ["TRACE_COLUMNS", "write_trace_csv"]


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
