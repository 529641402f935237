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
    return write_rows(folder / "subjects.csv", rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A manifest of ``rows`` (``subject`` and one column per image) at ``path``."""
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_manifest(source: Path, rows: int, path: Path) -> Path:
    """The first ``rows`` subjects of the manifest ``source``, as a manifest at ``path``."""
    with open(source) as stream:
        return write_rows(path, list(csv.DictReader(stream))[:rows])


def lps_affine(shape, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """An LPS+ affine (first two voxel axes pointing left and posterior), centred on the
    volume: reorienting it to RAS+ flips two axes."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def smooth_phantom(shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One subject's float32 ``t1``, ``seg`` (0 background, 1 head, 2 brain, 3 lesion) and
    ``mask`` (the brain, lesions included), each ``(X, Y, Z)``.

    ``t1`` looks like an MRI scan in scanner units: each tissue's mean intensity,
    blurred (partial volume, sigma 1 voxel), times a smooth multiplicative bias
    field (about +-15 %), plus Rician noise.
    """
    import SimpleITK as sitk

    seg = make_phantom(shape, rng)["seg"]
    means = np.array([0.0, 700.0, 420.0, 250.0], dtype=np.float32)
    tissue = sitk.GetImageFromArray(means[seg])  # axes reversed: irrelevant to a blur
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(tissue, 1.0))
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    phases = rng.uniform(0, np.pi, 3).astype(np.float32)
    bias = (
        1.0
        + 0.08 * np.cos(1.3 * axes[0] + phases[0])[:, None, None]
        + 0.05 * np.cos(1.1 * axes[1] + phases[1])[None, :, None]
        + 0.04 * np.cos(0.9 * axes[2] + phases[2])[None, None, :]
    )
    signal = blurred * bias
    noise = rng.standard_normal((2, *shape), dtype=np.float32) * 20.0
    t1 = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)  # magnitude: Rician noise
    mask = (seg >= 2).astype(np.float32)
    return {"t1": t1.astype(np.float32), "seg": seg, "mask": mask}


def write_lps_subjects(
    folder: Path, num_subjects: int, shape=REAL_SHAPE, label_dtype: str = "float32"
) -> Path:
    """Subjects of :func:`smooth_phantom` as .nii.gz with an LPS+ affine (1 mm) and a
    manifest; returns the manifest. ``t1`` is float32, ``seg`` and ``mask`` ``label_dtype``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = lps_affine(shape)
    rows = []
    for index in range(num_subjects):
        arrays = smooth_phantom(tuple(shape), rng)
        row = {"subject": f"s{index:03d}"}
        for name, array in arrays.items():
            dtype = np.float32 if name == "t1" else np.dtype(label_dtype)
            path = folder / f"s{index:03d}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(array.astype(dtype), affine), path)
            row[name] = path.name
        rows.append(row)
    return write_rows(folder / "subjects.csv", rows)


def best_of(function, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
