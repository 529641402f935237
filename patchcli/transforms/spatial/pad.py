"""``Pad``: voxels added on each side of the selected images (TorchIO's ``Pad``)."""

from __future__ import annotations

from numbers import Real

import numpy as np

from ...errors import ConfigError, DataError
from ..image import ImageGeometry, Subject
from ..transform import Transform, check_voxels
from .bounds import parse_bounds, shifted_affine

#: numpy's padding modes TorchIO passes on, and the constants it computes from the image.
#: (Not ``empty``: uninitialised memory would make every run's output differ.)
NUMPY_MODES = ("edge", "wrap", "constant", "linear_ramp", "reflect", "symmetric")
STATISTIC_MODES = ("maximum", "mean", "median", "minimum")


def check_padding_mode(mode, transform: str) -> str | float:
    if isinstance(mode, Real) and not isinstance(mode, bool):
        return float(mode) if not float(mode).is_integer() else int(mode)
    if isinstance(mode, str) and mode in NUMPY_MODES + STATISTIC_MODES:
        return mode
    raise ConfigError(
        f"{transform}: padding_mode must be a number or one of "
        f"{', '.join(NUMPY_MODES + STATISTIC_MODES)}, not {mode!r}"
    )


def pad_array(data: np.ndarray, padding, mode, where: str = "") -> np.ndarray:
    """``data`` (C, X, Y, Z) padded as TorchIO's ``Pad`` pads it (constants over all channels).

    A constant an integer image cannot hold (-1000 for a uint8 label map) is a DataError
    starting with ``where``; TorchIO wraps it around (-1000 becomes label 24).
    """
    widths = ((0, 0), padding[0:2], padding[2:4], padding[4:6])
    constant = None
    if isinstance(mode, Real):
        constant = float(mode)
    elif mode == "maximum":
        constant = data.max().item()
    elif mode == "mean":
        # The exact mean rounded to float32, as torch's (nearly exact) float32 mean gives
        # it: an integer image's constant is then truncated alike (1999.99995 -> 2000).
        constant = float(np.float32(data.mean(dtype=np.float64)))
    elif mode == "median":
        constant = float(np.median(data.astype(np.float32)))
    elif mode == "minimum":
        constant = data.min().item()
    if constant is not None:
        if data.dtype.kind in "iu" and not (
            np.iinfo(data.dtype).min <= constant <= np.iinfo(data.dtype).max
        ):
            raise DataError(
                f"{where}padding value {constant:g} does not fit the image's dtype "
                f"{data.dtype}; pad it apart (include/exclude) with a value it holds"
            )
        return np.pad(data, widths, mode="constant", constant_values=constant)
    return np.pad(data, widths, mode=mode)


class Pad(Transform):
    """Add ``padding`` voxels (``n``, ``(a, b, c)`` or six numbers) with ``padding_mode``:
    a constant, a numpy mode (``edge``, ``reflect``, ...) or a statistic of the image."""

    name = "Pad"

    def __init__(self, padding, padding_mode=0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.padding = parse_bounds(padding, self.name, "padding")
        self.padding_mode = check_padding_mode(padding_mode, self.name)

    def arguments(self) -> dict:
        return {"padding": list(self.padding), "padding_mode": self.padding_mode}

    def apply(self, subject: Subject) -> None:
        low = self.padding[::2]
        for image in self.images(subject):
            shape = np.add(image.spatial_shape, np.add(self.padding[::2], self.padding[1::2]))
            check_voxels(self.name, image, shape, subject.id)
            where = f"{image.path}: subject {subject.id!r}: {self.name}: "
            image.data = pad_array(image.data, self.padding, self.padding_mode, where)
            image.affine = shifted_affine(image.affine, -np.asarray(low))

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        planned = dict(images)
        for name, geometry in images.items():
            if not self.selects(name, geometry.type) or geometry.shape is None:
                continue
            shape = tuple(
                n + a + b for n, a, b in zip(geometry.shape, self.padding[::2], self.padding[1::2])
            )
            check_voxels(self.name, geometry, shape)
            affine = (
                None
                if geometry.affine is None
                else shifted_affine(geometry.affine, -np.asarray(self.padding[::2]))
            )
            planned[name] = geometry.with_grid(shape, affine)
        return planned


__all__ = ["Pad", "check_padding_mode", "pad_array"]
