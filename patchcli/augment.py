"""Random augmentation of patches with TorchIO or MONAI transforms.

A :class:`~patchcli.dataset.PatchDataset` item is shaped like a TorchIO batch
element (``{image: {"data": (C, X, Y, Z), "affine": (4, 4)}, ...}``), but
TorchIO's transforms take a ``tio.Subject``. :class:`TorchioTransform` turns an
item into a subject (label images as ``LabelMap``, so that spatial transforms
resample them with nearest neighbours), applies the transform, and turns it
back, keeping the item's other keys (``location``, ``subject``).
:class:`MonaiTransform` does the same for MONAI's dictionary transforms, which
take ``{name: tensor}``: each image goes in as a ``MetaTensor`` carrying its
affine, and comes back with the affine the transform gives it.
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


class MonaiTransform:
    """Apply a MONAI dictionary transform to :class:`~patchcli.dataset.PatchDataset` items.

    Parameters
    ----------
    transform : callable
        A MONAI dictionary transform (``RandFlipd(keys=["t1", "seg"])``,
        ``Compose([...])``), keyed by image names.
    images : sequence of str
        The item's images to hand over (``dataset.images``).

    Examples
    --------
    ::

        from monai.transforms import RandFlipd, RandRotate90d, Compose
        dataset = PatchDataset("patches.h5")
        keys = ["t1", "seg"]
        dataset.transform = MonaiTransform(
            Compose([RandFlipd(keys, prob=0.5, spatial_axis=0), RandRotate90d(keys)]),
            dataset.images,
        )
    """

    def __init__(self, transform: Callable, images) -> None:
        self.transform = transform
        self.images = list(images)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        import torch
        from monai.data import MetaTensor

        flat = {
            name: MetaTensor(item[name]["data"], affine=item[name]["affine"])
            for name in self.images
            if name in item
        }
        transformed = self.transform(flat)
        result = dict(item)
        for name in flat:
            data = transformed[name]
            affine = getattr(data, "affine", item[name]["affine"])
            plain = data.as_tensor() if hasattr(data, "as_tensor") else torch.as_tensor(data)
            result[name] = {"data": plain, "affine": torch.as_tensor(affine).to(torch.float64)}
        return result

    def __repr__(self) -> str:
        return f"MonaiTransform({self.transform!r})"


__all__ = ["MonaiTransform", "TorchioTransform"]
