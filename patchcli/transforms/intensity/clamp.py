"""``Clamp``: values limited to ``[out_min, out_max]`` (TorchIO's), e.g. a CT window."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ...errors import ConfigError, DataError
from ..image import ImageGeometry, Subject
from .base import IntensityTransform


class Clamp(IntensityTransform):
    """Clamp ``intensity`` images to ``out_min`` and ``out_max`` (either may be null).

    The dtype follows torch's ``clamp``, as in TorchIO: an integer image stays integer
    with integer bounds, and becomes float32 with a bound written as a float (``-1000.0``).
    """

    name = "Clamp"

    def __init__(self, out_min=None, out_max=None, **kwargs) -> None:
        super().__init__(**kwargs)
        for key, value in (("out_min", out_min), ("out_max", out_max)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
                raise ConfigError(f"Clamp: {key} must be a number or null, not {value!r}")
        if out_min is not None and out_max is not None and out_min > out_max:
            raise ConfigError(f"Clamp: out_min {out_min} is above out_max {out_max}")
        self.out_min, self.out_max = out_min, out_max

    def arguments(self) -> dict:
        return {"out_min": self.out_min, "out_max": self.out_max}

    def _dtype(self, dtype: np.dtype) -> np.dtype:
        dtype = np.dtype(dtype)
        floats = any(
            v is not None and not isinstance(v, Integral) for v in (self.out_min, self.out_max)
        )
        return np.dtype(np.float32) if dtype.kind in "iub" and floats else dtype

    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            dtype = self._dtype(image.data.dtype)
            data = image.data.astype(dtype, copy=False)
            low, high = self.out_min, self.out_max
            if dtype.kind in "iu":  # bounds beyond the dtype's range change nothing
                limits = np.iinfo(dtype)
                if (low is not None and low > limits.max) or (
                    high is not None and high < limits.min
                ):
                    raise DataError(
                        f"{image.path}: subject {subject.id!r}: Clamp: the window "
                        f"[{self.out_min}, {self.out_max}] lies outside {dtype}'s range"
                    )
                low = None if low is None else max(int(low), limits.min)
                high = None if high is None else min(int(high), limits.max)
            image.data = np.clip(data, low, high)

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        return {
            name: g.with_dtype(self._dtype(g.dtype)) if self.selects(name, g.type) else g
            for name, g in images.items()
        }


__all__ = ["Clamp"]
