"""Transforms by TorchIO's class names: a config's ``preprocess`` list made into transforms.

Each entry is a bare name (``ToCanonical``), ``{Name: {argument: value}}`` with
TorchIO's argument names, or ``{Name: value}`` for the first argument alone
(``Resample: 1.5``). Unknown names and arguments are refused with the closest
known ones.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .function import FunctionTransform, is_function_reference
from .image import ImageGeometry, Subject
from .intensity import Clamp, Mask, RescaleIntensity, ZNormalization
from .label import RemapLabels
from .spatial import Crop, CropOrPad, EnsureShapeMultiple, Pad, Resample, ToCanonical, ToOrientation
from .transform import Transform

TRANSFORMS: dict[str, type[Transform]] = {
    cls.name: cls
    for cls in (
        ToCanonical,
        ToOrientation,
        Resample,
        CropOrPad,
        Crop,
        Pad,
        EnsureShapeMultiple,
        ZNormalization,
        RescaleIntensity,
        Clamp,
        Mask,
        RemapLabels,
    )
}

#: TorchIO's random transforms: augmentation, not preprocessing.
RANDOM_TRANSFORMS = (
    "RandomAffine",
    "RandomAffineElasticDeformation",
    "RandomAnisotropy",
    "RandomBiasField",
    "RandomBlur",
    "RandomElasticDeformation",
    "RandomFlip",
    "RandomGamma",
    "RandomGhosting",
    "RandomLabelsToImage",
    "RandomMotion",
    "RandomNoise",
    "RandomSpike",
    "RandomSwap",
)


def did_you_mean(word: str, choices) -> str:
    """``; did you mean 'X'?`` with the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def transform_parameters(cls: type) -> list[str]:
    """The argument names a transform class takes (its own and its bases' through
    ``**kwargs``), in order."""
    names = []
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if name != "self" and parameter.kind in (
                parameter.POSITIONAL_OR_KEYWORD,
                parameter.KEYWORD_ONLY,
            ):
                if name not in names:
                    names.append(name)
        if "kwargs" not in inspect.signature(klass.__init__).parameters:
            break
    return names


def checked_arguments(
    cls: type, name: str, arguments: Any, base: Sequence[str], where: str
) -> dict[str, Any]:
    """A transform entry's arguments as keywords: ``{argument: value}``, or a value alone
    for the first argument that is not one of ``base`` (TorchIO's common ones); unknown
    names refused with the closest known one (ConfigError naming ``where``)."""
    parameters = transform_parameters(cls)
    if arguments is None:
        return {}
    if not isinstance(arguments, Mapping):
        own = [key for key in parameters if key not in base]
        if not own:
            raise ConfigError(f"{where}: {name} takes no argument but {arguments!r} was given")
        return {own[0]: arguments}
    for key in arguments:
        if key not in parameters:
            raise ConfigError(
                f"{where}: {name} has no argument {key!r}{did_you_mean(str(key), parameters)} "
                f"(arguments: {', '.join(parameters)})"
            )
    return dict(arguments)


def parse_transform(entry: Any, image_types: Mapping[str, str], where: str) -> Transform:
    """One entry of a ``preprocess`` list as a transform, checked against the images."""
    if isinstance(entry, str):
        name, arguments = entry, {}
    elif isinstance(entry, Mapping) and len(entry) == 1:
        name, arguments = next(iter(entry.items()))
    else:
        raise ConfigError(
            f"{where}: each transform is a name or {{Name: {{argument: value}}}}, not {entry!r}"
        )
    if is_function_reference(name):
        if arguments is not None and not isinstance(arguments, Mapping):
            raise ConfigError(
                f"{where}: {name} takes keyword arguments {{argument: value}}, not {arguments!r}"
            )
        return FunctionTransform(name, arguments)
    if not isinstance(name, str) or name not in TRANSFORMS:
        if name in RANDOM_TRANSFORMS:
            raise ConfigError(
                f"{where}: {name} is a random transform: put it under augment "
                "(augment: {copies: K, transforms: [...]}); preprocess takes deterministic "
                "transforms"
            )
        raise ConfigError(
            f"{where}: unknown transform {name!r}{did_you_mean(str(name), TRANSFORMS)} "
            f"(transforms: {', '.join(TRANSFORMS)}, or module:function for custom code)"
        )
    cls = TRANSFORMS[name]
    arguments = checked_arguments(cls, name, arguments, ("include", "exclude"), where)
    try:
        transform = cls(**arguments)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except TypeError as error:  # a required argument missing
        raise ConfigError(f"{where}: {name}: {error}") from None
    try:
        transform.check_names(image_types)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return transform


def parse_transforms(
    entries: Sequence[Any] | None, image_types: Mapping[str, str], key: str = "preprocess"
) -> list[Transform]:
    """The transforms of a config's ``preprocess`` list, in order.

    Examples
    --------
    >>> steps = parse_transforms(
    ...     ["ToCanonical", {"Resample": 1.5}, {"ZNormalization": {"masking_method": "seg"}}],
    ...     {"t1": "intensity", "seg": "label"},
    ... )
    >>> [step.describe() for step in steps][1]
    {'Resample': {'target': [1.5, 1.5, 1.5], 'image_interpolation': 'linear', \
'label_interpolation': 'nearest'}}
    """
    if entries is None:
        return []
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        raise ConfigError(f"{key} must be a list of transforms, not {entries!r}")
    return [
        parse_transform(entry, image_types, f"{key}[{number}]")
        for number, entry in enumerate(entries)
    ]


def plan_transforms(
    transforms: Sequence[Transform], images: dict[str, ImageGeometry]
) -> dict[str, ImageGeometry]:
    """The images' geometry and dtypes after every transform, from their headers."""
    for transform in transforms:
        images = transform.plan(images)
    return images


def apply_transforms(transforms: Sequence[Transform], subject: Subject) -> None:
    """Run every transform on ``subject``, in order."""
    for transform in transforms:
        transform.apply(subject)


def describe_transforms(transforms: Sequence[Transform]) -> list[dict[str, Any]]:
    """Each transform with all its arguments, as recorded and fingerprinted."""
    return [transform.describe() for transform in transforms]


def describe_preprocess(entries: list) -> str:
    """A ``preprocess`` list on one line: ``ToCanonical, Resample(target=1.5), ...``."""
    parts = []
    for entry in entries:
        if not isinstance(entry, dict) or len(entry) != 1:
            parts.append(str(entry))
            continue
        name, arguments = next(iter(entry.items()))
        if isinstance(arguments, dict):
            inner = ", ".join(f"{key}={value}" for key, value in arguments.items())
        else:
            inner = "" if arguments is None else str(arguments)
        parts.append(f"{name}({inner})" if inner else str(name))
    return ", ".join(parts)


__all__ = [
    "RANDOM_TRANSFORMS",
    "describe_preprocess",
    "TRANSFORMS",
    "apply_transforms",
    "describe_transforms",
    "parse_transform",
    "parse_transforms",
    "plan_transforms",
    "transform_parameters",
]
