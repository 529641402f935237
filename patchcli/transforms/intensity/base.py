"""What intensity transforms share: they select ``intensity`` images, and may be masked."""

from __future__ import annotations

from ..image import INTENSITY
from ..transform import Transform, check_masking_method


class IntensityTransform(Transform):
    """A transform of ``intensity`` images' values (TorchIO's ``IntensityTransform``)."""

    acts_on = (INTENSITY,)
    #: Where the statistics are taken: None (every voxel) or a label image's name.
    masking_method: str | None = None

    def check_names(self, image_types) -> None:
        super().check_names(image_types)
        check_masking_method(self.name, self.masking_method, image_types, "masking_method")


__all__ = ["IntensityTransform"]
