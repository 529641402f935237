"""HDF5 files kept open for reading, once per process.

A :class:`HandleCache` opens each file of an output (the file itself, or the
shards of a merge) once per process, at most ``max_open`` at a time, and is
safe across ``fork``: a child process opens its own handles.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import DataError
from .hdf5 import open_hdf5, plain_value

# Handles opened by a parent process and found after a fork. They are kept
# referenced and never closed here: the HDF5 state behind them belongs to the
# parent, and h5py objects must not be used across a fork.
_INHERITED_HANDLES: list[Any] = []


class _OpenFile:
    """An HDF5 file opened for reading in one process, with the datasets used so far."""

    def __init__(self, path: Path) -> None:
        self.file = open_hdf5(path)
        self.datasets: dict[str, Any] = {}
        self.plains: dict[str, tuple[int, int] | None] = {}

    def dataset(self, name: str):
        dataset = self.datasets.get(name)
        if dataset is None:
            try:
                dataset = self.file[name].id
            except KeyError:
                raise DataError(f"{self.file.filename}: no dataset /{name}") from None
            self.datasets[name] = dataset
        return dataset

    def plain(self, name: str) -> tuple[int, int] | None:
        """``(file descriptor, byte offset)`` of a dataset stored contiguously and
        unfiltered in a plain file, which a reader may read with ``pread``; else None."""
        if name not in self.plains:
            from h5py import h5d, h5fd, h5i

            dataset = self.dataset(name)
            dcpl = dataset.get_create_plist()
            offset = dataset.get_offset()
            # The file that stores it: another one when /patches/<name> is an external link.
            stored_in = h5i.get_file_id(dataset)
            plain = (
                stored_in.get_access_plist().get_driver() == h5fd.SEC2
                and dcpl.get_layout() == h5d.CONTIGUOUS
                and dcpl.get_nfilters() == 0
                and offset is not None
                and dataset.dtype.isnative
            )
            self.plains[name] = (stored_in.get_vfd_handle(), offset) if plain else None
        return self.plains[name]

    def close(self) -> None:
        self.datasets.clear()
        self.plains.clear()
        if self.file.id.valid:
            self.file.close()


def default_max_open() -> int:
    """Files a reader may keep open: half this process's descriptor limit, at most 4096.

    A merge of N shards reads at full speed only with N files open: reopening
    a file for each patch read is ten times slower (bench_merge.py).
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 4096
    return int(max(16, min(4096, soft // 2)))


class HandleCache:
    """HDF5 files opened lazily, once per process, at most ``max_open`` at a time.

    A process that finds handles opened by its parent (after a fork) opens its
    own and never touches the inherited ones; pickling drops the handles. The
    least recently used file is closed first. Files are opened without a chunk
    cache (:func:`~patchcli.io.hdf5.open_hdf5`), so an open file costs a few
    KiB.
    """

    def __init__(self, max_open: int | None = None) -> None:
        self.max_open = default_max_open() if max_open is None else max_open
        self._files: OrderedDict[Path, _OpenFile] = OrderedDict()
        self._pid = os.getpid()

    def dataset(self, path: Path, name: str):
        """The low-level ``DatasetID`` of ``name`` in the file at ``path``."""
        pid = os.getpid()
        if pid != self._pid:
            # Handles inherited through fork belong to the parent: open our own.
            _INHERITED_HANDLES.extend(self._files.values())
            self._files = OrderedDict()
            self._pid = pid
        handle = self._files.get(path)
        if handle is None:
            while len(self._files) >= max(1, self.max_open):
                _, oldest = self._files.popitem(last=False)
                oldest.close()
            handle = _OpenFile(path)
            self._files[path] = handle
        else:
            self._files.move_to_end(path)
        return handle.dataset(name)

    def plain(self, path: Path, name: str) -> tuple[int, int] | None:
        """:meth:`_OpenFile.plain` of a file opened by :meth:`dataset`."""
        return self._files[path].plain(name)

    def attribute(self, path: Path, name: str):
        """A root attribute of a file opened by :meth:`dataset`, as a plain value, or None."""
        handle = self._files.get(path)
        if handle is None:
            return None
        return plain_value(handle.file.attrs.get(name))

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        """Close the files this process opened (reading again reopens them)."""
        if self._pid == os.getpid():
            for handle in self._files.values():
                handle.close()
        else:
            _INHERITED_HANDLES.extend(self._files.values())
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "_files": OrderedDict(), "_pid": None}


__all__ = ["HandleCache", "default_max_open"]
