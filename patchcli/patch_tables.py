"""The in-memory tables of a :class:`~patchcli.dataset.PatchDataset`, and lookups on them.

A dataset reads one or several patch outputs (:mod:`patchcli.io.reader`) as one.
This module holds what it keeps in memory and works out without reading a patch:

- which images to read, and the checks that several outputs agree on them
  (:func:`select_images`, :func:`check_same_layout`, :func:`check_same_images`);
- the outputs' tables concatenated in order: the location and subject of each
  row, and one :class:`PatchSubject` per subject (:func:`concatenate_tables`);
- lookups on those tables: the rows of some subjects (:func:`indices_of_subjects`),
  whole subjects dealt to the ranks of a distributed run (:func:`subjects_of_rank`),
  the affine of each patch (:func:`patch_affines`).

Nothing here imports torch.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .io.reader import PatchOutput

#: Keys of an item besides the image names.
LOCATION_KEY = "location"
SUBJECT_KEY = "subject"


@dataclass(frozen=True, eq=False)
class PatchSubject:
    """One row of :attr:`PatchDataset.subjects`.

    Attributes
    ----------
    id : str
        The subject's identifier.
    shape : tuple of 3 ints
        Spatial shape of the source volume (before any grid padding).
    affine : numpy.ndarray
        (4, 4) float64 voxel-to-RAS affine of the source volume.
    source : dict
        Image name -> path of the source image it was cropped from.
    patch_start, patch_count : int
        The subject's patches are dataset indices
        ``[patch_start, patch_start + patch_count)``.
    file : pathlib.Path
        The patch file (or NIfTI folder) holding them.
    """

    id: str
    shape: tuple[int, int, int]
    affine: np.ndarray = field(repr=False)
    source: dict[str, str] = field(repr=False)
    patch_start: int
    patch_count: int
    file: Path


@dataclass(frozen=True, eq=False)
class PatchTables:
    """The tables of several patch outputs, concatenated in order.

    ``N`` is the number of patches (rows), ``M`` the number of subjects.

    Attributes
    ----------
    starts : numpy.ndarray
        (outputs + 1,) int64: output ``s`` holds rows ``[starts[s], starts[s + 1])``.
    locations : numpy.ndarray
        (N, 6) int64 location ``[i0, j0, k0, i1, j1, k1]`` of each row.
    subject_index : numpy.ndarray
        (N,) int64 position in :attr:`subjects` of each row's subject.
    subjects : tuple of PatchSubject
    subject_ids : numpy.ndarray
        (M,) str: the id of each subject.
    subject_affines : numpy.ndarray
        (M, 4, 4) float64: the affine of each subject.
    subject_padding : numpy.ndarray
        (M, 3) int64: the grid padding of the output holding each subject.
    copy_index : numpy.ndarray
        (N,) int64: the augmented copy of each row (0 in outputs without ``augment``).
    """

    starts: np.ndarray
    locations: np.ndarray
    subject_index: np.ndarray
    subjects: tuple[PatchSubject, ...]
    subject_ids: np.ndarray
    subject_affines: np.ndarray
    subject_padding: np.ndarray
    copy_index: np.ndarray


def concatenate_tables(sources: Sequence[PatchOutput]) -> PatchTables:
    """The tables of ``sources``, one after the other, rows and subjects renumbered.

    Parameters
    ----------
    sources : sequence of PatchOutput
        The outputs, in dataset order.

    Returns
    -------
    PatchTables
    """
    counts = [source.num_patches for source in sources]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    locations = _concatenate([s.locations for s in sources], (0, 6))
    subject_offsets = np.cumsum([0] + [len(s.subjects) for s in sources])
    subject_index = _concatenate(
        [s.subject_index + offset for s, offset in zip(sources, subject_offsets[:-1], strict=True)],
        (0,),
    )
    subjects = []
    paddings = []
    for source, start in zip(sources, starts[:-1], strict=True):
        for row in source.subjects:
            subjects.append(
                PatchSubject(
                    id=row.id,
                    shape=row.shape,
                    affine=row.affine,
                    source=row.source,
                    patch_start=int(start + row.patch_start),
                    patch_count=int(row.patch_count),
                    file=source.path,
                )
            )
            paddings.append(source.padding)
    return PatchTables(
        starts=starts,
        locations=locations,
        subject_index=subject_index,
        subjects=tuple(subjects),
        subject_ids=np.array([s.id for s in subjects], dtype=str),
        subject_affines=np.array([s.affine for s in subjects], dtype=np.float64).reshape(-1, 4, 4),
        subject_padding=np.array(paddings, dtype=np.int64).reshape(-1, 3),
        copy_index=_concatenate(
            [
                np.zeros(s.num_patches, np.int64) if s.copy_index is None else s.copy_index
                for s in sources
            ],
            (0,),
        ),
    )


def _concatenate(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    if not arrays:
        return np.zeros(empty_shape, dtype=np.int64)
    return np.ascontiguousarray(np.concatenate(arrays).astype(np.int64, copy=False))


# ------------------------------------------------------------------ images
def select_images(images: str | Sequence[str] | None, source: PatchOutput) -> list[str]:
    """The images to read, in file order, checked to exist in ``source``.

    Parameters
    ----------
    images : str, sequence of str or None
        Image names; None for all of them.
    source : PatchOutput
        The first output of the dataset.

    Returns
    -------
    list of str

    Raises
    ------
    DataError
        For an empty selection, an unknown name, or an image named like an
        item key (``location``, ``subject``).
    """
    if images is None:
        selected = list(source.images)
    else:
        requested = [images] if isinstance(images, str) else list(images)
        if not requested:
            raise DataError(f"{source.path}: images is empty; name at least one image")
        unknown = [name for name in requested if name not in source.images]
        if unknown:
            raise DataError(
                f"{source.path}: no image {unknown[0]!r}; available: {', '.join(source.images)}"
            )
        # File order, without duplicates.
        selected = [name for name in source.images if name in requested]
    reserved = [name for name in selected if name in (LOCATION_KEY, SUBJECT_KEY)]
    if reserved:
        raise DataError(
            f"{source.path}: image name {reserved[0]!r} clashes with the item key of the same "
            f"name; select other images"
        )
    return selected


def check_same_layout(first: PatchOutput, other: PatchOutput) -> None:
    """Raise a ``DataError`` unless both outputs hold the same images and patch size."""
    if other.images != first.images:
        raise DataError(
            f"{other.path}: images {other.images} differ from {first.path}'s {first.images}"
        )
    if other.patch_size != first.patch_size:
        raise DataError(
            f"{other.path}: patch size {other.patch_size} differs from {first.path}'s "
            f"{first.patch_size}"
        )


def check_same_images(first: PatchOutput, other: PatchOutput, images: list[str]) -> None:
    """Raise a ``DataError`` unless ``images`` have the same channels and dtype in both."""
    for name in images:
        if other.channels[name] != first.channels[name]:
            raise DataError(
                f"{other.path}: image {name!r} has {other.channels[name]} channels, "
                f"{first.path} has {first.channels[name]}"
            )
        if other.dtypes[name] != first.dtypes[name]:
            raise DataError(
                f"{other.path}: image {name!r} is {other.dtypes[name]}, "
                f"{first.path} has {first.dtypes[name]}"
            )


# ---------------------------------------------------------------- lookups
def indices_of_subjects(
    table: Sequence[PatchSubject],
    ids: np.ndarray,
    subjects: Iterable[str | int],
    where: str,
) -> np.ndarray:
    """Dataset indices of the patches of some subjects, in increasing order.

    Parameters
    ----------
    table : sequence of PatchSubject
        All subjects of the dataset.
    ids : numpy.ndarray
        Their ids, as an array of str (``ids[i] == table[i].id``).
    subjects : iterable of str or int
        Subject ids, or positions in ``table``. An id present several times
        selects all of them.
    where : str
        What the dataset reads (a path, or a count of files), named in errors.

    Returns
    -------
    numpy.ndarray of int64

    Raises
    ------
    DataError
        For an id not in ``ids``.
    IndexError
        For a position outside ``table``.

    Examples
    --------
    >>> table = [
    ...     PatchSubject("a", (9, 9, 9), np.eye(4), {}, 0, 2, Path("p.h5")),
    ...     PatchSubject("b", (9, 9, 9), np.eye(4), {}, 2, 3, Path("p.h5")),
    ... ]
    >>> indices_of_subjects(table, np.array(["a", "b"]), ["b", 0], "p.h5").tolist()
    [0, 1, 2, 3, 4]
    """
    positions: set[int] = set()
    for subject in subjects:
        if isinstance(subject, str):
            found = np.flatnonzero(ids == subject)
            if len(found) == 0:
                raise DataError(f"{where}: no subject {subject!r}")
            positions.update(int(p) for p in found)
        else:
            position = operator.index(subject)
            if not 0 <= position < len(table):
                raise IndexError(
                    f"subject position {position} out of range for {len(table)} subjects"
                )
            positions.add(position)
    if not positions:
        return np.zeros(0, dtype=np.int64)
    ranges = [
        np.arange(s.patch_start, s.patch_start + s.patch_count, dtype=np.int64)
        for s in (table[p] for p in sorted(positions))
    ]
    return np.sort(np.concatenate(ranges))


def subjects_of_rank(counts: Sequence[int], num_replicas: int, rank: int) -> list[int]:
    """Positions of the subjects one of ``num_replicas`` ranks gets, each subject whole.

    Subjects are dealt largest first to the rank with the fewest patches so
    far, so ranks get about the same number of patches. The deal is the same
    on every rank (no randomness).

    Parameters
    ----------
    counts : sequence of int
        The number of patches of each subject.
    num_replicas : int
        Number of ranks.
    rank : int
        The rank, in ``[0, num_replicas)``.

    Returns
    -------
    list of int
        Positions in ``counts``, in the order they were dealt.

    Examples
    --------
    >>> subjects_of_rank([4, 3, 2, 1, 4], 2, 0), subjects_of_rank([4, 3, 2, 1, 4], 2, 1)
    ([0, 1], [4, 2, 3])
    """
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} must be in [0, {num_replicas})")
    patches = np.array(counts, dtype=np.int64)
    # Stable order: largest first, ties by subject position.
    order = np.argsort(-patches, kind="stable")
    loads = np.zeros(num_replicas, dtype=np.int64)
    mine = []
    for position in order:
        target = int(np.argmin(loads))
        loads[target] += patches[position]
        if target == rank:
            mine.append(int(position))
    return mine


def patch_affines(affines: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(B, 4, 4) patch affines: translation moved to each patch's first voxel.

    Parameters
    ----------
    affines : numpy.ndarray
        (B, 4, 4) affines of the patches' subjects.
    starts : numpy.ndarray
        (B, 3) first voxel of each patch, in the subject's (unpadded) voxels.

    Returns
    -------
    numpy.ndarray
        (B, 4, 4) float64.

    Examples
    --------
    >>> affine = np.diag([2.0, 2.0, 2.0, 1.0])
    >>> patch_affines(affine[None], np.array([[1, 0, 3]]))[0, :3, 3].tolist()
    [2.0, 0.0, 6.0]
    """
    result = np.array(affines, dtype=np.float64, copy=True)
    result[:, :3, 3] = np.einsum("bij,bj->bi", affines[:, :3, :3], starts.astype(np.float64))
    result[:, :3, 3] += affines[:, :3, 3]
    return result
