"""Worker processes that die with the process that started them.

Workers are forked before the output is opened (neither h5py state nor
threads cross the fork). They ignore SIGINT and SIGTERM, so that the main
process alone decides how a run stops, and they die with it: on Linux the
kernel kills them when the main process dies (``PR_SET_PDEATHSIG``), even
by SIGKILL; elsewhere a watcher thread notices the parent is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from typing import Any, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, setup=None, setup_args=()) -> None:
    """Worker initializer: ignore stop signals; exit when ``parent`` exits; then ``setup``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        if name:
            libc = ctypes.CDLL(name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    if not sys.platform.startswith("linux"):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if setup is not None:
        setup(*setup_args)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def available_cores(environ=None) -> int:
    """Cores this process may use: ``SLURM_CPUS_PER_TASK`` in a SLURM job, else its CPU affinity."""
    environ = os.environ if environ is None else environ
    allotted = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if allotted.isdigit() and int(allotted) > 0:
        return int(allotted)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | str, environ=None) -> int:
    """A ``workers`` setting as a process count: ``auto`` is one per available core, and 0
    (work in this process) when there is only one: a single worker only adds the cost of
    sending each subject's volumes back."""
    if workers != "auto":
        return int(workers)
    cores = available_cores(environ)
    return cores if cores > 1 else 0


def start_pool(
    workers: int, setup: Callable[..., None] | None = None, setup_args: tuple = ()
) -> ProcessPoolExecutor | None:
    """``workers`` processes, started now (None for 0: work in this process).

    Each runs ``setup(*setup_args)`` first; with fork, ``setup_args`` are
    inherited, not pickled (pipes may be passed).

    Forked where possible: no re-import of the caller's script, fast start.
    Call it before the output file is opened and before any thread starts;
    the first task makes the pool start all of its processes at once.
    """
    if workers <= 0:
        return None
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(
        workers,
        mp_context=get_context(method),
        initializer=_die_with_parent,
        initargs=(os.getpid(), setup, setup_args),
    )
    pool.submit(os.getpid).result()
    return pool


def stop_pool(pool: ProcessPoolExecutor | None, *, kill: bool = False) -> None:
    """Shut the pool down; with ``kill``, end busy workers now instead of waiting."""
    if pool is None:
        return
    if kill:
        # ProcessPoolExecutor waits for running tasks; a stopped run must not.
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    function: Callable[..., T],
    arguments: Iterable[tuple[Any, ...]],
    pool: ProcessPoolExecutor | None,
    in_flight: int,
) -> Iterator[T]:
    """``function(*args)`` for each item of ``arguments``, in order.

    With a pool, at most ``in_flight`` calls run or wait ahead of the one
    being consumed, which bounds memory; without, calls run here, one by one.
    """
    items = iter(arguments)
    if pool is None:
        for args in items:
            yield function(*args)
        return
    pending: deque[Future] = deque()
    for args in items:
        pending.append(pool.submit(function, *args))
        if len(pending) > in_flight:
            break
    while pending:
        yield pending.popleft().result()
        for args in items:
            pending.append(pool.submit(function, *args))
            break


__all__ = ["available_cores", "ordered_map", "resolve_workers", "start_pool", "stop_pool"]
