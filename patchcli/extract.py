"""The extraction pipeline: config -> subjects -> locations -> crops -> writer.

Every subcommand that samples patches (``uniform``, ``weighted``, ``label``,
``grid``) runs :func:`extract`. It first reads every subject's headers (no
voxels) so that a bad file fails the run before any work is done, and so that
the output's size, dtypes and patch count are known in advance, and a run
that cannot fit the free space is refused. Then worker processes
(patchcli.pipeline) load each subject's volumes once, draw its locations and
crop its patches block by block, and this process writes them in manifest
order: peak memory is a few subjects' volumes and blocks, whatever the size of
the run.

With ``shard: I/N`` the run handles one block of the manifest (patchcli.shards).
Its output is claimed, written as ``.partial``, checkpointed after every
subject and renamed when complete (patchcli.io.partial): a run stopped by a
signal, a kill or an error keeps its complete subjects, and ``resume``
continues from them to the same output an uninterrupted run writes.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .config import Config
from .errors import ConfigError, DataError, PatchcliError, PatchcliWarning, SystemFault
from .fingerprint import config_fingerprint
from .io.atomic import size_on_disk
from .io.hdf5 import FORMAT_NAME, Hdf5PatchWriter
from .io.nifti import NiftiPatchWriter
from .io.partial import PartialOutput, PartialUnusable
from .io.reader import PatchOutput
from .io.writer import SkippedSubject, SubjectRecord
from .pipeline import Pipeline, SubjectTask
from .progress import progress_bar
from .sampling import count_grid_patches, grid_padding, pad_volume, subject_rng
from .sampling.geometry import Triplet, check_patch_fits
from .sampling.stream import LocationStream
from .shards import Shard, parse_shard, shard_output_path
from .signals import DeferredSignals
from .subjects import SubjectSpec, load_subject, read_manifest, read_subject_headers
from .units import parse_size
from .workers import resolve_workers

SAMPLERS = ("uniform", "weighted", "label", "grid")


@dataclass(frozen=True)
class SamplingSettings:
    """What a worker needs to turn a subject into locations (small and picklable)."""

    sampler: str
    patch_size: Triplet
    seed: int
    reader: str
    tolerance: float
    patch_overlap: Triplet = (0, 0, 0)
    padding_mode: str | float | None = None
    padding: Triplet = (0, 0, 0)
    probability_map: str | None = None
    label_name: str | None = None
    label_probabilities: Mapping[int, float] | None = None
    #: Image name -> dtype written (and used for cropping and sampling).
    output_dtypes: Mapping[str, str] = field(default_factory=dict)


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
    #: Digest of everything that decides the patches (patchcli.fingerprint).
    fingerprint: str = ""
    #: Subjects in the whole manifest (``subjects`` is this shard's part of it).
    total_subjects: int = 0
    shard: Shard | None = None
    #: Subjects left out before any work (``on_error: skip``), with the reason.
    skipped: list[SkippedSubject] = field(default_factory=list)

    @property
    def total_patches(self) -> int:
        return int(sum(self.counts))

    @property
    def patch_bytes(self) -> int:
        """Bytes of one patch of every image."""
        voxels = int(np.prod(self.settings.patch_size))
        return sum(plan.channels * voxels * plan.dtype.itemsize for plan in self.images.values())


@dataclass
class PreparedSubject:
    """A loaded subject (padded for a padded grid) and the stream of its locations."""

    spec: SubjectSpec
    volumes: dict[str, np.ndarray]
    affine: np.ndarray
    spatial_shape: tuple[int, int, int]
    locations: LocationStream
    count: int
    warnings: list[str] = field(default_factory=list)


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


def _sampler_settings(config: Config, sampler: str) -> SamplingSettings:
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if not config.images:
        raise ConfigError("images is required: a mapping of image name to type")
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
    manifest = (
        subjects if subjects is not None else read_manifest(config.subjects, list(config.images))
    )
    shard = parse_shard(config.shard)
    specs = list(manifest) if shard is None else list(manifest[_slice(shard.rows(len(manifest)))])
    if sampler != "grid" and config.num_patches is None:
        if any(not spec.num_samples for spec in specs):
            raise ConfigError("num_patches is required (or a num_samples column)")
    skip = config.on_error == "skip"
    skipped: list[SkippedSubject] = []
    missing = _check_all_exist(specs, config.subjects, fail=not skip)
    readable: list[tuple[SubjectSpec, dict]] = []
    for spec in specs:
        try:
            if spec.id in missing:
                raise DataError(missing[spec.id])
            readable.append((spec, read_subject_headers(spec, settings.reader, settings.tolerance)))
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
    dtypes: dict[str, list[np.dtype]] = {name: [] for name in config.images}
    for spec, headers in readable:
        try:
            counts.append(_plan_subject(spec, headers, settings, config, channels))
        except DataError as error:
            if not skip:
                raise
            skipped.append(SkippedSubject(spec.id, spec.index, str(error), "plan"))
            continue
        kept.append(spec)
        for name, header in headers.items():
            dtypes[name].append(header.dtype)
    skipped.sort(key=lambda subject: subject.manifest_row)
    if not kept and skipped:
        raise _every_subject_failed(config, skipped)
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
        output_path=output_path,
        output_format=config.output.format,
        fingerprint=config_fingerprint(config, sampler, manifest),
        total_subjects=len(manifest),
        shard=shard,
        skipped=skipped,
    )


def _plan_subject(
    spec: SubjectSpec,
    headers: Mapping,
    settings: SamplingSettings,
    config: Config,
    channels: Mapping[str, int],
) -> int:
    """A subject's patch count; DataError naming the file for anything that would fail
    later (a patch larger than the volume, channels unlike the other subjects')."""
    first = next(iter(headers.values()))
    shape = tuple(int(n) for n in first.spatial_shape)
    for name, header in headers.items():
        if header.channels != channels[name]:
            raise DataError(
                f"{header.path}: subject {spec.id!r} image {name!r} has {header.channels} "
                f"channels where other subjects have {channels[name]}"
            )
    try:
        if settings.sampler == "grid":
            padded = tuple(np.add(shape, np.multiply(settings.padding, 2)))
            return count_grid_patches(padded, settings.patch_size, settings.patch_overlap)
        check_patch_fits(settings.patch_size, shape)
        return int(spec.num_samples or config.num_patches)
    except DataError as error:
        raise DataError(f"{first.path}: subject {spec.id!r}: {error}") from None


def _every_subject_failed(config: Config, skipped: list[SkippedSubject]) -> DataError:
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


def cast_volume(
    array: np.ndarray, dtype: np.dtype, path: Path, out: np.ndarray | None = None
) -> np.ndarray:
    """``array`` as a C-ordered array of ``dtype``, refusing values that would not fit.

    numpy's casts wrap integers around and truncate floats silently; here
    floats are rounded to the nearest integer and out-of-range values are an
    error naming the file. ``out``, a C-ordered array of the result's shape
    and dtype, is filled and returned instead of a new array.
    """
    dtype = np.dtype(dtype)
    if array.dtype != dtype and dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f":
            if not np.isfinite(array).all():
                raise DataError(f"{path}: NaN or infinite values cannot be cast to {dtype}")
            array = np.rint(array)
        low, high = array.min(), array.max()
        limits = np.iinfo(dtype)
        if low < limits.min or high > limits.max:
            raise DataError(
                f"{path}: values from {low} to {high} do not fit output dtype {dtype} "
                f"({limits.min} to {limits.max})"
            )
    elif array.dtype != dtype and dtype.kind == "f" and array.dtype.kind == "f" and array.size:
        largest = np.abs(array[np.isfinite(array)]).max(initial=0)
        if largest > np.finfo(dtype).max:
            raise DataError(f"{path}: values up to {largest} overflow output dtype {dtype}")
    if array.flags.c_contiguous and array.dtype == dtype:
        return array
    if out is None:
        out = np.empty(array.shape, dtype)
    if array.ndim != 4 or array.flags.c_contiguous:
        np.copyto(out, array, casting="unsafe")
        return out
    # Tile by tile (64 x 4 x 64 voxels): from a Fortran-ordered volume, each tile is a
    # transpose that stays in cache, twice as fast as one whole-volume copy.
    _, size_x, size_y, size_z = array.shape
    for j in range(0, size_y, 4):
        for i in range(0, size_x, 64):
            for k in range(0, size_z, 64):
                tile = np.s_[:, i : i + 64, j : j + 4, k : k + 64]
                np.copyto(out[tile], array[tile], casting="unsafe")
    return out


def subject_locations(
    settings: SamplingSettings, volumes: Mapping[str, np.ndarray], rng: np.random.Generator
) -> LocationStream:
    """The stream of one subject's locations (drawn block by block, as they are cropped)."""
    return LocationStream(
        settings.sampler,
        volumes,
        settings.patch_size,
        rng,
        probability_map=settings.probability_map,
        label_name=settings.label_name,
        label_probabilities=settings.label_probabilities,
        patch_overlap=settings.patch_overlap,
    )


def prepare_subject(
    settings: SamplingSettings, spec: SubjectSpec, count: int, buffers=None
) -> PreparedSubject:
    """Load a subject, pad it for a padded grid, and prepare the stream of its locations.

    A top-level function so that worker processes can run it. ``buffers``, a
    :class:`patchcli.pipeline.Buffers`, lends the arrays the volumes are
    copied into, reused from one subject to the next.
    """
    subject = load_subject(spec, settings.reader, settings.tolerance)
    volumes = subject.volumes
    if settings.padding_mode is not None:
        volumes = {
            name: pad_volume(array, settings.padding, settings.padding_mode)
            for name, array in volumes.items()
        }
    # One C-ordered copy in the output dtype: NIfTI volumes come in Fortran order,
    # and cropping them into C-ordered patches is a strided transpose per patch;
    # from a C-ordered volume every crop is a run of contiguous rows (8x faster
    # for 150 patches of 64^3), and needs no cast.
    cast = {}
    for name, array in volumes.items():
        dtype = np.dtype(settings.output_dtypes.get(name, array.dtype))
        out = None if buffers is None else buffers.get(f"volume {name}", array.shape, dtype)
        cast[name] = cast_volume(array, dtype, spec.paths[name], out)
    volumes = cast
    rng = subject_rng(settings.seed, spec.index)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatchcliWarning)
        try:
            locations = subject_locations(settings, volumes, rng)
        except DataError as error:
            image = settings.probability_map or settings.label_name
            path = spec.paths[image] if image else next(iter(spec.paths.values()))
            raise DataError(f"{path}: subject {spec.id!r}: {error}") from None
    messages = [
        f"subject {spec.id!r}: {warning.message}"
        for warning in caught
        if issubclass(warning.category, PatchcliWarning)
    ]
    if locations.grid is not None and len(locations.grid) != count:
        raise DataError(f"subject {spec.id!r}: expected {count} patches, got {len(locations.grid)}")
    return PreparedSubject(
        spec=spec,
        volumes=volumes,
        affine=subject.affine,
        spatial_shape=subject.spatial_shape,
        locations=locations,
        count=count,
        warnings=messages,
    )


