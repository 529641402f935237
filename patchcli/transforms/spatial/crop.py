"""``Crop``: voxels removed from each side of the selected images (TorchIO's ``Crop``)."""

from __future__ import annotations

import numpy as np

from ...errors import DataError
from ..image import ImageGeometry, Subject
from ..transform import Transform
from .bounds import parse_bounds, shifted_affine


class Crop(Transform):
    """Remove ``cropping`` voxels: ``n``, ``(a, b, c)`` or ``(i0, i1, j0, j1, k0, k1)``."""

    name = "Crop"

    def __init__(self, cropping, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cropping = parse_bounds(cropping, self.name, "cropping")

    def arguments(self) -> dict:
        return {"cropping": list(self.cropping)}

    def _remaining(self, shape, where: str, subject: str | None) -> tuple[int, int, int]:
        low, high = self.cropping[::2], self.cropping[1::2]
        remaining = tuple(int(n) - a - b for n, a, b in zip(shape, low, high))
        if min(remaining) < 1:
            of = "" if subject is None else f"subject {subject!r}: "
            raise DataError(
                f"{where}: {of}Crop {list(self.cropping)} leaves no voxels of a "
                f"{tuple(int(n) for n in shape)} image"
            )
        return remaining  # type: ignore[return-value]

    def apply(self, subject: Subject) -> None:
        low = self.cropping[::2]
        for image in self.images(subject):
            i1, j1, k1 = np.add(low, self._remaining(image.spatial_shape, image.path, subject.id))
            image.data = image.data[:, low[0] : i1, low[1] : j1, low[2] : k1]
            image.affine = shifted_affine(image.affine, low)

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        planned = dict(images)
        for name, geometry in images.items():
            if not self.selects(name, geometry.type) or geometry.shape is None:
                continue
            shape = self._remaining(geometry.shape, geometry.path, None)
            affine = (
                None
                if geometry.affine is None
                else shifted_affine(geometry.affine, self.cropping[::2])
            )
            planned[name] = geometry.with_grid(shape, affine)
        return planned


__all__ = ["Crop"]
