"""Samplers that hand a DataLoader the dataset indices of each pass over patches.

- :class:`PatchBatchSampler` yields whole batches of indices, for a DataLoader
  with ``batch_size=None`` that reads each batch in one call
  (:meth:`~patchcli.dataset.PatchDataset.read_batch`).
- :class:`PatchSampler` yields the same order index by index, for a plain
  ``DataLoader(batch_size=B)``.
- :class:`PassOrder` is the order both follow: the indices of each pass, a
  seeded draw of some patches per subject (``patches_per_subject``), then a
  seeded shuffle.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["PassOrder", "PatchBatchSampler", "PatchSampler"]


class PatchBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, for reading whole batches at once.

    Give it to a DataLoader as ``sampler`` with ``batch_size=None``: each
    worker then reads a whole batch in one
    :meth:`~patchcli.dataset.PatchDataset.read_batch` call, already collated
    (no ``collate_fn`` work).

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
        Sample only these dataset indices (e.g.
        :meth:`~patchcli.dataset.PatchDataset.split_by_subject`).
    patches_per_subject : int, optional
        Fresh patches every pass: from a dataset that stores a pool of patches
        per subject (say 4 times what a pass needs), each pass draws exactly
        this many of each subject's patches, a new draw per pass (the same for
        the same seed and pass). ``data_source`` must then be a
        :class:`~patchcli.dataset.PatchDataset`; a subject storing fewer is an error.
        From an output with ``augment`` copies, each pass draws them from one
        copy of each subject, a different one each pass (every copy once in
        ``copies`` passes, in an order of its own per subject), as TorchIO's
        Queue augments a subject anew each epoch.

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
    >>> from patchcli import PatchDataset
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
    >>> from patchcli import PatchDataset
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
        #: Each subject's rows by copy (one group of rows without augmentation).
        self.copies: list[list[np.ndarray]] = []
        if patches_per_subject is not None:
            self.groups = _subject_groups(data_source, self.indices, patches_per_subject)
            self.copies = _copy_groups(data_source, self.groups, patches_per_subject)
        self.cycle_seed = seed
        if seed is None and any(len(copies) > 1 for copies in self.copies):
            # Without a seed, the order of the copies comes from torch's generator, once.
            self.cycle_seed = int(torch.empty((), dtype=torch.int64).random_().item())

    def _copy_of(self, number: int, group: np.ndarray, epoch: int) -> np.ndarray:
        """The rows of subject ``number`` to draw from in pass ``epoch``: one copy's, each
        copy once in ``copies`` passes (all its rows without augmentation)."""
        copies = self.copies[number]
        if len(copies) == 1:
            return group
        cycle, turn = divmod(epoch, len(copies))
        # The order of the copies in this cycle of passes, the subject's own.
        order = np.random.default_rng([self.cycle_seed, cycle, number]).permutation(len(copies))
        return copies[order[turn]]

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
        epoch = self.epoch
        self.epoch += 1
        order = self.indices
        if self.per_subject is not None:
            drawn = [
                rng.choice(self._copy_of(number, group, epoch), self.per_subject, replace=False)
                for number, group in enumerate(self.groups)
            ]
            order = np.sort(np.concatenate(drawn)) if drawn else order[:0]
        if self.shuffle:
            order = rng.permutation(order)
        return order


def _copy_groups(data_source, groups: list[np.ndarray], per_subject: int) -> list[list[np.ndarray]]:
    """Each subject's rows split by augmented copy, each checked to hold ``per_subject``."""
    copy_index = getattr(data_source, "copy_index", None)
    if copy_index is None:
        return [[group] for group in groups]
    copy_index = np.asarray(copy_index)
    split = []
    for group in groups:
        copy_of = copy_index[group]
        copies = [group[copy_of == copy] for copy in np.unique(copy_of)]
        smallest = min(len(rows) for rows in copies)
        if len(copies) > 1 and smallest < per_subject:
            subject = data_source.subjects[int(data_source.subject_index[group[0]])]
            raise ValueError(
                f"subject {subject.id!r} stores {smallest} patches per augmented copy, fewer "
                f"than patches_per_subject={per_subject}; extract more (num_patches) or draw fewer"
            )
        split.append(copies)
    return split


def _subject_groups(data_source, indices: np.ndarray, per_subject: int) -> list[np.ndarray]:
    """The indices of each subject among ``indices``, checked to hold ``per_subject``.

    ``data_source`` is the dataset: anything with its ``subject_index`` and
    ``subjects`` (a :class:`~patchcli.dataset.PatchDataset`).
    """
    if isinstance(per_subject, bool) or not isinstance(per_subject, int) or per_subject < 1:
        raise ValueError(f"patches_per_subject must be a positive integer, not {per_subject!r}")
    if not all(hasattr(data_source, name) for name in ("subject_index", "subjects")):
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
