"""``RescaleIntensity``: values mapped linearly to ``out_min_max`` (TorchIO's)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np

from ...errors import ConfigError, DataError
from ..image import Subject
from ..transform import mask_of
from .base import NormalizationTransform


def _pair(value, key: str, low: float | None = None, high: float | None = None):
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, Real) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"RescaleIntensity: {key} must be two numbers, not {value!r}")
    first, second = float(value[0]), float(value[1])
    if first > second:
        raise ConfigError(f"RescaleIntensity: {key} must be increasing, not {value!r}")
    if (low is not None and first < low) or (high is not None and second > high):
        raise ConfigError(f"RescaleIntensity: {key} must lie in [{low}, {high}], not {value!r}")
    return first, second


class RescaleIntensity(NormalizationTransform):
    """Clip to the ``percentiles`` of the values inside ``masking_method`` (all voxels by
    default), then map ``in_min_max`` (default: the clipped range) to ``out_min_max``.
    The result is float32, computed as TorchIO computes it.

    An empty mask, or a constant image, is an error naming the file (TorchIO warns and
    leaves the image unchanged, in its own dtype).
    """

    name = "RescaleIntensity"

    def __init__(
        self,
        out_min_max=(0, 1),
        percentiles=(0, 100),
        masking_method: str | None = None,
        in_min_max=None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(out_min_max, Real) and not isinstance(out_min_max, bool):
            out_min_max = (-abs(out_min_max), abs(out_min_max))  # TorchIO's one-number form
        self.out_min_max = _pair(out_min_max, "out_min_max")
        self.percentiles = _pair(percentiles, "percentiles", 0, 100)
        self.in_min_max = None if in_min_max is None else _pair(in_min_max, "in_min_max")
        self.masking_method = masking_method

    def arguments(self) -> dict:
        return {
            "out_min_max": list(self.out_min_max),
            "percentiles": list(self.percentiles),
            "masking_method": self.masking_method,
            "in_min_max": None if self.in_min_max is None else list(self.in_min_max),
        }

    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            where = f"{image.path}: subject {subject.id!r}: {self.name}"
            array = image.data.astype(np.float32)
            mask = np.broadcast_to(
                mask_of(subject, self.masking_method, image, what=self.name), array.shape
            )
            if not mask.any():
                raise DataError(f"{where}: the mask {self.masking_method!r} is empty")
            cutoff = np.percentile(array[mask], self.percentiles)
            np.clip(array, *cutoff, out=array)
            if self.in_min_max is None:
                in_min, in_max = array.min(), array.max()
            else:
                in_min, in_max = self.in_min_max
            in_range = in_max - in_min
            if in_range == 0:
                raise DataError(f"{where}: every value is {in_min} (nothing to rescale)")
            out_min, out_max = self.out_min_max
            array -= in_min
            array /= in_range
            array *= out_max - out_min
            array += out_min
            image.data = array


__all__ = ["RescaleIntensity"]
