"""The run of an extraction: claim the output, write it, resume it, summarise it.

Every subcommand that samples patches (``uniform``, ``weighted``, ``label``,
``grid``) runs :func:`extract`, the last of the extraction's stages
(docs/architecture.md): it takes a plan (patchcli.plan: the config and every
subject's headers, checked before any voxel is read), claims the output and
checks its space, starts the worker processes (patchcli.pipeline), each of
which does one subject's work at a time (patchcli.subject_work: load,
preprocess, locations, crops), and writes the blocks they hand over in manifest order
with the output's writer (patchcli.io). Peak memory is a few subjects'
volumes and blocks, whatever the size of the run.

The output is claimed, written as ``.partial``, checkpointed after every
subject in a progress journal and renamed when complete (patchcli.io.partial):
a run stopped by a signal, a kill or an error keeps its complete subjects, and
``resume`` continues from them to the same output an uninterrupted run writes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .config import Config
from .errors import DataError, PatchcliError, PatchcliWarning, SystemFault
from .io.atomic import size_on_disk
from .io.format import FORMAT_NAME
from .io.hdf5 import Hdf5PatchWriter
from .io.nifti import NiftiPatchWriter
from .io.output import PatchOutput
from .io.partial import PartialOutput
from .io.space import free_bytes
from .io.store import DEFAULT_CHUNK_SHAPE, VolumeStoreWriter
from .io.writer import (
    PartialUnusable,
    SkippedSubject,
    SubjectRecord,
    source_grids_from_plain,
    source_grids_to_plain,
)
from .pipeline import Pipeline
from .plan import (
    SAMPLERS,
    ExtractionPlan,
    every_subject_failed,
    output_size_bound,
    patches_per_block,
    plan_extraction,
    recorded_config,
)
from .progress import progress_bar
from .sampling.geometry import to_triplet
from .signals import DeferredSignals
from .subject_work import SubjectTask, prepare_subject, subject_locations
from .subjects import SubjectSpec
from .units import format_bytes
from .workers import resolve_workers


@dataclass(frozen=True)
class ExtractionSummary:
    """What a run did: ``resumed`` subjects were already complete in its ``.partial``;
    ``already_complete`` when the output existed, made by this same run (``resume``)."""

    path: Path
    subjects: int
    patches: int
    bytes_written: int
    seconds: float
    resumed: int = 0
    already_complete: bool = False
    #: Subjects left out by ``on_error: skip``, in manifest order.
    skipped: tuple[SkippedSubject, ...] = ()


def _attributes(plan: ExtractionPlan) -> dict:
    settings = plan.settings
    attributes = {
        "patchcli_version": __version__,
        "sampler": settings.sampler,
        "config": recorded_config(plan),
        "seed": settings.seed,
        "config_fingerprint": plan.fingerprint,
        "settings_fingerprint": plan.settings_fingerprint,
        "total_subjects": plan.total_subjects,
    }
    if plan.shard is not None:
        attributes["shard_index"] = plan.shard.index
        attributes["shard_count"] = plan.shard.count
    if settings.sampler == "grid":
        attributes["patch_overlap"] = np.asarray(settings.patch_overlap, dtype=np.int64)
        mode = settings.padding_mode
        attributes["padding_mode"] = "" if mode is None else str(mode)
        attributes["padding"] = np.asarray(settings.padding, dtype=np.int64)
    if settings.augmentation is not None:
        attributes["augment_copies"] = settings.augmentation.copies
    if settings.sampler == "volumes" and any(settings.patch_size):
        # The patch size the store's weighted tables are made for.
        attributes["patch_size"] = np.asarray(settings.patch_size, dtype=np.int64)
    return attributes


def extract(
    config: Config,
    sampler: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = False,
    plan: ExtractionPlan | None = None,
    space_check: bool = True,
    retry_skipped: bool = False,
) -> ExtractionSummary:
    """Run an extraction and write its output.

    Parameters
    ----------
    config : Config
    sampler : {"uniform", "weighted", "label", "grid"}
    overwrite : bool
        Replace an existing output, and discard a ``.partial`` left by an
        earlier run.
    resume : bool
        Continue the ``.partial`` of an earlier run of the same config from
        its complete subjects; if the output exists and was made by the same
        run, do nothing (``ExtractionSummary.already_complete``). A shard whose
        own manifest rows changed since its output (or ``.partial``) was made,
        with the same settings, is started again and replaces it.
    progress : bool or None
        Show a progress bar on stderr; None shows it only on a terminal.
    plan : ExtractionPlan, optional
        A plan already made by :func:`plan_extraction`.
    space_check : bool
        Refuse to start when the output's size (uncompressed, for the subjects
        still to do) exceeds the free space of its file system.
    retry_skipped : bool
        With ``resume``: an output (or ``.partial``) of this run that skipped subjects
        is made again, so that repaired files come in; subjects still bad are skipped
        again.

    Returns
    -------
    ExtractionSummary

    Raises
    ------
    PatchcliError
        For bad input; when subjects were complete, the ``.partial`` is kept
        and the error has a ``kept_partial`` attribute
        (:class:`~patchcli.io.partial.KeptPartial`).
    patchcli.signals.Interrupted
        On SIGINT or SIGTERM, after the block being written (likewise kept).
    """
    started = time.perf_counter()
    plan = plan or plan_extraction(config, sampler)
    path = plan.output_path
    header = {
        "fingerprint": plan.fingerprint,
        "settings": plan.settings_fingerprint,
        "run_fingerprint": plan.run_fingerprint,
        "shard": None if plan.shard is None else str(plan.shard),
        "format": plan.output_format,
        "subjects": len(plan.subjects),
        "patches": plan.total_patches,
        "skipped": [skipped.manifest_row for skipped in plan.skipped],
        "on_error": plan.config.on_error,
    }
    folder = plan.output_format == "nifti"
    with PartialOutput(
        path,
        header,
        folder=folder,
        overwrite=overwrite,
        resume=resume,
        kind=FORMAT_NAME,
        retry_skipped=retry_skipped,
    ) as output:
        if output.complete or output.closed:
            if output.closed:  # complete, but stopped before its rename
                output.continue_partial()
                output.commit()
            return _summary_of(output.found, path, started, already_complete=output.complete)
        for skipped in plan.skipped:
            warnings.warn(f"skipped subject {skipped.describe()}", PatchcliWarning, stacklevel=2)
        if space_check:
            _check_space(plan, output)
        block_patches = patches_per_block(plan)
        region_bytes = block_patches * plan.patch_bytes + 2**20 + 64 * block_patches
        # Workers are forked before the output is opened: no HDF5 state crosses the fork.
        with Pipeline(resolve_workers(config.workers), region_bytes) as pipeline:
            with DeferredSignals() as signals:
                writer = _open_writer(plan, output)
                resumed = len(writer.subjects)
                try:
                    _write_subjects(
                        plan, writer, output, pipeline, block_patches, signals, progress
                    )
                    if not writer.subjects and writer.skipped:
                        writer.abort()
                        output.discard()
                        raise every_subject_failed(config, writer.skipped_in_manifest_order())
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
            output.commit()
    return ExtractionSummary(
        path,
        len(writer.subjects),
        sum(record.patch_count for record in writer.subjects),
        size_on_disk(path),
        time.perf_counter() - started,
        resumed=resumed,
        skipped=tuple(writer.skipped_in_manifest_order()),
    )


def _summary_of(
    complete: PatchOutput, path: Path, started: float, already_complete: bool
) -> ExtractionSummary:
    """The summary of an output ``resume`` found complete, now at ``path``."""
    return ExtractionSummary(
        path,
        len(complete.subjects),
        complete.num_patches,
        size_on_disk(path),
        time.perf_counter() - started,
        resumed=0 if already_complete else len(complete.subjects),
        already_complete=already_complete,
        skipped=tuple(complete.skipped),
    )


def _open_writer(plan: ExtractionPlan, output: PartialOutput):
    """A writer on ``output.temporary``: new, or reopened after the resumed subjects."""
    images = {name: (p.channels, p.dtype, p.type) for name, p in plan.images.items()}
    if output.resumed:
        _check_resumed(plan, output.resumed, output.temporary)
        done = [_record_from_json(r) for r in output.resumed if "skipped" not in r]
        try:
            writer = _reopened_writer(plan, output, images, done)
        except PartialUnusable:
            output.start_fresh()
        else:
            output.continue_partial()
            writer.skipped = list(plan.skipped)
            for record in output.resumed:
                if "skipped" in record:
                    writer.skip_subject(
                        _skip_from_json(record),
                        int(record["patch_start"]),
                        int(record["patch_count"]),
                    )
            return writer
    writer = _new_writer(plan, output, images)
    writer.skipped = list(plan.skipped)
    return writer


def _reopened_writer(plan: ExtractionPlan, output: PartialOutput, images, done):
    """The writer of the run's format, continuing ``output.temporary`` after ``done``
    (PartialUnusable when it cannot)."""
    config = plan.config.output
    if plan.settings.sampler == "volumes":
        return VolumeStoreWriter.reopen(
            output.temporary, images, done, config.compression, config.compression_level
        )
    if plan.output_format == "nifti":
        return NiftiPatchWriter(
            output.temporary,
            images,
            plan.settings.patch_size,
            _attributes(plan),
            plan.settings.padding,
            done=done,
            csv_offset=int(output.resumed[-1]["csv_offset"]),
        )
    return Hdf5PatchWriter.reopen(
        output.temporary, images, plan.settings.patch_size, plan.total_patches, done
    )


def _new_writer(plan: ExtractionPlan, output: PartialOutput, images):
    """A new writer of the run's format on ``output.temporary``."""
    config = plan.config.output
    if plan.settings.sampler == "volumes":
        chunks = DEFAULT_CHUNK_SHAPE if config.chunks is None else config.chunks
        return VolumeStoreWriter(
            output.temporary,
            images,
            _attributes(plan),
            config.compression,
            config.compression_level,
            to_triplet(chunks, "output.chunks"),
        )
    if plan.output_format == "nifti":
        return NiftiPatchWriter(
            output.temporary,
            images,
            plan.settings.patch_size,
            _attributes(plan),
            plan.settings.padding,
        )
    return Hdf5PatchWriter(
        output.temporary,
        images,
        plan.settings.patch_size,
        plan.total_patches,
        len(plan.subjects),
        _attributes(plan),
        config.compression,
        config.compression_level,
    )


