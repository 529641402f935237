"""What a torch ``DataLoader`` over patches uses besides the dataset and its sampler.

- :func:`collate_patches`, a ``collate_fn`` that hands over a batch read in
  one call (:meth:`~patchcli.dataset.PatchDataset.__getitems__`) without copying it.
- :func:`worker_generator`, a numpy random generator per DataLoader worker,
  for transforms that draw random numbers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = ["collate_patches", "worker_generator"]


def collate_patches(items: list[Any]) -> Any:
    """``default_collate``, without copying patches that were read as one batch.

    :meth:`~patchcli.dataset.PatchDataset.__getitems__` reads a batch's
    patches into one tensor per image and gives each item a view of it;
    ``default_collate`` then copies them all into a new tensor
    (``torch.stack``). Given as a DataLoader's ``collate_fn``, this function
    returns the tensor they are views of instead, and collates everything
    else as ``default_collate`` does. Items changed by a transform are
    collated by copying, as usual.

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


# Keyed by process id and seed: a forked worker inherits its parent's dict and
# must not continue the parent's stream; only the current key is ever kept.
_GENERATORS: dict[tuple[int, int], np.random.Generator] = {}
