"""Preprocessing before sampling: TorchIO's transforms, in numpy and SimpleITK.

Transforms take TorchIO's class and argument names (a TorchIO user pastes their
list into ``preprocess:``) and give the volumes TorchIO's ``Compose`` gives
(docs/preprocessing.md says where and why they differ). One module a
transform, as in TorchIO: ``spatial/`` (they move every image's grid),
``intensity/`` (``intensity`` images' values), ``label/`` (``label`` images).
"""

from .image import Image, ImageGeometry, Subject
from .registry import (
    TRANSFORMS,
    apply_transforms,
    describe_preprocess,
    describe_transforms,
    parse_transforms,
    plan_transforms,
)
from .spatial.resample import resample_to_grid
from .transform import Transform

__all__ = [
    "TRANSFORMS",
    "Image",
    "ImageGeometry",
    "Subject",
    "Transform",
    "apply_transforms",
    "describe_preprocess",
    "describe_transforms",
    "parse_transforms",
    "plan_transforms",
    "resample_to_grid",
]
