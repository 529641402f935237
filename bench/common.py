"""Helpers shared by the benchmarks: synthetic real-sized subjects, timing."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from patchcli.phantom import make_phantom, phantom_affine

#: The size of a 1 mm MNI-like brain volume, the issue's reference case.
REAL_SHAPE = (197, 233, 189)


def write_uint8_subjects(
    folder: Path, num_subjects: int, shape=REAL_SHAPE, compressed=True
) -> Path:
    """Subjects with three uint8 images (t1, seg, mask) and a manifest; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".nii.gz" if compressed else ".nii"
    rows = []
    for index in range(num_subjects):
        arrays = make_phantom(shape, rng)
        images = {
            "t1": arrays["t1"],
            "seg": arrays["seg"],
            "mask": (arrays["seg"] > 0).astype(np.uint8),
        }
        row = {"subject": f"s{index:03d}"}
        for name, array in images.items():
            path = folder / f"s{index:03d}_{name}{suffix}"
            nib.save(nib.Nifti1Image(array, phantom_affine(shape)), path)
            row[name] = path.name
        rows.append(row)
    manifest = folder / "subjects.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def best_of(function, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
