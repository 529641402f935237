"""patchcli: pre-extract patches from 3D medical images for patch-based training."""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "PatchDataset", "GridAggregator", "VolumeDataset", "extract_torchio"]


def __getattr__(name: str):
    # Lazy so that ``import patchcli`` (and the CLI) never imports torch.
    if name == "PatchDataset":
        from .dataset import PatchDataset

        return PatchDataset
    if name == "VolumeDataset":
        from .volume_dataset import VolumeDataset

        return VolumeDataset
    if name == "extract_torchio":
        from .torchio_input import extract_torchio

        return extract_torchio
    if name == "GridAggregator":
        from .aggregate import GridAggregator

        return GridAggregator
    raise AttributeError(f"module 'patchcli' has no attribute {name!r}")
