"""Stop requests (SIGINT, SIGTERM) taken at safe points of a run.

SLURM stops a job at its time limit or on preemption with SIGTERM (then
SIGKILL after ``KillWait``, 30 s by default); a user presses Ctrl-C. Either
way a run should stop between two blocks of writing, keep what it finished,
and say how to resume. An exception raised while h5py writes lands in one of
its weakref callbacks, where Python prints it and carries on, so the signal
is only noted there and raised by :meth:`DeferredSignals.check`; a second
signal is raised at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_status`` is the shell's ``128 + signal``.

    A subclass of KeyboardInterrupt, so that code that stops cleanly on Ctrl-C
    stops cleanly on SIGTERM too.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


#: The signals a run stops on. SIGINT keeps its own handler if one was set.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """Note SIGINT and SIGTERM while active; :meth:`check` raises :class:`Interrupted`.

    Only handlers still at their defaults are replaced, and only in the main
    thread (where Python runs signal handlers); the previous ones come back
    on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is defaults[signum]:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise Interrupted(signum)
        self.received = signum

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal arrived."""
        if self.received is not None:
            raise Interrupted(self.received)

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


__all__ = ["DeferredSignals", "Interrupted", "STOP_SIGNALS"]
