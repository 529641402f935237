"""The parallel extraction pipeline: subjects worked on by processes, written by one.

Each subject is one task, run by a worker process as the subject's work
(patchcli.subject_work: load, locations, crops), which hands each block over
in the cheapest form the output allows (patchcli.handover):

- uncompressed HDF5 (contiguous datasets, allocated when the file is made):
  the worker writes the block's bytes at their place in the file itself
  (``os.pwrite``); the writer records only the locations and the subjects;
- compressed HDF5: the worker compresses each patch's chunk with the file's own
  filter pipeline (an in-memory HDF5 dataset with the same filters), and the
  writer stores the chunks as they are (``write_direct_chunk``), so compression
  runs on every core;
- NIfTI: the worker sends the cropped blocks to the writer.

A subject's volumes never cross between processes. Each subject in flight has
a channel to the writer: a pipe for small messages and a shared memory region
that its worker copies each block's chunks (or arrays) into, then waits for
the writer's acknowledgement before reusing. Memory is a few subjects'
volumes and blocks, whatever the number of subjects and patches; locations are
drawn block by block too (patchcli.sampling.stream). Without workers the same
code runs in the calling process. Every worker count writes the same bytes.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from .handover import Block, SubjectStart
from .subject_work import SamplingSettings, SubjectTask, process_buffers, subject_messages
from .workers import start_pool, stop_pool

#: How often the writer checks that a silent worker is still alive, in seconds.
_POLL_SECONDS = 0.2

# In a worker process: each slot's connection to the writer and shared region.
_slot_connections: list = []
_slot_regions: list = []


def _keep_slots(connections: list, regions: list) -> None:
    global _slot_connections, _slot_regions
    _slot_connections, _slot_regions = connections, regions


@dataclass(frozen=True)
class _Shared:
    """Where a block's payload lies in its slot's shared region:
    ``{image: [(filter mask, offset, size)]}`` for chunks, or
    ``{image: (offset, shape, dtype)}`` for arrays."""

    chunks: bool
    layout: Mapping


def _share(payload: Mapping, region) -> _Shared | None:
    """Copy ``payload`` into ``region``; None when it does not fit (it then goes by pipe)."""
    chunks = isinstance(next(iter(payload.values())), list)
    if chunks:
        size = sum(len(data) for rows in payload.values() for _, data in rows)
    else:
        size = sum(array.nbytes for array in payload.values())
    if size > len(region):
        return None
    view, offset, layout = memoryview(region), 0, {}
    for name, value in payload.items():
        if chunks:
            entries = []
            for mask, data in value:
                view[offset : offset + len(data)] = data
                entries.append((mask, offset, len(data)))
                offset += len(data)
            layout[name] = entries
        else:
            data = memoryview(np.ascontiguousarray(value)).cast("B")
            view[offset : offset + len(data)] = data
            layout[name] = (offset, value.shape, value.dtype.str)
            offset += len(data)
    return _Shared(chunks, layout)


def _unshare(shared: _Shared, region) -> dict:
    """The payload :func:`_share` put in ``region``, as views (valid until acknowledged)."""
    view = memoryview(region)
    if shared.chunks:
        return {
            name: [(mask, view[offset : offset + size]) for mask, offset, size in entries]
            for name, entries in shared.layout.items()
        }
    return {
        name: np.frombuffer(region, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)
        for name, (offset, shape, dtype) in shared.layout.items()
    }


def _run_in_worker(
    slot: int, settings: SamplingSettings, task: SubjectTask, target, block_patches: int
) -> None:
    connection = _slot_connections[slot]
    region = _slot_regions[slot] if _slot_regions else None
    # A subject that failed on this slot (skipped by the writer) may have left the
    # acknowledgement of its last block unread; it was sent before this task was.
    while connection.poll():
        connection.recv()
    unacknowledged = False
    for message in subject_messages(settings, task, target, block_patches):
        if isinstance(message, Block) and message.payload is not None and region is not None:
            if unacknowledged:  # the writer still reads the region: wait until it is done
                connection.recv()
                unacknowledged = False
            shared = _share(message.payload, region)
            if shared is not None:
                message = Block(
                    message.first, message.count, shared, message.locations, message.warnings
                )
                unacknowledged = True
        connection.send(message)
    if unacknowledged:  # the next subject on this slot starts with the region free
        connection.recv()
    connection.send(None)  # the end: the writer need not wait to see the task done


class Pipeline:
    """Worker processes (none for ``workers=0``), and a channel per subject in flight.

    Each channel is a pipe for messages and, where workers are forked, a
    shared memory region of ``region_bytes`` through which blocks cross without
    being pickled or copied by the writer. Start it before the output file is
    opened, then :meth:`run` the tasks; ``close`` (or the context manager)
    stops it.
    """

    def __init__(self, workers: int, region_bytes: int = 0) -> None:
        self.workers = workers
        self.in_flight = workers + 1
        self._connections: list = []
        self._regions: list = []
        self.pool = None
        if workers > 0:
            import mmap
            from multiprocessing import get_context

            forked = "fork" in _start_methods()
            context = get_context("fork" if forked else "spawn")
            pairs = [context.Pipe(duplex=True) for _ in range(self.in_flight)]
            self._connections = [mine for mine, _ in pairs]
            if forked and region_bytes > 0:
                # Anonymous shared mappings: inherited by the forked workers, never named.
                self._regions = [mmap.mmap(-1, region_bytes) for _ in range(self.in_flight)]
            self.pool = start_pool(
                workers, _keep_slots, ([theirs for _, theirs in pairs], self._regions)
            )

    def run(
        self,
        settings: SamplingSettings,
        tasks: Iterable[SubjectTask],
        target,
        block_patches: int,
    ) -> Iterator[Iterator[SubjectStart | Block]]:
        """For each task, in order, the iterator of its messages.

        Each subject's messages must be consumed before the next subject's,
        and each block before asking for the next message.
        """
        if self.pool is None:
            for task in tasks:
                yield subject_messages(settings, task, target, block_patches)
            return
        tasks = iter(tasks)
        pending: deque = deque()
        slots = itertools.cycle(range(self.in_flight))

        def submit() -> None:
            for task in tasks:
                slot = next(slots)
                future = self.pool.submit(
                    _run_in_worker, slot, settings, task, target, block_patches
                )
                region = self._regions[slot] if self._regions else None
                pending.append((future, self._connections[slot], region))
                return

        for _ in range(self.in_flight):
            submit()
        while pending:
            future, connection, region = pending.popleft()
            yield _received(future, connection, region)
            submit()

    def close(self, *, kill: bool = False) -> None:
        process_buffers.clear()  # a run in this process (no workers) lent them; give them back
        stop_pool(self.pool, kill=kill)
        self.pool = None
        for connection in self._connections:
            connection.close()
        self._connections = []
        self._regions = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        # A run stopped by an error or a signal must not wait for busy workers.
        self.close(kill=kind is not None)


def _received(future, connection, region) -> Iterator[SubjectStart | Block]:
    """The messages of one task, until it ends (or fails)."""

    def messages():
        while True:
            if connection.poll(_POLL_SECONDS):
                yield connection.recv()
            elif future.done():
                # A task that failed sent no end; what it sent has arrived by now.
                while connection.poll(0):
                    yield connection.recv()
                future.result()  # the worker's error
                raise RuntimeError("a worker ended a subject without finishing it")

    for message in messages():
        if message is None:
            return
        if isinstance(message, Block) and isinstance(message.payload, _Shared):
            payload = _unshare(message.payload, region)
            yield Block(message.first, message.count, payload, message.locations, message.warnings)
            connection.send(True)  # written: the worker may reuse the region
        else:
            yield message


def _start_methods() -> list[str]:
    from multiprocessing import get_all_start_methods

    return get_all_start_methods()


__all__ = ["Pipeline"]
