"""The life of one run's output: claimed, written as ``.partial``, checkpointed, renamed.

:class:`PartialOutput` puts together what makes an output safe on a cluster:

- an exclusive :class:`~patchcli.io.claim.Claim`, so that a second run on the
  same output is refused instead of corrupting the first;
- the output written under ``<output>.partial`` and renamed to its final
  name only once complete;
- a :class:`~patchcli.io.progress.ProgressJournal` of the complete subjects,
  so that a run stopped by a signal, a kill, a node crash, a full disk or a
  bad subject keeps what it finished and ``--resume`` continues from there;
- the rules for what is already there: an existing output is refused unless
  ``overwrite`` (or, with ``resume``, recognised as this run's, complete); an
  existing ``.partial`` is refused unless ``resume`` or ``overwrite``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, PatchcliWarning
from ..units import count
from .atomic import check_output_free, partial_path
from .claim import Claim
from .compact import compacting_path
from .progress import ProgressJournal, journal_path, sync_to_disk
from .reader import read_patch_output
from .writer import PartialUnusable


@dataclass(frozen=True)
class KeptPartial:
    """What a stopped run kept: attached to its exception as ``error.kept_partial``."""

    path: Path
    done: int
    total: int


class PartialOutput:
    """One run's output, from claim to rename; a context manager.

    Parameters
    ----------
    path : Path
        The final output (file, or folder when ``folder``).
    header : mapping
        What identifies the run in the journal: at least ``fingerprint``,
        ``format``, ``subjects`` (this output's count) and ``patches``.
    folder : bool
    overwrite : bool
        Replace an existing output, and discard an existing ``.partial``.
    resume : bool
        Continue an existing ``.partial`` from its complete subjects; an
        existing output made by the same run (same fingerprint) is complete.
    kind : str, optional
        The format a folder's marker must name for ``overwrite`` to replace it.
    retry_skipped : bool
        With ``resume``: an output or ``.partial`` of this run that skipped subjects is
        made again (and replaces the output when complete).

    With ``resume``, an output or ``.partial`` of a shard (the header's ``shard``)
    made with the same settings (``settings``) but other manifest rows (another
    ``fingerprint``) is stale: the run starts again and replaces it.

    Attributes
    ----------
    temporary : Path
        Where to write (``<output>.partial``).
    complete : bool
        With ``resume``: the output already exists, made by this run.
    closed : bool
        With ``resume``: the ``.partial`` is this run's output, complete and closed,
        stopped before its rename: it only needs :meth:`commit` (after
        :meth:`continue_partial`).
    found : PatchOutput or None
        The output read when ``complete`` or ``closed``.
    resumed : list of dict
        With ``resume``: records of the subjects already complete, in order.
    """

    def __init__(
        self,
        path: Path,
        header: Mapping[str, Any],
        *,
        folder: bool = False,
        overwrite: bool = False,
        resume: bool = False,
        kind: str | None = None,
        retry_skipped: bool = False,
    ) -> None:
        self.path = Path(path)
        self.retry_skipped = retry_skipped
        #: The existing output is replaced at commit (stale, or retrying skipped subjects).
        self.replacing = False
        self.header = dict(header)
        self.folder = folder
        self.overwrite = overwrite
        self.resume = resume
        self.kind = kind
        self.temporary = partial_path(self.path)
        self.complete = False
        self.closed = False
        self.found = None
        self.resumed: list[dict[str, Any]] = []
        self.journal: ProgressJournal | None = None
        self.claim: Claim | None = None
        self._committed = False

    # --------------------------------------------------------------- start
    def __enter__(self) -> PartialOutput:
        self.claim = Claim(self.path)
        try:
            self._start()
        except BaseException:
            self.claim.release()
            raise
        return self

    def _start(self) -> None:
        if self.resume and self._is_this_run(self.path):
            if not (self.retry_skipped and self.found.skipped):
                self.complete = True
                return
            self._replace(f"retrying {count(len(self.found.skipped), 'skipped subject')}")
        elif self.resume and self._is_stale(self.path):
            self._replace("its manifest rows changed since it was made")
        check_output_free(self.path, self.overwrite or self.replacing, self.folder, self.kind)
        leftover = self.temporary.exists() or self.temporary.is_symlink()
        if leftover and self.resume:
            self.resumed = self._resumable()
            if self.resumed:
                done = len(self.resumed) == self.header.get("subjects")
                self.closed = done and self._is_this_run(self.temporary)
                return
        elif leftover and not self.overwrite and self._complete_subjects() != 0:
            # (With none complete there is nothing to lose; the claim says no run owns it.)
            raise DataError(
                f"{self.temporary}: left by an earlier run that did not finish "
                f"({self._done_text()}); continue it with --resume, or start again with "
                "--overwrite"
            )
        self.start_fresh()

    def _replace(self, why: str) -> None:
        self.replacing = True
        self.found = None
        warnings.warn(
            f"{self.path}: made again, replacing the output when complete: {why}",
            PatchcliWarning,
            stacklevel=4,
        )

    def _is_stale(self, path: Path) -> bool:
        """Whether ``path`` is an output of this run's settings and shard whose rows were
        others (a manifest row fixed since)."""
        output = _read_output(path)
        if output is None:
            return False
        shard = None if output.shard is None else str(output.shard)
        return (
            self.header.get("shard") is not None  # a whole run is never replaced unasked
            and output.settings_fingerprint is not None
            and output.settings_fingerprint == self.header.get("settings")
            and shard == self.header.get("shard")
            and output.fingerprint != self.header.get("fingerprint")
        )

    def _is_this_run(self, path: Path) -> bool:
        """Whether ``path`` is a complete output of this run."""
        output = _read_output(path)
        if output is None:
            return False
        header = self.header
        # Shards made before shards had fingerprints of their own carry the whole run's.
        fingerprints = [header.get("fingerprint")]
        if output.settings_fingerprint is None and header.get("run_fingerprint"):
            fingerprints.append(header["run_fingerprint"])
        # Subjects skipped before the run are in the header's "skipped"; those skipped
        # during it are among its "subjects", and their rows among its "patches".
        before = [s.manifest_row for s in output.skipped if s.stage == "plan"]
        planned = int(header.get("subjects", 0)) + len(header.get("skipped") or ())
        patches = int(header.get("patches", 0))
        if (
            output.fingerprint in fingerprints
            and (not output.skipped or header.get("on_error") == "skip")
            and before == list(header.get("skipped") or ())
            and len(output.subjects) + len(output.skipped) == planned
            and (output.num_patches <= patches if output.skipped else output.num_patches == patches)
        ):
            self.found = output
            return True
        return False

    def _complete_subjects(self) -> int | None:
        """Subjects the ``.partial``'s journal trusts as complete; None if unreadable."""
        try:
            _, records, _ = ProgressJournal.read(self.temporary)
        except DataError:
            return None
        return len(records)

    def _done_text(self) -> str:
        done = self._complete_subjects()
        if done is None:
            return "no readable progress record"
        return f"{done} of {self.header.get('subjects')} subjects complete"

    def _resumable(self) -> list[dict[str, Any]]:
        """The trusted complete subjects of the ``.partial``; [] if it must start again."""
        try:
            header, records, _ = ProgressJournal.read(self.temporary)
        except DataError as error:
            self._warn_restart(str(error))
            return []
        same_shard = header.get("shard") == self.header.get("shard")
        if header.get("fingerprint") != self.header.get("fingerprint"):
            if (
                same_shard
                and self.header.get("shard") is not None
                and header.get("settings")
                and header.get("settings") == self.header.get("settings")
            ):
                self._warn_restart("its manifest rows changed since it was begun")
                return []
            raise DataError(
                f"{self.temporary}: written by a run with another configuration or manifest "
                "(its fingerprint differs); start again with --overwrite"
            )
        for key in ("format", "skipped", "subjects", "patches"):
            # (Journals of runs that skipped nothing before starting may lack "skipped".)
            theirs, ours = header.get(key), self.header.get(key)
            if key == "skipped":
                theirs, ours = theirs or [], ours or []
            if theirs != ours:
                what = "skipped manifest rows" if key == "skipped" else key
                raise DataError(
                    f"{self.temporary}: its run had {what} {theirs!r}, this one {ours!r} (did "
                    "the inputs change?); start again with --overwrite"
                )
        if self.retry_skipped and any("skipped" in record for record in records):
            self._warn_restart("it skipped subjects, which are retried")
            return []
        return records

    def _warn_restart(self, reason: str) -> None:
        warnings.warn(
            f"{self.temporary}: cannot be continued ({reason}); starting again",
            PatchcliWarning,
            stacklevel=3,
        )

    def start_fresh(self) -> None:
        """Discard any ``.partial`` and begin a new one (also after :class:`PartialUnusable`)."""
        if self.resumed:
            self._warn_restart("its completed subjects cannot be read back")
        self.resumed = []
        _remove(self.temporary)
        self.temporary.parent.mkdir(parents=True, exist_ok=True)
        if self.folder:
            self.temporary.mkdir()
        self.journal = ProgressJournal.create(self.temporary, self.header)

    def discard(self) -> None:
        """Remove the ``.partial`` and its journal: a run that leaves nothing worth keeping."""
        _remove(self.temporary)
        self.journal = None

    def continue_partial(self) -> None:
        """Start journaling on top of the resumed subjects (after the writer reopened them)."""
        # What the previous run wrote is forced to disk before the new journal
        # lists it as durable.
        sync_to_disk(self.temporary)
        self.journal = ProgressJournal.create(self.temporary, self.header, self.resumed)

    # ------------------------------------------------------------- progress
    @property
    def done(self) -> int:
        return self.journal.subjects if self.journal is not None else len(self.resumed)

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        """Record a complete subject, after the writer's checkpoint (``flush``)."""
        assert self.journal is not None
        self.journal.subject_done(record)

    def commit(self) -> None:
        """Rename the complete ``.partial`` to the final name."""
        check_output_free(self.path, self.overwrite or self.replacing, self.folder, self.kind)
        if self.folder and self.path.exists():
            _remove(self.path)
        self.temporary.replace(self.path)
        if self.journal is not None:
            self.journal.remove()
        self._committed = True

    # ------------------------------------------------------------------ end
    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is not None and not self._committed and not self.complete:
                self._stop(error)
        finally:
            if self.claim is not None:
                self.claim.release()

    def _stop(self, error: BaseException) -> None:
        if self.journal is None or self.done == 0:
            if self.journal is not None:
                self.journal.remove()
            _remove(self.temporary)
            return
        try:
            self.journal.sync()
        except OSError:
            pass  # a full disk: what is durable already stays recorded
        self.journal.close()
        error.kept_partial = KeptPartial(  # type: ignore[attr-defined]
            self.temporary, self.done, int(self.header.get("subjects", 0))
        )


def _read_output(path: Path):
    """The output at ``path``, or None when there is none or it cannot be read."""
    if not path.exists():
        return None
    try:
        return read_patch_output(path)
    except DataError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    journal_path(path).unlink(missing_ok=True)
    compacting_path(path).unlink(missing_ok=True)


__all__ = ["KeptPartial", "PartialOutput", "PartialUnusable"]
