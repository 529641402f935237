"""Test data made on the fly: small volumes, NIfTI files, manifests and configs."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml


def affine_for(shape, spacing=(1.0, 1.5, 2.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save (X, Y, Z) or (C, X, Y, Z) (stored as X, Y, Z, C) as NIfTI."""
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1) if array.shape[0] > 1 else array[0]
    affine = affine_for(array.shape[:3]) if affine is None else affine
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def make_subjects(folder: Path, shapes, seed: int = 0, with_prob: bool = True):
    """Write subjects with t1 (int16), seg (uint8 labels 0..2) and prob (float32).

    Returns (manifest path, {subject id: {image: array (X, Y, Z)}}).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, arrays = [], {}
    for index, shape in enumerate(shapes):
        subject = f"s{index}"
        t1 = rng.integers(-100, 1000, size=shape).astype(np.int16)
        seg = np.zeros(shape, np.uint8)
        centre = tuple(n // 2 for n in shape)
        seg[tuple(slice(max(c - 3, 0), c + 3) for c in centre)] = 1
        seg[tuple(slice(c, c + 2) for c in centre)] = 2
        images = {"t1": t1, "seg": seg}
        if with_prob:
            images["prob"] = (seg > 0).astype(np.float32) + 0.01
        row = {"subject": subject}
        for name, array in images.items():
            save_nifti(folder / f"{subject}_{name}.nii.gz", array)
            row[name] = f"{subject}_{name}.nii.gz"
        rows.append(row)
        arrays[subject] = images
    manifest = folder / "subjects.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, arrays


def write_config(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path
