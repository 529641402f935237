"""Measure how fast :class:`patchcli.dataset.PatchDataset` delivers patches.

Writes a synthetic HDF5 patch file (3 images of uint8 64^3 patches, cropped
from smooth noisy volumes so that compression has something to do), once
uncompressed and once with lz4, reads it through the page cache once, then
times each way of reading it:

=============  ==========================================================
naive          reopen the file and read the three images for every item
item           ``dataset[i]`` (handles cached, preallocated arrays)
batch          ``dataset.batches(batch_size)`` (one sorted read per batch)
loader-naive   DataLoader over the naive reader, ``batch_size`` per batch
loader-item    DataLoader, ``__getitem__`` per item + ``default_collate``
loader-items   DataLoader, ``__getitems__`` (what it uses by default)
loader-batch   DataLoader(batch_size=None, sampler=PatchBatchSampler)
=============  ==========================================================

All orders are random. DataLoader rows use persistent workers and one
untimed warm-up pass, so worker start-up is not counted. Each row is the best
of ``--repeats`` passes (the machine may be shared: the best pass is the one
least disturbed). Example::

    python bench/bench_reader.py --patches 2000 --workers 0 2 --out-json reader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from patchcli.dataset import PatchBatchSampler, PatchDataset
from patchcli.io.hdf5 import Hdf5PatchWriter

IMAGES = {"t1": "intensity", "t2": "intensity", "seg": "label"}
PATCH = 64
PATCHES_PER_SUBJECT = 100


def write_synthetic(path: Path, num_patches: int, compression: str, seed: int = 0) -> None:
    """A patch file of ``num_patches`` 3 x (1, 64, 64, 64) uint8 patches."""
    rng = np.random.default_rng(seed)
    subjects = -(-num_patches // PATCHES_PER_SUBJECT)
    images = {name: (1, np.dtype(np.uint8), kind) for name, kind in IMAGES.items()}
    writer = Hdf5PatchWriter(
        path,
        images,
        (PATCH,) * 3,
        num_patches,
        subjects,
        {"sampler": "uniform", "seed": seed, "config": "", "patchcli_version": "bench"},
        compression=compression,
    )
    size = 96
    grid = np.linspace(0, 2 * np.pi, size, dtype=np.float32)
    row = 0
    for subject in range(subjects):
        count = min(PATCHES_PER_SUBJECT, num_patches - row)
        frequencies = rng.uniform(0.5, 3, 3)
        smooth = (
            np.sin(frequencies[0] * grid)[:, None, None]
            + np.cos(frequencies[1] * grid)[None, :, None]
            + np.sin(frequencies[2] * grid)[None, None, :]
        )
        volumes = {
            "t1": np.clip(60 * smooth + 128 + rng.normal(0, 8, (size,) * 3), 0, 255),
            "t2": np.clip(-50 * smooth + 120 + rng.normal(0, 12, (size,) * 3), 0, 255),
            "seg": (smooth > 0.5) + (smooth > 1.5),
        }
        volumes = {name: v.astype(np.uint8)[None] for name, v in volumes.items()}
        starts = rng.integers(0, size - PATCH + 1, (count, 3))
        locations = np.concatenate([starts, starts + PATCH], axis=1).astype(np.int64)
        writer.begin_subject(
            f"sub-{subject:03d}", np.eye(4), (size,) * 3, {n: "" for n in IMAGES}, row, count
        )
        arrays = {
            name: np.stack([v[:, a:d, b:e, c:f] for a, b, c, d, e, f in locations])
            for name, v in volumes.items()
        }
        writer.write_block(row, arrays, locations, subject)
        row += count
    writer.close()


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as stream:
        while stream.read(64 << 20):
            pass


class NaiveDataset(Dataset):
    """The simplest reader: open the file for every item, read with h5py slicing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with h5py.File(path, "r", locking=False) as file:
            self.length = len(file["locations"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        with h5py.File(self.path, "r") as file:
            item = {
                name: {"data": torch.from_numpy(file[f"patches/{name}"][index])} for name in IMAGES
            }
            item["location"] = torch.from_numpy(file["locations"][index])
        return item


class ItemOnlyDataset(PatchDataset):
    """PatchDataset without ``__getitems__``: the DataLoader then calls ``__getitem__`` per item."""

    __getitems__ = None  # type: ignore[assignment]


def best_rate(run: Callable[[], int], repeats: int) -> float:
    """Patches per second of the fastest of ``repeats`` passes of ``run`` (returns its count)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - start))
    return best


def count_patches(batches: Iterable[dict]) -> int:
    return sum(len(batch["location"]) for batch in batches)


def measure(path: Path, workers: list[int], batch_size: int, repeats: int) -> list[dict]:
    rows = []
    dataset = PatchDataset(path)
    naive = NaiveDataset(path)
    size = len(dataset)
    order = np.random.default_rng(0).permutation(size).tolist()
    patch_bytes = sum(
        dataset._channels[n] * PATCH**3 * dataset._dtypes[n].itemsize for n in dataset.images
    )

    def add(method: str, workers_used: int | None, rate: float) -> None:
        rows.append(
            dict(
                method=method,
                workers=workers_used,
                patches_per_second=round(rate, 1),
                megabytes_per_second=round(rate * patch_bytes / 1e6, 1),
            )
        )
        where = "in-process" if workers_used is None else f"{workers_used} workers"
        print(f"  {method:<13} {where:<11} {rate:9.0f} patches/s", flush=True)

    add("naive", None, best_rate(lambda: sum(1 for i in order if naive[i]), repeats))
    add("item", None, best_rate(lambda: sum(1 for i in order if dataset[i]), repeats))
    add(
        "batch",
        None,
        best_rate(lambda: count_patches(dataset.batches(batch_size, shuffle=True)), repeats),
    )
    for count in workers:
        options = dict(num_workers=count, persistent_workers=count > 0)
        loaders = {
            "loader-naive": DataLoader(naive, batch_size, shuffle=True, **options),
            "loader-item": DataLoader(ItemOnlyDataset(path), batch_size, shuffle=True, **options),
            "loader-items": DataLoader(dataset, batch_size, shuffle=True, **options),
            "loader-batch": DataLoader(
                dataset,
                batch_size=None,
                sampler=PatchBatchSampler(dataset, batch_size, shuffle=True, seed=0),
                **options,
            ),
        }
        for method, loader in loaders.items():
            count_patches(loader)  # warm-up: starts the workers
            add(method, count, best_rate(lambda loader=loader: count_patches(loader), repeats))
            del loader
        del loaders
    dataset.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=2000, help="Patches in the file.")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2], help="DataLoader worker counts."
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="Passes per row; best is kept.")
    parser.add_argument(
        "--compression", nargs="+", default=["none", "lz4"], choices=["none", "lz4", "zstd", "gzip"]
    )
    parser.add_argument("--dir", type=Path, help="Where to write the files (default: a temp dir).")
    parser.add_argument("--out-json", type=Path, help="Write the results here.")
    arguments = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_reader_", dir=arguments.dir))
    results = []
    try:
        for compression in arguments.compression:
            path = folder / f"patches_{compression}.h5"
            start = time.perf_counter()
            write_synthetic(path, arguments.patches, compression)
            megabytes = path.stat().st_size / 1e6
            print(
                f"{compression}: {arguments.patches} patches, {megabytes:.0f} MB, "
                f"written in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
            warm_page_cache(path)
            for row in measure(path, arguments.workers, arguments.batch_size, arguments.repeats):
                row = dict(compression=compression, file_megabytes=round(megabytes), **row)
                results.append(row)
            path.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print()
    print(f"{'compression':<12}{'method':<14}{'workers':<9}{'patches/s':>10}{'MB/s':>9}")
    for row in results:
        workers = "-" if row["workers"] is None else str(row["workers"])
        print(
            f"{row['compression']:<12}{row['method']:<14}{workers:<9}"
            f"{row['patches_per_second']:>10.0f}{row['megabytes_per_second']:>9.0f}"
        )
    if arguments.out_json:
        machine = dict(
            cpus=os.cpu_count(),
            platform=platform.platform(),
            python=platform.python_version(),
            torch=torch.__version__,
            h5py=h5py.__version__,
            hdf5=h5py.version.hdf5_version,
        )
        settings = dict(
            patches=arguments.patches,
            batch_size=arguments.batch_size,
            repeats=arguments.repeats,
            patch="3 images x (1, 64, 64, 64) uint8",
        )
        arguments.out_json.write_text(
            json.dumps(dict(machine=machine, settings=settings, results=results), indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