def _attributes(plan: ExtractionPlan) -> dict:
    settings = plan.settings
    attributes = {
        "patchcli_version": __version__,
        "sampler": settings.sampler,
        "config": recorded_config(plan),
        "seed": settings.seed,
        "config_fingerprint": plan.fingerprint,
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
    return attributes


def recorded_config(plan: ExtractionPlan) -> str:
    """The config as the run used it, as YAML: the resolved shard, each image's channels and
    stored dtype (not the defaults of the ``memory`` command's keys)."""
    data = plan.config.model_dump(mode="json", exclude_none=True)
    if plan.shard is not None:
        data["shard"] = str(plan.shard)
    for name, image in plan.images.items():
        data["images"][name].update(channels=image.channels, dtype=image.dtype.name)
    return yaml.safe_dump(data, sort_keys=False)


def extract(
    config: Config,
    sampler: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = False,
    plan: ExtractionPlan | None = None,
    space_check: bool = True,
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
        run, do nothing (``ExtractionSummary.already_complete``).
    progress : bool or None
        Show a progress bar on stderr; None shows it only on a terminal.
    plan : ExtractionPlan, optional
        A plan already made by :func:`plan_extraction`.
    space_check : bool
        Refuse to start when the output's size (uncompressed, for the subjects
        still to do) exceeds the free space of its file system.

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
        "format": plan.output_format,
        "subjects": len(plan.subjects),
        "patches": plan.total_patches,
        "skipped": [skipped.manifest_row for skipped in plan.skipped],
        "on_error": plan.config.on_error,
    }
    folder = plan.output_format == "nifti"
    with PartialOutput(
        path, header, folder=folder, overwrite=overwrite, resume=resume, kind=FORMAT_NAME
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
                        raise _every_subject_failed(config, writer.skipped_in_manifest_order())
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
    patch_size = plan.settings.patch_size
    if output.resumed:
        _check_resumed(plan, output.resumed, output.temporary)
        done = [_record_from_json(r) for r in output.resumed if "skipped" not in r]
        try:
            if plan.output_format == "nifti":
                writer = NiftiPatchWriter(
                    output.temporary,
                    images,
                    patch_size,
                    _attributes(plan),
                    plan.settings.padding,
                    done=done,
                    csv_offset=int(output.resumed[-1]["csv_offset"]),
                )
            else:
                writer = Hdf5PatchWriter.reopen(
                    output.temporary, images, patch_size, plan.total_patches, done
                )
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
    if plan.output_format == "nifti":
        writer = NiftiPatchWriter(
            output.temporary, images, patch_size, _attributes(plan), plan.settings.padding
        )
    else:
        writer = Hdf5PatchWriter(
            output.temporary,
            images,
            patch_size,
            plan.total_patches,
            len(plan.subjects),
            _attributes(plan),
            plan.config.output.compression,
            plan.config.output.compression_level,
        )
    writer.skipped = list(plan.skipped)
    return writer


def _record_json(record: SubjectRecord, csv_offset: int | None) -> dict:
    data = asdict(record)
    data["affine"] = record.affine.tolist()
    data["shape"] = list(record.shape)
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


def output_size_bound(plan: ExtractionPlan, first_subject: int = 0, margin: bool = True) -> int:
    """Bytes the output needs at most for the subjects from ``first_subject`` on (uncompressed),
    with ``margin`` for the file's metadata."""
    patches = int(sum(plan.counts[first_subject:]))
    if plan.output_format == "nifti":
        # One file per image and patch: header, data, and a row of patches.csv.
        per_patch = plan.patch_bytes + len(plan.images) * (352 + 4096) + 200
    else:
        per_patch = plan.patch_bytes + 56  # + its location and subject index
    return patches * per_patch + (4 * 2**20 if margin else 0)


def _check_space(plan: ExtractionPlan, output: PartialOutput) -> None:
    """Refuse a run whose output cannot fit the free space, before any work."""
    from .io.space import free_bytes
    from .units import format_bytes

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


def patches_per_block(plan: ExtractionPlan) -> int:
    """Patches per block: as many as ``block_size`` holds, at least one, at most a subject's."""
    patches = max(1, parse_size(plan.config.block_size) // max(1, plan.patch_bytes))
    return min(patches, max(plan.counts, default=1))


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
    )
    number = len(writer.subjects) - 1  # its row of the subjects table
    for index, block in enumerate(messages):
        if index:  # between two blocks; a complete subject is checkpointed first
            check_interrupt()
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
