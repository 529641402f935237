"""Extraction speed: patchcli against TorchIO + h5py and the plain h5py write limit.

The issue's reference case: subjects of 197x233x189 with three uint8 images,
150 uniform patches of 64^3 per subject, written to HDF5 without compression
(and with each compression, for patchcli). Volumes are loaded once per subject
by all contenders (the same .nii.gz files), so the differences are sampling,
cropping and writing.

    python bench/bench_extract.py --subjects 4 --out-json bench/results/extract.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, write_uint8_subjects  # noqa: E402

from patchcli.config import load_config  # noqa: E402
from patchcli.extract import extract  # noqa: E402

PATCH = 64
PATCHES = 150
IMAGES = ("t1", "seg", "mask")


def run_patchcli(manifest: Path, output: Path, compression: str, workers: int = 0) -> float:
    config = load_config(
        None,
        {
            "subjects": str(manifest),
            "images": {"t1": "intensity", "seg": "label", "mask": "label"},
            "patch_size": PATCH,
            "num_patches": PATCHES,
            "output.path": str(output),
            "output.compression": compression,
            "workers": workers,
        },
    )
    start = time.perf_counter()
    extract(config, "uniform", overwrite=True)
    return time.perf_counter() - start


def run_torchio(manifest: Path, output: Path) -> tuple[float, float]:
    """TorchIO's UniformSampler + an h5py writer, as a user would write it."""
    start = time.perf_counter()
    import torch
    import torchio as tio

    import_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    import csv

    with open(manifest) as stream:
        rows = list(csv.DictReader(stream))
    start = time.perf_counter()
    sampler = tio.UniformSampler(PATCH)
    total = PATCHES * len(rows)
    with h5py.File(output, "w") as file:
        datasets = {
            name: file.create_dataset(
                f"patches/{name}",
                (total, 1, PATCH, PATCH, PATCH),
                np.uint8,
                chunks=(1, 1, PATCH, PATCH, PATCH),
            )
            for name in IMAGES
        }
        locations = file.create_dataset("locations", (total, 6), np.int64)
        row = 0
        for subject_row in rows:
            subject = tio.Subject(
                t1=tio.ScalarImage(manifest.parent / subject_row["t1"]),
                seg=tio.LabelMap(manifest.parent / subject_row["seg"]),
                mask=tio.LabelMap(manifest.parent / subject_row["mask"]),
            )
            subject.load()
            for patch in sampler(subject, PATCHES):
                for name in IMAGES:
                    datasets[name][row] = patch[name].data.numpy().astype(np.uint8)
                locations[row] = patch[tio.LOCATION].numpy()
                row += 1
    return time.perf_counter() - start, import_seconds


def run_write_limit(output: Path, subjects: int) -> float:
    """A plain h5py block write of the same bytes (no reading, no cropping)."""
    block = np.random.default_rng(0).integers(0, 255, (PATCHES, 1, PATCH, PATCH, PATCH), np.uint8)
    start = time.perf_counter()
    with h5py.File(output, "w") as file:
        datasets = {
            name: file.create_dataset(
                f"patches/{name}",
                (PATCHES * subjects, 1, PATCH, PATCH, PATCH),
                np.uint8,
                chunks=(1, 1, PATCH, PATCH, PATCH),
            )
            for name in IMAGES
        }
        for index in range(subjects):
            for dataset in datasets.values():
                dataset[index * PATCHES : (index + 1) * PATCHES] = block
    return time.perf_counter() - start


def run_load_only(manifest: Path) -> float:
    """Reading the volumes alone: the floor of any extraction from .nii.gz files."""
    from patchcli.subjects import load_subject, read_manifest

    start = time.perf_counter()
    for spec in read_manifest(manifest, list(IMAGES)):
        load_subject(spec)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torchio", action="store_true")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="Where inputs and outputs go. Default: tmpfs, so that disk write-back "
        "(which dominates uncompressed output on a slow disk) does not drown the "
        "CPU cost being compared.",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="patchcli-bench-", dir=args.workdir))
    try:
        manifest = write_uint8_subjects(work / "data", args.subjects)
        n = args.subjects
        results: dict[str, float] = {}
        results["load volumes only"] = best_of(lambda: run_load_only(manifest), args.repeats) / n
        results["h5py block write (limit)"] = (
            best_of(lambda: run_write_limit(work / "limit.h5", n), args.repeats) / n
        )
        for compression in ("none", "lz4", "zstd", "gzip"):
            out = work / f"patchcli-{compression}.h5"
            seconds = min(run_patchcli(manifest, out, compression) for _ in range(args.repeats))
            results[f"patchcli ({compression})"] = seconds / n
            results[f"patchcli ({compression}) MiB/subject"] = out.stat().st_size / n / 2**20
        seconds = min(
            run_patchcli(manifest, work / "w.h5", "none", workers=2) for _ in range(args.repeats)
        )
        results["patchcli (none, --workers 2)"] = seconds / n
        if not args.no_torchio:
            times = [run_torchio(manifest, work / "tio.h5") for _ in range(args.repeats)]
            results["torchio + h5py"] = min(t for t, _ in times) / n
            results["torchio import (once)"] = times[0][1]
        width = max(map(len, results))
        print(
            f"{args.subjects} subjects of 197x233x189, 3 uint8 images, "
            f"{PATCHES} patches of {PATCH}^3"
        )
        for name, value in results.items():
            unit = "" if "MiB" in name else " s/subject" if "import" not in name else " s"
            print(f"  {name:<{width}}  {value:8.3f}{unit}")
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
