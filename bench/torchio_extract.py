"""The reference: TorchIO's samplers and an h5py writer, as a user would write them.

    python bench/torchio_extract.py SAMPLER MANIFEST OUTPUT.h5 PATCHES PATCH_SIZE

Run as a whole process by bench_extract.py, side by side with patchcli on the
same subjects: ``uniform``, ``weighted`` (probability map ``mask``), ``label``
(``seg``, classes 1, 2 and 3 equally likely) and ``grid`` (overlap a quarter of the
patch size).
Patches are written one by one, uncompressed, one chunk per patch.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
import torchio as tio

IMAGES = ("t1", "seg", "mask")


def sampler_for(name: str, patch: int, subject, count: int):
    if name == "uniform":
        return tio.UniformSampler(patch)(subject, count)
    if name == "weighted":
        return tio.WeightedSampler(patch, "mask")(subject, count)
    if name == "label":
        sampler = tio.LabelSampler(patch, "seg", label_probabilities={1: 1, 2: 1, 3: 1})
        return sampler(subject, count)
    if name == "grid":
        return iter(tio.GridSampler(subject, patch, patch_overlap=patch // 4))
    raise SystemExit(f"unknown sampler {name!r}")


def write_patches(output, patch_subjects, dtype=None) -> None:
    """Write TorchIO patch subjects to one HDF5 file as a user would: patch by patch,
    uncompressed, one chunk per patch, each image in ``dtype`` (default: its own)."""
    with h5py.File(output, "w") as file:
        datasets = {}
        locations = []
        row = 0
        for patch_subject in patch_subjects:
            for name in IMAGES:
                data = patch_subject[name].data.numpy()
                if dtype is not None:
                    data = data.astype(dtype)
                if name not in datasets:
                    datasets[name] = file.create_dataset(
                        f"patches/{name}",
                        (0, *data.shape),
                        data.dtype,
                        maxshape=(None, *data.shape),
                        chunks=(1, *data.shape),
                    )
                dataset = datasets[name]
                if row >= len(dataset):
                    dataset.resize(max(2 * len(dataset), row + 1), axis=0)
                dataset[row] = data
            locations.append(patch_subject[tio.LOCATION].numpy())
            row += 1
        for dataset in datasets.values():
            dataset.resize(row, axis=0)
        file["locations"] = np.array(locations, np.int64).reshape(-1, 6)


def main() -> None:
    sampler, manifest, output, count, patch = sys.argv[1:6]
    count, patch = int(count), int(patch)
    manifest = Path(manifest)
    torch.manual_seed(0)
    with open(manifest) as stream:
        rows = list(csv.DictReader(stream))

    def patches():
        for subject_row in rows:
            subject = tio.Subject(
                t1=tio.ScalarImage(manifest.parent / subject_row["t1"]),
                seg=tio.LabelMap(manifest.parent / subject_row["seg"]),
                mask=tio.LabelMap(manifest.parent / subject_row["mask"]),
            )
            subject.load()
            yield from sampler_for(sampler, patch, subject, count)

    write_patches(output, patches(), np.uint8)


if __name__ == "__main__":
    main()
