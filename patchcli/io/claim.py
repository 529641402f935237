"""An exclusive claim on an output, so that two runs never write the same one.

The claim is a lock file beside the output (``out.h5.lock``), created with
``O_CREAT | O_EXCL``: atomic on local file systems, NFS (v3 and later) and
Lustre. It holds the claimant's host, pid, process start time and scheduler
job, as JSON. A second run finds it and is refused, told who holds it.

A claim left by a process that died (SIGKILL, node crash) is stale and taken
over when that can be known:

- same host, and that pid is no longer running (or is another process: its
  start time differs);
- another host, but the same scheduler job restarted (``SLURM_JOB_ID`` equal
  and ``SLURM_RESTART_COUNT`` higher: SLURM runs one instance of a job at a
  time, so a requeued task may take over from its killed self).

Otherwise (another host, another job) nobody can tell whether the holder is
alive: the run is refused, and the message says which file to remove once the
holder is known to be gone.

Taking over a stale claim is itself guarded by a second, short-lived lock
file, so that two runs finding the same stale claim cannot both take it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DataError
from .space import write_error

#: A takeover guard older than this is left over from a crash and may be removed.
_GUARD_SECONDS = 60


def lock_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".lock")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat(5); two fields precede the split point
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def scheduler_job(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The scheduler job this process runs in, as recorded in a claim."""
    environ = os.environ if environ is None else environ
    job = {}
    for key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        if environ.get(key):
            job[key] = environ[key]
    return job


def _describe(holder: Mapping[str, Any]) -> str:
    since = holder.get("time")
    age = f", claimed {time.time() - float(since):.0f} s ago" if since else ""
    job = holder.get("job", {}).get("SLURM_JOB_ID")
    in_job = f" in SLURM job {job}" if job else ""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}{in_job}{age}"


class Claim:
    """An exclusive claim on ``output``; use as a context manager or call :meth:`release`.

    Parameters
    ----------
    output : Path
        The output (file or folder) to claim.
    environ : mapping, optional
        Environment to read the scheduler job from (default ``os.environ``).

    Raises
    ------
    DataError
        When another live run (or one that cannot be known dead) holds it.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with Claim(folder / "out.h5"):
    ...     try:
    ...         Claim(folder / "out.h5")
    ...     except DataError as error:
    ...         print(str(error).split(":")[1].strip())  # doctest: +ELLIPSIS
    being written by another run (host ...
    """

    def __init__(self, output: Path, environ: Mapping[str, str] | None = None) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _process_start(os.getpid()),
            "job": scheduler_job(environ),
            "time": time.time(),
        }
        self.held = False
        self._acquire()

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self.held = True
                return
            holder = self._read()
            if holder is None:  # released between our attempt and the read: try again
                continue
            if not self._stale(holder):
                raise DataError(
                    f"{self.output}: being written by another run ({_describe(holder)}); "
                    f"wait for it, or remove {self.path} if that run is no longer running"
                )
            self._take_over(holder)
        raise DataError(f"{self.output}: could not claim {self.path}; another run keeps taking it")

    def _create(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                json.dump(self.record, stream)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            # An empty claim would read as damaged: leave none.
            self.path.unlink(missing_ok=True)
            raise write_error(self.path, error) from None
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise DataError(f"{self.path}: cannot read the claim ({error.strerror})") from None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = None
        if not isinstance(holder, dict):
            # Written by a process killed between create and write: empty or torn.
            # Treat it as stale only once it is old enough not to be mid-write.
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
            return {"host": "?", "pid": "?", "unreadable": age > 5}
        return holder

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        if holder.get("unreadable"):
            return True
        mine = self.record
        if holder.get("host") == mine["host"]:
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _alive(pid):
                return True
            start = _process_start(pid)
            return start is not None and holder.get("start") not in (None, start)
        job, my_job = holder.get("job") or {}, mine["job"]
        if job.get("SLURM_JOB_ID") and job.get("SLURM_JOB_ID") == my_job.get("SLURM_JOB_ID"):
            try:
                return int(my_job.get("SLURM_RESTART_COUNT", 0)) > int(
                    job.get("SLURM_RESTART_COUNT", 0)
                )
            except ValueError:
                return False
        return False

    def _take_over(self, holder: Mapping[str, Any]) -> None:
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            descriptor = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _GUARD_SECONDS:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        os.close(descriptor)
        try:
            # Still the stale claim we judged? Another run may have replaced it meanwhile.
            if self._read() == holder:
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        """Give the claim up (only if this process still holds it)."""
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if (
            holder is not None
            and holder.get("pid") == self.record["pid"]
            and holder.get("host") == self.record["host"]
        ):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


__all__ = ["Claim", "lock_path", "scheduler_job"]
