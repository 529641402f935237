"""Reading patches for training: PatchDataset against TorchIO's Queue and the page cache.

Both sides deliver batches of the same kind of patches: three uint8 images of
197x233x189 per subject, 64^3 patches, batches of 32, in random order. The
Queue loads .nii.gz subjects (in 0 or 2 worker processes) and crops them on
the fly; PatchDataset reads a patchcli file made from the same subjects once,
uncompressed and with lz4 (the default). Each is timed in its ways of being
used, after an untimed warm-up pass (the page cache holds every file, and
loader workers have started):

- ``sampler``: ``DataLoader(batch_size=None, sampler=PatchBatchSampler)``, one
  read per image per batch;
- ``loader``: a plain ``DataLoader(batch_size=32, shuffle=True)``;
- ``loader + collate_patches``: the same, with ``collate_fn=collate_patches``;

each with 0 and 2 loader workers. The limit is reading the same bytes from the
page cache with ``os.preadv`` into one buffer, 32 random patches at a time.
Rates are patches per second, the median of ``--repeats`` passes.

    python bench/bench_queue.py --out-json bench/results/queue.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_uint8_subjects  # noqa: E402

PATCH = 64
BATCH = 32
IMAGES = ("t1", "seg", "mask")


def _timed_passes(make_iterator, count_of, repeats: int) -> float:
    """Median patches/s over ``repeats`` passes, after one untimed pass."""
    for _ in make_iterator():
        pass
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(count_of(batch) for batch in make_iterator())
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def torchio_queue_rate(manifest: Path, patches: int, workers: int, repeats: int) -> float:
    import csv

    import torch
    import torchio as tio

    with open(manifest) as stream:
        rows = list(csv.DictReader(stream))
    subjects = [
        tio.Subject(
            t1=tio.ScalarImage(manifest.parent / row["t1"]),
            seg=tio.LabelMap(manifest.parent / row["seg"]),
            mask=tio.LabelMap(manifest.parent / row["mask"]),
        )
        for row in rows
    ]
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=2 * patches,
        samples_per_volume=patches,
        sampler=tio.UniformSampler(PATCH),
        num_workers=workers,
    )
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
    return _timed_passes(lambda: loader, lambda batch: len(batch["t1"]["data"]), repeats)


def patchcli_rates(path: Path, repeats: int) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from patchcli import PatchDataset
    from patchcli.dataset import PatchBatchSampler, collate_patches

    rates = {}
    for workers in (0, 2):
        dataset = PatchDataset(path)
        sampler = PatchBatchSampler(dataset, BATCH, shuffle=True, seed=0)
        options = {"num_workers": workers, "persistent_workers": workers > 0}
        batched = DataLoader(dataset, batch_size=None, sampler=sampler, **options)
        plain = DataLoader(dataset, batch_size=BATCH, shuffle=True, **options)
        views = DataLoader(
            dataset, batch_size=BATCH, shuffle=True, collate_fn=collate_patches, **options
        )
        loaders = (("sampler", batched), ("loader", plain), ("loader + collate_patches", views))
        for name, loader in loaders:
            rates[f"{name}, {workers} workers"] = _timed_passes(
                lambda loader=loader: loader, lambda batch: len(batch["t1"]["data"]), repeats
            )
        dataset.close()
    return rates


def page_cache_rate(path: Path, repeats: int) -> float:
    """The same bytes as 32 random patches per read batch, by ``preadv``, no HDF5."""
    import h5py

    with h5py.File(path, "r") as file:
        extents = []
        for name in IMAGES:
            dataset = file["patches"][name]
            extents.append((dataset.id.get_offset(), dataset[0].nbytes))
        total = len(file["locations"])
    buffers = [np.empty((BATCH, size), np.uint8) for _, size in extents]
    rng = np.random.default_rng(0)
    descriptor = os.open(path, os.O_RDONLY)

    def batches():
        order = rng.permutation(total)
        for first in range(0, total, BATCH):
            rows = np.sort(order[first : first + BATCH])
            for (offset, size), buffer in zip(extents, buffers):
                for slot, row in enumerate(rows.tolist()):
                    os.preadv(descriptor, [buffer[slot]], offset + row * size)
            yield len(rows)

    try:
        return _timed_passes(batches, lambda count: count, repeats)
    finally:
        os.close(descriptor)


def main() -> None:
    global PATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--patches", type=int, default=64, help="patches per subject")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(197, 233, 189))
    parser.add_argument("--patch-size", type=int, default=PATCH)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    PATCH = args.patch_size
    work = Path(tempfile.mkdtemp(prefix="patchcli-queue-", dir=args.workdir))
    try:
        manifest = write_uint8_subjects(work / "data", args.subjects, tuple(args.shape))
        from patchcli.config import load_config
        from patchcli.extract import extract

        files = {}
        for compression in ("none", "lz4"):
            files[compression] = work / f"patches-{compression}.h5"
            config = load_config(
                None,
                {
                    "subjects": str(manifest),
                    "images": {"t1": "intensity", "seg": "label", "mask": "label"},
                    "patch_size": PATCH,
                    "num_patches": args.patches,
                    "output.path": str(files[compression]),
                    "output.compression": compression,
                },
            )
            extract(config, "uniform")
        results: dict[str, float] = {}
        for workers in (0, 2):
            results[f"torchio Queue, {workers} workers"] = torchio_queue_rate(
                manifest, args.patches, workers, args.repeats
            )
        for compression, path in files.items():
            for name, rate in patchcli_rates(path, args.repeats).items():
                results[f"PatchDataset {compression}, {name}"] = rate
        results["page cache (preadv)"] = page_cache_rate(files["none"], args.repeats)
        queue = max(rate for name, rate in results.items() if name.startswith("torchio"))
        print(
            f"{args.subjects} subjects x {args.patches} patches of 3 x {PATCH}^3 uint8, batches "
            f"of {BATCH}, median of {args.repeats} passes; patches/s (x best Queue)"
        )
        for name, rate in results.items():
            print(f"  {name:<52} {rate:9.0f}  {rate / queue:6.1f}x")
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
