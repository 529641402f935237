"""What every patch writer shares: the subjects table and the order of calls.

A run calls ``begin_subject`` once per subject, then ``write_block`` for each
block of that subject's patches, ``flush`` once the subject is complete (a
checkpoint a resumed run can start from), and finally ``close`` (or ``abort``
on error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


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


class PatchWriter:
    """Base class of the HDF5 and NIfTI writers: keeps the subjects table."""

    def __init__(self) -> None:
        self.subjects: list[SubjectRecord] = []

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
            )
        )

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
