"""Random augmentation of patches with TorchIO transforms.

A :class:`~patchcli.dataset.PatchDataset` item is shaped like a TorchIO batch
element (``{image: {"data": (C, X, Y, Z), "affine": (4, 4)}, ...}``), but
TorchIO's transforms take a ``tio.Subject``. :class:`TorchioTransform` turns an
item into a subject (label images as ``LabelMap``, so that spatial transforms
resample them with nearest neighbours), applies the transform, and turns it
back, keeping the item's other keys (``location``, ``subject``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class TorchioTransform:
    """Apply a TorchIO transform to :class:`~patchcli.dataset.PatchDataset` items.

    Parameters
    ----------
    transform : callable
        A TorchIO transform (``tio.RandomFlip()``, ``tio.Compose([...])``).
    image_types : mapping of str to str
        Image name -> ``intensity``, ``label`` or ``sampling_map``; give
        ``dataset.image_types``. Label images become ``tio.LabelMap``, the
        others ``tio.ScalarImage``.

    Examples
    --------
    ::

        import torchio as tio
        dataset = PatchDataset("patches.h5")
        dataset.transform = TorchioTransform(
            tio.Compose([tio.RandomFlip(axes=(0,)), tio.RandomAffine(degrees=10)]),
            dataset.image_types,
        )
    """

    def __init__(self, transform: Callable, image_types: Mapping[str, str]) -> None:
        self.transform = transform
        self.image_types = dict(image_types)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        import torch
        import torchio as tio

        images = {}
        for name, kind in self.image_types.items():
            if name not in item:
                continue  # an image the dataset does not read
            image_class = tio.LabelMap if kind == "label" else tio.ScalarImage
            affine = item[name]["affine"]
            images[name] = image_class(
                tensor=item[name]["data"],
                affine=affine.numpy() if isinstance(affine, torch.Tensor) else affine,
            )
        transformed = self.transform(tio.Subject(**images))
        result = dict(item)
        for name in images:
            image = transformed[name]
            result[name] = {"data": image.data, "affine": torch.as_tensor(image.affine)}
        return result

    def __repr__(self) -> str:
        return f"TorchioTransform({self.transform!r})"


__all__ = ["TorchioTransform"]
