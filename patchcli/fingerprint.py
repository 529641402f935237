"""The fingerprint of a run: a digest of everything that decides its patches.

Two runs with the same fingerprint write the same patches for the same
subject, and ``--resume`` continues a ``.partial`` only if its fingerprint is
the current one. A shard's fingerprint covers the settings and its own manifest
rows (:func:`shard_fingerprint`): a shard stays valid while they are unchanged,
whatever changed in other shards' rows. Shards merge when they share the
settings' fingerprint (:func:`settings_fingerprint`).

What enters it: the sampler, the sampling keys of the config (the
``FINGERPRINT_KEYS`` below, normalised: ``patch_size: 64`` and ``[64, 64,
64]`` are the same; ``preprocess`` with every argument spelled out; ``augment`` with the
versions of TorchIO and torch; the source of custom ``module:function`` code), the image
names and types, and the manifest itself
(every subject's id, image paths and ``num_samples``; not the manifest's own
path, so two copies of one manifest agree). What does not: the shard, the
output path, ``on_error``, ``workers``, ``block_size``, progress options, and the keys that
only ``queue-sim`` and ``memory`` read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .config import Config
from .sampling.geometry import to_triplet
from .shards import Shard
from .subjects import SubjectSpec
from .transforms import describe_transforms
from .transforms.function import FunctionTransform, function_digest, is_function_reference

#: Config keys that decide the patches, besides ``images`` and the manifest.
FINGERPRINT_KEYS = (
    "patch_size",
    "num_patches",
    "probability_map",
    "label_name",
    "label_probabilities",
    "patch_overlap",
    "padding_mode",
    "seed",
    "reader",
    "affine_tolerance",
    "output.format",
    "output.compression",
    "output.compression_level",
    "output.dtype",
    "output.chunks",
    "preprocess",
    "augment",
)
#: Config keys that do not change the patches (the test suite checks that every key
#: of :class:`~patchcli.config.Config` is in one list or the other).
NOT_FINGERPRINTED = (
    "subjects",  # replaced by the manifest's content
    "shard",
    "on_error",  # which subjects are left out is recorded in the output itself
    "workers",
    "block_size",
    "output.path",
    # queue-sim and memory only:
    "sampler",
    "max_length",
    "samples_per_volume",
    "num_workers",
    "prefetch_factor",
    "shuffle_subjects",
    "shuffle_patches",
    "batch_size",
    "num_epochs",
    "num_subjects",
    "load_seconds",
    "step_seconds",
)


def _value(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    if key == "patch_size" and value is not None:
        return list(config.patch_triplet)
    if key == "patch_overlap":
        return list(config.overlap_triplet)
    if key == "output.chunks" and value is not None:
        return list(to_triplet(value, "output.chunks"))
    if key == "preprocess":  # arguments with their defaults spelt out: `Resample: 1` == `Resample`
        return describe_transforms(config.transforms)
    if key == "augment":  # with the versions of TorchIO and torch, which draw the copies
        augmentation = config.augmentation
        return None if augmentation is None else augmentation.describe()
    if key == "label_probabilities" and value is not None:
        return sorted([int(label), float(p)] for label, p in value.items())
    return value


def _function_digests(config: Config) -> dict[str, str | None]:
    """The source digest of each ``module:function`` of ``preprocess`` and ``augment``:
    runs whose custom code differs do not share a fingerprint."""
    names = [step.reference for step in config.transforms if isinstance(step, FunctionTransform)]
    if config.augment is not None:
        names += _references(config.augment.get("transforms"))
    return {name: function_digest(name) for name in sorted(set(names))}


def _references(value: Any) -> list[str]:
    """Every ``module:function`` in an ``augment`` list, nested ones (``OneOf``,
    ``Lambda``'s ``function``) included."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if is_function_reference(key):
                found.append(key)
            if key == "function" and is_function_reference(inner):
                found.append(inner)
            found += _references(inner)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            found += [inner] if is_function_reference(inner) else _references(inner)
    return found


def settings_payload(config: Config, sampler: str) -> dict:
    """What decides a subject's patches apart from the manifest, as plain JSON-able data."""
    values = {key: _value(config, key) for key in FINGERPRINT_KEYS}
    for key in ("preprocess", "augment", "output.chunks"):
        if not values[key]:
            # Runs without them keep the fingerprint they had before these existed, so
            # that their shards still merge and their .partial files still resume.
            del values[key]
    functions = _function_digests(config)
    if functions:
        values["functions"] = functions
    return {
        "sampler": sampler,
        "images": {name: spec.type for name, spec in config.images.items()},
        **values,
    }


def _rows(subjects: Sequence[SubjectSpec]) -> list:
    return [
        [spec.index, spec.id, spec.num_samples, {k: str(p) for k, p in spec.paths.items()}]
        for spec in subjects
    ]


def fingerprint_payload(config: Config, sampler: str, subjects: Sequence[SubjectSpec]) -> dict:
    """What :func:`config_fingerprint` digests, as plain JSON-able data."""
    return {**settings_payload(config, sampler), "manifest": _rows(subjects)}


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_fingerprint(config: Config, sampler: str, subjects: Sequence[SubjectSpec]) -> str:
    """A SHA-256 hex digest of the settings that decide the patches of a run.

    ``subjects`` is the whole manifest (not one shard's part of it).

    Examples
    --------
    >>> from pathlib import Path
    >>> from patchcli.config import load_config
    >>> specs = [SubjectSpec(0, "a", {"t1": Path("/data/a.nii.gz")})]
    >>> one = load_config(None, {"images": {"t1": "intensity"}, "patch_size": 8, "workers": 2})
    >>> two = load_config(None, {"images": {"t1": "intensity"}, "patch_size": [8, 8, 8]})
    >>> config_fingerprint(one, "uniform", specs) == config_fingerprint(two, "uniform", specs)
    True
    >>> config_fingerprint(one, "uniform", specs) == config_fingerprint(one, "grid", specs)
    False
    """
    return _digest(fingerprint_payload(config, sampler, subjects))


def settings_fingerprint(config: Config, sampler: str) -> str:
    """A SHA-256 hex digest of the settings alone (no manifest): shards made with the same
    settings merge, whatever changed in other shards' rows."""
    return _digest(settings_payload(config, sampler))


def shard_fingerprint(
    config: Config, sampler: str, manifest: Sequence[SubjectSpec], shard: Shard
) -> str:
    """The fingerprint of one shard: the settings, the shard's own manifest rows and the
    manifest's length (which places every shard's boundaries).

    A shard stays valid while these are unchanged, whatever changed in other rows: a
    fixed manifest row costs its own shard only.

    Examples
    --------
    >>> from pathlib import Path
    >>> from patchcli.config import load_config
    >>> config = load_config(None, {"images": {"t1": "intensity"}, "patch_size": 8})
    >>> rows = [SubjectSpec(i, f"s{i}", {"t1": Path(f"/d/s{i}.nii.gz")}) for i in range(4)]
    >>> fixed = rows[:3] + [SubjectSpec(3, "s3", {"t1": Path("/d/s3-fixed.nii.gz")})]
    >>> first, second = Shard(0, 2), Shard(1, 2)
    >>> shard_fingerprint(config, "uniform", rows, first) == shard_fingerprint(
    ...     config, "uniform", fixed, first)
    True
    >>> shard_fingerprint(config, "uniform", rows, second) == shard_fingerprint(
    ...     config, "uniform", fixed, second)
    False
    """
    own = manifest[shard.rows(len(manifest)).start : shard.rows(len(manifest)).stop]
    return _digest(
        {
            **fingerprint_payload(config, sampler, own),
            "total_subjects": len(manifest),
            "shard": [shard.index, shard.count],
        }
    )


def merge_fingerprint(settings: str, shards: Sequence[str]) -> str:
    """The fingerprint of a merge: its settings and its shards' fingerprints, in order."""
    return _digest({"settings": settings, "shards": list(shards)})


__all__ = [
    "FINGERPRINT_KEYS",
    "NOT_FINGERPRINTED",
    "config_fingerprint",
    "fingerprint_payload",
    "merge_fingerprint",
    "settings_fingerprint",
    "settings_payload",
    "shard_fingerprint",
]
