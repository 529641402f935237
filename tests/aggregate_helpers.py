"""Aggregation tests' helpers: grids computed from REFERENCE.md, independently of the library."""

from __future__ import annotations

import numpy as np


def reference_starts(size: int, patch: int, overlap: int) -> list[int]:
    starts = list(range(0, size + 1 - patch, patch - overlap))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def reference_locations(shape, patch_size, patch_overlap) -> np.ndarray:
    """TorchIO's grid locations: lexicographic over the three axes' starts."""
    axes = [
        reference_starts(n, p, o) for n, p, o in zip(shape, patch_size, patch_overlap, strict=True)
    ]
    rows = [
        (i, j, k, i + patch_size[0], j + patch_size[1], k + patch_size[2])
        for i in axes[0]
        for j in axes[1]
        for k in axes[2]
    ]
    return np.array(rows, dtype=np.int64)


def pad(volume: np.ndarray, padding, mode) -> np.ndarray:
    widths = ((0, 0),) + tuple((p, p) for p in padding)
    if mode is None:
        return volume
    if isinstance(mode, (int, float)):
        return np.pad(volume, widths, mode="constant", constant_values=mode)
    return np.pad(volume, widths, mode=mode)


def crop_patches(volume: np.ndarray, locations: np.ndarray) -> np.ndarray:
    return np.stack([volume[:, a:d, b:e, c:f] for a, b, c, d, e, f in locations])


def grid_patches(volume, patch_size, patch_overlap, padding_mode=None):
    """(patches, locations, padding) of an unmodified grid of a (C, X, Y, Z) volume."""
    padding = (0, 0, 0) if padding_mode is None else tuple(o // 2 for o in patch_overlap)
    padded = pad(volume, padding, padding_mode)
    locations = reference_locations(padded.shape[1:], patch_size, patch_overlap)
    return crop_patches(padded, locations), locations, padding


def pool(volume: np.ndarray, factor) -> np.ndarray:
    """Average-pool a (..., X, Y, Z) array by an integer factor per axis."""
    fx, fy, fz = factor
    *lead, x, y, z = volume.shape
    blocks = volume.reshape(*lead, x // fx, fx, y // fy, fy, z // fz, fz)
    return blocks.mean(axis=(-5, -3, -1))


def make_affine(seed: int) -> np.ndarray:
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = (seed, -3.0, 7.5)
    return affine
