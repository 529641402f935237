"""The progress journal of a ``.partial`` output: which subjects are complete.

``out.h5.partial.progress`` sits beside the partial output while it is being
written: JSON lines, the first a header (the run's fingerprint, the output's
size, and the host and boot that write it), then one line per completed
subject, written after the writer's checkpoint (HDF5 flush, or ``patches.csv``
flushed), and now and then a ``durable`` line once the data and the journal
have been forced to disk (``fsync``).

What a resumed run trusts:

- on the same host and boot as the writer (it was killed, the page cache
  survived): every subject line;
- anywhere else (a node crash or reboot, or a requeue onto another node): the
  subjects up to the last ``durable`` line.

A line torn by a kill mid-write is ignored. Durable lines are written every
``SYNC_SECONDS`` and when a run stops on a signal or an error, so a crash
loses at most the last few seconds of work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DataError
from .space import write_error

JOURNAL_FORMAT = "patchcli-progress"
JOURNAL_VERSION = 1
#: Seconds between forced writes to disk (fsync) during a run.
SYNC_SECONDS = 30.0


def journal_path(partial: Path) -> Path:
    return Path(partial).with_name(Path(partial).name + ".progress")


def boot_id() -> str | None:
    """This boot of this machine (Linux), or None where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_LIBC = None


def sync_to_disk(path: Path) -> None:
    """Force what was written to ``path`` to disk: fsync a file, syncfs a folder's file system."""
    global _LIBC
    path = Path(path)
    if not path.is_dir():
        _fsync_path(path)
        return
    # A NIfTI output is thousands of files: sync the file system they are on at once.
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name, use_errno=True) if name else False
    syncfs = getattr(_LIBC, "syncfs", None) if _LIBC else None
    if syncfs is None:
        os.sync()
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


class ProgressJournal:
    """Append-only record of the complete subjects of one ``.partial`` output.

    Use :meth:`create` for a new run and :meth:`read` then :meth:`restart`
    to resume one.
    """

    def __init__(self, path: Path, data_path: Path, stream) -> None:
        self.path = path
        self.data_path = data_path
        self._stream = stream
        self.subjects = 0
        self.durable_subjects = 0
        self._last_sync = time.monotonic()

    # ------------------------------------------------------------- writing
    @classmethod
    def create(
        cls, data_path: Path, header: Mapping[str, Any], subjects: list[dict] | None = None
    ) -> ProgressJournal:
        """A new journal for ``data_path`` (replacing any), listing ``subjects`` as durable.

        Written to a temporary name and renamed, so a journal is never half there.
        """
        path = journal_path(data_path)
        temporary = path.with_name(path.name + ".new")
        lines = [
            {
                "journal": JOURNAL_FORMAT,
                "version": JOURNAL_VERSION,
                **header,
                "host": socket.gethostname(),
                "boot": boot_id(),
            }
        ]
        lines += [{"subject": record} for record in subjects or []]
        if subjects:
            lines.append({"durable": len(subjects)})
        try:
            with open(temporary, "w", encoding="utf-8") as stream:
                for line in lines:
                    stream.write(json.dumps(line) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise write_error(path, error) from None
        os.replace(temporary, path)
        stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        journal = cls(path, Path(data_path), stream)
        journal.subjects = journal.durable_subjects = len(subjects or [])
        return journal

    def subject_done(self, record: Mapping[str, Any]) -> None:
        """Record a complete subject (after the writer's checkpoint); sync now and then."""
        self._write({"subject": dict(record)})
        self.subjects += 1
        if time.monotonic() - self._last_sync >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Force the data and the journal to disk, and record how many subjects that covers."""
        if self.durable_subjects == self.subjects or self._stream.closed:
            self._last_sync = time.monotonic()
            return
        sync_to_disk(self.data_path)
        self._write({"durable": self.subjects})
        os.fsync(self._stream.fileno())
        self.durable_subjects = self.subjects
        self._last_sync = time.monotonic()

    def _write(self, line: Mapping[str, Any]) -> None:
        try:
            self._stream.write(json.dumps(line) + "\n")
            self._stream.flush()
        except OSError as error:
            raise write_error(self.path, error) from None

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------- reading
    @staticmethod
    def read(data_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """The header and the trusted subject records of ``data_path``'s journal.

        Returns
        -------
        header : dict
        subjects : list of dict
            The records of the complete subjects that can be trusted, in order.
        all_trusted : bool
            False when later subject lines were dropped (written on another
            host or boot and never made durable).

        Raises
        ------
        DataError
            When there is no journal or its header cannot be read.
        """
        path = journal_path(data_path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: no progress record") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read the progress record ({error})") from None
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                break  # torn by a kill mid-write; nothing after it was written completely
        if not lines or not isinstance(lines[0], dict) or lines[0].get("journal") != JOURNAL_FORMAT:
            raise DataError(f"{path}: not a patchcli progress record")
        header = lines[0]
        if header.get("version") != JOURNAL_VERSION:
            raise DataError(f"{path}: progress record version {header.get('version')} unknown")
        subjects: list[dict[str, Any]] = []
        durable = 0
        for line in lines[1:]:
            if not isinstance(line, dict):
                break
            if isinstance(line.get("subject"), dict):
                subjects.append(line["subject"])
            elif isinstance(line.get("durable"), int):
                durable = max(durable, min(line["durable"], len(subjects)))
        same_boot = header.get("boot") is not None and (
            header.get("host"),
            header.get("boot"),
        ) == (socket.gethostname(), boot_id())
        trusted = subjects if same_boot else subjects[:durable]
        return header, trusted, len(trusted) == len(subjects)


__all__ = [
    "ProgressJournal",
    "SYNC_SECONDS",
    "boot_id",
    "journal_path",
    "sync_to_disk",
]
