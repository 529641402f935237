"""Merging many shards, and reading the merge: virtual datasets against direct reads.

Runs one extraction as ``--shards`` shards (in this process, one small
subject each), merges them, and times:

=====================  ====================================================
extract one shard      median wall time of a shard's run (in process)
merge virtual          ``patchcli.merge.merge`` (virtual datasets)
merge copy             ``merge(copy=True)``: one self-contained file
open virtual (h5py)    ``h5py.File`` + the virtual dataset's first read
PatchDataset(merged)   constructing the reader (tables, shard checks)
read h5py virtual      random patches through the virtual dataset (h5py)
read PatchDataset      random patches, merged file (reads the shards)
read h5py copy         random patches from the copied file (h5py)
read PatchDataset copy random patches from the copied file
=====================  ====================================================

Reads are of every image of a patch, in a random order, single process,
best of ``--repeats``; the files are in the page cache. Example::

    python bench/bench_merge.py --shards 1000 --out-json merge.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np

from patchcli.config import load_config
from patchcli.extract import extract
from patchcli.merge import merge
from patchcli.phantom import write_phantom_dataset

IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


def run(folder: Path, shards: int, patches: int, patch: int, reads: int, repeats: int) -> dict:
    manifest = write_phantom_dataset(folder / "data", shards, (48, 48, 40), seed=0)
    output = folder / "out" / "patches.h5"
    shard_seconds = []
    for index in range(shards):
        config = load_config(
            None,
            {
                "subjects": str(manifest),
                "images": IMAGES,
                "patch_size": patch,
                "num_patches": patches,
                "shard": f"{index}/{shards}",
                "output.path": str(output),
            },
        )
        started = time.perf_counter()
        extract(config, "uniform")
        shard_seconds.append(time.perf_counter() - started)

    results: dict[str, float] = {"extract one shard (median s)": statistics.median(shard_seconds)}
    started = time.perf_counter()
    merge(output, copy=True)
    copied = output.with_name("copied.h5")
    output.rename(copied)
    results["merge copy (s)"] = time.perf_counter() - started
    started = time.perf_counter()
    merge(output)
    results["merge virtual (s)"] = time.perf_counter() - started

    started = time.perf_counter()
    with h5py.File(output, "r") as file:
        file["patches/t1"][0]
    results["open virtual + first read, h5py (s)"] = time.perf_counter() - started

    from patchcli import PatchDataset

    started = time.perf_counter()
    merged = PatchDataset(output)
    results["PatchDataset(merged) construction (s)"] = time.perf_counter() - started
    total = len(merged)
    order = np.random.default_rng(0).permutation(total)[:reads]

    def h5py_reads(path: Path) -> float:
        with h5py.File(path, "r") as file:
            datasets = [file[f"patches/{name}"] for name in IMAGES]
            for dataset in datasets:  # open every source once before timing
                dataset[0]
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                for index in order:
                    for dataset in datasets:
                        dataset[index]
                best = min(best, time.perf_counter() - started)
        return reads / best

    def dataset_reads(dataset) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for index in order:
                dataset[int(index)]
            best = min(best, time.perf_counter() - started)
        return reads / best

    results["read h5py virtual (patches/s)"] = h5py_reads(output)
    results["read PatchDataset merged (patches/s)"] = dataset_reads(merged)
    results["read h5py copy (patches/s)"] = h5py_reads(copied)
    results["read PatchDataset copy (patches/s)"] = dataset_reads(PatchDataset(copied))
    merged.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--patches", type=int, default=16, help="patches per subject (shard)")
    parser.add_argument("--patch", type=int, default=16, help="patch edge in voxels")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None, help="default: a folder in /dev/shm")
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args()
    base = args.folder or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    folder = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=base))
    try:
        results = run(folder, args.shards, args.patches, args.patch, args.reads, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    width = max(len(key) for key in results)
    print(f"{args.shards} shards x {args.patches} patches of {args.patch}^3, 3 images")
    for key, value in results.items():
        print(
            f"  {key:<{width}}  {value:,.3f}" if value < 100 else f"  {key:<{width}}  {value:,.0f}"
        )
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": platform.platform(), "args": vars(args) | {"folder": str(folder)}}
        args.out_json.write_text(json.dumps(record | {"results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
