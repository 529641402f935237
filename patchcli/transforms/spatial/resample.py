"""``Resample``: every selected image onto a new grid, with SimpleITK's resampler.

``target`` is a voxel size in mm (one number or three) or the name of an image
whose grid the others take, as in TorchIO. A new voxel size keeps the volume's
centre and direction; its shape is ``floor(shape * spacing / target)`` (TorchIO's
``Resample.get_reference_image``, reproduced exactly). ``intensity`` images use
``image_interpolation``; ``label`` and ``sampling_map`` images use
``label_interpolation`` (TorchIO resamples every non-``ScalarImage`` as a label).

One difference, on purpose: an integer ``intensity`` image interpolated by
anything but ``nearest`` becomes float32, where TorchIO casts the interpolated
values back to the integer type, truncating them (255 and 0 halfway give 127).
Its values are TorchIO's on the image first converted to float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np
import SimpleITK as sitk

from ...errors import ConfigError
from ..image import INTENSITY, Image, ImageGeometry, Subject, spacing_of
from ..sitk_images import from_sitk, sitk_metadata, to_sitk
from ..transform import Transform, check_voxels

#: TorchIO's interpolation names and SimpleITK's interpolators.
INTERPOLATIONS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "cubic": sitk.sitkBSpline,
    "gaussian": sitk.sitkGaussian,
    "label_gaussian": sitk.sitkLabelGaussian,
    "hamming": sitk.sitkHammingWindowedSinc,
    "cosine": sitk.sitkCosineWindowedSinc,
    "welch": sitk.sitkWelchWindowedSinc,
    "lanczos": sitk.sitkLanczosWindowedSinc,
    "blackman": sitk.sitkBlackmanWindowedSinc,
}


def parse_interpolation(value, transform: str, key: str) -> str:
    if not isinstance(value, str) or value.lower() not in INTERPOLATIONS:
        raise ConfigError(
            f"{transform}: {key} {value!r} is not an interpolation; use one of "
            f"{', '.join(INTERPOLATIONS)}"
        )
    return value.lower()


def _parse_target(target) -> tuple[float, float, float] | str:
    if isinstance(target, str):
        return target
    if isinstance(target, Real) and not isinstance(target, bool):
        spacing = (float(target),) * 3
    elif (
        isinstance(target, Sequence)
        and len(target) == 3
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in target)
    ):
        spacing = tuple(float(v) for v in target)
    else:
        raise ConfigError(
            f"Resample: target must be a voxel size in mm (a number or three) or an image "
            f"name, not {target!r}"
        )
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ConfigError(f"Resample: target spacing must be positive, not {target!r}")
    return spacing  # type: ignore[return-value]


def reference_grid(
    shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid of ``spacing`` over the volume of ``shape`` and ``affine``: the same centre
    and direction, ``floor(shape * old / new)`` voxels (1 where the volume has 1)."""
    old_size = np.asarray(shape, dtype=np.int64)
    old_spacing = spacing_of(affine)
    new_spacing = np.asarray(spacing, dtype=float)
    new_size = np.floor(old_size * old_spacing / new_spacing)
    new_size[old_size == 1] = 1
    direction = np.asarray(affine, dtype=np.float64)[:3, :3] / old_spacing
    centre = np.asarray(affine, dtype=np.float64) @ np.append((old_size - 1) / 2, 1.0)
    new_affine = np.eye(4)
    new_affine[:3, :3] = direction * new_spacing
    new_affine[:3, 3] = centre[:3] - direction @ ((new_size - 1) / 2 * new_spacing)
    return tuple(int(n) for n in new_size), new_affine  # type: ignore[return-value]


