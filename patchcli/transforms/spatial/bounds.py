"""Voxels to crop or pad on each side: TorchIO's bounds, and what they do to a grid."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np
from nibabel.affines import apply_affine

from ...errors import ConfigError

Bounds = tuple[int, int, int, int, int, int]


def parse_bounds(value, transform: str, key: str) -> Bounds:
    """``n`` (every side), ``(a, b, c)`` (both sides of each axis) or ``(i0, i1, j0, j1, k0,
    k1)``, as TorchIO's ``parse_bounds``: non-negative integers."""
    values = (value,) if isinstance(value, Integral) else value
    if (
        not isinstance(values, Sequence)
        or isinstance(values, str)
        or len(values) not in (1, 3, 6)
        or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in values)
    ):
        raise ConfigError(
            f"{transform}: {key} must be one, three or six non-negative integers, not {value!r}"
        )
    numbers = [int(v) for v in values]
    if len(numbers) == 1:
        numbers *= 6
    elif len(numbers) == 3:
        numbers = [numbers[0], numbers[0], numbers[1], numbers[1], numbers[2], numbers[2]]
    return tuple(numbers)  # type: ignore[return-value]


def shifted_affine(affine: np.ndarray, voxels: Sequence[float]) -> np.ndarray:
    """``affine`` with its origin moved to voxel ``voxels`` (negative: before the first)."""
    moved = np.array(affine, dtype=np.float64)
    moved[:3, 3] = apply_affine(affine, np.asarray(voxels, dtype=np.float64))
    return moved


__all__ = ["Bounds", "parse_bounds", "shifted_affine"]
