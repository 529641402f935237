"""``ToOrientation`` and ``ToCanonical``: voxel axes reordered and flipped, the world kept."""

from __future__ import annotations

import numpy as np
from nibabel import orientations

from ...errors import ConfigError
from ..image import ImageGeometry, Subject
from ..transform import Transform


def _reorientation(affine: np.ndarray, target: str) -> np.ndarray | None:
    """The nibabel orientation transform from ``affine``'s axes to ``target``, or None when
    its axis codes already are ``target`` (nothing to do, as in TorchIO)."""
    if "".join(orientations.aff2axcodes(affine)) == target:
        return None
    current = orientations.io_orientation(affine)
    return orientations.ornt_transform(current, orientations.axcodes2ornt(tuple(target)))


class ToOrientation(Transform):
    """Reorder and flip the voxel axes to ``orientation`` (e.g. ``RAS``, ``LPS``), as
    TorchIO's ``ToOrientation``; voxel values and world positions are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from patchcli.transforms.image import Image, Subject
    >>> affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS
    >>> subject = Subject("s", {"t1": Image("t1", "intensity", np.zeros((1, 4, 5, 6)), affine)})
    >>> ToOrientation("RAS").apply(subject)
    >>> subject["t1"].data.shape, np.diag(subject["t1"].affine).tolist()
    ((1, 4, 5, 6), [1.0, 1.0, 2.0, 1.0])
    """

    name = "ToOrientation"

    def __init__(self, orientation: str = "RAS", **kwargs) -> None:
        super().__init__(**kwargs)
        code = orientation.upper() if isinstance(orientation, str) else ""
        # One letter of each pair, in any order: RAS, LPS, PLS, SLP, ...
        pairs = sorted("RLAPSI".index(letter) // 2 for letter in code if letter in "RLAPSI")
        if len(code) != 3 or pairs != [0, 1, 2]:
            raise ConfigError(
                f"{self.name}: orientation must be three letters, one of R/L, A/P and S/I "
                f"each (e.g. RAS, LPS), not {orientation!r}"
            )
        self.orientation = code

    def arguments(self) -> dict:
        return {"orientation": self.orientation}

    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            transform = _reorientation(image.affine, self.orientation)
            if transform is None:
                continue
            # Channels last for nibabel, which reorients the first three axes.
            channels_last = np.moveaxis(image.data, 0, -1)
            reoriented = orientations.apply_orientation(channels_last, transform)
            image.affine = image.affine @ orientations.inv_ornt_aff(transform, image.spatial_shape)
            image.data = np.moveaxis(reoriented, -1, 0)

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        planned = dict(images)
        for name, geometry in images.items():
            if not self.selects(name, geometry.type):
                continue
            if geometry.affine is None or geometry.shape is None:
                # Whether and how the axes turn depends on the affine: unknown, so is the shape.
                planned[name] = geometry.with_grid(None, None)
                continue
            transform = _reorientation(geometry.affine, self.orientation)
            if transform is None:
                continue
            shape = _reoriented_shape(geometry.shape, transform)
            affine = geometry.affine @ orientations.inv_ornt_aff(transform, geometry.shape)
            planned[name] = geometry.with_grid(shape, affine)
        return planned


def _reoriented_shape(shape, transform: np.ndarray) -> tuple[int, int, int]:
    """The shape after ``apply_orientation``: input axis ``i`` becomes output axis
    ``transform[i, 0]``."""
    out = [0, 0, 0]
    for axis, (new_axis, _) in enumerate(transform):
        out[int(new_axis)] = int(shape[axis])
    return tuple(out)  # type: ignore[return-value]


class ToCanonical(ToOrientation):
    """Reorient to RAS+ (TorchIO's ``ToCanonical``): ``ToOrientation('RAS')``."""

    name = "ToCanonical"

    def __init__(self, include=None, exclude=None) -> None:
        super().__init__("RAS", include=include, exclude=exclude)

    def arguments(self) -> dict:
        return {}


__all__ = ["ToCanonical", "ToOrientation"]
