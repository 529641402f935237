"""One validated configuration schema for every subcommand.

A config is a YAML file (loaded with ``yaml.safe_load``) whose keys are
TorchIO's parameter names wherever TorchIO has one. Command-line options
override keys of the same name. Relative paths written in the YAML file are
relative to that file; paths given as options are relative to the working
directory.

pydantic does the type checking: it reports the exact key that is wrong, which
a hand-written validator would have to re-implement for every key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .layouts import LAYOUTS, layout_image_types, layout_source
from .names import image_name_problem
from .sampling.geometry import Triplet, to_triplet
from .sampling.grid import check_padding_mode
from .shards import parse_shard
from .transforms import Transform, parse_transforms
from .transforms.augment import Augmentation, parse_augment

Probability = Annotated[float, Field(ge=0, allow_inf_nan=False)]
ImageType = Literal["intensity", "label", "sampling_map"]
Compression = Literal["none", "gzip", "lz4", "zstd"]
#: The default compression, chosen from bench/bench_compression.py (docs/format.md).
DEFAULT_COMPRESSION: Compression = "lz4"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    """An image of every subject: its type and, for ``memory`` without files, its geometry."""

    type: ImageType = "intensity"
    shape: tuple[int, int, int] | None = None
    channels: int = Field(default=1, ge=1)
    dtype: str = "float32"
    #: With ``subjects: {bids: DIR}``: the BIDS entities that select this image's file
    #: (``{suffix: T1w}``, ``{suffix: dseg, desc: tissue, scope: derivatives}``).
    bids: dict[str, Any] | None = None
    #: Voxel size in mm (with ``shape``, for ``preprocess`` in ``memory`` without files;
    #: default 1 mm).
    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = None

    @field_validator("spacing", mode="before")
    @classmethod
    def _one_spacing(cls, value: Any) -> Any:
        return (value,) * 3 if isinstance(value, (int, float)) else value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        return check_dtype(value)


def check_image_name(name: str) -> str:
    """Image names become file names and HDF5 dataset names: keep them plain
    (patchcli.names)."""
    problem = image_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


class OutputSpec(_Strict):
    """Where and how patches are written."""

    path: Path | None = None
    format: Literal["hdf5", "nifti"] = "hdf5"
    compression: Compression = DEFAULT_COMPRESSION
    compression_level: int | None = Field(default=None, ge=0, le=9)
    dtype: str | None = None
    #: A volume store's chunk: N or [X, Y, Z] voxels (default 32, patchcli.io.store).
    chunks: int | tuple[int, int, int] | None = None

    @field_validator("chunks")
    @classmethod
    def _chunks(cls, value: Any) -> Any:
        if value is not None:
            _as_value_error(to_triplet, value, "output.chunks")
        return value

    @model_validator(mode="after")
    def _level_needs_compression(self) -> OutputSpec:
        if self.compression_level is not None and self.compression == "none":
            raise ValueError("compression_level needs a compression (gzip, lz4 or zstd)")
        return self

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        return None if value is None else check_dtype(value)


def check_dtype(value: str) -> str:
    """The name of a numeric numpy dtype; ValueError for anything else."""
    try:
        dtype = np.dtype(value)
    except TypeError as error:
        raise ValueError(f"unknown dtype {value!r}") from error
    if dtype.kind not in "biuf":
        raise ValueError(f"dtype must be numeric, not {value!r}")
    return dtype.name


#: Patches per subject at most (2**40): beyond any disk, and far from int64's overflow.
MAX_PATCHES = 2**40
#: Worker processes at most: each has pipes and shared memory of its own.
MAX_WORKERS = 1024


class Config(_Strict):
    """The resolved configuration of a run."""

    #: A CSV manifest, an inline list, or a dataset in a standard layout:
    #: ``{bids: DIR, participant_label: [...]}``, ``{nnunet: DIR}``, ``{decathlon: DIR}``.
    subjects: Path | list[dict[str, Any]] | dict[str, Any] | None = None
    images: dict[str, ImageSpec] = Field(default_factory=dict)
    patch_size: int | tuple[int, int, int] | None = None
    num_patches: int | None = Field(default=None, ge=1, le=MAX_PATCHES)
    probability_map: str | None = None
    label_name: str | None = None
    label_probabilities: dict[int, Probability] | None = None
    patch_overlap: int | tuple[int, int, int] = 0
    padding_mode: str | float | None = None
    seed: int = Field(default=0, ge=0, le=2**63 - 1)  # stored as an int64 attribute
    reader: Literal["auto", "nibabel", "sitk"] = "auto"
    affine_tolerance: float = Field(default=1e-4, ge=0)
    block_size: str = "64MiB"
    #: Worker processes (0: all in this process); ``auto``: one per core this process may
    #: use (its CPU affinity, or ``SLURM_CPUS_PER_TASK``).
    workers: int | Literal["auto"] = "auto"
    #: ``I/N`` (the I-th of N blocks of the manifest, 0-based) or ``auto`` (patchcli.shards).
    shard: str | None = None
    #: What a bad subject does: stop the run (``fail``), or be left out and listed (``skip``).
    on_error: Literal["fail", "skip"] = "fail"
    output: OutputSpec = Field(default_factory=OutputSpec)
    #: Transforms applied to every subject after loading and before sampling, with
    #: TorchIO's names: ``[ToCanonical, {Resample: 1.5}, ...]`` (patchcli.transforms).
    preprocess: list[Any] | None = None
    #: Augmentation of each preprocessed subject, ``copies`` times, with TorchIO's
    #: transforms: ``{copies: K, transforms: [...]}`` (patchcli.transforms.augment).
    augment: dict[str, Any] | None = None
    # Queue settings (queue-sim, memory), TorchIO's names.
    sampler: Literal["uniform", "weighted", "label", "grid"] = "uniform"
    max_length: int | None = Field(default=None, ge=1)
    samples_per_volume: int | None = Field(default=None, ge=1)
    num_workers: int = Field(default=0, ge=0)
    prefetch_factor: int = Field(default=2, ge=1)
    shuffle_subjects: bool = True
    shuffle_patches: bool = True
    batch_size: int = Field(default=1, ge=1)
    num_epochs: int = Field(default=1, ge=1)
    num_subjects: int | None = Field(default=None, ge=1)
    load_seconds: float | None = Field(default=None, ge=0)
    step_seconds: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _layout_images(cls, data: Any) -> Any:
        # nnU-Net and Decathlon datasets name their images (dataset.json): `images` may
        # leave them out, or give some of them another type.
        if not isinstance(data, Mapping) or not isinstance(data.get("subjects"), Mapping):
            return data
        kind, root, options = _as_value_error(layout_source, data["subjects"])
        given = {
            name: {"type": spec} if isinstance(spec, str) else dict(spec or {})
            for name, spec in (data.get("images") or {}).items()
        }
        overrides = {name: {"type": spec["type"]} for name, spec in given.items() if "type" in spec}
        types = _as_value_error(layout_image_types, kind, root, overrides, **options)
        if types is None:
            return data
        return {
            **data,
            "images": {
                name: {**given.get(name, {}), "type": image_type}
                for name, image_type in types.items()
            },
        }

    @model_validator(mode="after")
    def _bids_entities(self) -> Config:
        bids = isinstance(self.subjects, dict) and "bids" in self.subjects
        for name, spec in self.images.items():
            if bids and not spec.bids:
                raise ValueError(
                    f"images: image {name!r} needs its BIDS entities, e.g. "
                    f"{name}: {{type: {spec.type}, bids: {{suffix: T1w}}}}"
                )
            if spec.bids and not bids:
                raise ValueError(
                    f"images: image {name!r} has bids entities, but subjects is not a BIDS "
                    "dataset ({bids: DIR})"
                )
        return self

    @field_validator("images", mode="before")
    @classmethod
    def _image_shorthand(cls, value: Any) -> Any:
        # `t1: intensity` is short for `t1: {type: intensity}`.
        if isinstance(value, Mapping):
            return {
                name: {"type": spec} if isinstance(spec, str) else spec
                for name, spec in value.items()
            }
        return value

    @field_validator("images")
    @classmethod
    def _image_names(cls, value: dict[str, ImageSpec]) -> dict[str, ImageSpec]:
        for name in value:
            check_image_name(name)
        return value

    @field_validator("padding_mode")
    @classmethod
    def _padding_mode(cls, value: Any) -> Any:
        return _as_value_error(check_padding_mode, value)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"workers must be a count (0: in this process) or auto, not {value!r}")
        if value > MAX_WORKERS:
            raise ValueError(f"workers must be at most {MAX_WORKERS}, not {value}")
        return value

    @field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, value: Any) -> Any:
        # Checked here so that a typo names the config file; "auto" is resolved at run time.
        if value is None:
            return None
        text = str(value).strip()
        if text.lower() == "auto":
            return "auto"
        return str(_as_value_error(parse_shard, text))

    @field_validator("patch_size")
    @classmethod
    def _patch_size(cls, value: Any) -> Any:
        if value is not None:
            _as_value_error(to_triplet, value, "patch_size")
        return value

    @field_validator("patch_overlap")
    @classmethod
    def _patch_overlap(cls, value: Any) -> Any:
        _as_value_error(to_triplet, value, "patch_overlap", minimum=0)
        return value

    @model_validator(mode="after")
    def _overlap_fits_patch(self) -> Config:
        if self.patch_size is None:
            return self
        patch, overlap = self.patch_triplet, self.overlap_triplet
        if any(o >= p for o, p in zip(overlap, patch)):
            raise ValueError(f"patch_overlap {overlap} must be smaller than patch_size {patch}")
        if any(o % 2 for o in overlap):
            raise ValueError(f"patch_overlap must be even on every axis, not {overlap}")
        return self

    @model_validator(mode="after")
    def _known_transforms(self) -> Config:
        if self.preprocess is not None:
            _as_value_error(parse_transforms, self.preprocess, self.image_types)
        _as_value_error(parse_augment, self.augment, self.image_types)
        return self

    @property
    def image_types(self) -> dict[str, str]:
        return {name: spec.type for name, spec in self.images.items()}

    @property
    def transforms(self) -> list[Transform]:
        """The ``preprocess`` transforms, in order ([] without any)."""
        return parse_transforms(self.preprocess, self.image_types)

    @property
    def augmentation(self) -> Augmentation | None:
        """The ``augment`` mapping, checked (None without one)."""
        return parse_augment(self.augment, self.image_types)

    @property
    def patch_triplet(self) -> Triplet:
        if self.patch_size is None:
            raise ConfigError("patch_size is required")
        return to_triplet(self.patch_size, "patch_size")

    @property
    def overlap_triplet(self) -> Triplet:
        return to_triplet(self.patch_overlap, "patch_overlap", minimum=0)

    def images_of_type(self, image_type: str) -> list[str]:
        return [name for name, spec in self.images.items() if spec.type == image_type]

    def to_yaml(self) -> str:
        """The resolved configuration as YAML text (absolute paths, defaults filled in)."""
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)


class _Reset:
    """An option value that sets its key to null (``--padding-mode none``)."""

    def __repr__(self) -> str:
        return "RESET"


RESET = _Reset()


def _as_value_error(function, *args, **kwargs):
    # pydantic reports ValueError with the key's location; ConfigError would escape it.
    try:
        return function(*args, **kwargs)
    except ConfigError as error:
        raise ValueError(str(error)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (it would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let PyYAML say so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Load a YAML mapping safely; one-line errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a text file in UTF-8 (byte {error.start} cannot be decoded)"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    return data


def _resolve(value: Any, base: Path) -> Any:
    if value is None or isinstance(value, list):
        return value
    path = Path(os.path.expanduser(str(value)))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def load_config(
    path: str | os.PathLike | None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read a YAML config, apply option overrides, validate.

    Parameters
    ----------
    path : path-like or None
        The YAML file; None starts from an empty config (options only).
    overrides : mapping, optional
        Key -> value; ``output.path`` style keys set nested values. None values
        are ignored (an option that was not given).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        With a one-line message naming the file and the key.
    """
    source = Path(path) if path is not None else None
    data = read_yaml(source) if source is not None else {}
    base = source.resolve().parent if source is not None else Path.cwd()

    # Paths written in the file are relative to the file.
    if isinstance(data.get("subjects"), str):
        data["subjects"] = _resolve(data["subjects"], base)
    if isinstance(data.get("subjects"), dict):  # a dataset's folder: {bids: DIR, ...}
        data["subjects"] = _resolve_layout_root(data["subjects"], base)
    output = data.get("output")
    if isinstance(output, str):  # `output: out.h5` is short for `output: {path: out.h5}`
        output = data["output"] = {"path": output}
    if isinstance(output, dict) and output.get("path") is not None:
        output["path"] = _resolve(output["path"], base)
    if isinstance(data.get("subjects"), list):
        data["subjects"] = [_resolve_subject_paths(entry, base) for entry in data["subjects"]]

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if value is RESET:
            value = None
        elif key == "subjects" and isinstance(value, Mapping):
            value = _resolve_layout_root(value, Path.cwd())
        elif key in ("subjects", "output.path"):
            value = _resolve(value, Path.cwd())
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{source or 'options'}: {parent} must be a mapping")
        target[leaf] = value

    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source or 'options'}: {_first_problem(error)}") from None


