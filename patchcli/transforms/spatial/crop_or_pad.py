"""``CropOrPad``: every image cropped or padded to one shape (TorchIO's ``CropOrPad``).

Centred on the volume, or on the bounding box of a label image's non-zero
voxels (``mask_name``, optionally only ``labels``); with ``mask_name`` and no
``target_shape``, the images are cropped to that bounding box. An empty mask
falls back to the volume's centre, as in TorchIO (with a warning). Shapes may
be given in ``voxels`` (default), ``mm`` or ``cm``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Real

import numpy as np

from ...errors import ConfigError, PatchcliWarning
from ..image import ImageGeometry, Subject, spacing_of
from ..transform import (
    Transform,
    check_masking_method,
    check_one_grid,
    check_voxels,
    mask_of,
    parse_labels,
)
from .bounds import shifted_affine
from .pad import check_padding_mode, pad_array


def _parse_target_shape(value, units: str):
    if value is None:
        return None
    values = [value] * 3 if isinstance(value, Real) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != 3:
        raise ConfigError(f"CropOrPad: target_shape must be a number or three, not {value!r}")
    parsed = []
    for number in values:
        if number is None:
            parsed.append(None)
            continue
        if isinstance(number, bool) or not isinstance(number, Real) or not number > 0:
            raise ConfigError(
                f"CropOrPad: target_shape values must be positive numbers (or null), not {value!r}"
            )
        if units == "voxels":
            if not float(number).is_integer():
                raise ConfigError(
                    f"CropOrPad: target_shape must be whole voxels with units: voxels, "
                    f"not {value!r}"
                )
            parsed.append(int(number))
        else:
            parsed.append(float(number))
    return tuple(parsed)


def _halves(amounts) -> list[int]:
    """TorchIO's split of an amount between the two sides: the larger half first."""
    sides = []
    for amount in amounts:
        half = amount / 2
        sides.extend([int(np.ceil(half)), int(np.floor(half))])
    return sides


