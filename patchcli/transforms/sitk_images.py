"""Between patchcli's images, ``(C, X, Y, Z)`` with a RAS+ affine, and SimpleITK's.

SimpleITK keeps origins and directions in LPS+ and arrays in ``(Z, Y, X)``
order; the conversions are TorchIO's (``nib_to_sitk`` / ``sitk_to_nib`` with
``force_3d``), so that resampling through them gives TorchIO's voxels.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: RAS+ <-> LPS+: x and y change sign.
FLIP_XY = np.diag([-1.0, -1.0, 1.0])


def sitk_metadata(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """``(origin, spacing, direction)`` in SimpleITK's LPS+ terms, of a RAS+ affine."""
    affine = np.asarray(affine, dtype=np.float64)
    rotation_zoom = affine[:3, :3]
    spacing = np.sqrt(np.sum(rotation_zoom * rotation_zoom, axis=0))
    direction_ras = rotation_zoom / spacing
    origin_lps = FLIP_XY @ affine[:3, 3]
    direction_lps = FLIP_XY @ direction_ras
    return (
        tuple(origin_lps.tolist()),
        tuple(spacing.tolist()),
        tuple(direction_lps.ravel().tolist()),
    )


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The RAS+ affine of a SimpleITK image."""
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    direction_lps = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin_lps = np.array(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = (FLIP_XY @ direction_lps) * spacing
    affine[:3, 3] = FLIP_XY @ origin_lps
    return affine


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of ``data`` (C, X, Y, Z): scalar for one channel, vector for more."""
    channels = data.shape[0]
    array = data[0].transpose() if channels == 1 else data.transpose(3, 2, 1, 0)
    image = sitk.GetImageFromArray(array, isVector=channels > 1)
    origin, spacing, direction = sitk_metadata(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(data (C, X, Y, Z), RAS+ affine)`` of a SimpleITK image."""
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        data = array.transpose()[np.newaxis]
    else:
        data = array.transpose(3, 2, 1, 0)
    return data, ras_affine(image)


__all__ = ["FLIP_XY", "from_sitk", "ras_affine", "sitk_metadata", "to_sitk"]
