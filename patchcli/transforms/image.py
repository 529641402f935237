"""The images a transform works on, and what is known of them before any voxel is read.

A :class:`Subject` holds a subject's images, each an :class:`Image`: its
voxels ``(C, X, Y, Z)``, its affine (voxel to RAS+ world, in mm) and its
type. Transforms act on them as TorchIO's act on a ``tio.Subject``:
``intensity`` images as ``ScalarImage``, ``label`` images as ``LabelMap``,
``sampling_map`` images as TorchIO's sampling-map images (spatial transforms
only).

An :class:`ImageGeometry` is what a transform's ``plan`` knows from the
headers alone: shape, affine, channels and dtype after the transform, so that
a run is planned (patch counts, output size, dtypes) before any voxel is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DataError

INTENSITY = "intensity"
LABEL = "label"
SAMPLING_MAP = "sampling_map"
IMAGE_TYPES = (INTENSITY, LABEL, SAMPLING_MAP)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each voxel axis: the lengths of the affine's columns."""
    return np.sqrt(np.sum(np.asarray(affine, dtype=np.float64)[:3, :3] ** 2, axis=0))


@dataclass
class Image:
    """One image of a subject: ``data`` (C, X, Y, Z), ``affine`` (4, 4), its ``type``, and
    the file it came from (named in errors)."""

    name: str
    type: str
    data: np.ndarray
    affine: np.ndarray
    path: Path | str = ""

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[1:4])  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        return spacing_of(self.affine)

    def on_grid_of(self, other: Image, tolerance: float) -> bool:
        """Whether both images have one spatial shape and affines within ``tolerance`` mm."""
        return self.spatial_shape == other.spatial_shape and np.allclose(
            self.affine, other.affine, rtol=0, atol=tolerance
        )


@dataclass(frozen=True)
class ImageGeometry:
    """An image as known before its voxels are read.

    ``shape`` and ``affine`` are None once a transform has made them depend on
    the voxels (a crop around a mask's bounding box).
    """

    name: str
    type: str
    shape: tuple[int, int, int] | None
    affine: np.ndarray | None
    channels: int
    dtype: np.dtype
    path: Path | str = ""

    @classmethod
    def of_header(cls, name: str, image_type: str, header) -> ImageGeometry:
        """The geometry an image header gives (``patchcli.io.volumes.Header``)."""
        return cls(
            name,
            image_type,
            tuple(int(n) for n in header.spatial_shape),
            header.affine,
            header.channels,
            header.dtype,
            header.path,
        )

    def with_grid(self, shape, affine) -> ImageGeometry:
        shape = None if shape is None else tuple(int(n) for n in shape)
        return replace(self, shape=shape, affine=None if affine is None else np.asarray(affine))

    def with_dtype(self, dtype) -> ImageGeometry:
        return replace(self, dtype=np.dtype(dtype))


class Subject:
    """A subject's images, by name, in the config's order; ``id`` names it in errors, and
    ``tolerance`` is the run's ``affine_tolerance``."""

    def __init__(
        self, subject_id: str, images: Mapping[str, Image], tolerance: float = 1e-4
    ) -> None:
        self.id = subject_id
        self.images = dict(images)
        #: How far, in mm, two affines may differ and still be one grid (``affine_tolerance``).
        self.tolerance = tolerance

    def __getitem__(self, name: str) -> Image:
        return self.images[name]

    def __contains__(self, name: object) -> bool:
        return name in self.images

    def __iter__(self) -> Iterator[Image]:
        return iter(self.images.values())

    def consistent_grid(self, what: str) -> tuple[tuple[int, int, int], np.ndarray]:
        """The spatial shape and affine every image shares; DataError naming ``what``
        (the transform that needs them) and the image that differs."""
        images = list(self.images.values())
        first = images[0]
        for image in images[1:]:
            if not image.on_grid_of(first, self.tolerance):
                raise DataError(
                    f"{image.path}: subject {self.id!r}: {what} needs every image on one grid, "
                    f"but {image.name!r} ({image.spatial_shape}) is not on the grid of "
                    f"{first.name!r} ({first.spatial_shape}); resample first, e.g. "
                    f"Resample: {{target: {first.name}}}"
                )
        return first.spatial_shape, first.affine


__all__ = [
    "IMAGE_TYPES",
    "INTENSITY",
    "LABEL",
    "SAMPLING_MAP",
    "Image",
    "ImageGeometry",
    "Subject",
    "spacing_of",
]