class CropOrPad(Transform):
    """Crop or pad every image to ``target_shape`` (see the module's description)."""

    name = "CropOrPad"

    def __init__(
        self,
        target_shape=None,
        padding_mode=0,
        mask_name: str | None = None,
        labels: Sequence[int] | None = None,
        only_crop: bool = False,
        only_pad: bool = False,
        location: str = "center",
        units: str = "voxels",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if target_shape is None and mask_name is None:
            raise ConfigError("CropOrPad: give target_shape, mask_name or both")
        if units not in ("voxels", "mm", "cm"):
            raise ConfigError(f"CropOrPad: units must be voxels, mm or cm, not {units!r}")
        if location != "center":
            raise ConfigError(
                f"CropOrPad: location {location!r}: only center is deterministic "
                "(a random location is augmentation)"
            )
        if only_crop and only_pad:
            raise ConfigError("CropOrPad: only_crop and only_pad cannot both be true")
        if labels is not None and mask_name is None:
            raise ConfigError("CropOrPad: labels needs mask_name")
        self.units = units
        self.target_shape = _parse_target_shape(target_shape, units)
        self.padding_mode = check_padding_mode(padding_mode, self.name)
        self.mask_name = mask_name
        self.labels = parse_labels(labels, self.name)
        self.only_crop = bool(only_crop)
        self.only_pad = bool(only_pad)

    def arguments(self) -> dict:
        return {
            "target_shape": None if self.target_shape is None else list(self.target_shape),
            "padding_mode": self.padding_mode,
            "mask_name": self.mask_name,
            "labels": self.labels,
            "only_crop": self.only_crop,
            "only_pad": self.only_pad,
            "units": self.units,
        }

    def check_names(self, image_types) -> None:
        super().check_names(image_types)
        check_masking_method(self.name, self.mask_name, image_types, "mask_name")

    # ------------------------------------------------------------------ shapes
    def _target_voxels(self, shape, affine) -> tuple[int, int, int] | None:
        if self.target_shape is None:
            return None
        spacing = spacing_of(affine) if affine is not None else None
        target = []
        for value, size, axis in zip(self.target_shape, shape, range(3)):
            if value is None:
                target.append(int(size))
            elif self.units == "voxels":
                target.append(int(value))
            else:
                if spacing is None:
                    return None
                factor = 10.0 if self.units == "cm" else 1.0
                target.append(int(round(float(value) * factor / float(spacing[axis]))))
        if min(target) < 1:
            raise ConfigError(f"CropOrPad: target_shape {self.target_shape} gives {target} voxels")
        return tuple(target)  # type: ignore[return-value]

    def _final_shape(self, shape, target) -> tuple[int, int, int]:
        if self.only_crop:
            return tuple(min(int(a), int(b)) for a, b in zip(shape, target))  # type: ignore
        if self.only_pad:
            return tuple(max(int(a), int(b)) for a, b in zip(shape, target))  # type: ignore
        return tuple(int(n) for n in target)  # type: ignore[return-value]

    def _centre_bounds(self, shape, target):
        difference = np.asarray(target) - np.asarray(shape)
        cropping = -np.minimum(difference, 0)
        padding = np.maximum(difference, 0)
        return _halves(padding), _halves(cropping)

    def _mask_bounds(self, subject: Subject, shape, target):
        image = next(iter(subject))
        mask = mask_of(subject, self.mask_name, image, self.labels, self.name)
        if not mask.any():
            warnings.warn(
                f"subject {subject.id!r}: CropOrPad: mask {self.mask_name!r} is empty; "
                "centred on the volume instead",
                PatchcliWarning,
                stacklevel=3,
            )
            return self._centre_bounds(shape, target if target is not None else shape)
        found = mask.any(axis=0)
        # The bounding box of the mask: first and one past the last voxel along each axis.
        extents = [np.flatnonzero(found.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
        low = np.array([extent[0] for extent in extents])
        high = np.array([extent[-1] + 1 for extent in extents])
        centre = np.mean((low, high), axis=0)
        target = high - low if target is None else target
        padding, cropping = [], []
        for axis in range(3):
            size, middle, length = shape[axis], centre[axis], target[axis]
            # TorchIO's rounding: a centre between voxels with an odd target moves half a voxel.
            if (length % 2 == 0) ^ (middle % 1 == 0):
                middle -= 0.5
            begin, end = middle - length / 2, middle + length / 2
            padding.extend([0 if begin >= 0 else -begin, 0 if end <= size else end - size])
            cropping.extend([begin if begin >= 0 else 0, size - end if end <= size else 0])
        return [int(v) for v in padding], [int(v) for v in cropping]

    # ----------------------------------------------------------------- running
    def apply(self, subject: Subject) -> None:
        shape, affine = subject.consistent_grid(self.name)
        target = self._target_voxels(shape, affine)
        if self.mask_name is None:
            padding, cropping = self._centre_bounds(shape, target)
        else:
            padding, cropping = self._mask_bounds(subject, shape, target)
        if any(padding) and not self.only_crop:
            padded = np.add(shape, np.add(padding[::2], padding[1::2]))
            check_voxels(self.name, next(iter(subject)), padded, subject.id)
        for image in self.images(subject):
            if any(padding) and not self.only_crop:
                where = f"{image.path}: subject {subject.id!r}: {self.name}: "
                image.data = pad_array(image.data, padding, self.padding_mode, where)
                image.affine = shifted_affine(image.affine, -np.asarray(padding[::2]))
            if any(cropping) and not self.only_pad:
                low, high = cropping[::2], cropping[1::2]
                size = image.spatial_shape
                image.data = image.data[
                    :,
                    low[0] : size[0] - high[0],
                    low[1] : size[1] - high[1],
                    low[2] : size[2] - high[2],
                ]
                image.affine = shifted_affine(image.affine, low)

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        check_one_grid(self.name, images)
        planned = dict(images)
        for name, geometry in images.items():
            if not self.selects(name, geometry.type):
                continue
            if geometry.shape is None:
                planned[name] = geometry.with_grid(None, None)
                continue
            target = self._target_voxels(geometry.shape, geometry.affine)
            partial = self.mask_name is not None and (self.only_crop or self.only_pad)
            if target is None or partial:
                # A mask's bounding box, mm without a known spacing, or one of padding and
                # cropping around a mask (which may both act on one axis): known from voxels.
                planned[name] = geometry.with_grid(None, None)
                continue
            check_voxels(self.name, geometry, target)
            shape = self._final_shape(geometry.shape, target)
            affine = None
            if self.mask_name is None and geometry.affine is not None:
                padding, cropping = self._centre_bounds(geometry.shape, target)
                low = np.zeros(3)
                if any(padding) and not self.only_crop:
                    low -= padding[::2]
                if any(cropping) and not self.only_pad:
                    low += cropping[::2]
                affine = shifted_affine(geometry.affine, low)
            planned[name] = geometry.with_grid(shape, affine)
        return planned


__all__ = ["CropOrPad"]
