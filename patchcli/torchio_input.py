"""TorchIO objects in, patches out: :func:`extract_torchio`.

A TorchIO user holds a list of ``tio.Subject`` (or a ``tio.SubjectsDataset``)
and a sampler object. :func:`extract_torchio` turns them into the config that
says the same (an inline manifest of the subjects' files, the images' types,
the sampler's settings, the dataset's transform as ``preprocess`` and
``augment``) and runs it: the output is exactly the one that config gives.

The transform becomes ``preprocess`` for its leading transforms that patchcli
runs natively (``ToCanonical``, ``Resample``, ``ZNormalization``, ...: the same
volumes as TorchIO), and ``augment`` from the first other one on, run through
TorchIO itself; a transform whose arguments cannot be written in a config (a
``Lambda`` of a Python function, say) is refused, naming it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import load_config
from .errors import ConfigError
from .extract import ExtractionSummary, extract
from .transforms import TRANSFORMS
from .transforms.augment import import_torchio
from .transforms.registry import transform_parameters

#: Keyword arguments of :func:`extract_torchio` that go to the config's ``output``.
OUTPUT_KEYS = ("format", "compression", "compression_level", "dtype")
#: Keyword arguments that go to :func:`patchcli.extract.extract`.
RUN_KEYS = ("overwrite", "resume", "progress", "space_check", "retry_skipped")


def extract_torchio(
    subjects,
    sampler,
    output: str | os.PathLike,
    samples_per_volume: int | None = None,
    seed: int = 0,
    *,
    copies: int = 1,
    **options: Any,
) -> ExtractionSummary:
    """Extract the patches TorchIO's Queue would draw, ahead of time.

    Parameters
    ----------
    subjects : list of tio.Subject, or tio.SubjectsDataset
        Subjects with file-backed images (``tio.ScalarImage("t1.nii.gz")``). Ids come
        from each subject's ``id`` (``tio.Subject(t1=..., id="sub-01")``), or its position.
        A dataset's ``transform`` becomes ``preprocess`` and ``augment``.
    sampler : tio.UniformSampler, tio.WeightedSampler, tio.LabelSampler or tio.GridSampler
        Its patch size, probability map, label name and probabilities, or grid overlap and
        padding (a ``GridSampler`` made for any one subject: its settings are taken).
    output : path
        The HDF5 file (or, with ``format="nifti"``, the folder) to write.
    samples_per_volume : int
        Patches per subject (per copy, with augmentation); not for a grid.
    seed : int
    copies : int
        Augmented copies of each subject, when the transform has random transforms.
    **options
        Any other config key (``workers=4``, ``on_error="skip"``), the output's
        ``format``, ``compression``, ``compression_level``, ``dtype``, and
        :func:`~patchcli.extract.extract`'s ``overwrite``, ``resume``, ``progress``.

    Returns
    -------
    ExtractionSummary

    Examples
    --------
    ::

        import torchio as tio
        import patchcli

        subjects = [tio.Subject(t1=tio.ScalarImage(t1), seg=tio.LabelMap(seg), id=name)
                    for name, t1, seg in rows]
        sampler = tio.LabelSampler(64, "seg", {0: 1, 1: 1})
        patchcli.extract_torchio(subjects, sampler, "patches.h5", samples_per_volume=32)
        dataset = patchcli.PatchDataset("patches.h5")     # instead of tio.Queue
    """
    data, run = torchio_config(subjects, sampler, output, samples_per_volume, seed, copies, options)
    sampler_name = run.pop("sampler")
    return extract(load_config(None, data), sampler_name, **run)


def torchio_config(
    subjects,
    sampler,
    output: str | os.PathLike,
    samples_per_volume: int | None = None,
    seed: int = 0,
    copies: int = 1,
    options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config (as plain data) and the run's keyword arguments that say what
    :func:`extract_torchio` is given; the config's sampler under the key ``sampler``
    of the returned run arguments."""
    tio = import_torchio()
    options = dict(options or {})
    transform = getattr(subjects, "_transform", None)
    subject_list = list(getattr(subjects, "_subjects", subjects))
    if not subject_list:
        raise ConfigError("extract_torchio: no subjects")
    name, settings = _sampler_settings(tio, sampler, samples_per_volume)
    images = _image_types(tio, subject_list[0], settings.get("probability_map"))
    data: dict[str, Any] = {
        "subjects": [
            _manifest_row(tio, subject, position, images)
            for position, subject in enumerate(subject_list)
        ],
        "images": {image: {"type": kind} for image, kind in images.items()},
        "seed": int(seed),
        **settings,
        "output": {"path": str(Path(output).absolute())},
    }
    if transform is not None:
        preprocess, augment = split_transform(tio, transform)
        if preprocess:
            data["preprocess"] = preprocess
        if augment:
            data["augment"] = {"copies": int(copies), "transforms": augment}
    elif copies != 1:
        raise ConfigError("extract_torchio: copies needs a dataset transform to augment with")
    run = {key: options.pop(key) for key in RUN_KEYS if key in options}
    for key in OUTPUT_KEYS:
        if key in options:
            data["output"][key] = options.pop(key)
    data.update(options)
    run["sampler"] = name
    return data, run


