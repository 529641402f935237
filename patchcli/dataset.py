"""Train from pre-extracted patches: a ``torch.utils.data.Dataset`` over patchcli outputs.

:class:`PatchDataset` reads an HDF5 patch file, several of them (shards,
concatenated in order) or a NIfTI output folder. Item ``i`` is shaped like an
element of a TorchIO batch, so training loops written for ``tio.Queue`` port
unchanged::

    {
        "t1": {"data": tensor (C, X, Y, Z), "affine": float64 tensor (4, 4)},
        "seg": {"data": ..., "affine": ...},
        "location": int64 tensor (6,),      # [i0, j0, k0, i1, j1, k1]
        "subject": "sub-01",
    }

Reading is built for ``DataLoader`` workers:

- Files are read through patchcli's own reader of the layout
  (:mod:`patchcli.io.reader`): HDF5 files are opened lazily, once per
  process, and kept open; a process that finds handles opened by its parent
  (after a fork) opens its own and never touches the inherited ones.
  Pickling (``spawn``) drops the handles. A virtual merge (``patchcli
  merge``) is read from its shards directly, after checking they are there.
- Files are opened with ``locking=False``: NFS and Lustre often refuse HDF5's
  file locks, and reading does not need them.
- Only the small tables (locations, subject of each row, subjects) live in
  memory; patches are read on demand, each into a freshly allocated array
  (one HDF5 chunk per patch, so one random read touches one chunk).
- A whole batch can be read in one call (``dataset[list_of_indices]``,
  :class:`PatchBatchSampler`, :meth:`PatchDataset.batches`): indices are
  sorted for locality, runs of consecutive rows are read with one call, and
  the result comes back in the requested order, already collated.

Nothing in the reader is random. A transform that needs random numbers should
not use a ``numpy.random.Generator`` created in ``__init__``: the DataLoader
copies it into every worker, which then all draw the same numbers. Use
:func:`worker_generator`, seeded from the worker's own seed.

The samplers (:mod:`patchcli.batching`) and the DataLoader helpers
(:mod:`patchcli.dataloader`) can be imported from here too, as can
:class:`PatchSubject` (:mod:`patchcli.patch_tables`). This module,
``batching`` and ``dataloader`` are the only patchcli modules that import torch.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .batching import PatchBatchSampler, PatchSampler
from .dataloader import collate_patches, worker_generator
from .errors import DataError
from .io.reader import HandleCache, PatchOutput, read_patch_output
from .patch_tables import (
    LOCATION_KEY,
    SUBJECT_KEY,
    PatchSubject,
    check_same_images,
    check_same_layout,
    concatenate_tables,
    indices_of_subjects,
    patch_affines,
    select_images,
    subjects_of_rank,
)

__all__ = [
    "PatchBatchSampler",
    "PatchDataset",
    "PatchSampler",
    "PatchSubject",
    "collate_patches",
    "worker_generator",
]

PathLike = str | os.PathLike


class PatchDataset(Dataset):
    """A map-style dataset of pre-extracted patches, one TorchIO-like dict per patch.

    Parameters
    ----------
    path : path or sequence of paths
        An HDF5 patch file, a NIfTI output folder (holding ``patches.csv`` and
        ``patchcli.yaml``), or a list of them, concatenated in order (their
        subjects tables too). All must hold the same images and patch size.
    images : str or sequence of str, optional
        Images to read, by name; default all. Others are never read.
    transform : callable, optional
        Applied to each item dict (``dict -> dict``), e.g. a TorchIO or MONAI
        dictionary transform. On the batched path it is applied to each item
        before they are collated.
    allow_external : bool
        Accept files whose patches are external links or virtual datasets
        reading from outside their own folder (refused by default: such a
        file reads whatever lies at the place it names).

    Attributes
    ----------
    paths : list of Path
    images : list of str
        The images read, in file order.
    available_images : list of str
        All images in the files.
    image_types : dict
        Image name -> ``"intensity"``, ``"label"`` or ``"sampling_map"``.
    patch_size : tuple of 3 ints
    subjects : tuple of PatchSubject
    transform : callable or None

    Notes
    -----
    Tensors keep the stored dtype (a uint8 patch gives a uint8 tensor). The
    affine of a patch is its subject's affine with the translation moved to
    the patch's first voxel (grid padding removed), in float64.

    For the fastest reading see ``docs/reader.md``: in-process, read whole
    batches (:meth:`batches` or ``dataset[indices]``); with DataLoader
    workers, give the DataLoader ``batch_size=None`` and a
    :class:`PatchBatchSampler` as ``sampler``.

    Examples
    --------
    ``patches_h5`` is a file written by ``patchcli uniform`` (16 patches of 8^3).

    >>> from torch.utils.data import DataLoader
    >>> dataset = PatchDataset(patches_h5, images=["t1", "seg"])
    >>> loader = DataLoader(dataset, batch_size=4, num_workers=0)
    >>> batch = next(iter(loader))
    >>> batch["t1"]["data"].shape
    torch.Size([4, 1, 8, 8, 8])
    """

    def __init__(
        self,
        path: PathLike | Sequence[PathLike],
        images: str | Sequence[str] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        allow_external: bool = False,
    ) -> None:
        self._handles = HandleCache()
        self.paths, self._sources, self.images = _read_outputs(path, images, allow_external)
        first = self._sources[0]
        self.available_images = list(first.images)
        self.image_types = dict(zip(first.images, first.image_types, strict=True))
        self.patch_size: tuple[int, int, int] = first.patch_size
        self.transform = transform
        self._channels = {name: first.channels[name] for name in self.images}
        self._dtypes = {name: first.dtypes[name] for name in self.images}
        # The small in-memory tables, concatenated over sources.
        tables = concatenate_tables(self._sources)
        self.subjects: tuple[PatchSubject, ...] = tables.subjects
        self._starts = tables.starts
        self._locations = tables.locations
        self._subject_index = tables.subject_index
        self._subject_ids = tables.subject_ids
        self._subject_affines = tables.subject_affines
        self._subject_padding = tables.subject_padding
        self._copy_index = tables.copy_index

    @property
    def max_open_files(self) -> int:
        """HDF5 files kept open at once per process (least recently used closed first).

        Half the process's file descriptor limit (``ulimit -n``), at most 4096.
        """
        return self._handles.max_open

    @max_open_files.setter
    def max_open_files(self, value: int) -> None:
        self._handles.max_open = int(value)

    # ------------------------------------------------------------------ tables
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def locations(self) -> np.ndarray:
        """(N, 6) int64 locations ``[i0, j0, k0, i1, j1, k1]`` of all patches (read-only)."""
        return _read_only(self._locations)

    @property
    def subject_index(self) -> np.ndarray:
        """(N,) int64: position in :attr:`subjects` of each patch's subject (read-only)."""
        return _read_only(self._subject_index)

    @property
    def copy_index(self) -> np.ndarray:
        """(N,) int64: the augmented copy of each patch's subject (``augment``; 0 in
        outputs without it) (read-only)."""
        return _read_only(self._copy_index)

    def indices_of_subjects(self, subjects: Iterable[str | int]) -> np.ndarray:
        """Dataset indices of the patches of some subjects, in increasing order.

        Parameters
        ----------
        subjects : iterable of str or int
            Subject ids, or positions in :attr:`subjects`. An id present in
            several files selects all of them.

        Returns
        -------
        numpy.ndarray of int64

        Examples
        --------
        >>> from torch.utils.data import Subset
        >>> dataset = PatchDataset(patches_h5)
        >>> held_out = dataset.indices_of_subjects(["sub-002"])
        >>> validation = Subset(dataset, held_out)
        >>> len(validation), {validation[i]["subject"] for i in range(len(validation))}
        (8, {'sub-002'})
        """
        where = _describe_paths(self.paths)
        return indices_of_subjects(self.subjects, self._subject_ids, subjects, where)

    def split_by_subject(self, num_replicas: int, rank: int) -> np.ndarray:
        """Indices of the patches of the subjects given to one of ``num_replicas`` ranks.

        Each subject goes whole to one rank; subjects are dealt largest first
        to the rank with the fewest patches so far, so ranks get about the same
        number of patches. The split is the same on every rank (no randomness).

        Parameters
        ----------
        num_replicas : int
            Number of ranks (processes) in the distributed run.
        rank : int
            This rank, in ``[0, num_replicas)``.

        Returns
        -------
        numpy.ndarray of int64
            Increasing dataset indices; wrap them in ``torch.utils.data.Subset``
            or give them to :class:`PatchBatchSampler` as ``indices``. Ranks may
            get slightly different counts: use ``drop_last`` or an equal number
            of steps per epoch where collectives need the same batch count.
        """
        counts = [s.patch_count for s in self.subjects]
        return self.indices_of_subjects(subjects_of_rank(counts, num_replicas, rank))

    # ----------------------------------------------------------------- reading
    def __getitem__(self, key: Any) -> dict[str, Any]:
        """One item for an integer index; a collated batch for a list, array or slice."""
        if _is_batch_key(key):
            return self.read_batch(key)
        index = _check_index(key, len(self))
        arrays = self._read_arrays(np.array([index], dtype=np.int64))
        item = self._make_item(index, {name: torch.from_numpy(a[0]) for name, a in arrays.items()})
        return self.transform(item) if self.transform is not None else item

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Items of several indices, read together (used by ``DataLoader`` with a batch size).

        The patches are read as one batch, sorted by index; the items come back
        in the requested order, each a view of the batch, for the DataLoader's
        ``collate_fn``.
        """
        rows = _check_indices(indices, len(self))
        # Each item's patches are views of the batch, for collate_patches to hand over.
        batch = {name: torch.from_numpy(array) for name, array in self._read_arrays(rows).items()}
        items = [
            self._make_item(int(row), {name: tensor[position] for name, tensor in batch.items()})
            for position, row in enumerate(rows)
        ]
        if self.transform is not None:
            items = [self.transform(item) for item in items]
        return items

    def read_batch(self, indices: Any) -> dict[str, Any]:
        """A collated batch of patches, read in one pass; same as ``dataset[indices]``.

        Parameters
        ----------
        indices : sequence of int, 1-D integer array or tensor, or slice

        Returns
        -------
        dict
            ``{<image>: {'data': (B, C, X, Y, Z), 'affine': float64 (B, 4, 4)},
            'location': int64 (B, 6), 'subject': list of B ids}``, in the
            requested order: what ``default_collate`` makes of the items.
            With a transform, each item is transformed and the results are
            collated with ``torch.utils.data.default_collate``.
        """
        rows = _check_indices(indices, len(self))
        if self.transform is not None:
            return default_collate(self.__getitems__(rows))
        data = {name: torch.from_numpy(array) for name, array in self._read_arrays(rows).items()}
        subjects = self._subject_index[rows]
        affines = patch_affines(
            self._subject_affines[subjects],
            self._locations[rows, :3] - self._subject_padding[subjects],
        )
        ids = [str(self._subject_ids[s]) for s in subjects]
        return _item(data, affines, self._locations[rows], ids)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Iterate over the dataset in collated batches, in this process.

        The fastest way to read without DataLoader workers. Each batch is read
        with :meth:`read_batch`.

        Parameters
        ----------
        batch_size : int
        shuffle : bool
            Visit the patches in a random order.
        seed : int, optional
            Seed of the shuffle (see :class:`PatchBatchSampler`).
        drop_last : bool
            Skip a last, smaller batch.

        Examples
        --------
        >>> dataset = PatchDataset(patches_h5)
        >>> for batch in dataset.batches(8, shuffle=True, seed=0):
        ...     inputs = batch["t1"]["data"].float()
        >>> inputs.shape
        torch.Size([8, 1, 8, 8, 8])
        """
        for indices in PatchBatchSampler(self, batch_size, shuffle, seed, drop_last):
            yield self.read_batch(indices)

    # ------------------------------------------------------------ file handles
    def close(self) -> None:
        """Close the files this process opened. Reading again reopens them."""
        handles = getattr(self, "_handles", None)
        if handles is not None:
            handles.close()

    def __enter__(self) -> PatchDataset:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser (e.g. at interpreter exit)
            pass

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({_files_argument(self.paths)}, patches={len(self)}, "
            f"subjects={len(self.subjects)}, images={self.images}, patch_size={self.patch_size})"
        )

    # ---------------------------------------------------------------- helpers
    def _make_item(self, index: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        subject = int(self._subject_index[index])
        location = self._locations[index]
        affine = patch_affines(
            self._subject_affines[subject][None],
            (location[:3] - self._subject_padding[subject])[None],
        )[0]
        return _item(data, affine, location.copy(), str(self._subject_ids[subject]))

    def _read_arrays(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Read ``rows`` of every selected image into (B, C, X, Y, Z) arrays, in ``rows`` order."""
        runs = _read_runs(rows, self._starts)
        arrays = {}
        # Image by image, so that the reads of one image (one HDF5 dataset) follow each other.
        for name in self.images:
            shape = (len(rows), self._channels[name], *self.patch_size)
            arrays[name] = np.empty(shape, self._dtypes[name])
            for source, first_row, position, count in runs:
                out = arrays[name][position : position + count]
                self._sources[source].read_rows(name, first_row, count, out, self._handles)
        return arrays


def _read_outputs(
    path: PathLike | Sequence[PathLike], images: str | Sequence[str] | None, allow_external: bool
) -> tuple[list[Path], list[PatchOutput], list[str]]:
    """The paths, outputs and selected images of a dataset, checked to agree with each other.

    Raises
    ------
    DataError
        For no path, an output that cannot be read, outputs that differ in
        images, patch size, channels or dtypes, a bad image selection, or a
        dtype torch cannot hold.
    """
    if isinstance(path, (str, os.PathLike)):
        paths = [Path(path)]
    else:
        paths = [Path(item) for item in path]
    if not paths:
        raise DataError("PatchDataset: no patch file given")
    sources = [read_patch_output(item, allow_external=allow_external) for item in paths]
    first = sources[0]
    for source in sources[1:]:
        check_same_layout(first, source)
    selected = select_images(images, first)
    for source in sources:
        source.complete_image_info(selected)
    for source in sources[1:]:
        check_same_images(first, source, selected)
    for name in selected:
        _torch_dtype(first.dtypes[name], name, first.path)
    return paths, sources, selected


def _torch_dtype(dtype: np.dtype, name: str, path: Path) -> torch.dtype:
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    except TypeError:
        raise DataError(
            f"{path}: image {name!r} has dtype {dtype}, which torch cannot hold"
        ) from None


def _check_index(key: Any, size: int) -> int:
    """``key`` as an index in ``[0, size)``, negative ones counting from the end."""
    try:
        index = operator.index(key)
    except TypeError:
        raise TypeError(
            f"PatchDataset indices must be integers, sequences of integers or slices, "
            f"not {type(key).__name__}"
        ) from None
    if index < 0:
        index += size
    if not 0 <= index < size:
        raise IndexError(f"patch index {key} out of range for {size} patches")
    return index


def _check_indices(indices: Any, size: int) -> np.ndarray:
    """Batch ``indices`` (sequence, array, tensor or slice) as int64 rows in ``[0, size)``."""
    if isinstance(indices, slice):
        return np.arange(size, dtype=np.int64)[indices]
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    rows = np.asarray(indices)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(
            f"batch indices must be a 1-D sequence of integers, not {rows.dtype} of shape "
            f"{rows.shape}"
        )
    rows = rows.astype(np.int64)
    bad = (rows < -size) | (rows >= size)
    if bad.any():
        raise IndexError(f"patch index {int(rows[bad][0])} out of range for {size} patches")
    return np.where(rows < 0, rows + size, rows)


def _read_runs(rows: np.ndarray, starts: np.ndarray) -> list[tuple[int, int, int, int]]:
    """How to read dataset ``rows`` into a batch, with one call per run of rows.

    A run is consecutive rows of one source that land on consecutive batch
    positions; runs come in file order (sorted by row).

    Parameters
    ----------
    rows : numpy.ndarray
        (B,) int64 dataset rows, in batch order; repeats allowed.
    starts : numpy.ndarray
        int64: source ``s`` holds dataset rows ``[starts[s], starts[s + 1])``.

    Returns
    -------
    list of (source, first row in the source, first batch position, count)

    Examples
    --------
    >>> _read_runs(np.array([5, 2, 3, 9]), np.array([0, 4, 12]))
    [(0, 2, 1, 2), (1, 1, 0, 1), (1, 5, 3, 1)]
    """
    if len(rows) == 0:
        return []
    if len(rows) == 1:  # a single item: nothing to sort or join
        source = int(np.searchsorted(starts, rows[0], side="right") - 1) if len(starts) > 2 else 0
        return [(source, int(rows[0] - starts[source]), 0, 1)]
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    source_of = np.searchsorted(starts, ordered, side="right") - 1
    breaks = (np.diff(ordered) != 1) | (np.diff(order) != 1) | (np.diff(source_of) != 0)
    run_starts = np.concatenate([[0], np.flatnonzero(breaks) + 1, [len(rows)]]).tolist()
    return [
        (
            int(source_of[begin]),
            int(ordered[begin] - starts[source_of[begin]]),
            int(order[begin]),
            end - begin,
        )
        for begin, end in zip(run_starts[:-1], run_starts[1:], strict=True)
    ]


def _is_batch_key(key: Any) -> bool:
    """Whether ``dataset[key]`` asks for a batch: a slice, a sequence or a 1-D array or tensor."""
    return isinstance(key, (slice, list, tuple, np.ndarray)) or (
        isinstance(key, torch.Tensor) and key.ndim == 1
    )


def _item(
    data: dict[str, torch.Tensor], affine: np.ndarray, location: np.ndarray, subject: Any
) -> dict[str, Any]:
    """An item (or a collated batch): each image with its own copy of the affine(s)."""
    item: dict[str, Any] = {
        name: {"data": tensor, "affine": torch.from_numpy(affine.copy())}
        for name, tensor in data.items()
    }
    item[LOCATION_KEY] = torch.from_numpy(location)
    item[SUBJECT_KEY] = subject
    return item


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _describe_paths(paths: list[Path]) -> str:
    """The file a dataset reads, or how many, to name them in an error."""
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} patch files"


def _files_argument(paths: list[Path]) -> str:
    """How :meth:`PatchDataset.__repr__` names its files: all of one, or the first three."""
    if len(paths) == 1:
        return f"file='{paths[0]}'"
    shown = [str(p) for p in paths[:3]]
    more = f", ... +{len(paths) - 3} more" if len(paths) > 3 else ""
    return f"files=[{', '.join(repr(s) for s in shown)}{more}]"