def _record_json(record: SubjectRecord, csv_offset: int | None) -> dict:
    data = asdict(record)
    data["affine"] = record.affine.tolist()
    data["shape"] = list(record.shape)
    data["source_grids"] = source_grids_to_plain(record.source_grids)
    if csv_offset is not None:
        data["csv_offset"] = csv_offset
    return data


def _record_from_json(data: Mapping) -> SubjectRecord:
    return SubjectRecord(
        id=str(data["id"]),
        affine=np.asarray(data["affine"], dtype=np.float64).reshape(4, 4),
        shape=tuple(int(n) for n in data["shape"]),  # type: ignore[arg-type]
        source={str(k): str(v) for k, v in data["source"].items()},
        patch_start=int(data["patch_start"]),
        patch_count=int(data["patch_count"]),
        manifest_row=None if data.get("manifest_row") is None else int(data["manifest_row"]),
        source_grids=source_grids_from_plain(data.get("source_grids")),
    )


def _skip_json(skipped: SkippedSubject, start: int, count: int, csv_offset: int | None) -> dict:
    """A journal record of a subject given up (``on_error: skip``) and its rows."""
    data = {
        "skipped": skipped.reason,
        "id": skipped.id,
        "manifest_row": skipped.manifest_row,
        "patch_start": start,
        "patch_count": count,
    }
    if csv_offset is not None:
        data["csv_offset"] = csv_offset
    return data


