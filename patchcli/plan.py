"""Planning an extraction: config -> subjects -> an :class:`ExtractionPlan` (main process).

:func:`plan_extraction` checks the config and reads every subject's headers (no
voxels), so that a bad file fails the run before any work is done, and so that
the output's size, dtypes and patch count are known in advance. With
``shard: I/N`` the plan covers one block of the manifest (patchcli.shards);
with ``on_error: skip`` subjects found bad here are left out and listed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from .config import Config
from .errors import ConfigError, DataError
from .fingerprint import config_fingerprint, settings_fingerprint, shard_fingerprint
from .io.writer import SkippedSubject
from .sampling import count_grid_patches, grid_padding
from .sampling.geometry import check_patch_fits
from .shards import Shard, parse_shard, shard_output_path
from .subject_work import SamplingSettings
from .subjects import (
    Manifest,
    SubjectSpec,
    check_same_geometry,
    config_manifest,
    read_subject_headers,
)
from .transforms import ImageGeometry, plan_transforms
from .transforms.augment import Augmenter, augmented_geometry
from .units import parse_size

SAMPLERS = ("uniform", "weighted", "label", "grid")
#: What a run can write: patches by one of the samplers, or a volume store.
RUNS = (*SAMPLERS, "volumes")


@dataclass(frozen=True)
class ImagePlan:
    name: str
    type: str
    channels: int
    dtype: np.dtype


@dataclass
class ExtractionPlan:
    """Everything known about a run before any voxel is read."""

    settings: SamplingSettings
    config: Config
    subjects: list[SubjectSpec]
    counts: list[int]
    images: dict[str, ImagePlan]
    output_path: Path
    output_format: str
    #: Digest of everything that decides the patches (patchcli.fingerprint): for a shard,
    #: the settings and its own rows only.
    fingerprint: str = ""
    #: Digest of the settings alone: shards that share it merge.
    settings_fingerprint: str = ""
    #: Digest of the settings and the whole manifest (what every shard of the run recorded
    #: before shards had fingerprints of their own).
    run_fingerprint: str = ""
    #: Subjects in the whole manifest (``subjects`` is this shard's part of it).
    total_subjects: int = 0
    shard: Shard | None = None
    #: Subjects left out before any work (``on_error: skip``), with the reason.
    skipped: list[SkippedSubject] = field(default_factory=list)
    #: Each subject's spatial shape after preprocessing (None: known only from its voxels).
    shapes: list[tuple[int, int, int] | None] = field(default_factory=list)
    #: The whole manifest (``subjects`` is what this run or shard extracts of it).
    manifest: list[SubjectSpec] = field(default_factory=list)
    #: Where the manifest came from (a dataset layout resolved, and what it left out).
    source: Manifest | None = None

    @property
    def total_patches(self) -> int:
        return int(sum(self.counts))

    @property
    def patch_bytes(self) -> int:
        """Bytes of one patch of every image."""
        voxels = int(np.prod(self.settings.patch_size))
        return sum(plan.channels * voxels * plan.dtype.itemsize for plan in self.images.values())


def _sampler_settings(config: Config, sampler: str) -> SamplingSettings:
    if sampler not in RUNS:
        raise ConfigError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if not config.images:
        raise ConfigError("images is required: a mapping of image name to type")
    if sampler == "volumes":
        return _store_settings(config)
    patch_size = config.patch_triplet
    overlap = config.overlap_triplet
    probability_map = label_name = None
    if sampler == "weighted":
        probability_map = config.probability_map
        if probability_map is None:
            maps = config.images_of_type("sampling_map")
            if len(maps) != 1:
                raise ConfigError("weighted needs probability_map: the name of the sampling image")
            probability_map = maps[0]
        if probability_map not in config.images:
            raise ConfigError(
                f"probability_map {probability_map!r} is not an image "
                f"(images: {list(config.images)})"
            )
    if sampler == "label":
        label_name = config.label_name
        if label_name is None:
            labels = config.images_of_type("label")
            if not labels:
                raise ConfigError("label needs an image of type label, or label_name")
            label_name = labels[0]
        if label_name not in config.images:
            raise ConfigError(
                f"label_name {label_name!r} is not an image (images: {list(config.images)})"
            )
    padding_mode = config.padding_mode if sampler == "grid" else None
    return SamplingSettings(
        sampler=sampler,
        patch_size=patch_size,
        seed=config.seed,
        reader=config.reader,
        tolerance=config.affine_tolerance,
        patch_overlap=overlap if sampler == "grid" else (0, 0, 0),
        padding_mode=padding_mode,
        padding=grid_padding(overlap, padding_mode) if sampler == "grid" else (0, 0, 0),
        probability_map=probability_map,
        label_name=label_name,
        label_probabilities=dict(config.label_probabilities)
        if sampler == "label" and config.label_probabilities
        else None,
        image_types=config.image_types,
        transforms=tuple(config.transforms),
        augmentation=config.augmentation,
    )


def _store_settings(config: Config) -> SamplingSettings:
    """A volume store's settings: the volumes, and with ``patch_size`` the patch size its
    weighted tables are made for (patchcli.io.store)."""
    if config.augment is not None:
        raise ConfigError(
            "a volume store keeps the preprocessed volumes, one each: augment them while "
            "training (VolumeDataset's transform), not with augment"
        )
    if config.output.format != "hdf5":
        raise ConfigError("a volume store is an HDF5 file: output.format must be hdf5")
    return SamplingSettings(
        sampler="volumes",
        patch_size=config.patch_triplet if config.patch_size is not None else (0, 0, 0),
        seed=config.seed,
        reader=config.reader,
        tolerance=config.affine_tolerance,
        image_types=config.image_types,
        transforms=tuple(config.transforms),
    )


def plan_extraction(
    config: Config, sampler: str, subjects: list[SubjectSpec] | None = None
) -> ExtractionPlan:
    """Check the config and every subject's headers; count the patches.

    Raises
    ------
    ConfigError, DataError
        Before any voxel is read, for anything that would fail later.
    """
    settings = _sampler_settings(config, sampler)
    if config.output.path is None:
        raise ConfigError("output.path is required (or give --output)")
    if settings.augmentation is not None:
        # TorchIO's transforms made once here: a missing install or a bad argument is
        # found before any work, not by every worker.
        Augmenter(settings.augmentation, settings.image_types)
    source = Manifest(list(subjects)) if subjects is not None else config_manifest(config)
    manifest = source.subjects
    shard = parse_shard(config.shard)
    specs = list(manifest) if shard is None else list(manifest[_slice(shard.rows(len(manifest)))])
    if sampler not in ("grid", "volumes") and config.num_patches is None:
        if any(not spec.num_samples for spec in specs):
            raise ConfigError("num_patches is required (or a num_samples column)")
    skip = config.on_error == "skip"
    skipped: list[SkippedSubject] = []
    if shard is None or shard.index == 0:
        # Subjects a dataset layout left out have no manifest row: the whole run (or its
        # first shard, so that a merge lists them once) lists them.
        skipped += [
            SkippedSubject(subject, None, f"incomplete: {reason}", "plan")
            for subject, reason in source.incomplete
        ]
    missing = _check_all_exist(specs, config.subjects, fail=not skip)
    readable: list[tuple[SubjectSpec, dict]] = []
    for spec in specs:
        try:
            if spec.id in missing:
                raise DataError(missing[spec.id])
            headers = read_subject_headers(
                spec, settings.reader, settings.tolerance, same_grid=not settings.transforms
            )
            readable.append((spec, headers))
        except DataError as error:
            if not skip:
                raise
            skipped.append(SkippedSubject(spec.id, spec.index, str(error), "plan"))
    # Every subject must have the channels of the first one; when skipping, of most of them
    # (one odd subject first must not make all the others odd).
    channels = {
        name: Counter(headers[name].channels for _, headers in readable).most_common(1)[0][0]
        if skip
        else readable[0][1][name].channels
        for name in config.images
        if readable
    }
    kept: list[SubjectSpec] = []
    counts: list[int] = []
    shapes: list[tuple[int, int, int] | None] = []
    dtypes: dict[str, list[np.dtype]] = {name: [] for name in config.images}
    for spec, headers in readable:
        try:
            images = preprocessed_geometry(spec, headers, settings)
            counts.append(_plan_subject(spec, images, settings, config, channels))
        except DataError as error:
            if not skip:
                raise
            skipped.append(SkippedSubject(spec.id, spec.index, str(error), "plan"))
            continue
        kept.append(spec)
        shapes.append(next(iter(images.values())).shape)
        for name, geometry in images.items():
            dtypes[name].append(geometry.dtype)
    skipped.sort(key=lambda subject: -1 if subject.manifest_row is None else subject.manifest_row)
    if not kept and skipped:
        raise every_subject_failed(config, skipped)
    images = {}
    for name, spec in config.images.items():
        if spec.type == "intensity" and config.output.dtype is not None:
            dtype = np.dtype(config.output.dtype)
        else:
            dtype = np.result_type(*dtypes[name])
        images[name] = ImagePlan(name, spec.type, channels[name], np.dtype(dtype))
    output_path = Path(config.output.path)
    if shard is not None:
        output_path = shard_output_path(output_path, shard, config.output.format == "nifti")
    _check_sources_outside(kept, output_path)
    settings = replace(
        settings, output_dtypes={name: plan.dtype.name for name, plan in images.items()}
    )
    return ExtractionPlan(
        settings=settings,
        config=config,
        subjects=kept,
        counts=counts,
        images=images,
        shapes=shapes,
        output_path=output_path,
        output_format=config.output.format,
        fingerprint=config_fingerprint(config, sampler, manifest)
        if shard is None
        else shard_fingerprint(config, sampler, manifest, shard),
        settings_fingerprint=settings_fingerprint(config, sampler),
        run_fingerprint=config_fingerprint(config, sampler, manifest),
        total_subjects=len(manifest),
        manifest=list(manifest),
        source=source,
        shard=shard,
        skipped=skipped,
    )


def preprocessed_geometry(
    spec: SubjectSpec, headers: Mapping, settings: SamplingSettings
) -> dict[str, ImageGeometry]:
    """A subject's images after preprocessing, from their headers: shapes, affines and dtypes
    (a shape or affine is None where it depends on the voxels).

    Raises
    ------
    DataError
        Images left on different grids (naming the file and suggesting a ``Resample``), or
        a transform that cannot apply to this subject.
    ConfigError
        An absurd result (a resampled volume of billions of voxels), before any work.
    """
    images = {
        name: ImageGeometry.of_header(name, settings.image_types.get(name, ""), header)
        for name, header in headers.items()
    }
    if settings.transforms:
        images = plan_transforms(settings.transforms, images)
    if settings.augmentation is not None:
        images = {name: augmented_geometry(geometry) for name, geometry in images.items()}
    if not settings.transforms:
        return images
    known = {
        name: (g.shape, g.affine)
        for name, g in images.items()
        if g.shape is not None and g.affine is not None
    }
    if len(known) == len(images):
        check_same_geometry(
            spec.id, known, settings.tolerance, spec.paths, after="after preprocessing"
        )
    return images


def _plan_subject(
    spec: SubjectSpec,
    images: Mapping[str, ImageGeometry],
    settings: SamplingSettings,
    config: Config,
    channels: Mapping[str, int],
) -> int:
    """A subject's patch count; DataError naming the file for anything that would fail
    later (a patch larger than the volume, channels unlike the other subjects')."""
    first = next(iter(images.values()))
    for name, image in images.items():
        if image.channels != channels[name]:
            raise DataError(
                f"{image.path}: subject {spec.id!r} image {name!r} has {image.channels} "
                f"channels where other subjects have {channels[name]}"
            )
    after = "after preprocessing, " if settings.transforms else ""
    copies = 1 if settings.augmentation is None else settings.augmentation.copies
    if settings.sampler == "volumes":  # one row: the subject's volumes
        if first.shape is not None and any(settings.patch_size):
            try:
                check_patch_fits(settings.patch_size, first.shape)
            except DataError as error:
                raise DataError(f"{first.path}: subject {spec.id!r}: {after}{error}") from None
        return 1
    if first.shape is None:
        if settings.sampler == "grid":
            raise ConfigError(
                "grid needs every volume's shape before the run, and preprocess makes it "
                "depend on the voxels (a CropOrPad around a mask without target_shape, or "
                "with only_crop or only_pad); give that CropOrPad a target_shape alone"
            )
        return copies * int(spec.num_samples or config.num_patches)  # the worker checks the fit
    shape = first.shape
    try:
        if settings.sampler == "grid":
            padded = tuple(np.add(shape, np.multiply(settings.padding, 2)))
            return copies * count_grid_patches(padded, settings.patch_size, settings.patch_overlap)
        check_patch_fits(settings.patch_size, shape)
        return copies * int(spec.num_samples or config.num_patches)
    except DataError as error:
        raise DataError(f"{first.path}: subject {spec.id!r}: {after}{error}") from None


def every_subject_failed(config: Config, skipped: list[SkippedSubject]) -> DataError:
    """The error of a run (or shard) that ``on_error: skip`` would leave empty."""
    where = config.subjects if isinstance(config.subjects, Path) else "the manifest"
    return DataError(
        f"{where}: every subject failed ({len(skipped)}), e.g. {skipped[0].describe()}"
    )


def _check_all_exist(specs: list[SubjectSpec], manifest, fail: bool = True) -> dict[str, str]:
    """Name every missing input at once, before reading any header.

    With ``fail`` False, return instead the reason of each subject with missing
    files, by subject id.
    """
    missing: dict[str, list[str]] = {}
    for spec in specs:
        absent = [str(path) for path in spec.paths.values() if not os.path.exists(path)]
        if absent:
            missing[spec.id] = absent
    if not fail:
        return {
            subject: f"{', '.join(paths)}: file{'s' if len(paths) > 1 else ''} not found"
            for subject, paths in missing.items()
        }
    every = [path for paths in missing.values() for path in paths]
    if len(every) == 1:
        raise DataError(f"{every[0]}: file not found")
    if every:
        shown = ", ".join(every[:5]) + (f" and {len(every) - 5} more" if len(every) > 5 else "")
        where = f"{manifest}: " if isinstance(manifest, (str, Path)) else ""
        raise DataError(f"{where}{len(every)} input files not found: {shown}")
    return {}


def _slice(rows: range) -> slice:
    return slice(rows.start, rows.stop)


def _check_sources_outside(specs: list[SubjectSpec], output: Path) -> None:
    """Refuse an output that is, or contains, one of the images it is made from."""
    target = output.resolve()
    for spec in specs:
        for path in spec.paths.values():
            source = path.resolve()
            if source == target or target in source.parents:
                raise DataError(
                    f"{path}: subject {spec.id!r} reads this image from inside the output "
                    f"{output}; write the output elsewhere"
                )


def output_size_bound(plan: ExtractionPlan, first_subject: int = 0, margin: bool = True) -> int:
    """Bytes the output needs at most for the subjects from ``first_subject`` on (uncompressed),
    with ``margin`` for the file's metadata."""
    patches = int(sum(plan.counts[first_subject:]))
    if plan.settings.sampler == "volumes":
        # Each subject's volumes (a shape known only from the voxels: the largest known).
        known = [shape for shape in plan.shapes if shape is not None] or [(0, 0, 0)]
        largest = max(int(np.prod(shape)) for shape in known)
        voxels = [largest if shape is None else int(np.prod(shape)) for shape in plan.shapes][
            first_subject:
        ]
        per_voxel = sum(p.channels * p.dtype.itemsize for p in plan.images.values())
        return sum(voxels) * per_voxel + 2**16 * len(voxels) + (4 * 2**20 if margin else 0)
    if plan.output_format == "nifti":
        # One file per image and patch: header, data, and a row of patches.csv.
        per_patch = plan.patch_bytes + len(plan.images) * (352 + 4096) + 200
    else:
        per_patch = plan.patch_bytes + 56  # + its location and subject index
    return patches * per_patch + (4 * 2**20 if margin else 0)


def patches_per_block(plan: ExtractionPlan) -> int:
    """Patches per block: as many as ``block_size`` holds, at least one, at most a subject's."""
    patches = max(1, parse_size(plan.config.block_size) // max(1, plan.patch_bytes))
    return min(patches, max(plan.counts, default=1))


def recorded_config(plan: ExtractionPlan) -> str:
    """The config as the run used it, as YAML: the resolved shard, each image's channels and
    stored dtype (not the defaults of the ``memory`` command's keys)."""
    data = plan.config.model_dump(mode="json", exclude_none=True)
    if plan.shard is not None:
        data["shard"] = str(plan.shard)
    for name, image in plan.images.items():
        data["images"][name].update(channels=image.channels, dtype=image.dtype.name)
    return yaml.safe_dump(data, sort_keys=False)


__all__ = [
    "RUNS",
    "SAMPLERS",
    "ExtractionPlan",
    "ImagePlan",
    "every_subject_failed",
    "output_size_bound",
    "patches_per_block",
    "plan_extraction",
    "recorded_config",
]
