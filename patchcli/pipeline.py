"""The parallel extraction pipeline: subjects cropped by workers, written by one process.

Each subject is one task. A worker loads its volumes, draws its locations and
crops its patches block by block, and hands each block over in the cheapest
form the output allows:

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
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from .io.space import write_error
from .workers import start_pool, stop_pool

#: How often the writer checks that a silent worker is still alive, in seconds.
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class InPlace:
    """Workers write patches into the output file: byte offset of row 0 and bytes per row."""

    path: str
    offsets: Mapping[str, int]
    row_bytes: Mapping[str, int]


@dataclass(frozen=True)
class Chunks:
    """Workers compress one chunk per patch: each image's filter pipeline,
    as ``(filter id, flags, client values)`` in order."""

    filters: Mapping[str, tuple[tuple[int, int, tuple[int, ...]], ...]]


@dataclass(frozen=True)
class Arrays:
    """Workers send the cropped patches."""


@dataclass(frozen=True)
class SubjectTask:
    """One subject to crop: ``count`` patches from output row ``row``."""

    spec: object  # patchcli.subjects.SubjectSpec
    count: int
    row: int


@dataclass(frozen=True)
class SubjectStart:
    """The first message of a subject: what the writer records before its patches."""

    affine: np.ndarray
    spatial_shape: tuple[int, int, int]
    count: int
    warnings: list[str]


@dataclass(frozen=True)
class Block:
    """Patches ``[first, first + count)`` of a subject and their locations, in the
    target's form: nothing (written in place), ``{image: [(filter mask, chunk bytes)]}``
    or ``{image: array (count, C, X, Y, Z)}``."""

    first: int
    count: int
    payload: Mapping | None
    locations: np.ndarray


def crop_block(
    volumes: Mapping[str, np.ndarray], corners: list, buffers: Mapping[str, np.ndarray]
) -> None:
    """Copy each patch ``(i0, j0, k0, i1, j1, k1)`` of ``corners`` into the buffers' rows."""
    for name, buffer in buffers.items():
        volume = volumes[name]
        # One copy per patch, straight from the C-ordered volume into the block.
        for slot, (i0, j0, k0, i1, j1, k1) in enumerate(corners):
            buffer[slot] = volume[:, i0:i1, j0:j1, k0:k1]


class Buffers:
    """Arrays kept from one subject to the next in a process, by name.

    Fresh arrays of tens of MiB cost page faults on every subject (the
    allocator gives them back to the system when freed); reusing them avoids
    that. An array is replaced when the shape or dtype asked for changes.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array

    def clear(self) -> None:
        self._arrays.clear()


#: This process's buffers (each worker process has its own).
_buffers = Buffers()
_memory_files = itertools.count()


def compress_chunks(
    block: np.ndarray, filters: tuple[tuple[int, int, tuple[int, ...]], ...]
) -> list[tuple[int, bytes]]:
    """Each patch of ``block`` as the chunk HDF5 stores with ``filters``: (filter mask, bytes).

    The chunks are made by HDF5 itself, in an in-memory file, so they are the
    bytes that writing the block through HDF5 stores.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filters)

    name = f"patchcli-chunks-{os.getpid()}-{next(_memory_files)}"
    # Memory for the whole block at once: grown in small steps, the in-memory file
    # would be copied again and again (twice as slow).
    size = block.nbytes + 2**20
    with h5py.File(name, "w", driver="core", backing_store=False, block_size=size) as file:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, *block.shape[1:]))
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        for code, flags, values in filters:
            dcpl.set_filter(code, flags, values)
        space = h5py.h5s.create_simple(block.shape)
        dataset = h5py.h5d.create(
            file.id, b"block", h5py.h5t.py_create(block.dtype), space, dcpl=dcpl
        )
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(block))
        zeros = (0,) * (block.ndim - 1)
        return [dataset.read_direct_chunk((row, *zeros)) for row in range(len(block))]


def subject_messages(
    settings, task: SubjectTask, target, block_patches: int
) -> Iterator[SubjectStart | Block]:
    """Load, sample and crop one subject: a :class:`SubjectStart`, then its blocks."""
    from .extract import prepare_subject

    prepared = prepare_subject(settings, task.spec, task.count, _buffers)
    yield SubjectStart(prepared.affine, prepared.spatial_shape, task.count, prepared.warnings)
    if not task.count:
        return
    block_patches = max(1, min(block_patches, task.count))
    volumes = prepared.volumes
    buffers = {
        name: _buffers.get(
            f"block {name}", (block_patches, volume.shape[0], *settings.patch_size), volume.dtype
        )
        for name, volume in volumes.items()
    }
    descriptor = os.open(target.path, os.O_WRONLY) if isinstance(target, InPlace) else None
    try:
        for first in range(0, task.count, block_patches):
            locations = prepared.locations.take(min(block_patches, task.count - first))
            corners = locations.tolist()
            count = len(corners)
            crop_block(volumes, corners, buffers)
            if descriptor is not None:
                row = task.row + first
                for name, buffer in buffers.items():
                    offset = target.offsets[name] + row * target.row_bytes[name]
                    _write_all(descriptor, memoryview(buffer[:count]).cast("B"), offset, target)
                payload = None
            elif isinstance(target, Chunks):
                payload = {
                    name: compress_chunks(buffer[:count], target.filters[name])
                    for name, buffer in buffers.items()
                }
            else:
                payload = {name: buffer[:count] for name, buffer in buffers.items()}
            yield Block(first, count, payload, locations)
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _write_all(descriptor: int, data: memoryview, offset: int, target: InPlace) -> None:
    written = 0
    try:
        while written < len(data):
            written += os.pwrite(descriptor, data[written:], offset + written)
    except OSError as error:
        raise write_error(target.path, error) from None


# -- running the tasks ---------------------------------------------------------

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


def _run_in_worker(slot: int, settings, task: SubjectTask, target, block_patches: int) -> None:
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
                message = Block(message.first, message.count, shared, message.locations)
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
        self, settings, tasks: Iterable[SubjectTask], target, block_patches: int
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
        _buffers.clear()  # a run in this process (no workers) lent them; give them back
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
            yield Block(message.first, message.count, payload, message.locations)
            connection.send(True)  # written: the worker may reuse the region
        else:
            yield message


def _start_methods() -> list[str]:
    from multiprocessing import get_all_start_methods

    return get_all_start_methods()


__all__ = [
    "Arrays",
    "Block",
    "Buffers",
    "Chunks",
    "InPlace",
    "Pipeline",
    "SubjectStart",
    "SubjectTask",
    "compress_chunks",
    "crop_block",
    "subject_messages",
]
