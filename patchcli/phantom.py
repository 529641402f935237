"""Synthetic subjects for demos, tests and benchmarks: no user data needed.

Each subject is a head-like phantom: an ellipsoid "head" holding a "brain"
with a few spherical "lesions", as three NIfTI images that share an affine:

- ``t1``: uint8 intensities (background, skull, brain, lesions, plus noise);
- ``seg``: uint8 labels, 0 background, 1 head, 2 brain, 3 lesion;
- ``prob``: float32 sampling map, 1 in the brain and 10 in lesions.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io.atomic import atomic_output

#: The ``format`` in a phantom folder's patchcli.yaml.
PHANTOM_FORMAT = "patchcli-phantoms"
LABELS = {"background": 0, "head": 1, "brain": 2, "lesion": 3}


def make_phantom(
    shape: Sequence[int], rng: np.random.Generator, num_lesions: int = 3
) -> dict[str, np.ndarray]:
    """One subject's ``t1``, ``seg`` and ``prob`` arrays, each ``(X, Y, Z)``.

    Examples
    --------
    >>> arrays = make_phantom((32, 32, 24), np.random.default_rng(0))
    >>> sorted(arrays), arrays["t1"].dtype.name, sorted(np.unique(arrays["seg"]).tolist())
    (['prob', 'seg', 't1'], 'uint8', [0, 1, 2, 3])
    """
    shape = tuple(int(n) for n in shape)
    grid = np.stack(
        np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    )
    centre = rng.uniform(-0.05, 0.05, size=3).astype(np.float32)
    radii = rng.uniform(0.8, 0.92, size=3).astype(np.float32)
    distance = np.sqrt(
        (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0)
    )
    seg = np.zeros(shape, dtype=np.uint8)
    seg[distance < 1.0] = LABELS["head"]
    seg[distance < 0.82] = LABELS["brain"]
    for _ in range(num_lesions):
        spot = centre + rng.uniform(-0.4, 0.4, size=3).astype(np.float32) * radii
        radius = rng.uniform(0.06, 0.14)
        inside = np.sqrt(((grid - spot[:, None, None, None]) ** 2).sum(0)) < radius
        seg[inside & (seg == LABELS["brain"])] = LABELS["lesion"]
    intensity = np.array([5, 200, 110, 60], dtype=np.float32)[seg]
    intensity += rng.normal(0, 8, size=shape).astype(np.float32)
    t1 = np.clip(intensity, 0, 255).astype(np.uint8)
    prob = np.zeros(shape, dtype=np.float32)
    prob[seg == LABELS["brain"]] = 1.0
    prob[seg == LABELS["lesion"]] = 10.0
    return {"t1": t1, "seg": seg, "prob": prob}


def phantom_affine(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.2)) -> np.ndarray:
    """A RAS affine with the given spacing, centred on the volume."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    return affine


def write_phantom_dataset(
    folder: str | Path,
    num_subjects: int = 4,
    shape: Sequence[int] = (64, 72, 56),
    seed: int = 0,
    vary_shape: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``num_subjects`` phantoms and a ``subjects.csv`` manifest to ``folder``.

    Shapes vary by a few voxels between subjects unless ``vary_shape`` is False.
    Returns the manifest's path.
    """
    import nibabel as nib

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    with atomic_output(folder, overwrite, folder=True, kind=PHANTOM_FORMAT) as temporary:
        rows = []
        for index in range(num_subjects):
            size = np.asarray(shape) + (rng.integers(-4, 5, size=3) if vary_shape else 0)
            arrays = make_phantom(size, rng)
            affine = phantom_affine(size)
            subject_id = f"sub-{index + 1:03d}"
            row = {"subject": subject_id}
            for name, array in arrays.items():
                relative = f"{subject_id}_{name}.nii.gz"
                nib.save(nib.Nifti1Image(array, affine), temporary / relative)
                row[name] = relative
            rows.append(row)
        with open(temporary / "subjects.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=["subject", "t1", "seg", "prob"])
            writer.writeheader()
            writer.writerows(rows)
        # Mark the folder as ours, so that --overwrite may replace it later.
        (temporary / "patchcli.yaml").write_text(f"format: {PHANTOM_FORMAT}\n", encoding="utf-8")
    return folder / "subjects.csv"