def _sampler_settings(tio, sampler, samples_per_volume) -> tuple[str, dict[str, Any]]:
    if not isinstance(sampler, tio.data.sampler.sampler.PatchSampler):
        raise ConfigError(
            f"extract_torchio: unknown sampler {type(sampler).__name__}; give a UniformSampler, "
            "WeightedSampler, LabelSampler or GridSampler"
        )
    patch_size = [int(n) for n in np.asarray(sampler.patch_size).reshape(-1)]
    settings: dict[str, Any] = {"patch_size": patch_size}
    if isinstance(sampler, tio.GridSampler):
        if samples_per_volume is not None:
            raise ConfigError("extract_torchio: a grid takes every patch; no samples_per_volume")
        settings["patch_overlap"] = [int(n) for n in np.asarray(sampler.patch_overlap)]
        if sampler.padding_mode is not None:
            settings["padding_mode"] = sampler.padding_mode
        return "grid", settings
    if samples_per_volume is None:
        raise ConfigError("extract_torchio: samples_per_volume is required (patches per subject)")
    settings["num_patches"] = int(samples_per_volume)
    if isinstance(sampler, tio.LabelSampler):
        settings["label_name"] = sampler.probability_map_name
        probabilities = sampler.label_probabilities_dict
        if probabilities is not None:
            settings["label_probabilities"] = {int(k): float(v) for k, v in probabilities.items()}
        return "label", settings
    if isinstance(sampler, tio.WeightedSampler):
        settings["probability_map"] = sampler.probability_map_name
        return "weighted", settings
    if isinstance(sampler, tio.UniformSampler):
        return "uniform", settings
    raise ConfigError(
        f"extract_torchio: unknown sampler {type(sampler).__name__}; give a UniformSampler, "
        "WeightedSampler, LabelSampler or GridSampler"
    )


def _image_types(tio, subject, probability_map: str | None) -> dict[str, str]:
    types = {}
    for name, image in subject.get_images_dict(intensity_only=False).items():
        if name == probability_map or image.type == tio.SAMPLING_MAP:
            types[name] = "sampling_map"
        elif isinstance(image, tio.LabelMap) or image.type == tio.LABEL:
            types[name] = "label"
        else:
            types[name] = "intensity"
    if not types:
        raise ConfigError("extract_torchio: the first subject has no images")
    return types


def _manifest_row(tio, subject, position: int, images: Mapping[str, str]) -> dict[str, Any]:
    subject_id = getattr(subject, "id", None)
    subject_id = str(position) if subject_id is None else str(subject_id)
    row: dict[str, Any] = {"id": subject_id}
    found = subject.get_images_dict(intensity_only=False)
    if set(found) != set(images):
        raise ConfigError(
            f"extract_torchio: subject {subject_id!r} has images {sorted(found)}, the first "
            f"subject {sorted(images)}"
        )
    for name, image in found.items():
        path = image.path
        if path is None:
            raise ConfigError(
                f"extract_torchio: subject {subject_id!r} image {name!r} is not read from a "
                "file (made from a tensor); patchcli reads the files"
            )
        if isinstance(path, (list, tuple)):
            raise ConfigError(
                f"extract_torchio: subject {subject_id!r} image {name!r} is made of "
                f"{len(path)} files; give one file per image"
            )
        row[name] = str(Path(path).absolute())
    return row


# ------------------------------------------------------------------ transforms
def split_transform(tio, transform) -> tuple[list[Any], list[Any]]:
    """A TorchIO transform as ``(preprocess, augment)`` config lists: the leading transforms
    patchcli runs natively, then the rest, run through TorchIO.

    Raises
    ------
    ConfigError
        Naming a transform whose arguments a config cannot hold.
    """
    steps = _flatten(tio, transform)
    preprocess: list[Any] = []
    position = 0
    for step in steps:
        entry = _native_entry(step)
        if entry is None:
            break
        preprocess.append(entry)
        position += 1
    augment = [_torchio_entry(tio, step) for step in steps[position:]]
    return preprocess, augment


