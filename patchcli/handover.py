"""The hand-over: how a worker's patches reach the writer, below both io and the pipeline.

A writer says how it takes patches (its *target*): :class:`InPlace` (an
uncompressed HDF5 file, whose rows workers write themselves), :class:`Chunks`
(a compressed HDF5 file, whose chunks workers compress with the file's own
filters, :func:`compress_chunks`) or :class:`Arrays` (a NIfTI folder, which
takes the cropped arrays). A subject's work then hands over a
:class:`SubjectStart` and its :class:`Block` messages, in that target's form.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


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
class VolumeChunks:
    """Workers compress whole volumes into chunks of ``chunk_shape`` (spatial; every
    channel in each chunk) with each image's filter pipeline (a volume store)."""

    filters: Mapping[str, tuple[tuple[int, int, tuple[int, ...]], ...]]
    chunk_shape: tuple[int, int, int]


@dataclass(frozen=True)
class SubjectStart:
    """The first message of a subject: what the writer records before its patches."""

    affine: np.ndarray
    spatial_shape: tuple[int, int, int]
    count: int
    warnings: list[str]
    #: Image name -> ``(shape, affine)`` before preprocessing (None without it).
    source_grids: Mapping[str, tuple[tuple[int, int, int], np.ndarray]] | None = None
    #: A volume store's sampling tables of the subject (patchcli.sampling.tables), by image.
    tables: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Block:
    """Patches ``[first, first + count)`` of a subject and their locations, in the
    target's form: nothing (written in place), ``{image: [(filter mask, chunk bytes)]}``
    or ``{image: array (count, C, X, Y, Z)}``."""

    first: int
    count: int
    payload: Mapping | None
    locations: np.ndarray
    #: Warnings found since the subject started (an augmented copy's, on its first block).
    warnings: tuple[str, ...] = ()


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


def volume_chunk_shape(
    chunk_shape: tuple[int, int, int], spatial_shape: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The chunk of a volume: ``chunk_shape``, cut to the volume where it is smaller."""
    return tuple(min(c, n) for c, n in zip(chunk_shape, spatial_shape))  # type: ignore[return-value]


def compress_volume(
    volume: np.ndarray,
    chunk_shape: tuple[int, int, int],
    filters: tuple[tuple[int, int, tuple[int, ...]], ...],
) -> list[tuple[int, bytes]]:
    """A (C, X, Y, Z) volume as the chunks HDF5 stores with ``filters``, chunk by chunk in
    C order of the chunk grid: ``(filter mask, bytes)`` each (made by HDF5 itself, in an
    in-memory file, like :func:`compress_chunks`)."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filters)

    chunk = (volume.shape[0], *volume_chunk_shape(chunk_shape, volume.shape[1:]))
    name = f"patchcli-volume-{os.getpid()}-{next(_memory_files)}"
    size = volume.nbytes + 2**20
    with h5py.File(name, "w", driver="core", backing_store=False, block_size=size) as file:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(chunk)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        for code, flags, values in filters:
            dcpl.set_filter(code, flags, values)
        space = h5py.h5s.create_simple(volume.shape)
        dataset = h5py.h5d.create(
            file.id, b"volume", h5py.h5t.py_create(volume.dtype), space, dcpl=dcpl
        )
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(volume))
        return [dataset.read_direct_chunk(offset) for offset in chunk_offsets(volume.shape, chunk)]


def chunk_offsets(shape, chunk) -> list[tuple[int, ...]]:
    """The first index of every chunk of a dataset, in C order of the chunk grid."""
    axes = [range(0, n, c) for n, c in zip(shape, chunk)]
    return list(itertools.product(*axes))


__all__ = [
    "Arrays",
    "Block",
    "Chunks",
    "InPlace",
    "SubjectStart",
    "VolumeChunks",
    "chunk_offsets",
    "compress_chunks",
    "compress_volume",
    "volume_chunk_shape",
]