def _resolve_layout_root(subjects: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A ``{bids: DIR, ...}`` mapping with its folder resolved against ``base``."""
    return {
        key: str(_resolve(value, base)) if key in LAYOUTS and isinstance(value, str) else value
        for key, value in subjects.items()
    }


def _resolve_subject_paths(entry: Any, base: Path) -> Any:
    if not isinstance(entry, dict):
        return entry
    return {
        key: (
            str(_resolve(value, base))
            if key not in ("id", "num_samples") and isinstance(value, str)
            else value
        )
        for key, value in entry.items()
    }


# Parts of an error location that name a union member's type, not a key.
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|path|[a-z-]+\[.*\])$", re.IGNORECASE)


def _did_you_mean(location: tuple) -> str:
    """``; did you mean 'num_patches'?`` for a misspelt key, else nothing."""
    import difflib

    model: Any = Config
    for part in location[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    if not hasattr(model, "model_fields"):
        return ""
    close = difflib.get_close_matches(str(location[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _first_problem(error: ValidationError) -> str:
    problems = error.errors()
    first = problems[0]
    location = ".".join(str(part) for part in first["loc"] if not _UNION_TAG.match(str(part)))
    # Unions report one error per member; name the key and show the input instead.
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key" + _did_you_mean(first["loc"])
    elif len(problems) > 1 and all(p["loc"][:1] == first["loc"][:1] for p in problems):
        message = f"invalid value {first.get('input')!r}"
    more = (
        f" (and {len(problems) - 1} more problems)"
        if len({p["loc"][:1] for p in problems}) > 1
        else ""
    )
    return f"{location}: {message}{more}" if location else f"{message}{more}"