def _flatten(tio, transform) -> list[Any]:
    if isinstance(transform, tio.Compose) and transform.probability == 1:
        return [step for inner in transform.transforms for step in _flatten(tio, inner)]
    return [transform]


def _native_entry(step) -> Any | None:
    """``{Name: {arguments}}`` for a transform patchcli runs natively, else None."""
    name = type(step).__name__
    cls = TRANSFORMS.get(name)
    if cls is None or getattr(step, "probability", 1) != 1:
        return None
    arguments = dict(step._get_reproducing_arguments())
    arguments.pop("copy", None)
    ours = set(transform_parameters(cls))
    defaults = {"orientation": "RAS", "pre_affine_name": None, "location": "center"}
    for key in list(arguments):
        if key not in ours:
            if arguments[key] != defaults.get(key, object()):
                return None  # a setting patchcli does not take: TorchIO runs it
            del arguments[key]
        elif arguments[key] is None and key in ("include", "exclude"):
            del arguments[key]
    return {name: _plain(arguments)} if arguments else name


def _torchio_entry(tio, step) -> Any:
    """A TorchIO transform as an ``augment`` entry, its arguments read back from it."""
    name = type(step).__name__
    if getattr(tio, name, None) is not type(step):
        raise ConfigError(
            f"extract_torchio: transform {name} is not one of TorchIO's; a config cannot "
            "name it (use a module:function entry in augment instead)"
        )
    if isinstance(step, tio.OneOf):
        choices = [[_torchio_entry(tio, t), float(p)] for t, p in step.transforms_dict.items()]
        arguments = {"transforms": choices, **_base_arguments(step)}
        return {name: arguments}
    if isinstance(step, tio.Compose):
        inner = [_torchio_entry(tio, t) for t in step.transforms]
        return {name: {"transforms": inner, **_base_arguments(step)}}
    # TorchIO keeps each argument as an attribute, parsed (``degrees=5`` becomes
    # ``(-5, 5, -5, 5, -5, 5)``, which it takes again), some with a suffix (``std_range``).
    state = vars(step)
    try:
        baseline = _state(type(step)())
    except Exception:  # no defaults for some argument
        baseline = {}
    arguments = {}
    for key, parameter in inspect.signature(type(step).__init__).parameters.items():
        if key == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        for attribute in (key, f"{key}_range"):
            if attribute in state:
                value = state[attribute]
                break
        else:
            if parameter.default is parameter.empty:
                raise _unreadable(name, key)
            continue
        if callable(value):
            raise ConfigError(
                f"extract_torchio: {name}'s {key} is Python code, which a config cannot "
                "hold; use a module:function entry in augment instead"
            )
        if repr(_plain_or_text(value)) != baseline.get(attribute):
            arguments[key] = _plain(value)
    arguments.update(_base_arguments(step))
    # Made again from these arguments, the transform must be the same one.
    try:
        again = type(step)(**arguments)
    except Exception:  # TorchIO's own checks: the arguments were not read back right
        raise _unreadable(name, ", ".join(arguments) or "its defaults") from None
    if _state(again) != _state(step):
        different = sorted(k for k in _state(step) if _state(step)[k] != _state(again).get(k))
        raise _unreadable(name, ", ".join(different))
    return {name: arguments} if arguments else name


def _unreadable(name: str, what: str) -> ConfigError:
    return ConfigError(
        f"extract_torchio: cannot read back {name}'s arguments ({what}) from the object; "
        "write that transform in the config's augment instead"
    )


def _state(step) -> dict[str, str]:
    """A transform's settings, comparable: its public attributes as text."""
    return {
        key: repr(_plain_or_text(value))
        for key, value in vars(step).items()
        if not key.startswith("_") and key != "args_names"
    }


def _plain_or_text(value: Any) -> Any:
    try:
        return _plain(value)
    except ConfigError:
        return repr(value)


def _base_arguments(step) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if getattr(step, "probability", 1) != 1:
        arguments["p"] = float(step.probability)
    for key in ("include", "exclude"):
        if getattr(step, key, None) is not None:
            arguments[key] = list(getattr(step, key))
    return arguments


def _plain(value: Any) -> Any:
    """numpy and tuple values as plain YAML values (lists, numbers, text)."""
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    raise ConfigError(
        f"extract_torchio: a transform argument {value!r} ({type(value).__name__}) cannot be "
        "written in a config"
    )


__all__ = ["extract_torchio", "split_transform", "torchio_config"]
