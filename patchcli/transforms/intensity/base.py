"""What intensity transforms share: they select ``intensity`` images, and may be masked."""

from __future__ import annotations

import numpy as np

from ..image import INTENSITY, ImageGeometry
from ..transform import Transform, check_masking_method


class IntensityTransform(Transform):
    """A transform of ``intensity`` images' values (TorchIO's ``IntensityTransform``)."""

    acts_on = (INTENSITY,)
    #: Where the statistics are taken: None (every voxel) or a label image's name.
    masking_method: str | None = None

    def check_names(self, image_types) -> None:
        super().check_names(image_types)
        check_masking_method(self.name, self.masking_method, image_types, "masking_method")


class NormalizationTransform(IntensityTransform):
    """A normalisation (TorchIO's ``NormalizationTransform``): its images become float32."""

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        return {
            name: g.with_dtype(np.float32) if self.selects(name, g.type) else g
            for name, g in images.items()
        }


__all__ = ["IntensityTransform", "NormalizationTransform"]
