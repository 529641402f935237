"""From a config to the queue and memory models: what ``queue-sim`` and ``memory`` run.

Only image headers are read (shape, channels, dtype), never voxels; a config
may also give the geometry directly (``images: {t1: {shape: [...], dtype: ...}}``)
with ``num_subjects``, when no files exist yet.
"""

from __future__ import annotations

import numpy as np

from .config import Config
from .errors import ConfigError
from .memory import ImageInfo, MemoryEstimate, estimate_memory, estimate_memory_for_budget
from .queue import QueueTrace, TimingEstimate, estimate_timing, simulate_queue
from .sampling.grid import grid_padding
from .subjects import SubjectSpec, config_manifest, read_subject_headers
from .transforms import ImageGeometry
from .transforms.augment import augmented_geometry


def read_subjects_manifest(config: Config) -> list[SubjectSpec] | None:
    """The config's subjects (None when it gives ``num_subjects`` instead).

    Read it once and pass it to the functions below; given None they read it
    themselves (no I/O when the config has no manifest).
    """
    if config.subjects is None:
        return None
    return config_manifest(config).subjects


def samples_per_subject(config: Config, specs: list[SubjectSpec] | None = None) -> list[int]:
    """Patches per subject per epoch: its ``num_samples``, else ``samples_per_volume``.

    Needs no image data: the manifest, or ``num_subjects``.
    """
    default = config.samples_per_volume or config.num_patches
    specs = specs if specs is not None else read_subjects_manifest(config)
    if specs is None:
        if config.num_subjects is None:
            raise ConfigError("give subjects (a manifest or a list) or num_subjects")
        if default is None:
            raise ConfigError("samples_per_volume is required")
        return [default] * config.num_subjects
    counts = []
    for spec in specs:
        count = spec.num_samples or default
        if count is None:
            raise ConfigError(
                f"samples_per_volume is required (subject {spec.id!r} has no num_samples)"
            )
        counts.append(count)
    return counts


def subject_images(config: Config, specs: list[SubjectSpec] | None = None) -> list[list[ImageInfo]]:
    """The images of every subject, from headers only or from the config's geometry, as
    TorchIO's Queue holds them: after ``preprocess`` (where a shape depends on the voxels,
    a crop around a mask, the shape before it: an upper bound)."""
    if not config.images:
        raise ConfigError("images is required: a mapping of image name to type")
    specs = specs if specs is not None else read_subjects_manifest(config)
    if specs is None:
        missing = [name for name, spec in config.images.items() if spec.shape is None]
        if missing:
            raise ConfigError(
                f"images {missing} need a shape (or give subjects with existing files)"
            )
        one = {
            name: ImageGeometry(
                name,
                spec.type,
                spec.shape,
                np.diag([*(spec.spacing or (1.0, 1.0, 1.0)), 1.0]),
                spec.channels,
                np.dtype(spec.dtype),
                f"images.{name}",
            )
            for name, spec in config.images.items()
        }
        return [_preprocessed(config, one)] * (config.num_subjects or 1)
    subjects = []
    for spec in specs:
        headers = read_subject_headers(
            spec, config.reader, config.affine_tolerance, same_grid=not config.preprocess
        )
        images = {
            name: ImageGeometry.of_header(name, config.images[name].type, header)
            for name, header in headers.items()
        }
        subjects.append(_preprocessed(config, images))
    return subjects


def _preprocessed(config: Config, images: dict[str, ImageGeometry]) -> list[ImageInfo]:
    """The images after ``preprocess`` and ``augment``; where a step makes a grid depend on
    the voxels (a crop around a mask), the grid before that step goes on through the
    following ones: a crop only shrinks, so the figures are an upper bound."""
    for transform in config.transforms:
        planned = transform.plan(images)
        images = {
            name: geometry
            if geometry.shape is not None and geometry.affine is not None
            else images[name].with_dtype(geometry.dtype)
            for name, geometry in planned.items()
        }
    if config.augment is not None:
        images = {name: augmented_geometry(geometry) for name, geometry in images.items()}
    return [
        ImageInfo(name, geometry.type, geometry.channels, geometry.shape, geometry.dtype)
        for name, geometry in images.items()
    ]


def _model_options(config: Config) -> dict:
    padding = (
        grid_padding(config.overlap_triplet, config.padding_mode)
        if config.sampler == "grid"
        else (0, 0, 0)
    )
    return dict(
        patch_size=config.patch_triplet,
        num_workers=config.num_workers,
        batch_size=config.batch_size,
        sampler=config.sampler,
        prefetch_factor=config.prefetch_factor,
        cast_dtype=config.output.dtype,
        label_name=config.label_name,
        label_probabilities=bool(config.label_probabilities),
        grid_padding=padding,
    )


def memory_from_config(
    config: Config,
    budget_bytes: int | None = None,
    subjects: list[list[ImageInfo]] | None = None,
) -> MemoryEstimate:
    """TorchIO's figure and the realistic itemised peak; with a budget, the largest max_length."""
    specs = read_subjects_manifest(config)
    subjects = subject_images(config, specs) if subjects is None else subjects
    counts = samples_per_subject(config, specs)
    options = _model_options(config)
    if budget_bytes is not None:
        return estimate_memory_for_budget(
            budget_bytes, subjects, samples_per_volume=counts, **options
        )
    if config.max_length is None:
        raise ConfigError("max_length is required (or give --budget to find it)")
    return estimate_memory(
        subjects, max_length=config.max_length, samples_per_volume=counts, **options
    )


def simulate_from_config(config: Config) -> QueueTrace:
    """Simulate the queue of a config, for ``num_epochs`` epochs, seeded by ``seed``."""
    if config.max_length is None:
        raise ConfigError("max_length is required")
    return simulate_queue(
        samples_per_subject(config),
        config.max_length,
        batch_size=config.batch_size,
        num_epochs=config.num_epochs,
        shuffle_subjects=config.shuffle_subjects,
        shuffle_patches=config.shuffle_patches,
        rng=np.random.default_rng(config.seed),
    )


def timing_from_config(config: Config, trace: QueueTrace) -> TimingEstimate | None:
    """The waiting estimate, when ``load_seconds`` and ``step_seconds`` are given."""
    if config.load_seconds is None or config.step_seconds is None:
        return None
    return estimate_timing(
        trace,
        load_seconds=config.load_seconds,
        step_seconds=config.step_seconds,
        num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor,
    )
