"""Patches drawn at training time: VolumeDataset over a volume store against TorchIO's Queue.

Both draw the same kind of patches from the same subjects: three uint8 images of
197x233x189 (t1, seg, mask; .nii.gz), the label sampler (``label_name=seg``,
classes 0, 1 and 2 equally likely), patches of 64^3, batches of 32, new
locations every epoch. The Queue loads and crops the .nii.gz subjects in 0 or 2
worker processes; VolumeDataset reads only the chunks each patch covers from a
store made once by ``patchcli volumes`` (lz4, chunks of 32^3 unless
``--chunk``), through a DataLoader with 0 or 2 workers. Rates are patches per
second, the median of ``--repeats`` epochs after an untimed warm-up epoch (the
page cache holds every file); the best of 0 and 2 workers is compared. The store's
size is compared with the .nii.gz inputs', and the peak memory of a loader
worker reported (its resident set, from /proc).

With ``--one-hot``, seg is stored one-hot (4 channels, 4D .nii.gz) on both sides,
and ``label_probabilities`` name channels: TorchIO's LabelSampler and
VolumeDataset's channel draw (the store made with ``patch_size`` 64, so that it
holds the channel totals).

    python bench/bench_volumes.py --out-json bench/results/volumes.json
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

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_uint8_subjects  # noqa: E402

PATCH = 64
BATCH = 32
PROBABILITIES = {0: 1, 1: 1, 2: 1}


def _median_rate(make_batches, repeats: int) -> float:
    for _ in make_batches():  # warm-up: workers started, files in the page cache
        pass
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(len(batch["location"]) for batch in make_batches())
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def torchio_rate(manifest: Path, per_subject: int, workers: int, repeats: int) -> float:
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
        max_length=2 * per_subject,
        samples_per_volume=per_subject,
        sampler=tio.LabelSampler(PATCH, "seg", PROBABILITIES),
        num_workers=workers,
    )
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
    return _median_rate(lambda: iter(loader), repeats)


def volume_rate(store: Path, per_subject: int, workers: int, repeats: int) -> tuple[float, int]:
    """Patches/s, and the largest resident set of a loader worker (bytes; 0 without)."""
    import torch

    from patchcli import VolumeDataset

    dataset = VolumeDataset(
        store,
        sampler="label",
        patch_size=PATCH,
        samples_per_volume=per_subject,
        label_name="seg",
        label_probabilities=PROBABILITIES,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    epoch = [0]

    def batches():
        dataset.set_epoch(epoch[0])
        epoch[0] += 1
        return iter(loader)

    rate = _median_rate(batches, repeats)
    peak = 0
    if workers:
        iterator = loader._iterator  # the persistent workers' processes
        for process in getattr(iterator, "_workers", []):
            peak = max(peak, _peak_rss(process.pid))
    return rate, peak


class _Zeros:
    """A dataset of zero patches shaped like the store's items: a loader worker's memory
    without any reading (torch, the DataLoader, the batch buffers)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        import torch

        patch = torch.zeros((1, PATCH, PATCH, PATCH), dtype=torch.uint8)
        return {"t1": patch, "seg": patch.clone(), "mask": patch.clone(), "location": index}


def baseline_peak_rss(length: int) -> int:
    """The largest resident set of a loader worker that reads nothing (bytes)."""
    import torch

    loader = torch.utils.data.DataLoader(
        _Zeros(length), batch_size=BATCH, num_workers=2, persistent_workers=True
    )
    for _ in loader:
        pass
    return max(_peak_rss(p.pid) for p in loader._iterator._workers)


def _peak_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def one_hot_segmentations(folder: Path) -> None:
    """Each subject's seg made one-hot: (X, Y, Z, 4) uint8, one channel per label 0 to 3."""
    for path in sorted(folder.glob("*_seg.nii.gz")):
        image = nib.load(path)
        labels = np.asarray(image.dataobj)
        one_hot = np.stack([labels == label for label in range(4)], axis=-1).astype(np.uint8)
        nib.save(nib.Nifti1Image(one_hot, image.affine), path)


def make_store(manifest: Path, store: Path, chunk: int, patch_size: int | None = None) -> float:
    """Write the store (with the channel totals of ``patch_size`` when given); seconds."""
    from patchcli.config import load_config
    from patchcli.extract import extract

    keys = {
        "subjects": str(manifest),
        "images": {"t1": "intensity", "seg": "label", "mask": "label"},
        "output": {"path": str(store), "chunks": chunk},
    }
    if patch_size is not None:
        keys["patch_size"] = patch_size
    config = load_config(None, keys)
    start = time.perf_counter()
    extract(config, "volumes", overwrite=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--per-subject", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--one-hot", action="store_true", help="seg stored one-hot")
    parser.add_argument("--out-json", type=Path, default=None)
    options = parser.parse_args(argv)
    default_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="bench_volumes_", dir=default_dir))
    try:
        manifest = write_uint8_subjects(work / "data", options.subjects)
        if options.one_hot:
            one_hot_segmentations(work / "data")
        inputs = sum(p.stat().st_size for p in (work / "data").glob("*.nii.gz"))
        store = work / "volumes.h5"
        seconds = make_store(manifest, store, options.chunk, PATCH if options.one_hot else None)
        results: dict = {
            "subjects": options.subjects,
            "seg": "one-hot, 4 channels" if options.one_hot else "labels, 1 channel",
            "store_seconds_per_subject": seconds / options.subjects,
            "store_bytes": store.stat().st_size,
            "nii_gz_bytes": inputs,
            "store_to_inputs": store.stat().st_size / inputs,
            "rates": {},
        }
        for workers in options.workers:
            rate, peak = volume_rate(store, options.per_subject, workers, options.repeats)
            results["rates"][f"VolumeDataset, {workers} workers"] = rate
            if peak:
                results[f"VolumeDataset worker peak RSS, {workers} workers"] = peak
            results["rates"][f"TorchIO Queue, {workers} workers"] = torchio_rate(
                manifest, options.per_subject, workers, options.repeats
            )
        if 2 in options.workers:
            results["baseline worker peak RSS (reads nothing), 2 workers"] = baseline_peak_rss(
                options.subjects * options.per_subject
            )
        best_store = max(v for k, v in results["rates"].items() if k.startswith("Volume"))
        best_queue = max(v for k, v in results["rates"].items() if k.startswith("TorchIO"))
        results["ratio_best"] = best_store / best_queue
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if options.out_json:
        options.out_json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
