"""Closing the holes that skipped subjects leave in an HDF5 patch file.

Rows are laid out before any subject is read (each subject's patches have
their place in the file, which workers write in place), so a subject that
fails under ``on_error: skip`` leaves its rows unwritten. When the run ends,
the file is copied without them: patches as they are stored (compressed
chunks copied as they are, uncompressed rows with ``copy_file_range``), the
locations and subjects of each kept row, and the file's attributes. The copy
needs, for a moment, the space of a second file; that space is reserved
before copying, so a full disk stops it cleanly (the ``.partial`` is kept).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from .space import ensure_space, extend_to_allocated, write_error

#: Bytes copied at once where the kernel cannot copy between files itself.
_COPY_BYTES = 16 * 2**20


def compacting_path(path: Path) -> Path:
    """Where the compacted copy of ``path`` is written before it replaces it."""
    return path.with_name(path.name + ".compacting")


def compact_rows(
    source: h5py.File, target: Path, keep: Sequence[tuple[int, int]]
) -> tuple[h5py.File, int]:
    """Copy ``source`` to a new file at ``target`` with only the rows ``keep``.

    Parameters
    ----------
    source : h5py.File
        An open patch file (``/patches/*``, ``/locations``, ``/subject_index``).
    target : Path
        The new file (replaced if it exists).
    keep : sequence of (int, int)
        ``(first row, count)`` of each run of rows to keep, in order; they
        become consecutive rows of the new file.

    Returns
    -------
    file : h5py.File
        The new file, open for writing (its subjects table is not written).
    descriptor : int
        A descriptor of the new file, on which its space is reserved; give it
        back with :func:`patchcli.io.space.release` and close it.

    Raises
    ------
    DiskFull
        When the space of the copy cannot be reserved (nothing is copied).
    """
    total = int(sum(count for _, count in keep))
    file = h5py.File(target, "w", locking=False, rdcc_nbytes=0)
    descriptor = os.open(target, os.O_RDWR)
    try:
        # At most the source's size: the copy is the source less the holes.
        bound = os.path.getsize(source.filename)
        ensure_space(descriptor, Path(target), 0, bound, bound)
        _copy_attributes(source, file)
        for name, dataset in source["patches"].items():
            copied = file.create_dataset(
                f"patches/{name}",
                (total, *dataset.shape[1:]),
                dtype=dataset.dtype,
                dcpl=dataset.id.get_create_plist(),
            )
            _copy_attributes(dataset, copied)
        for name in ("locations", "subject_index"):
            dataset = source[name]
            file.create_dataset(
                name, (total, *dataset.shape[1:]), dataset.dtype, dcpl=dataset.id.get_create_plist()
            )
        # Contiguous datasets are written through the descriptor.
        extend_to_allocated(file, descriptor)
        source_descriptor = os.open(source.filename, os.O_RDONLY)
        try:
            for name, dataset in source["patches"].items():
                _copy_patches(dataset, file[f"patches/{name}"], keep, source_descriptor, descriptor)
        finally:
            os.close(source_descriptor)
        at = 0
        for start, count in keep:
            for name in ("locations", "subject_index"):
                file[name][at : at + count] = source[name][start : start + count]
            at += count
    except BaseException as error:
        file.close()
        os.close(descriptor)
        Path(target).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(Path(target), error) from None
        raise
    return file, descriptor


def _copy_attributes(source, target) -> None:
    for key in source.attrs:
        # With the stored type: strings stay variable-length UTF-8, integers int64.
        target.attrs.create(key, source.attrs[key], dtype=source.attrs.get_id(key).dtype)


def _copy_patches(
    source: h5py.Dataset,
    target: h5py.Dataset,
    keep: Sequence[tuple[int, int]],
    source_descriptor: int,
    target_descriptor: int,
) -> None:
    at = 0
    if source.chunks is None:
        row_bytes = int(np.prod(source.shape[1:])) * source.dtype.itemsize
        source_offset, target_offset = source.id.get_offset(), target.id.get_offset()
        for start, count in keep:
            if count and source_offset is not None:
                _copy_bytes(
                    source_descriptor,
                    target_descriptor,
                    source_offset + start * row_bytes,
                    target_offset + at * row_bytes,
                    count * row_bytes,
                )
            at += count
        return
    for start, count in keep:
        copy_chunks(source, target, start, count, at)
        at += count


def copy_chunks(
    source: h5py.Dataset, target: h5py.Dataset, start: int, count: int, at: int
) -> None:
    """Copy rows ``[start, start + count)`` of ``source`` to rows from ``at`` of ``target``,
    as stored: one chunk is one patch, never decompressed (same filters on both sides)."""
    zeros = (0,) * (source.ndim - 1)
    for row in range(count):
        mask, data = source.id.read_direct_chunk((start + row, *zeros))
        target.id.write_direct_chunk((at + row, *zeros), data, mask)


def _copy_bytes(source: int, target: int, source_at: int, target_at: int, length: int) -> None:
    try:
        while length > 0:
            copied = os.copy_file_range(source, target, length, source_at, target_at)
            if copied == 0:
                raise OSError(errno.EIO, "the file being compacted ended early")
            source_at, target_at, length = source_at + copied, target_at + copied, length - copied
        return
    except OSError as error:
        # Older kernels copy only within one file system, some file systems not at all.
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while length > 0:
        data = os.pread(source, min(length, _COPY_BYTES), source_at)
        if not data:
            raise OSError(errno.EIO, "the file being compacted ended early")
        written = os.pwrite(target, data, target_at)
        source_at, target_at, length = source_at + written, target_at + written, length - written


__all__ = ["compact_rows", "compacting_path", "copy_chunks"]
