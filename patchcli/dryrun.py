"""``--dry-run``: check a run and say what it would do, writing nothing.

The config and every input's header are checked as a run checks them
(:func:`patchcli.plan.plan_extraction`); then one subject is sampled and
cropped in this process, in memory, to time it and to measure how well its
patches compress with the output's compression.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .handover import Arrays, compress_chunks
from .io.hdf5 import compression_options, filter_pipeline
from .io.space import free_bytes
from .plan import ExtractionPlan, output_size_bound, patches_per_block, plan_extraction
from .subject_work import SubjectTask, process_buffers, subject_messages
from .subjects import describe_manifest
from .transforms import describe_preprocess
from .units import count, format_bytes
from .workers import resolve_workers


@dataclass(frozen=True)
class DryRun:
    """What a run would do: see :func:`dry_run`."""

    plan: ExtractionPlan
    bytes_uncompressed: int
    #: Estimated from the sampled subject; None when the output is uncompressed.
    bytes_estimated: int | None
    free_bytes: int | None
    sampled_subject: str | None
    sampled_seconds: float | None
    workers: int
    estimated_seconds: float | None


def dry_run(config: Config, sampler: str, *, sample: bool = True) -> DryRun:
    """Check ``config`` and its inputs, sample one subject, and estimate the run.

    Returns
    -------
    DryRun

    Raises
    ------
    ConfigError, DataError
        For anything the run itself would refuse before starting.
    """
    plan = plan_extraction(config, sampler)
    uncompressed = output_size_bound(plan, margin=False)
    workers = resolve_workers(config.workers)
    free = _free_space_near(plan.output_path)
    estimated = seconds = per_subject = None
    sampled = None
    if sample and plan.subjects:
        index = next((i for i, count in enumerate(plan.counts) if count), 0)
        sampled = plan.subjects[index].id
        per_subject, ratio = _sample(plan, index)
        busy = max(1, workers)
        seconds = per_subject * len(plan.subjects) / busy
        if ratio is not None:
            estimated = int(uncompressed / ratio)
    return DryRun(
        plan=plan,
        bytes_uncompressed=uncompressed,
        bytes_estimated=estimated,
        free_bytes=free,
        sampled_subject=sampled,
        sampled_seconds=per_subject,
        workers=workers,
        estimated_seconds=seconds,
    )


def _sample(plan: ExtractionPlan, index: int) -> tuple[float, float | None]:
    """Seconds to load, sample and crop subject ``index``, and its compression ratio."""
    compression = plan.config.output.compression
    compressed = plan.output_format == "hdf5" and compression != "none"
    filters = _filters(plan) if compressed else None
    spec, count = plan.subjects[index], plan.counts[index]
    block = patches_per_block(plan)
    raw = packed = 0
    started = time.perf_counter()
    for message in subject_messages(plan.settings, SubjectTask(spec, count, 0), Arrays(), block):
        payload = getattr(message, "payload", None)
        if not payload:
            continue
        for name, array in payload.items():
            raw += array.nbytes
            if filters is not None:
                packed += sum(len(data) for _, data in compress_chunks(array, filters[name]))
    seconds = time.perf_counter() - started
    process_buffers.clear()
    ratio = raw / packed if compressed and packed else None
    return seconds, ratio


def _filters(plan: ExtractionPlan) -> dict:
    """Each image's HDF5 filter pipeline for the run's compression (from a dataset in memory)."""
    import h5py

    output = plan.config.output
    options = compression_options(output.compression, output.compression_level)
    filters = {}
    with h5py.File("patchcli-dry-run", "w", driver="core", backing_store=False) as file:
        for name, image in plan.images.items():
            # A volume store's payload is each whole volume, one "patch": a chunk of 32^3.
            size = (32, 32, 32) if plan.settings.sampler == "volumes" else plan.settings.patch_size
            shape = (1, image.channels, *size)
            dataset = file.create_dataset(name, shape, image.dtype, chunks=shape, **options)
            filters[name] = filter_pipeline(dataset)
    return filters


def _free_space_near(path: Path) -> int | None:
    """Free space of the file system the output would go to (its nearest existing folder)."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return free_bytes(folder)
    except OSError:
        return None


def format_dry_run(result: DryRun, sampler: str) -> str:
    """The text ``--dry-run`` prints."""
    plan = result.plan
    lines = [f"{sampler}: dry run, nothing written"]
    shard = plan.shard
    subjects = count(len(plan.subjects), "subject")
    if shard is not None:
        subjects += f" (shard {shard.index} of {shard.count}, of {plan.total_subjects} in all)"
    lines.append(f"  subjects: {subjects}")
    if plan.source is not None and plan.source.layout is not None:
        lines.append(f"  found: {describe_manifest(plan.source)}")
    for skipped in plan.skipped:
        lines.append(f"  skipped {skipped.describe()}")
    if plan.config.preprocess:
        lines.append(f"  preprocess: {describe_preprocess(plan.config.preprocess)}")
        known = [shape for shape in plan.shapes if shape is not None]
        if known:
            voxels = [int(np.prod(shape)) for shape in known]
            smallest, largest = known[int(np.argmin(voxels))], known[int(np.argmax(voxels))]
            sizes = "x".join(map(str, smallest))
            if largest != smallest:
                sizes += " to " + "x".join(map(str, largest))
            lines.append(f"  shapes after preprocessing: {sizes}")
        if len(known) < len(plan.shapes):
            lines.append(
                f"  shapes known only from the voxels: {len(plan.shapes) - len(known)} subjects"
            )
    augmentation = plan.settings.augmentation
    if augmentation is not None:
        lines.append(
            f"  augment: {count(augmentation.copies, 'copy')} of each subject: "
            f"{describe_preprocess([step.describe() for step in augmentation.steps])}"
        )
    counts = list(plan.counts) or [0]
    store = plan.settings.sampler == "volumes"
    if store:
        sizes = (
            ""
            if not any(plan.settings.patch_size)
            else (
                ", weighted tables for patches of " + "x".join(map(str, plan.settings.patch_size))
            )
        )
        lines.append(f"  volumes: each subject's {count(len(plan.images), 'image')}{sizes}")
    else:
        lines.append(f"  patches: {plan.total_patches} ({min(counts)} to {max(counts)} a subject)")
    lines.append(f"  output: {plan.output_path} ({plan.output_format})")
    size = f"  size: up to {format_bytes(result.bytes_uncompressed)} uncompressed"
    if result.bytes_estimated is not None:
        size += (
            f", about {format_bytes(result.bytes_estimated)} with "
            f"{plan.config.output.compression} (from subject {result.sampled_subject!r})"
        )
    lines.append(size)
    if result.free_bytes is not None:
        fits = "fits" if result.bytes_uncompressed <= result.free_bytes else "does NOT fit"
        lines.append(f"  free space there: {format_bytes(result.free_bytes)} ({fits})")
    if result.estimated_seconds is not None:
        lines.append(
            f"  time: about {_duration(result.estimated_seconds)} to load, "
            f"{'preprocess and compress' if store else 'sample and crop'} with "
            f"{count(max(1, result.workers), 'worker')}, plus writing (subject "
            f"{result.sampled_subject!r} took {result.sampled_seconds:.2f} s in one process)"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["DryRun", "dry_run", "format_dry_run"]
