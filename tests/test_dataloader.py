"""The DataLoader helpers of ``patchcli.dataloader``: ``collate_patches``, ``worker_generator``.

Both are imported from ``patchcli.dataset``, the path the docs give.
"""

from __future__ import annotations


# ------------------------------------------------------------------ collate
def test_collate_patches_gives_the_default_batch_without_copying(dataset_class, patch_file, torch):
    from torch.utils.data import DataLoader, default_collate

    from patchcli.dataset import collate_patches

    dataset = dataset_class(patch_file)
    indices = [5, 1, 7, 2]
    items = dataset.__getitems__(indices)
    expected = default_collate(dataset.__getitems__(indices))
    batch = collate_patches(items)
    for name in dataset.images:
        assert torch.equal(batch[name]["data"], expected[name]["data"])
        assert torch.equal(batch[name]["affine"], expected[name]["affine"])
        # The patches are the tensor the items are views of, not a copy.
        assert batch[name]["data"].data_ptr() == items[0][name]["data"].data_ptr()
    assert torch.equal(batch["location"], expected["location"])
    assert batch["subject"] == expected["subject"]
    # Items that are not views of one batch (here, re-ordered) are copied as usual.
    shuffled = collate_patches([items[1], items[0], items[2], items[3]])
    assert torch.equal(shuffled["t1"]["data"][0], expected["t1"]["data"][1])
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_patches)
    first = next(iter(loader))
    assert torch.equal(first["t1"]["data"], dataset.read_batch([0, 1, 2])["t1"]["data"])


# ------------------------------------------------------------------ workers
def test_worker_generator_differs_between_workers(dataset_class, patch_file, torch):
    from patchcli.dataset import worker_generator

    def draw(item):
        return {"draw": int(worker_generator().integers(2**62)), "worker": _worker_id(torch)}

    dataset = dataset_class(patch_file, images="seg", transform=draw)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    items = list(loader)
    assert {item["worker"] for item in items} == {0, 1}
    # Distinct 62-bit draws: a generator copied into both workers would repeat
    # each worker's stream (collisions of independent draws have odds ~1e-17).
    assert len({item["draw"] for item in items}) == len(items)
    assert worker_generator() is worker_generator()


def _worker_id(torch) -> int:
    info = torch.utils.data.get_worker_info()
    return -1 if info is None else info.id
