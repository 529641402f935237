"""What every transform shares: the images it acts on, masks, and its description.

A transform acts on the images TorchIO's would: a spatial transform on every
image, an intensity transform on ``intensity`` images (TorchIO's
``ScalarImage``), a label transform on ``label`` images (``LabelMap``);
``include`` and ``exclude`` narrow that to named images. It changes a
:class:`~patchcli.transforms.image.Subject` in place (:meth:`Transform.apply`),
and says what it does to the images' geometry and dtypes before any voxel is
read (:meth:`Transform.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .image import IMAGE_TYPES, INTENSITY, LABEL, Image, ImageGeometry, Subject

#: Images a spatial transform never moves apart: more voxels than this per channel
#: (8 GiB of float32) is refused before any work, as an absurd request.
MAX_VOXELS = 2**31


class Transform:
    """Base class of patchcli's transforms.

    Parameters
    ----------
    include, exclude : list of str, optional
        Names of the images to transform (only those), or to leave alone, as
        TorchIO's ``include`` and ``exclude``.

    Attributes
    ----------
    acts_on : tuple of str
        The image types the transform changes.
    """

    acts_on: tuple[str, ...] = IMAGE_TYPES
    #: TorchIO's class name, used in configs, records and messages.
    name = "Transform"

    def __init__(
        self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
    ) -> None:
        if include is not None and exclude is not None:
            raise ConfigError(f"{self.name}: give include or exclude, not both")
        self.include = None if include is None else _names(include, "include", self.name)
        self.exclude = None if exclude is None else _names(exclude, "exclude", self.name)

    # ------------------------------------------------------------ which images
    def selects(self, name: str, image_type: str) -> bool:
        """Whether this transform acts on image ``name`` of ``image_type``."""
        if image_type not in self.acts_on:
            return False
        if self.include is not None:
            return name in self.include
        return self.exclude is None or name not in self.exclude

    def images(self, subject: Subject) -> list[Image]:
        return [image for image in subject if self.selects(image.name, image.type)]

    def check_names(self, image_types: Mapping[str, str]) -> None:
        """Refuse names that are not images of the config (ConfigError)."""
        for key, names in (("include", self.include), ("exclude", self.exclude)):
            for name in names or ():
                if name not in image_types:
                    raise ConfigError(
                        f"{self.name}: {key} names {name!r}, which is not an image "
                        f"(images: {list(image_types)})"
                    )

    # ----------------------------------------------------------------- running
    def apply(self, subject: Subject) -> None:
        """Transform ``subject``'s images in place."""
        raise NotImplementedError

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        """The images' geometry and dtypes after this transform (before any voxel is read).

        The default: what a transform that changes neither does.
        """
        return dict(images)

    # -------------------------------------------------------------- describing
    def arguments(self) -> dict[str, Any]:
        """Every argument, defaults included, as plain YAML values (TorchIO's names)."""
        return {}

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{Name: {argument: value}}``, as recorded in outputs and fingerprinted."""
        arguments = self.arguments()
        if self.include is not None:
            arguments["include"] = list(self.include)
        if self.exclude is not None:
            arguments["exclude"] = list(self.exclude)
        return {self.name: arguments}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.describe()[self.name].items())
        return f"{self.name}({arguments})"


def _names(value: Any, key: str, transform: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{transform}: {key} must be an image name or a list of them")
    return list(value)


def parse_labels(labels: Any, transform: str) -> list[int] | None:
    """A ``labels`` argument: None, or a list of integers (ConfigError otherwise)."""
    if labels is None:
        return None
    if (
        isinstance(labels, str)
        or not isinstance(labels, Sequence)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
    ):
        raise ConfigError(f"{transform}: labels must be a list of integers, not {labels!r}")
    return [int(v) for v in labels]


def check_masking_method(
    transform: str, masking_method: Any, image_types: Mapping[str, str], key: str
) -> None:
    """A mask must be None or the name of a label image (as TorchIO requires a LabelMap)."""
    if masking_method is None:
        return
    if not isinstance(masking_method, str):
        raise ConfigError(
            f"{transform}: {key} must be the name of a label image or null, not {masking_method!r}"
        )
    if masking_method not in image_types:
        raise ConfigError(
            f"{transform}: {key} {masking_method!r} is not an image (images: {list(image_types)})"
        )
    if image_types[masking_method] != LABEL:
        raise ConfigError(
            f"{transform}: {key} {masking_method!r} is an image of type "
            f"{image_types[masking_method]}; a mask must be a label image"
        )


def mask_of(
    subject: Subject,
    masking_method: str | None,
    image: Image,
    labels: Sequence[int] | None = None,
    what: str = "",
) -> np.ndarray:
    """The boolean mask of ``masking_method`` for ``image``: all voxels for None, else the
    non-zero voxels of that label image (or those with one of ``labels``), (1 or C, X, Y, Z).
    """
    if masking_method is None:
        return np.ones((1, *image.spatial_shape), dtype=bool)
    mask_image = subject[masking_method]
    if not mask_image.on_grid_of(image, subject.tolerance):
        raise DataError(
            f"{mask_image.path}: subject {subject.id!r}: {what} mask {masking_method!r} is not "
            f"on the grid of {image.name!r} (shape {mask_image.spatial_shape} vs "
            f"{image.spatial_shape}, or an affine beyond the tolerance {subject.tolerance} mm)"
        )
    mask = mask_image.data != 0 if labels is None else np.isin(mask_image.data, list(labels))
    if mask.shape[0] not in (1, image.data.shape[0]):
        # A mask of several channels for an image of another count: a voxel is in the mask
        # when any of its channels is.
        mask = mask.any(axis=0, keepdims=True)
    return mask


def check_one_grid(transform: str, images: dict[str, ImageGeometry]) -> None:
    """Refuse, from the headers, images on different grids for a transform that needs one
    (the DataError ``Subject.consistent_grid`` would raise in every worker)."""
    # Shapes only: affines are compared with the run's tolerance, by the worker.
    known = [g for g in images.values() if g.shape is not None]
    for geometry in known[1:]:
        first = known[0]
        if geometry.shape != first.shape:
            raise DataError(
                f"{geometry.path}: {transform} needs every image on one grid, but "
                f"{geometry.name!r} ({geometry.shape}) is not on the grid of {first.name!r} "
                f"({first.shape}); resample first, e.g. Resample: {{target: {first.name}}}"
            )


def check_voxels(transform: str, image, shape: Sequence[int], subject: str | None = None) -> None:
    """Refuse an output image too large to be meant: from the headers (a ConfigError, before
    any work) or, where the shape depended on the voxels, for ``subject`` (a DataError).
    ``image`` is an ImageGeometry or an Image (its ``name`` and ``path`` are named)."""
    voxels = int(np.prod([int(n) for n in shape], dtype=object))
    if voxels <= MAX_VOXELS:
        return
    of = "" if subject is None else f"subject {subject!r}: "
    message = (
        f"{image.path}: {of}{transform} would make image {image.name!r} "
        f"{tuple(int(n) for n in shape)} voxels ({voxels:.3g} per channel, more than "
        f"{MAX_VOXELS:.3g}); check its arguments"
    )
    raise ConfigError(message) if subject is None else DataError(message)


__all__ = [
    "INTENSITY",
    "MAX_VOXELS",
    "Transform",
    "check_masking_method",
    "check_one_grid",
    "check_voxels",
    "mask_of",
    "parse_labels",
]
