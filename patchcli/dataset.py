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

This is the only patchcli module that imports torch.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info

from .errors import DataError
from .io.reader import HandleCache, PatchOutput, read_patch_output

__all__ = [
    "PatchBatchSampler",
    "PatchDataset",
    "PatchSampler",
    "PatchSubject",
    "collate_patches",
    "worker_generator",
]

#: Keys of an item besides the image names.
LOCATION_KEY = "location"
SUBJECT_KEY = "subject"

PathLike = str | os.PathLike


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
        if isinstance(path, (str, os.PathLike)):
            paths = [Path(path)]
        else:
            paths = [Path(item) for item in path]
        if not paths:
            raise DataError("PatchDataset: no patch file given")
        sources = [read_patch_output(item, allow_external=allow_external) for item in paths]
        first = sources[0]
        for source in sources[1:]:
            _check_same_layout(first, source)
        self.paths = paths
        self.available_images = list(first.images)
        self.image_types = dict(zip(first.images, first.image_types, strict=True))
        self.patch_size: tuple[int, int, int] = first.patch_size
        self.images = _select_images(images, first)
        for source in sources:
            source.complete_image_info(self.images)
        for source in sources[1:]:
            _check_same_images(first, source, self.images)
        self.transform = transform
        self._sources = sources
        self._channels = {name: first.channels[name] for name in self.images}
        self._dtypes = {name: first.dtypes[name] for name in self.images}
        for name, dtype in self._dtypes.items():
            _torch_dtype(dtype, name, first.path)

        # The small in-memory tables, concatenated over sources.
        counts = [source.num_patches for source in sources]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._locations = _concatenate([s.locations for s in sources], (0, 6))
        subject_offsets = np.cumsum([0] + [len(s.subjects) for s in sources])
        self._subject_index = _concatenate(
            [
                s.subject_index + offset
                for s, offset in zip(sources, subject_offsets[:-1], strict=True)
            ],
            (0,),
        )
        subjects = []
        paddings = []
        for source, start in zip(sources, self._starts[:-1], strict=True):
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
        self.subjects: tuple[PatchSubject, ...] = tuple(subjects)
        self._subject_ids = np.array([s.id for s in subjects], dtype=str)
        self._subject_affines = np.array([s.affine for s in subjects], dtype=np.float64).reshape(
            -1, 4, 4
        )
        self._subject_padding = np.array(paddings, dtype=np.int64).reshape(-1, 3)

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
        view = self._locations.view()
        view.flags.writeable = False
        return view

    @property
    def subject_index(self) -> np.ndarray:
        """(N,) int64: position in :attr:`subjects` of each patch's subject (read-only)."""
        view = self._subject_index.view()
        view.flags.writeable = False
        return view

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
        positions: set[int] = set()
        for subject in subjects:
            if isinstance(subject, str):
                found = np.flatnonzero(self._subject_ids == subject)
                if len(found) == 0:
                    raise DataError(f"{self._describe_paths()}: no subject {subject!r}")
                positions.update(int(p) for p in found)
            else:
                position = operator.index(subject)
                if not 0 <= position < len(self.subjects):
                    raise IndexError(
                        f"subject position {position} out of range for "
                        f"{len(self.subjects)} subjects"
                    )
                positions.add(position)
        if not positions:
            return np.zeros(0, dtype=np.int64)
        ranges = [
            np.arange(s.patch_start, s.patch_start + s.patch_count, dtype=np.int64)
            for s in (self.subjects[p] for p in sorted(positions))
        ]
        return np.sort(np.concatenate(ranges))

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
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, {num_replicas})")
        counts = np.array([s.patch_count for s in self.subjects], dtype=np.int64)
        # Stable order: largest first, ties by subject position.
        order = np.argsort(-counts, kind="stable")
        loads = np.zeros(num_replicas, dtype=np.int64)
        mine = []
        for position in order:
            target = int(np.argmin(loads))
            loads[target] += counts[position]
            if target == rank:
                mine.append(int(position))
        return self.indices_of_subjects(mine)

    # ----------------------------------------------------------------- reading
    def __getitem__(self, key: Any) -> dict[str, Any]:
        """One item for an integer index; a collated batch for a list, array or slice."""
        if isinstance(key, (slice, list, tuple, np.ndarray)) or (
            isinstance(key, torch.Tensor) and key.ndim == 1
        ):
            return self.read_batch(key)
        index = self._check_index(key)
        arrays = {}
        for name in self.images:
            array = np.empty((1, self._channels[name], *self.patch_size), self._dtypes[name])
            self._read_rows(index, 1, name, array)
            arrays[name] = torch.from_numpy(array[0])
        item = self._make_item(index, arrays)
        return self.transform(item) if self.transform is not None else item

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Items of several indices, read together (used by ``DataLoader`` with a batch size).

        The patches are read as one batch, sorted by index; the items come back
        in the requested order, each a view of the batch, for the DataLoader's
        ``collate_fn``.
        """
        rows = self._check_indices(indices)
        arrays = self._read_batch_arrays(rows)
        items = [
            self._make_item(int(row), {name: tensor[position] for name, tensor in arrays.items()})
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
        rows = self._check_indices(indices)
        if self.transform is not None:
            return default_collate(self.__getitems__(rows))
        arrays = self._read_batch_arrays(rows)
        subjects = self._subject_index[rows]
        affines = _patch_affines(
            self._subject_affines[subjects],
            self._locations[rows, :3] - self._subject_padding[subjects],
        )
        batch: dict[str, Any] = {}
        for name, tensor in arrays.items():
            batch[name] = {"data": tensor, "affine": torch.from_numpy(affines.copy())}
        batch[LOCATION_KEY] = torch.from_numpy(self._locations[rows])
        batch[SUBJECT_KEY] = [str(self._subject_ids[s]) for s in subjects]
        return batch

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
        sampler = PatchBatchSampler(
            self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        for indices in sampler:
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
        if len(self.paths) == 1:
            where = f"file='{self.paths[0]}'"
        else:
            shown = [str(p) for p in self.paths[:3]]
            more = f", ... +{len(self.paths) - 3} more" if len(self.paths) > 3 else ""
            where = f"files=[{', '.join(repr(s) for s in shown)}{more}]"
        return (
            f"{type(self).__name__}({where}, patches={len(self)}, subjects={len(self.subjects)}, "
            f"images={self.images}, patch_size={self.patch_size})"
        )

    # ---------------------------------------------------------------- helpers
    def _describe_paths(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} patch files"

    def _check_index(self, key: Any) -> int:
        try:
            index = operator.index(key)
        except TypeError:
            raise TypeError(
                f"PatchDataset indices must be integers, sequences of integers or slices, "
                f"not {type(key).__name__}"
            ) from None
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"patch index {key} out of range for {size} patches")
        return index

    def _check_indices(self, indices: Any) -> np.ndarray:
        size = len(self)
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

    def _make_item(self, index: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        subject = int(self._subject_index[index])
        location = self._locations[index]
        affine = _patch_affines(
            self._subject_affines[subject][None],
            (location[:3] - self._subject_padding[subject])[None],
        )[0]
        item: dict[str, Any] = {
            name: {"data": tensor, "affine": torch.from_numpy(affine.copy())}
            for name, tensor in data.items()
        }
        item[LOCATION_KEY] = torch.from_numpy(location.copy())
        item[SUBJECT_KEY] = str(self._subject_ids[subject])
        return item

    def _read_batch_arrays(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Read ``rows`` of every selected image into (B, C, X, Y, Z) tensors, in ``rows`` order."""
        count = len(rows)
        outputs = {
            name: np.empty((count, self._channels[name], *self.patch_size), self._dtypes[name])
            for name in self.images
        }
        if count:
            # Read in file order, image by image; a run of consecutive rows that
            # also lands on consecutive output positions is one read.
            order = np.argsort(rows, kind="stable")
            ordered = rows[order]
            source_of = np.searchsorted(self._starts, ordered, side="right") - 1
            breaks = (np.diff(ordered) != 1) | (np.diff(order) != 1) | (np.diff(source_of) != 0)
            run_starts = np.concatenate([[0], np.flatnonzero(breaks) + 1, [count]]).tolist()
            runs = [
                (int(ordered[begin]), int(order[begin]), end - begin)
                for begin, end in zip(run_starts[:-1], run_starts[1:], strict=True)
            ]
            for name, array in outputs.items():
                for first_row, position, length in runs:
                    self._read_rows(first_row, length, name, array[position : position + length])
        return {name: torch.from_numpy(array) for name, array in outputs.items()}

    def _read_rows(self, row: int, count: int, name: str, out: np.ndarray) -> None:
        """Read ``count`` consecutive patches of one source, from dataset ``row``, into ``out``."""
        if len(self._sources) == 1:
            number = 0
        else:
            number = int(np.searchsorted(self._starts, row, side="right") - 1)
        local = row - int(self._starts[number])
        self._sources[number].read_rows(name, local, count, out, self._handles)


class PatchBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, for reading whole batches at once.

    Give it to a DataLoader as ``sampler`` with ``batch_size=None``: each
    worker then reads a whole batch in one :meth:`PatchDataset.read_batch`
    call, already collated (no ``collate_fn`` work).

    Parameters
    ----------
    data_source : sized or int
        The dataset (or its length).
    batch_size : int
    shuffle : bool
        A new random order each pass.
    seed : int, optional
        With ``shuffle``: pass ``e`` uses ``numpy.random.default_rng([seed, e])``,
        so runs are reproducible. Without a seed, each pass draws one from
        torch's generator (so ``torch.manual_seed`` makes it reproducible).
    drop_last : bool
        Skip a last, smaller batch.
    indices : sequence of int, optional
        Sample only these dataset indices (e.g. :meth:`PatchDataset.split_by_subject`).
    patches_per_subject : int, optional
        Fresh patches every pass: from a dataset that stores a pool of patches
        per subject (say 4 times what a pass needs), each pass draws exactly
        this many of each subject's patches, a new draw per pass (the same for
        the same seed and pass). ``data_source`` must then be a
        :class:`PatchDataset`; a subject storing fewer is an error.

    Notes
    -----
    The pass counter starts at 0 and advances at each ``iter()``;
    :meth:`set_epoch` sets it, as with ``DistributedSampler``. For a
    distributed run, either give each rank ``indices=dataset.split_by_subject(world, rank)``
    or use ``torch.utils.data.BatchSampler(DistributedSampler(dataset), batch_size, drop_last)``
    as the ``sampler``: both yield lists of indices.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> dataset = PatchDataset(patches_h5)
    >>> sampler = PatchBatchSampler(dataset, 8, shuffle=True, seed=0)
    >>> loader = DataLoader(dataset, None, sampler=sampler, num_workers=0)
    >>> [batch["location"].shape for batch in loader]
    [torch.Size([8, 6]), torch.Size([8, 6])]
    >>> list(PatchBatchSampler(5, 2))
    [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
        patches_per_subject: int | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.order = PassOrder(data_source, shuffle, seed, indices, patches_per_subject)
        self.batch_size = batch_size
        self.drop_last = drop_last

    @property
    def epoch(self) -> int:
        return self.order.epoch

    @property
    def indices(self) -> np.ndarray:
        """The dataset indices this sampler draws from."""
        return self.order.indices

    @property
    def shuffle(self) -> bool:
        return self.order.shuffle

    @property
    def seed(self) -> int | None:
        return self.order.seed

    def set_epoch(self, epoch: int) -> None:
        """Use pass number ``epoch`` for the next iteration's order (and draw)."""
        self.order.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.order.length // self.batch_size
        return -(-self.order.length // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order.next_pass()
        stop = len(self) * self.batch_size
        for begin in range(0, min(stop, len(order)), self.batch_size):
            yield order[begin : begin + self.batch_size].tolist()


class PatchSampler(Sampler[int]):
    """Dataset indices one by one, for a plain ``DataLoader(batch_size=B)``.

    The same options as :class:`PatchBatchSampler` (``shuffle``, ``seed``,
    ``indices``, ``patches_per_subject``) and the same order, item by item.

    Examples
    --------
    >>> dataset = PatchDataset(patches_h5)
    >>> sampler = PatchSampler(dataset, shuffle=True, seed=0, patches_per_subject=2)
    >>> len(dataset.subjects), len(sampler), len(set(sampler))
    (2, 4, 4)
    """

    def __init__(
        self,
        data_source: Sized | int,
        shuffle: bool = False,
        seed: int | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        patches_per_subject: int | None = None,
    ) -> None:
        self.order = PassOrder(data_source, shuffle, seed, indices, patches_per_subject)

    def set_epoch(self, epoch: int) -> None:
        """Use pass number ``epoch`` for the next iteration's order (and draw)."""
        self.order.epoch = int(epoch)

    def __len__(self) -> int:
        return self.order.length

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.next_pass().tolist())


class PassOrder:
    """The indices of each pass of a sampler: a draw per subject, then an order.

    Pass ``e`` with a seed draws from ``numpy.random.default_rng([seed, e])``:
    first each subject's ``patches_per_subject`` patches (when given), then
    the order (with ``shuffle``). Without a seed, each pass takes a seed from
    torch's generator.
    """

    def __init__(self, data_source, shuffle, seed, indices, patches_per_subject) -> None:
        size = data_source if isinstance(data_source, int) else len(data_source)
        if indices is None:
            self.indices = np.arange(size, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.per_subject = patches_per_subject
        self.groups: list[np.ndarray] = []
        if patches_per_subject is not None:
            self.groups = _subject_groups(data_source, self.indices, patches_per_subject)

    @property
    def length(self) -> int:
        if self.per_subject is None:
            return len(self.indices)
        return len(self.groups) * self.per_subject

    def next_pass(self) -> np.ndarray:
        needs_random = self.shuffle or self.per_subject is not None
        rng = None
        if needs_random:
            if self.seed is None:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                rng = np.random.default_rng(seed)
            else:
                rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = self.indices
        if self.per_subject is not None:
            drawn = [rng.choice(group, self.per_subject, replace=False) for group in self.groups]
            order = np.sort(np.concatenate(drawn)) if drawn else order[:0]
        if self.shuffle:
            order = rng.permutation(order)
        return order


def _subject_groups(data_source, indices: np.ndarray, per_subject: int) -> list[np.ndarray]:
    """The indices of each subject among ``indices``, checked to hold ``per_subject``."""
    if isinstance(per_subject, bool) or not isinstance(per_subject, int) or per_subject < 1:
        raise ValueError(f"patches_per_subject must be a positive integer, not {per_subject!r}")
    if not isinstance(data_source, PatchDataset):
        raise TypeError("patches_per_subject needs the PatchDataset itself as data_source")
    subject_of = np.asarray(data_source.subject_index)[indices]
    order = np.argsort(subject_of, kind="stable")
    boundaries = np.flatnonzero(np.diff(subject_of[order])) + 1
    groups = np.split(indices[order], boundaries) if len(indices) else []
    for group in groups:
        if len(group) < per_subject:
            subject = data_source.subjects[int(data_source.subject_index[group[0]])]
            raise ValueError(
                f"subject {subject.id!r} stores {len(group)} patches, fewer than "
                f"patches_per_subject={per_subject}; extract a larger pool (num_patches) "
                "or draw fewer"
            )
    return groups


def collate_patches(items: list[Any]) -> Any:
    """``default_collate``, without copying patches that were read as one batch.

    :meth:`PatchDataset.__getitems__` reads a batch's patches into one tensor
    per image and gives each item a view of it; ``default_collate`` then
    copies them all into a new tensor (``torch.stack``). Given as a
    DataLoader's ``collate_fn``, this function returns the tensor they are
    views of instead, and collates everything else as ``default_collate``
    does. Items changed by a transform are collated by copying, as usual.

    Examples
    --------
    >>> patches = torch.zeros(3, 4)
    >>> items = [{"x": patches[i], "n": i} for i in range(3)]
    >>> batch = collate_patches(items)
    >>> batch["x"].data_ptr() == patches.data_ptr(), batch["n"].tolist()
    (True, [0, 1, 2])
    """
    first = items[0] if items else None
    if isinstance(first, dict):
        return {key: collate_patches([item[key] for item in items]) for key in first}
    # From loader workers, tensors must cross in shared memory: collate as usual there.
    if isinstance(first, torch.Tensor) and get_worker_info() is None and first.is_contiguous():
        storage = first.untyped_storage()
        size = first.numel() * first.element_size()
        if first.storage_offset() == 0 and storage.nbytes() == size * len(items):
            if all(
                item.untyped_storage().data_ptr() == storage.data_ptr()
                and item.storage_offset() * item.element_size() == position * size
                and item.shape == first.shape
                and item.dtype == first.dtype
                and item.is_contiguous()
                for position, item in enumerate(items)
            ):
                return first.new_empty((0,)).set_(storage, 0, (len(items), *first.shape))
    return default_collate(items)


def worker_generator() -> np.random.Generator:
    """A ``numpy.random.Generator`` of this process, seeded from torch's worker seed.

    Inside a DataLoader worker the seed is ``get_worker_info().seed`` (a
    different one per worker and per epoch; set by the DataLoader's own
    generator, so ``torch.manual_seed`` makes runs reproducible). In the main
    process it is ``torch.initial_seed()``. Repeated calls in one process
    continue the same stream. Use it in transforms instead of a generator made
    in ``__init__``, which every worker would copy identically.

    Examples
    --------
    >>> rng = worker_generator()
    >>> rng is worker_generator()
    True
    """
    info = get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    key = (os.getpid(), seed)
    generator = _GENERATORS.get(key)
    if generator is None:
        _GENERATORS.clear()
        generator = np.random.default_rng(seed)
        _GENERATORS[key] = generator
    return generator


_GENERATORS: dict[tuple[int, int], np.random.Generator] = {}


def _torch_dtype(dtype: np.dtype, name: str, path: Path) -> torch.dtype:
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    except TypeError:
        raise DataError(
            f"{path}: image {name!r} has dtype {dtype}, which torch cannot hold"
        ) from None


def _patch_affines(affines: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(B, 4, 4) patch affines: translation moved to each patch's first voxel."""
    result = np.array(affines, dtype=np.float64, copy=True)
    result[:, :3, 3] = np.einsum("bij,bj->bi", affines[:, :3, :3], starts.astype(np.float64))
    result[:, :3, 3] += affines[:, :3, 3]
    return result


def _concatenate(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    if not arrays:
        return np.zeros(empty_shape, dtype=np.int64)
    return np.ascontiguousarray(np.concatenate(arrays).astype(np.int64, copy=False))


def _select_images(images: str | Sequence[str] | None, source: PatchOutput) -> list[str]:
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


def _check_same_layout(first: PatchOutput, other: PatchOutput) -> None:
    if other.images != first.images:
        raise DataError(
            f"{other.path}: images {other.images} differ from {first.path}'s {first.images}"
        )
    if other.patch_size != first.patch_size:
        raise DataError(
            f"{other.path}: patch size {other.patch_size} differs from {first.path}'s "
            f"{first.patch_size}"
        )


def _check_same_images(first: PatchOutput, other: PatchOutput, images: list[str]) -> None:
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
