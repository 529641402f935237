"""Subjects for the tests of patchcli.transforms: small volumes on RAS, LPS and oblique grids.

A subject is first described as a *spec*, ``{name: (type, data, affine)}``, from which
both patchcli's :class:`~patchcli.transforms.Subject` and TorchIO's ``tio.Subject`` (or
the headers' :class:`~patchcli.transforms.ImageGeometry`) are built, each from its own
copy of the arrays.
"""

from __future__ import annotations

import numpy as np

from patchcli.transforms import (
    Image,
    ImageGeometry,
    Subject,
    apply_transforms,
    parse_transforms,
)

SPACING = (0.9, 1.2, 2.5)
SHAPE = (24, 28, 20)
SUBJECT_ID = "sub-07"


def rotation(axis: int, degrees: float) -> np.ndarray:
    """The 3x3 rotation of ``degrees`` about world axis ``axis``."""
    angle = np.deg2rad(degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    first, second = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[first, first] = matrix[second, second] = cos
    matrix[first, second], matrix[second, first] = -sin, sin
    return matrix


def affine_from(directions, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The affine whose voxel axes point along ``directions``' columns, ``spacing`` mm apart."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=np.float64) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = origin
    return affine


#: Voxel axis i -> posterior, j -> inferior, k -> left ("PIL"): every axis moves under
#: ToCanonical; then rotated by 20 degrees about x and about z.
PIL = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

GRIDS = {
    "ras": affine_from(np.eye(3), origin=(-10.8, 14.4, -25.0)),
    "lps": affine_from(np.diag([-1.0, -1.0, 1.0]), origin=(10.8, 16.2, -25.0)),
    "oblique": affine_from(rotation(2, 20) @ rotation(0, 20) @ PIL, origin=(31.5, -12.25, 40.0)),
}


def blob(shape, centre, radii) -> np.ndarray:
    """The voxels of an ellipsoid; centre and radii as fractions of ``shape``."""
    grid = np.indices(shape, dtype=np.float64)
    distance = sum(
        ((axis - c * n) / max(r * n, 0.5)) ** 2 for axis, c, r, n in zip(grid, centre, radii, shape)
    )
    return distance <= 1


def labels_of(shape) -> tuple[np.ndarray, np.ndarray]:
    """``(brain, seg)``, uint8 (1, X, Y, Z): a large mask, and labels 1 and 2 (nested, off
    centre) and 3 (a small separate blob)."""
    brain = blob(shape, (0.5, 0.5, 0.5), (0.38, 0.4, 0.36)).astype(np.uint8)
    seg = np.zeros(shape, np.uint8)
    seg[blob(shape, (0.42, 0.58, 0.45), (0.18, 0.16, 0.2))] = 1
    seg[blob(shape, (0.42, 0.58, 0.45), (0.09, 0.08, 0.1))] = 2
    seg[blob(shape, (0.7, 0.3, 0.68), (0.08, 0.08, 0.1))] = 3
    return brain[np.newaxis], seg[np.newaxis]


def intensities(rng, brain, seg, dtype=np.float32) -> np.ndarray:
    """A T1-like (1, X, Y, Z) image: tissue contrast from the labels plus Gaussian noise."""
    values = (
        80.0
        + 40.0 * brain
        + 25.0 * (seg == 1)
        + 50.0 * (seg == 2)
        - 30.0 * (seg == 3)
        + rng.normal(0.0, 10.0, brain.shape)
    )
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if dtype == np.int16:
        return np.rint(values * 12.0 - 900.0).astype(np.int16)
    return values.astype(dtype)


def subject_spec(
    grid: str | np.ndarray = "ras",
    t1_dtype=np.float32,
    shape=SHAPE,
    with_dwi: bool = True,
    seed: int = 0,
) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """t1 (intensity, ``t1_dtype``), dwi (intensity, 2 channels, float32, unless not
    ``with_dwi``), brain and seg (uint8 labels) and prob (a float32 sampling map), on one
    grid."""
    rng = np.random.default_rng(seed)
    affine = GRIDS[grid] if isinstance(grid, str) else np.asarray(grid, dtype=np.float64)
    brain, seg = labels_of(shape)
    spec = {"t1": ("intensity", intensities(rng, brain, seg, t1_dtype), affine)}
    if with_dwi:
        first = 300.0 + 60.0 * brain + rng.normal(0.0, 5.0, brain.shape)
        second = 1000.0 - 2.0 * intensities(rng, brain, seg)
        dwi = np.concatenate([first, second]).astype(np.float32)
        spec["dwi"] = ("intensity", dwi, affine)
    spec["brain"] = ("label", brain, affine)
    spec["seg"] = ("label", seg, affine)
    prob = 0.05 + 0.9 * (seg > 0) * rng.random(seg.shape)
    spec["prob"] = ("sampling_map", prob.astype(np.float32), affine)
    return spec


def two_grid_spec(grid: str = "oblique", seed: int = 3, flair_dtype=np.float32):
    """A T1 at 1 mm (with its seg, on the same grid) beside a FLAIR (``flair_dtype``) at
    2 mm over about the same volume, slightly rotated and shifted from it."""
    rng = np.random.default_rng(seed)
    base = GRIDS[grid][:3, :3] / np.asarray(SPACING)
    t1_affine = affine_from(base, (1.0, 1.0, 1.0), GRIDS[grid][:3, 3])
    flair_affine = affine_from(
        rotation(1, 7) @ base, (2.0, 2.0, 2.0), GRIDS[grid][:3, 3] + [1.3, -0.7, 2.1]
    )
    brain, seg = labels_of((30, 32, 26))
    flair_brain, flair_seg = labels_of((15, 16, 13))
    return {
        "t1": ("intensity", intensities(rng, brain, seg), t1_affine),
        "flair": ("intensity", intensities(rng, flair_brain, flair_seg, flair_dtype), flair_affine),
        "seg": ("label", seg, t1_affine),
    }


def path_of(name: str, subject_id: str = SUBJECT_ID) -> str:
    return f"/data/{subject_id}/{name}.nii.gz"


def image_types(spec) -> dict[str, str]:
    return {name: kind for name, (kind, _, _) in spec.items()}


def to_patchcli(spec, subject_id: str = SUBJECT_ID) -> Subject:
    """patchcli's subject of ``spec`` (arrays and affines copied)."""
    return Subject(
        subject_id,
        {
            name: Image(name, kind, data.copy(), affine.copy(), path_of(name, subject_id))
            for name, (kind, data, affine) in spec.items()
        },
    )


def geometries(spec, subject_id: str = SUBJECT_ID) -> dict[str, ImageGeometry]:
    """What the headers of ``spec``'s images say."""
    return {
        name: ImageGeometry(
            name,
            kind,
            tuple(data.shape[1:]),
            affine.copy(),
            data.shape[0],
            data.dtype,
            path_of(name, subject_id),
        )
        for name, (kind, data, affine) in spec.items()
    }


def run(config, spec, subject_id: str = SUBJECT_ID) -> Subject:
    """``spec`` preprocessed by patchcli with the ``preprocess`` list ``config``."""
    subject = to_patchcli(spec, subject_id)
    apply_transforms(parse_transforms(config, image_types(spec)), subject)
    return subject
