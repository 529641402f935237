"""Disk space: reserved before HDF5 writes, so that a full disk is a clean stop.

HDF5 does not survive a failed write: once a write hits a full disk (ENOSPC)
or a quota (EDQUOT), closing the file fails too, and the library crashes when
the process exits (a segmentation fault), leaving only its raw driver
message. So the HDF5 writer reserves the space of each block before writing
it: ``fallocate(FALLOC_FL_KEEP_SIZE)`` past the end of the file allocates the
blocks that HDF5's writes will then fill. When the reservation is refused,
the run stops before HDF5 sees anything, the file closes normally, and its
complete subjects stay resumable. What is left reserved past the end is
given back (``FALLOC_FL_PUNCH_HOLE``) when the file is closed.

Where ``fallocate`` is not supported (some NFS and Lustre mounts, macOS),
the free space reported by ``statvfs`` is checked instead; it does not see
quotas, nor other processes filling the disk at the same time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from ..errors import SystemFault
from ..units import format_bytes

_KEEP_SIZE = 0x01
_PUNCH_HOLE = 0x02
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_libc = None


class WriteFailed(SystemFault):
    """The output could not be written (never the fault of one subject)."""


class DiskFull(WriteFailed):
    """No space left for the output (a full disk or a quota)."""


def _fallocate():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    function = getattr(_libc, "fallocate", None) if _libc else None
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return function


def free_bytes(path: Path) -> int:
    """Bytes that this user may still write on the file system holding ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def reserve(descriptor: int, offset: int, length: int, mode: int = _KEEP_SIZE) -> bool:
    """Allocate ``[offset, offset + length)`` of an open file without changing its size.

    Returns False where the file system cannot do it (the caller then checks
    the free space), and raises OSError (ENOSPC, EDQUOT) where the space is
    not there.
    """
    function = _fallocate()
    if function is None or length <= 0:
        return False
    if function(descriptor, mode, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))


def release(descriptor: int) -> None:
    """Give back whatever is allocated past the end of an open file (best effort)."""
    function = _fallocate()
    if function is None:
        return
    size = os.fstat(descriptor).st_size
    function(descriptor, _KEEP_SIZE | _PUNCH_HOLE, size, 1 << 40)


def ensure_space(
    descriptor: int, path: Path, offset: int, length: int, needed: int, mode: int = _KEEP_SIZE
) -> None:
    """Make sure ``length`` bytes can be written at ``offset`` of the file at ``path``.

    ``mode`` 0 allocates inside the file (a sparse region); the default, past its end.

    Raises
    ------
    DiskFull
        Naming the file, the free space, and ``needed``: the bytes the run
        still has to write (uncompressed).
    """
    try:
        if reserve(descriptor, offset, length, mode):
            return
        full = free_bytes(path.parent) < length
        code = errno.ENOSPC
    except OSError as error:
        if error.errno not in _FULL:
            raise
        full, code = True, error.errno
    if full:
        raise DiskFull(
            f"{path}: {_full(code)} ({format_bytes(free_bytes(path.parent))} free; the run "
            f"still needs up to {format_bytes(needed)} uncompressed)"
        )


def extend_to_allocated(file, descriptor: int) -> None:
    """Make an open HDF5 file (h5py) as long as HDF5 has allocated: a sparse extension.

    Datasets allocated at creation are written through ``descriptor`` (in place, not by
    HDF5), and HDF5 refuses to open a file shorter than its allocation: a file whose last
    rows were never written must still open.
    """
    file.flush()
    allocated = file.id.get_filesize()
    if os.fstat(descriptor).st_size < allocated:
        os.ftruncate(descriptor, allocated)


def is_disk_full(error: OSError) -> bool:
    return error.errno in _FULL


def _full(code: int) -> str:
    return "over the disk quota" if code == errno.EDQUOT else "no space left on the device"


def write_error(path: Path, error: OSError) -> WriteFailed:
    """A one-line error naming ``path`` for a failed write: :class:`DiskFull` when it is."""
    if is_disk_full(error):
        try:
            free = f" ({format_bytes(free_bytes(Path(path).parent))} free)"
        except OSError:
            free = ""
        return DiskFull(f"{path}: {_full(error.errno)}{free}")
    return WriteFailed(f"{path}: cannot write ({error.strerror or error})")


__all__ = [
    "DiskFull",
    "ensure_space",
    "extend_to_allocated",
    "free_bytes",
    "is_disk_full",
    "release",
    "reserve",
    "WriteFailed",
    "write_error",
]
