"""What every patch writer shares: the subjects table and the order of calls.

A run calls ``begin_subject`` once per subject, then ``write_block`` for each
block of that subject's patches, ``flush`` once the subject is complete (a
checkpoint a resumed run can start from), and finally ``close`` (or ``abort``
on error). With ``on_error: skip``, a subject that fails is given up with
``skip_subject``: its rows are dropped when the output is closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError

#: An image's grid: spatial shape and affine.
SourceGrid = tuple[tuple[int, int, int], np.ndarray]


def source_grids_to_plain(grids: Mapping[str, SourceGrid] | None) -> dict | None:
    """Source grids as plain YAML/JSON values: ``{image: {"shape": [...], "affine": [...]}}``."""
    if grids is None:
        return None
    return {
        name: {"shape": [int(n) for n in shape], "affine": np.asarray(affine).tolist()}
        for name, (shape, affine) in grids.items()
    }


def source_grids_from_plain(data: Mapping | None) -> dict[str, SourceGrid] | None:
    """The inverse of :func:`source_grids_to_plain` (KeyError, TypeError or ValueError when
    malformed)."""
    if data is None:
        return None
    return {
        str(name): (
            tuple(int(n) for n in grid["shape"]),  # type: ignore[misc]
            np.asarray(grid["affine"], dtype=np.float64).reshape(4, 4),
        )
        for name, grid in data.items()
    }


def copy_index(records: Sequence[SubjectRecord], copies: int) -> np.ndarray:
    """Each row's augmented copy, for rows in subject order: a subject's rows are its
    ``copies`` copies in turn, each the same number of rows.

    Examples
    --------
    >>> record = SubjectRecord("a", np.eye(4), (9, 9, 9), {}, 0, 6)
    >>> copy_index([record, record], 3).tolist()
    [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    """
    parts = [
        np.repeat(np.arange(copies, dtype=np.int64), record.patch_count // copies)
        for record in records
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class PartialUnusable(DataError):
    """A ``.partial`` that cannot be continued (a kill left it unreadable): start again.

    Raised by a writer's reopening of a ``.partial``; the run then starts it afresh.
    """


@dataclass(frozen=True)
class SubjectRecord:
    """A row of a patch output's subjects table."""

    id: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    source: dict[str, str]
    patch_start: int
    patch_count: int
    #: The subject's row in the run's whole manifest (None in files of format version 1).
    manifest_row: int | None = None
    #: Image name -> ``(shape, affine)`` of its grid before preprocessing (None without
    #: preprocessing): where ``aggregate --source-grid`` puts predictions back.
    source_grids: Mapping[str, SourceGrid] | None = None


#: When a skipped subject was found bad: before the run (from its headers), or by its worker.
SKIP_STAGES = ("plan", "run")


@dataclass(frozen=True)
class SkippedSubject:
    """A subject left out of an output by ``on_error: skip``, why, and when (``stage``)."""

    id: str
    manifest_row: int | None
    reason: str
    stage: str = "run"

    def describe(self) -> str:
        """``'s3' (manifest row 3): REASON``."""
        return f"{self.id!r} (manifest row {self.manifest_row}): {self.reason}"


class PatchWriter:
    """Base class of the HDF5 and NIfTI writers: keeps the subjects table.

    Attributes
    ----------
    subjects : list of SubjectRecord
        The subjects written (or being written), in order.
    skipped : list of SkippedSubject
        Subjects left out, recorded in the output when it is closed.
    holes : list of (int, int)
        ``(first row, count)`` of the rows that skipped subjects would have
        filled; the output is compacted over them when it is closed.
    """

    def __init__(self) -> None:
        self.subjects: list[SubjectRecord] = []
        self.skipped: list[SkippedSubject] = []
        self.holes: list[tuple[int, int]] = []

    @property
    def current(self) -> SubjectRecord:
        if not self.subjects:
            raise RuntimeError("begin_subject must come before write_block")
        return self.subjects[-1]

    def begin_subject(
        self,
        subject_id: str,
        affine: np.ndarray,
        spatial_shape: Sequence[int],
        sources: Mapping[str, str],
        patch_start: int,
        patch_count: int,
        manifest_row: int | None = None,
        source_grids: Mapping[str, SourceGrid] | None = None,
    ) -> None:
        """Start a subject whose patches are rows ``[patch_start, patch_start + patch_count)``."""
        self.subjects.append(
            SubjectRecord(
                id=subject_id,
                affine=np.asarray(affine, dtype=np.float64),
                shape=tuple(int(n) for n in spatial_shape),  # type: ignore[arg-type]
                source=dict(sources),
                patch_start=int(patch_start),
                patch_count=int(patch_count),
                manifest_row=None if manifest_row is None else int(manifest_row),
                source_grids=None if source_grids is None else dict(source_grids),
            )
        )

    def skip_subject(self, skipped: SkippedSubject, patch_start: int, patch_count: int) -> None:
        """Give up a subject whose rows are ``[patch_start, patch_start + patch_count)``,
        begun or not: it is dropped from the subjects and its rows from the output."""
        if self.subjects and (self.current.id, self.current.patch_start) == (
            skipped.id,
            patch_start,
        ):
            self.subjects.pop()
        self.skipped.append(skipped)
        if patch_count:
            self.holes.append((int(patch_start), int(patch_count)))

    def compacted_subjects(self) -> list[SubjectRecord]:
        """The subjects with the rows they have once the holes are closed."""
        compacted, start = [], 0
        for record in self.subjects:
            compacted.append(replace(record, patch_start=start))
            start += record.patch_count
        return compacted

    def skipped_in_manifest_order(self) -> list[SkippedSubject]:
        return sorted(self.skipped, key=lambda s: -1 if s.manifest_row is None else s.manifest_row)

    def write_block(
        self,
        row: int,
        arrays: Mapping[str, np.ndarray],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        """Write ``len(locations)`` patches of the current subject, starting at ``row``."""
        raise NotImplementedError

    def flush(self) -> None:
        """Hand every write so far to the operating system: a checkpoint."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError
