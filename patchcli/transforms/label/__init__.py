"""Label transforms: they change ``label`` images only (TorchIO's names)."""

from .remap_labels import RemapLabels

__all__ = ["RemapLabels"]
