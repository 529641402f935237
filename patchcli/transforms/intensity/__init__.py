"""Intensity transforms: they change the values of ``intensity`` images only (TorchIO's names)."""

from .clamp import Clamp
from .mask import Mask
from .rescale_intensity import RescaleIntensity
from .z_normalization import ZNormalization

__all__ = ["Clamp", "Mask", "RescaleIntensity", "ZNormalization"]
