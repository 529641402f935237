"""The samplers of ``patchcli.batching``: batches, the order of each pass, fresh patches.

They are imported from ``patchcli.dataset``, the path the docs give.
"""

from __future__ import annotations

import numpy as np
import pytest


# ------------------------------------------------------------------ batches
def test_batch_sampler_orders(torch):
    from patchcli.dataset import PatchBatchSampler

    sampler = PatchBatchSampler(10, 4, shuffle=True, seed=7)
    first, second = list(sampler), list(sampler)
    assert sorted(sum(first, [])) == list(range(10))
    assert [len(b) for b in first] == [4, 4, 2] and len(sampler) == 3
    assert first != second  # a new order per pass...
    sampler.set_epoch(0)
    assert list(sampler) == first  # ...reproducible from (seed, epoch)
    assert list(PatchBatchSampler(10, 4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(PatchBatchSampler(10, 2, indices=[9, 3, 5])) == [[9, 3], [5]]
    torch.manual_seed(0)
    unseeded = list(PatchBatchSampler(10, 10, shuffle=True))
    torch.manual_seed(0)
    assert list(PatchBatchSampler(10, 10, shuffle=True)) == unseeded
    with pytest.raises(ValueError, match="batch_size"):
        PatchBatchSampler(10, 0)


# ------------------------------------------------------- fresh patches every epoch
def test_patches_per_subject_draws_exactly_k_each_pass(dataset_class, patch_file, torch):
    from patchcli.dataset import PatchBatchSampler, PatchSampler

    dataset = dataset_class(patch_file)  # 3 subjects x 4 patches
    subject_of = np.asarray(dataset.subject_index)
    sampler = PatchBatchSampler(dataset, 2, shuffle=True, seed=7, patches_per_subject=3)
    assert len(sampler) == 5  # 9 indices in batches of 2
    passes = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        drawn = [index for batch in sampler for index in batch]
        assert len(drawn) == len(set(drawn)) == 9
        assert np.bincount(subject_of[drawn], minlength=3).tolist() == [3, 3, 3]
        passes.append(sorted(drawn))
    # A new draw per pass (4 choose 3 per subject: 64 draws; 6 passes all alike is
    # a chance of 64^-5), the same draw for the same seed and pass.
    assert len({tuple(p) for p in passes}) > 1
    again = PatchBatchSampler(dataset, 2, shuffle=True, seed=7, patches_per_subject=3)
    again.set_epoch(4)
    assert sorted(i for batch in again for i in batch) == passes[4]
    # The per-item sampler gives the same pass, item by item.
    items = PatchSampler(dataset, shuffle=True, seed=7, patches_per_subject=3)
    items.set_epoch(4)
    batches = PatchBatchSampler(dataset, 2, shuffle=True, seed=7, patches_per_subject=3)
    batches.set_epoch(4)
    assert list(items) == [i for batch in batches for i in batch]


def test_patches_per_subject_with_a_rank_of_a_distributed_run(dataset_class, patch_file, torch):
    from patchcli.dataset import PatchSampler

    dataset = dataset_class(patch_file)
    mine = dataset.split_by_subject(2, 0)
    sampler = PatchSampler(dataset, seed=1, indices=mine, patches_per_subject=2)
    drawn = list(sampler)
    assert set(drawn) <= set(mine.tolist())
    subjects = np.asarray(dataset.subject_index)[drawn]
    assert all(np.count_nonzero(subjects == s) == 2 for s in set(subjects.tolist()))
    assert drawn == sorted(drawn)  # without shuffle: file order


def test_patches_per_subject_beyond_the_pool_is_a_clear_error(dataset_class, patch_file, torch):
    from patchcli.dataset import PatchBatchSampler

    dataset = dataset_class(patch_file)
    with pytest.raises(ValueError, match=r"subject 's0' stores 4 patches, fewer than .*=5"):
        PatchBatchSampler(dataset, 2, patches_per_subject=5)
    with pytest.raises(TypeError, match="needs the PatchDataset"):
        PatchBatchSampler(len(dataset), 2, patches_per_subject=1)