def _skip_from_json(data: Mapping) -> SkippedSubject:
    return SkippedSubject(str(data["id"]), int(data["manifest_row"]), str(data["skipped"]), "run")


def _check_resumed(plan: ExtractionPlan, done: list[Mapping], partial: Path) -> None:
    """The resumed subjects (complete or skipped) must be the first ones of this run, with
    the same patch rows."""
    if len(done) > len(plan.subjects):
        raise DataError(f"{partial}: holds more subjects than this run has; use --overwrite")
    skipped = [record["id"] for record in done if "skipped" in record]
    if skipped and plan.config.on_error != "skip":
        raise DataError(
            f"{partial}: its run skipped subjects ({', '.join(map(repr, skipped[:3]))}) with "
            "on_error: skip; resume with --on-error skip, or start again with --overwrite"
        )
    start = 0
    for number, (record, spec, count) in enumerate(zip(done, plan.subjects, plan.counts)):
        expected = (spec.id, spec.index, start, count)
        found = (
            str(record["id"]),
            None if record.get("manifest_row") is None else int(record["manifest_row"]),
            int(record["patch_start"]),
            int(record["patch_count"]),
        )
        if found != expected:
            raise DataError(
                f"{partial}: subject {number} is {found[0]!r} (manifest row {found[1]}, "
                f"{found[3]} patches) there but {spec.id!r} (row {spec.index}, {count} "
                "patches) in this run; start again with --overwrite"
            )
        start += count


