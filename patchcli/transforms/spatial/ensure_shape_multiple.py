"""``EnsureShapeMultiple``: pad (or crop) each axis to a multiple of a number (TorchIO's)."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from ...errors import ConfigError
from ..image import ImageGeometry, Subject
from ..transform import Transform, check_one_grid
from .crop_or_pad import CropOrPad


class EnsureShapeMultiple(Transform):
    """Make every axis a multiple of ``target_multiple`` (one integer or three), by padding
    (``method: pad``, default) or cropping (``crop``) around the centre, as TorchIO does
    with ``CropOrPad``."""

    name = "EnsureShapeMultiple"

    def __init__(self, target_multiple, method: str = "pad", **kwargs) -> None:
        super().__init__(**kwargs)
        values = [target_multiple] * 3 if isinstance(target_multiple, Integral) else target_multiple
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 3
            or not all(
                isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values
            )
        ):
            raise ConfigError(
                f"{self.name}: target_multiple must be a positive integer or three, "
                f"not {target_multiple!r}"
            )
        if method not in ("pad", "crop"):
            raise ConfigError(f"{self.name}: method must be pad or crop, not {method!r}")
        self.target_multiple = tuple(int(v) for v in values)
        self.method = method

    def arguments(self) -> dict:
        return {"target_multiple": list(self.target_multiple), "method": self.method}

    def _crop_or_pad(self, shape) -> CropOrPad:
        ratio = np.asarray(shape, dtype=float) / np.asarray(self.target_multiple)
        ratio = np.floor(ratio) if self.method == "crop" else np.ceil(ratio)
        target = np.maximum(ratio * self.target_multiple, 1).astype(int).tolist()
        return CropOrPad(target, include=self.include, exclude=self.exclude)

    def apply(self, subject: Subject) -> None:
        shape, _ = subject.consistent_grid(self.name)
        self._crop_or_pad(shape).apply(subject)

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        check_one_grid(self.name, images)
        shapes = [g.shape for g in images.values()]
        if any(shape is None for shape in shapes):
            return {
                name: g.with_grid(None, None) if self.selects(name, g.type) else g
                for name, g in images.items()
            }
        return self._crop_or_pad(shapes[0]).plan(images)


__all__ = ["EnsureShapeMultiple"]