class Resample(Transform):
    """Resample images to a voxel size or to another image's grid (TorchIO's ``Resample``).

    Parameters
    ----------
    target : float, three floats or str
        Voxel size in mm, or the name of the image whose grid to take.
    image_interpolation : str
        For ``intensity`` images: ``linear`` (default), ``nearest``, ``bspline``, ...
    label_interpolation : str
        For ``label`` and ``sampling_map`` images: ``nearest`` (default).
    scalars_only : bool
        Resample ``intensity`` images only.
    antialias : bool
        Smooth ``intensity`` images along the axes they are downsampled on first, with
        TorchIO's Gaussian widths.
    """

    name = "Resample"

    def __init__(
        self,
        target=1,
        image_interpolation: str = "linear",
        label_interpolation: str = "nearest",
        scalars_only: bool = False,
        antialias: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for key, value in (("scalars_only", scalars_only), ("antialias", antialias)):
            if not isinstance(value, bool):
                raise ConfigError(f"Resample: {key} must be true or false, not {value!r}")
        self.scalars_only = scalars_only
        self.antialias = antialias
        self.target = _parse_target(target)
        self.image_interpolation = parse_interpolation(
            image_interpolation, self.name, "image_interpolation"
        )
        self.label_interpolation = parse_interpolation(
            label_interpolation, self.name, "label_interpolation"
        )

    def arguments(self) -> dict:
        target = self.target if isinstance(self.target, str) else list(self.target)
        arguments = {
            "target": target,
            "image_interpolation": self.image_interpolation,
            "label_interpolation": self.label_interpolation,
        }
        # Only when set: the fingerprints of lists written without them stay the same.
        if self.scalars_only:
            arguments["scalars_only"] = True
        if self.antialias:
            arguments["antialias"] = True
        return arguments

    def selects(self, name: str, image_type: str) -> bool:
        if self.scalars_only and image_type != INTENSITY:
            return False
        return super().selects(name, image_type)

    def check_names(self, image_types) -> None:
        super().check_names(image_types)
        if isinstance(self.target, str) and self.target not in image_types:
            raise ConfigError(
                f"Resample: target {self.target!r} is neither a voxel size nor an image "
                f"(images: {list(image_types)})"
            )

    def _interpolation(self, image_type: str) -> str:
        return self.image_interpolation if image_type == INTENSITY else self.label_interpolation

    def _to_float(self, image_type: str, dtype: np.dtype) -> bool:
        """Interpolated integer intensities become float32 (not truncated back)."""
        return (
            image_type == INTENSITY
            and self.image_interpolation != "nearest"
            and np.dtype(dtype).kind in "iub"
        )

    def _result_dtype(self, image_type: str, dtype: np.dtype) -> np.dtype:
        # SimpleITK's Gaussian gives float32 whatever it smooths (TorchIO's dtype too).
        if self._to_float(image_type, dtype) or (self.antialias and image_type == INTENSITY):
            return np.dtype(np.float32)
        return np.dtype(dtype)

    # ----------------------------------------------------------------- running
    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            if isinstance(self.target, str):
                if image.name == self.target:
                    continue
                reference = subject[self.target]
                grid = (reference.spatial_shape, reference.affine)
            else:
                grid = None
            self._resample(image, grid, subject.id)

    def _resample(self, image: Image, grid, subject: str) -> None:
        data = image.data
        if self._to_float(image.type, data.dtype):
            data = data.astype(np.float32)
        floating = to_sitk(_sitk_dtype(data), image.affine)
        if grid is None:
            size, origin, spacing, direction = _reference_grid(floating, self.target)
        else:
            size = [int(n) for n in grid[0]]
            origin, spacing, direction = sitk_metadata(grid[1])
        check_voxels(self.name, image, size, subject)
        if self.antialias and image.type == INTENSITY:
            floating = _antialiased(floating, spacing)
        image.data, image.affine = _execute(
            floating, data.dtype, self._interpolation(image.type), size, origin, spacing, direction
        )

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        planned = dict(images)
        for name, geometry in images.items():
            if not self.selects(name, geometry.type):
                continue
            dtype = self._result_dtype(geometry.type, geometry.dtype)
            if isinstance(self.target, str):
                if name == self.target:
                    continue
                reference = images[self.target]
                shape, affine = reference.shape, reference.affine
            elif geometry.shape is None or geometry.affine is None:
                shape = affine = None
            else:
                shape, affine = reference_grid(geometry.shape, geometry.affine, self.target)
            if shape is not None:
                check_voxels(self.name, geometry, shape)
            planned[name] = geometry.with_grid(shape, affine).with_dtype(dtype)
        return planned


def _antialiased(floating: sitk.Image, output_spacing) -> sitk.Image:
    """``floating`` smoothed along each axis it is downsampled on, as TorchIO's ``antialias``
    (Cardoso et al., MICCAI 2015: a Gaussian whose width matches the new voxel size)."""
    factors = np.asarray(output_spacing, dtype=float) / np.asarray(floating.GetSpacing())
    factors[factors <= 1] = np.nan
    sigmas = np.asarray(floating.GetSpacing()) * np.sqrt(
        (factors**2 - 1) * (2 * np.sqrt(2 * np.log(2))) ** (-2)
    )
    sigmas[np.isnan(sigmas)] = 1e-9  # no smoothing along axes not downsampled
    gaussian = sitk.SmoothingRecursiveGaussianImageFilter()
    gaussian.SetSigma(sigmas.tolist())
    return gaussian.Execute(floating)


def _sitk_dtype(data: np.ndarray) -> np.ndarray:
    # SimpleITK has neither boolean nor half-precision pixels.
    if data.dtype == bool:
        return data.astype(np.uint8)
    return data.astype(np.float32) if data.dtype == np.float16 else data


def _execute(floating, dtype, interpolation, size, origin, spacing, direction):
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(INTERPOLATIONS[interpolation])
    resampler.SetOutputDirection(direction)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputSpacing(spacing)
    resampler.SetSize([int(n) for n in size])
    data, affine = from_sitk(resampler.Execute(floating))
    if np.dtype(dtype) in (np.dtype(bool), np.dtype(np.float16)):
        data = data.astype(dtype)
    return data, affine


def resample_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    shape,
    target_affine: np.ndarray,
    interpolation: str = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (C, X, Y, Z) with ``affine``, resampled onto the grid ``shape`` and
    ``target_affine`` through world coordinates (SimpleITK, as TorchIO's ``Resample`` to
    an image); voxels outside ``data`` are 0. Returns the data, in ``data``'s dtype, and
    its affine.

    Examples
    --------
    >>> import numpy as np
    >>> data = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> twice, _ = resample_to_grid(data, np.diag([2.0, 2, 2, 1]), (4, 4, 4), np.eye(4))
    >>> twice.shape, float(twice[0, 2, 2, 2])
    ((1, 4, 4, 4), 7.0)
    """
    origin, spacing, direction = sitk_metadata(target_affine)
    floating = to_sitk(_sitk_dtype(data), affine)
    return _execute(floating, data.dtype, interpolation, shape, origin, spacing, direction)


def _reference_grid(floating: sitk.Image, spacing: Sequence[float]):
    """TorchIO's reference grid for a new voxel size (same centre and direction), as
    ``(size, origin, spacing, direction)``, computed as TorchIO computes it (without
    allocating the reference image TorchIO makes for it)."""
    old_spacing = np.array(floating.GetSpacing(), dtype=float)
    new_spacing = np.array(spacing, dtype=float)
    old_size = np.array(floating.GetSize())
    old_last_index_lps = np.array(
        floating.TransformIndexToPhysicalPoint((old_size - 1).tolist()), dtype=float
    )
    old_origin_lps = np.array(floating.GetOrigin(), dtype=float)
    centre_lps = (old_last_index_lps + old_origin_lps) / 2
    new_size = np.floor(old_size * old_spacing / new_spacing)
    new_size[old_size == 1] = 1
    direction = np.asarray(floating.GetDirection(), dtype=float).reshape(3, 3)
    half_extent = (new_size - 1) / 2 * new_spacing
    new_origin_lps = (centre_lps - direction @ half_extent).tolist()
    return (
        new_size.astype(int).tolist(),
        new_origin_lps,
        new_spacing.tolist(),
        floating.GetDirection(),
    )


__all__ = ["INTERPOLATIONS", "Resample", "reference_grid", "resample_to_grid"]