def _check_space(plan: ExtractionPlan, output: PartialOutput) -> None:
    """Refuse a run whose output cannot fit the free space, before any work."""
    needed = output_size_bound(plan, len(output.resumed or ()))
    free = free_bytes(output.temporary.parent)
    if needed > free:
        compressed = plan.output_format == "nifti" or plan.config.output.compression != "none"
        raise DataError(
            f"{plan.output_path}: the run needs up to {format_bytes(needed)}"
            f"{' (uncompressed)' if compressed else ''} and its file system has "
            f"{format_bytes(free)} free; free some space, write elsewhere, fewer patches, "
            "or start anyway with --no-space-check"
        )


def _write_subjects(
    plan: ExtractionPlan,
    writer,
    output: PartialOutput,
    pipeline: Pipeline,
    block_patches: int,
    signals: DeferredSignals,
    progress: bool | None,
) -> None:
    """Crop and write every subject not yet complete, checkpointing after each.

    With ``on_error: skip``, a subject that fails for its own input (not for the
    output's) is given up: its rows are left out and it is listed.
    """
    first = len(output.resumed)
    starts = np.concatenate([[0], np.cumsum(plan.counts)]).astype(int).tolist()
    tasks = (
        SubjectTask(spec, count, start)
        for spec, count, start in zip(plan.subjects[first:], plan.counts[first:], starts[first:])
    )
    target = writer.target()
    with progress_bar(plan.total_patches, progress) as bar:
        bar.update(starts[first])
        subjects = pipeline.run(plan.settings, tasks, target, block_patches)
        for number, messages in enumerate(subjects, start=first):
            spec, row, count = plan.subjects[number], starts[number], plan.counts[number]
            bar.set_postfix_str(f"subject {number + 1}/{len(plan.subjects)}", refresh=False)
            try:
                _write_subject(writer, spec, row, messages, bar, signals.check)
            except DataError as error:
                if plan.config.on_error != "skip" or isinstance(error, SystemFault):
                    raise
                skipped = SkippedSubject(spec.id, spec.index, str(error), "run")
                writer.skip_subject(skipped, row, count)
                warnings.warn(
                    f"skipped subject {skipped.describe()}", PatchcliWarning, stacklevel=2
                )
                bar.update(starts[number + 1] - bar.n)
                output.checkpoint(_skip_json(skipped, row, count, writer.flush()))
            else:
                output.checkpoint(_record_json(writer.current, writer.flush()))
            signals.check()


def _write_subject(writer, spec: SubjectSpec, row: int, messages, bar, check_interrupt) -> None:
    """Record one subject's patches as its worker hands them over."""
    start = next(messages)
    for message in start.warnings:
        warnings.warn(message, PatchcliWarning, stacklevel=4)
    sources = {name: str(path) for name, path in spec.paths.items()}
    writer.begin_subject(
        spec.id,
        start.affine,
        start.spatial_shape,
        sources,
        row,
        start.count,
        manifest_row=spec.index,
        source_grids=start.source_grids,
    )
    if start.tables:
        writer.write_tables(start.tables)
    number = len(writer.subjects) - 1  # its row of the subjects table
    for index, block in enumerate(messages):
        if index:  # between two blocks; a complete subject is checkpointed first
            check_interrupt()
        for message in block.warnings:
            warnings.warn(message, PatchcliWarning, stacklevel=4)
        chunk = block.locations
        at = row + block.first
        if block.payload is None:
            writer.write_rows(at, chunk, number)
        elif isinstance(writer, Hdf5PatchWriter):
            writer.write_chunks(at, block.payload, chunk, number)
        else:
            writer.write_block(at, block.payload, chunk, number)
        bar.update(block.count)


__all__ = [
    "ExtractionPlan",
    "ExtractionSummary",
    "PatchcliError",
    "SAMPLERS",
    "extract",
    "plan_extraction",
    "output_size_bound",
    "patches_per_block",
    "prepare_subject",
    "subject_locations",
]
