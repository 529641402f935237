"""``Mask``: voxels outside a label image set to ``outside_value`` (TorchIO's ``Mask``)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np

from ...errors import ConfigError, DataError
from ..image import Subject
from ..transform import mask_of, parse_labels
from .base import IntensityTransform


class Mask(IntensityTransform):
    """Set ``intensity`` voxels outside ``masking_method`` (a label image; only ``labels``
    of it, if given) to ``outside_value``, in the image's own dtype."""

    name = "Mask"

    def __init__(
        self,
        masking_method: str,
        outside_value=0,
        labels: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(outside_value, bool) or not isinstance(outside_value, Real):
            raise ConfigError(f"Mask: outside_value must be a number, not {outside_value!r}")
        if masking_method is None:
            raise ConfigError("Mask: masking_method must name a label image")
        self.masking_method = masking_method
        self.outside_value = outside_value
        self.labels = parse_labels(labels, self.name)

    def arguments(self) -> dict:
        return {
            "masking_method": self.masking_method,
            "outside_value": self.outside_value,
            "labels": self.labels,
        }

    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            mask = mask_of(subject, self.masking_method, image, self.labels, self.name)
            data = image.data.copy()
            if data.dtype.kind in "iu" and not (
                np.iinfo(data.dtype).min <= self.outside_value <= np.iinfo(data.dtype).max
            ):
                raise DataError(
                    f"{image.path}: subject {subject.id!r}: Mask: outside_value "
                    f"{self.outside_value} does not fit the image's dtype {data.dtype}"
                )
            data[~np.broadcast_to(mask, data.shape)] = self.outside_value
            image.data = data


__all__ = ["Mask"]
