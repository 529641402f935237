"""Spatial transforms: they change the grid of every image they select (TorchIO's names)."""

from .crop import Crop
from .crop_or_pad import CropOrPad
from .ensure_shape_multiple import EnsureShapeMultiple
from .pad import Pad
from .resample import Resample
from .to_canonical import ToCanonical, ToOrientation

__all__ = [
    "Crop",
    "CropOrPad",
    "EnsureShapeMultiple",
    "Pad",
    "Resample",
    "ToCanonical",
    "ToOrientation",
]
