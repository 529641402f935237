"""A simulation of TorchIO's patches queue that needs no image data.

- :mod:`~patchcli.queue.simulation`: :func:`simulate_queue`, which replays the
  queue's fills and pops for per-subject patch counts, and its results
  (:class:`QueueTrace`, :class:`FillSchedule`, :class:`QueueSummary`).
- :mod:`~patchcli.queue.trace`: :func:`write_trace_csv`, a trace as CSV.
- :mod:`~patchcli.queue.plot`: :func:`plot_queue`, a PNG picture of a trace
  (needs matplotlib).
- :mod:`~patchcli.queue.timing`: :func:`estimate_timing`, how long training
  waits on the queue for given loading and step times.
"""

from .plot import plot_queue
from .simulation import TRACE_COLUMNS, FillSchedule, QueueSummary, QueueTrace, simulate_queue
from .timing import TimingEstimate, estimate_timing
from .trace import write_trace_csv

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
