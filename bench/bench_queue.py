"""TorchIO's Queue making patches on the fly, against reading pre-extracted ones.

Both produce batches of the same patches: three uint8 images of 197x233x189,
64^3 patches, batch size 32. The Queue loads .nii.gz subjects in worker
processes and crops in the main process; PatchDataset reads a patchcli HDF5
file (lz4, the default) made from the same subjects.

    python bench/bench_queue.py --subjects 8 --out-json bench/results/queue.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_uint8_subjects  # noqa: E402

PATCH = 64
BATCH = 32


def torchio_queue_rate(
    manifest: Path, samples_per_volume: int, max_length: int, workers: int
) -> float:
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
        max_length,
        samples_per_volume,
        tio.UniformSampler(PATCH),
        num_workers=workers,
    )
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
    start = time.perf_counter()
    count = 0
    for batch in loader:
        count += len(batch["t1"]["data"])
    return count / (time.perf_counter() - start)


def patchcli_rate(path: Path) -> float:
    from torch.utils.data import DataLoader

    from patchcli import PatchDataset
    from patchcli.dataset import PatchBatchSampler

    dataset = PatchDataset(path)
    loader = DataLoader(
        dataset, batch_size=None, sampler=PatchBatchSampler(dataset, BATCH, shuffle=True, seed=0)
    )
    for _ in loader:  # one pass to warm the page cache, as the Queue's files are warm too
        pass
    start = time.perf_counter()
    count = 0
    for batch in loader:
        count += len(batch["t1"]["data"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--samples-per-volume", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="patchcli-queue-", dir=args.workdir))
    try:
        manifest = write_uint8_subjects(work / "data", args.subjects)
        from patchcli.config import load_config
        from patchcli.extract import extract

        config = load_config(
            None,
            {
                "subjects": str(manifest),
                "images": {"t1": "intensity", "seg": "label", "mask": "label"},
                "patch_size": PATCH,
                "num_patches": args.samples_per_volume,
                "output.path": str(work / "patches.h5"),
            },
        )
        start = time.perf_counter()
        extract(config, "uniform")
        extract_seconds = time.perf_counter() - start
        results = {
            "patches": args.subjects * args.samples_per_volume,
            "patchcli extraction seconds (once)": extract_seconds,
            "torchio Queue patches/s": torchio_queue_rate(
                manifest, args.samples_per_volume, args.max_length, args.workers
            ),
            "patchcli PatchDataset patches/s": patchcli_rate(work / "patches.h5"),
        }
        for name, value in results.items():
            print(f"  {name:<38} {value:10.1f}")
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
