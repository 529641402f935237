"""Merge the shards of a run into one dataset.

The shards of ``out.h5`` are ``out.shard-00-of-16.h5`` ... (patchcli.shards).
:func:`merge` checks that they come from one run (one fingerprint and format
version) and cover every subject of its manifest exactly once, then writes:

HDF5, virtual (the default)
    ``out.h5`` holds the small tables (locations, subjects) and virtual
    datasets (h5py ``VirtualLayout``) that read each shard's patches, named
    relative to ``out.h5``: the folder can be moved or copied as a whole. The
    shards stay; they are the data. patchcli's own reader reads the shards
    directly (faster than through the virtual datasets) after checking that
    every one is there.
HDF5, ``copy``
    One self-contained file, streamed shard by shard in bounded memory.
    Chunks are copied as stored when the compression is unchanged, and
    decoded and re-encoded otherwise (``compression``): ``merge --copy
    --compression gzip`` also converts a file for HDF5 tools without the
    Blosc plugin.
NIfTI
    One folder. The shards' files are hard-linked into it (copied where the
    file system has no hard links), and the shard folders removed once the
    merged folder is complete, unless ``copy``.

The merged output holds the patches of an unsharded run, in manifest order,
and records the run's fingerprint; where shards stored an image in different
dtypes (each shard's dtype comes from its own subjects), the merged image
has the smallest dtype that holds them all, as an unsharded run would.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .config import Config
from .errors import ConfigError, DataError
from .fingerprint import merge_fingerprint
from .io.atomic import atomic_output, size_on_disk
from .io.claim import Claim
from .io.compact import copy_chunks
from .io.format import FORMAT_NAME
from .io.hdf5 import STRING_DTYPE, compression_options, open_hdf5, write_skipped, write_subjects
from .io.nifti import CSV_NAME, subject_entry, write_metadata, write_patch_nifti
from .io.reader import PatchOutput, read_patch_output
from .io.store import write_merged_store
from .io.writer import SkippedSubject
from .progress import progress_bar
from .repair import stale_shards
from .shards import Shard, find_shards, parse_shard_name, shard_output_path
from .subjects import config_manifest
from .units import parse_size

#: Bytes of patches decoded at once by a copying merge.
BLOCK_BYTES = parse_size("64MiB")
COMPRESSIONS = ("none", "gzip", "lz4", "zstd")


@dataclass(frozen=True)
class MergeSummary:
    path: Path
    mode: str  # "virtual", "copy" or "nifti"
    shards: int
    subjects: int
    patches: int
    bytes_written: int
    seconds: float
    #: Subjects the shards left out (``on_error: skip``).
    skipped: int = 0
    #: ``hdf5``, ``nifti`` (patches) or ``volumes`` (a volume store).
    kind: str = "hdf5"


@dataclass
class _Shards:
    """Shards checked to form one run, in shard order."""

    outputs: list[PatchOutput]
    kind: str
    count: int
    dtypes: dict[str, np.dtype]

    @property
    def patches(self) -> int:
        return sum(output.num_patches for output in self.outputs)

    @property
    def subjects(self) -> int:
        return sum(len(output.subjects) for output in self.outputs)

    @property
    def fingerprint(self) -> str:
        """The merge's fingerprint: its shards' settings and fingerprints, in order (shards
        made before shards had fingerprints of their own share the run's, kept as it is)."""
        first = self.outputs[0]
        if first.settings_fingerprint is None:
            return first.fingerprint or ""
        return merge_fingerprint(
            first.settings_fingerprint, [output.fingerprint or "" for output in self.outputs]
        )

    @property
    def skipped(self) -> list[SkippedSubject]:
        """Every shard's skipped subjects, in manifest order."""
        return [skipped for output in self.outputs for skipped in output.skipped]


def find_shard_outputs(output: Path) -> list[Path]:
    """The shards of ``output`` beside it: HDF5 files or NIfTI folders named after it."""
    output = Path(output)
    files = [path for path in find_shards(output, folder=False) if path.is_file()]
    folders = [path for path in find_shards(output, folder=True) if path.is_dir()]
    if files and folders:
        raise DataError(
            f"{output}: found both HDF5 shards ({files[0].name}, ...) and NIfTI shard folders "
            f"({folders[0].name}, ...); name the shards to merge"
        )
    return files or folders


def merge(
    output: str | os.PathLike,
    shards: Sequence[str | os.PathLike] | None = None,
    *,
    copy: bool = False,
    compression: str | None = None,
    compression_level: int | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
    config: Config | None = None,
) -> MergeSummary:
    """Merge the shards of one run into ``output``.

    Parameters
    ----------
    output : path
        The merged output: the run's ``output.path`` (``out.h5``, or a folder).
    shards : sequence of paths, optional
        The shard outputs; default: ``output``'s siblings named as shards.
    copy : bool
        HDF5: write one self-contained file instead of virtual datasets.
        NIfTI: keep the shard folders.
    compression, compression_level : optional
        HDF5 with ``copy``: the merged file's compression (default: the shards').
    overwrite : bool
        Replace an existing ``output``.
    progress : bool or None
        Show a progress bar on stderr; None shows it only on a terminal.
    config : Config, optional
        The run's current config: every shard must have been made from its current
        manifest rows (a shard whose rows changed since is named, with the command that
        makes it again). Without it, shards of one setting merge.

    Returns
    -------
    MergeSummary

    Raises
    ------
    DataError
        Naming the missing, duplicated or mismatched shards; nothing is written.
    """
    started = time.perf_counter()
    output = Path(output)
    if compression is not None and compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    if (compression is not None or compression_level is not None) and not copy:
        raise ConfigError("--compression and --compression-level need --copy")
    paths = [Path(p) for p in shards] if shards else find_shard_outputs(output)
    if not paths:
        raise DataError(
            f"{output}: no shards found beside it (expected names like "
            f"{output.stem}.shard-0-of-N{output.suffix}); run the shards first, or name them"
        )
    checked = check_shards(output, paths, whole_run=copy)
    if config is not None:
        _check_current(output, checked, config)
    if compression is None and compression_level is not None:
        # A new level for the shards' own compression.
        compression = str(checked.outputs[0].attributes.get("compression", "none"))
        if compression == "none":
            raise ConfigError("--compression-level needs a compression: the shards have none")
    with Claim(output):
        if checked.kind == "nifti":
            mode = "nifti"
            with atomic_output(output, overwrite, folder=True, kind=FORMAT_NAME) as temporary:
                _merge_nifti(checked, temporary, progress)
            if not copy:
                for shard in checked.outputs:
                    shutil.rmtree(shard.path)
        elif checked.kind == "volumes":
            mode = "copy" if copy else "virtual"
            if compression is not None:
                raise ConfigError("a volume store keeps its shards' compression: no --compression")
            with atomic_output(output, overwrite) as temporary:
                _merge_store(checked, output, temporary, mode)
        else:
            mode = "copy" if copy else "virtual"
            with atomic_output(output, overwrite) as temporary:
                _merge_hdf5(
                    checked, output, temporary, mode, compression, compression_level, progress
                )
    written = size_on_disk(output)
    return MergeSummary(
        output,
        mode,
        len(checked.outputs),
        checked.subjects,
        checked.patches,
        written,
        time.perf_counter() - started,
        len(checked.skipped),
        checked.kind,
    )


# ------------------------------------------------------------------ checks
def _check_current(output: Path, checked: _Shards, config: Config) -> None:
    """Refuse shards made from other rows than ``config``'s manifest has now."""
    manifest = config_manifest(config).subjects
    total = checked.outputs[0].attributes.get("total_subjects")
    stale = stale_shards(config, checked.outputs, manifest)
    if not stale:
        return
    sampler = checked.outputs[0].sampler
    names = "; ".join(f"{shard.path.name} ({why})" for shard, why in stale[:3])
    more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
    first = stale[0][0].shard
    rows = (
        f"the manifest has {len(manifest)} rows, the shards {total}; "
        if total != len(manifest)
        else ""
    )
    raise DataError(
        f"{output}: {rows}shards made from other manifest rows than the config's: {names}{more}; "
        f"run them again (patchcli {sampler} CONFIG --shard {first} --resume, or the same "
        "patchcli submit), then merge"
    )


def check_shards(output: Path, paths: Sequence[Path], whole_run: bool = False) -> _Shards:
    """Read the shards and check they form one whole run; ordered by shard index.

    With ``whole_run``, one unsharded run alone is taken as a shard of one (what
    ``merge --copy`` converts).
    """
    outputs = [read_patch_output(path) for path in paths]
    whole = outputs[0] if len(outputs) == 1 and whole_run else None
    if whole is not None and whole.shard is None and whole.version >= 2 and not whole.merge:
        # A whole run alone is a shard of one: `merge --copy` then converts it (e.g. to gzip).
        whole.attributes["shard_index"], whole.attributes["shard_count"] = 0, 1
    for shard in outputs:
        if shard.shard is None:
            why = (
                "written by a patchcli without shard records (format version 1)"
                if shard.version < 2
                else "a merge"
                if shard.merge
                else "not a shard (no shard_index; was it run with --shard?); alone, "
                "merge --copy converts it"
            )
            raise DataError(f"{shard.path}: cannot be merged: {why}")
    first = outputs[0]
    kinds = {shard.kind for shard in outputs}
    if len(kinds) > 1:
        raise DataError(f"{output}: shards mix HDF5 files and NIfTI folders")
    # Shards of one run share its settings; each shard's fingerprint covers its own rows
    # (shards made before that carry the whole run's, and share it).
    _check_same(
        outputs,
        lambda s: s.settings_fingerprint or s.fingerprint,
        "settings (sampler, preprocessing, seed, ...: the settings fingerprint)",
    )
    _check_same(outputs, lambda s: s.version, "format version")
    _check_same(outputs, lambda s: s.shard.count, "shard count")
    _check_same(outputs, lambda s: s.attributes.get("total_subjects"), "number of subjects")
    count = first.shard.count

    by_index: dict[int, list[PatchOutput]] = defaultdict(list)
    for shard in outputs:
        by_index[shard.shard.index].append(shard)
    duplicated = {index: found for index, found in by_index.items() if len(found) > 1}
    if duplicated:
        index, found = min(duplicated.items())
        raise DataError(
            f"{output}: shard {index} of {count} appears {len(found)} times: "
            f"{', '.join(str(s.path) for s in found)}"
        )
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise DataError(f"{output}: {_missing_text(output, first, missing, count)}")
    for shard in outputs:
        named = parse_shard_name(shard.path, output, shard.kind == "nifti")
        if named is not None and named != shard.shard:
            raise DataError(
                f"{shard.path}: named as shard {named} but records shard {shard.shard}; "
                "was it renamed?"
            )
    ordered = [by_index[index][0] for index in range(count)]
    _check_rows(output, ordered)

    for shard in ordered[1:]:
        if shard.images != first.images or shard.patch_size != first.patch_size:
            raise DataError(
                f"{shard.path}: images {shard.images} of size {shard.patch_size} differ from "
                f"{first.path}'s {first.images} of size {first.patch_size}"
            )
    dtypes = {}
    for shard in ordered:
        shard.complete_image_info()
    for name in first.images:
        channels = {shard.channels[name] for shard in ordered}
        if len(channels) > 1:
            raise DataError(
                f"{output}: shards store image {name!r} with {sorted(channels)} channels"
            )
        dtypes[name] = np.result_type(*[shard.dtypes[name] for shard in ordered])
    return _Shards(ordered, first.kind, count, dtypes)


def _check_same(outputs: list[PatchOutput], key, what: str) -> None:
    groups: dict[Any, list[PatchOutput]] = defaultdict(list)
    for shard in outputs:
        groups[key(shard)].append(shard)
    if len(groups) > 1:
        # Name the shards that differ from the most common value.
        common = max(groups.values(), key=len)
        odd = [shard for found in groups.values() if found is not common for shard in found]
        shown = ", ".join(str(s.path.name) for s in odd[:5]) + (" ..." if len(odd) > 5 else "")
        raise DataError(
            f"{odd[0].path}: differs from {common[0].path.name} in {what} "
            f"({key(odd[0])!r} vs {key(common[0])!r}); mismatched shards: {shown}"
        )


def _missing_text(output: Path, first: PatchOutput, missing: list[int], count: int) -> str:
    names = [shard_output_path(output, Shard(i, count), first.kind == "nifti") for i in missing]
    shown = ", ".join(path.name for path in names[:5]) + (" ..." if len(names) > 5 else "")
    partial = [p for p in names if p.with_name(p.name + ".partial").exists()]
    note = (
        f" ({len(partial)} of them only as .partial: still running, or stopped; "
        "rerun those with --resume)"
        if partial
        else ""
    )
    return f"missing {len(missing)} of {count} shards: {shown}{note}"


def _check_rows(output: Path, ordered: list[PatchOutput]) -> None:
    """Every manifest row exactly once (written, or skipped by ``on_error: skip``), and
    shards in manifest order."""
    total = ordered[0].attributes.get("total_subjects")
    seen: dict[int, Path] = {}
    previous = -1
    for shard in ordered:
        for skipped in shard.skipped:
            if skipped.manifest_row is not None:
                if total is not None and not 0 <= skipped.manifest_row < int(total):
                    raise DataError(
                        f"{shard.path}: skipped subject {skipped.id!r} has manifest row "
                        f"{skipped.manifest_row}, outside the manifest's {total} subjects"
                    )
                if skipped.manifest_row in seen:
                    raise DataError(
                        f"{output}: manifest row {skipped.manifest_row} (subject "
                        f"{skipped.id!r}) is in both {seen[skipped.manifest_row].name} and "
                        f"{shard.path.name}"
                    )
                seen[skipped.manifest_row] = shard.path
        for subject in shard.subjects:
            row = subject.manifest_row
            if row is None:
                raise DataError(f"{shard.path}: subject {subject.id!r} has no manifest row")
            if total is not None and not 0 <= row < int(total):
                raise DataError(
                    f"{shard.path}: subject {subject.id!r} has manifest row {row}, outside the "
                    f"manifest's {total} subjects"
                )
            if row in seen:
                raise DataError(
                    f"{output}: manifest row {row} (subject {subject.id!r}) is in both "
                    f"{seen[row].name} and {shard.path.name}"
                )
            if row < previous:
                raise DataError(f"{shard.path}: subjects are not in manifest order")
            seen[row] = shard.path
            previous = row
    missing = sorted(set(range(int(total))) - set(seen)) if total is not None else []
    if missing or (total is not None and len(seen) != int(total)):
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{output}: the shards do not hold manifest rows {shown} of {total}")


# ------------------------------------------------------------- attributes
def _merged_config(config_text: str, dtypes: dict[str, np.dtype], compression=None) -> str:
    """A shard's recorded config as the unsharded run's: no shard, the merged dtypes."""
    try:
        data = yaml.safe_load(config_text) if config_text else None
    except yaml.YAMLError:
        return config_text
    if not isinstance(data, dict):
        return config_text
    data.pop("shard", None)
    for name, image in (data.get("images") or {}).items():
        if isinstance(image, dict) and name in dtypes:
            image["dtype"] = np.dtype(dtypes[name]).name
    if compression is not None and isinstance(data.get("output"), dict):
        data["output"]["compression"] = compression[0]
        data["output"].pop("compression_level", None)
        if compression[1] is not None:
            data["output"]["compression_level"] = compression[1]
    return yaml.safe_dump(data, sort_keys=False)


# -------------------------------------------------------------------- HDF5
def _merge_hdf5(
    checked: _Shards,
    output: Path,
    temporary: Path,
    mode: str,
    compression: str | None,
    compression_level: int | None,
    progress: bool | None,
) -> None:
    import h5py

    shards = checked.outputs
    if mode == "virtual":
        relative = [_relative_inside(shard.path, output) for shard in shards]
    first = shards[0]
    total = checked.patches
    starts = np.cumsum([0] + [shard.num_patches for shard in shards]).tolist()
    recompress = None if compression is None else (compression, compression_level)
    with h5py.File(temporary, "w", locking=False) as merged:
        with open_hdf5(first.path) as source:
            for key, value in source.attrs.items():
                if key not in ("shard_index",):
                    merged.attrs[key] = value
        merged.attrs["merge"] = mode
        merged.attrs["shard_count"] = checked.count
        merged.attrs["config_fingerprint"] = checked.fingerprint
        merged.attrs["config"] = _merged_config(
            first.attributes.get("config", ""), checked.dtypes, recompress
        )
        if recompress is not None:
            merged.attrs["compression"] = compression
        types = dict(zip(first.images, first.image_types, strict=True))
        bar = progress_bar(total * len(first.images), progress)
        with bar:
            for name in first.images:
                shape = (first.channels[name], *first.patch_size)
                if mode == "virtual":
                    layout = h5py.VirtualLayout((total, *shape), dtype=checked.dtypes[name])
                    for shard, path, start in zip(shards, relative, starts, strict=False):
                        layout[start : start + shard.num_patches] = h5py.VirtualSource(
                            path,
                            f"patches/{name}",
                            shape=(shard.num_patches, *shape),
                            dtype=shard.dtypes[name],
                        )
                    dataset = merged.create_virtual_dataset(f"patches/{name}", layout, fillvalue=0)
                    bar.update(total)
                else:
                    level = compression_level if compression is not None else None
                    chosen = compression or str(first.attributes.get("compression", "none"))
                    filters = compression_options(chosen, level) if total else {}
                    dataset = merged.create_dataset(
                        f"patches/{name}",
                        (total, *shape),
                        dtype=checked.dtypes[name],
                        chunks=(1, *shape) if total else None,
                        **filters,
                    )
                    for shard, start in zip(shards, starts, strict=False):
                        _copy_rows(shard, name, dataset, start, bar)
                dataset.attrs["type"] = types[name]
        merged["locations"] = np.concatenate([s.locations for s in shards]).reshape(-1, 6)
        offsets = np.cumsum([0] + [len(s.subjects) for s in shards])
        merged["subject_index"] = np.concatenate(
            [s.subject_index + offset for s, offset in zip(shards, offsets, strict=False)]
        ).astype(np.int64)
        if first.copy_index is not None:
            merged["copy_index"] = np.concatenate([s.copy_index for s in shards]).astype(np.int64)
        records = [
            replace(record, patch_start=record.patch_start + start)
            for shard, start in zip(shards, starts, strict=False)
            for record in shard.subjects
        ]
        write_subjects(merged, records, first.images)
        if checked.skipped:
            write_skipped(merged, checked.skipped)
        table = merged.create_group("shards")
        names = relative if mode == "virtual" else [shard.path.name for shard in shards]
        table["file"] = np.array(names, dtype=STRING_DTYPE)
        table["patch_start"] = np.array(starts[:-1], np.int64)
        table["patch_count"] = np.array([s.num_patches for s in shards], np.int64)
        table["fingerprint"] = np.array([s.fingerprint or "" for s in shards], dtype=STRING_DTYPE)


def _merge_store(checked: _Shards, output: Path, temporary: Path, mode: str) -> None:
    """Merge volume stores: the subjects' groups linked (``virtual``: HDF5 external links
    to the shards, which stay beside it) or copied chunk for chunk (``copy``)."""
    shards = checked.outputs
    for name, dtype in checked.dtypes.items():
        if any(shard.dtypes[name] != dtype for shard in shards):
            raise DataError(
                f"{output}: shards store image {name!r} as "
                f"{sorted({np.dtype(s.dtypes[name]).name for s in shards})}; a volume store "
                "holds one dtype per image: give output.dtype (intensity) or make the shards again"
            )
    if mode == "virtual":
        names = [_relative_inside(shard.path, output) for shard in shards]
    else:
        names = [shard.path.name for shard in shards]
    config = _merged_config(shards[0].attributes.get("config", ""), checked.dtypes)
    write_merged_store(temporary, shards, names, mode, checked.fingerprint, checked.skipped, config)


def _relative_inside(path: Path, output: Path) -> str:
    relative = os.path.relpath(path.resolve(), output.resolve().parent)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise DataError(
            f"{path}: outside {output.parent}; a virtual merge reads its shards from its own "
            "folder (and below): move them there, or merge with --copy"
        )
    return relative


def _filters(dataset) -> list:
    plist = dataset.id.get_create_plist()
    return [plist.get_filter(i) for i in range(plist.get_nfilters())]


def _copy_rows(shard: PatchOutput, name: str, target, start: int, bar) -> None:
    """Copy one shard's patches of ``name`` into rows ``start...`` of ``target``."""
    count = shard.num_patches
    if count == 0:
        return
    with open_hdf5(shard.path) as file:
        source = file[f"patches/{name}"]
        if (
            source.dtype == target.dtype
            and source.chunks == target.chunks
            and _filters(source) == _filters(target)
        ):
            copy_chunks(source, target, 0, count, start)  # as stored, not recompressed
            bar.update(count)
            return
        patch_bytes = int(np.prod(source.shape[1:])) * target.dtype.itemsize
        block = max(1, min(count, BLOCK_BYTES // max(1, patch_bytes)))
        buffer = np.empty((block, *source.shape[1:]), dtype=target.dtype)
        for first in range(0, count, block):
            length = min(block, count - first)
            source.read_direct(buffer, np.s_[first : first + length], np.s_[0:length])
            target.write_direct(
                buffer, np.s_[0:length], np.s_[start + first : start + first + length]
            )
            bar.update(length)


# ------------------------------------------------------------------- NIfTI
def _merge_nifti(checked: _Shards, folder: Path, progress: bool | None) -> None:
    shards = checked.outputs
    first = shards[0]
    with open(first.path / "patchcli.yaml", encoding="utf-8") as stream:
        metadata = yaml.safe_load(stream)
    metadata.pop("shard_index", None)
    metadata["shard_count"] = checked.count
    metadata["merge"] = "copy"
    metadata["config_fingerprint"] = checked.fingerprint
    metadata["dtypes"] = {name: np.dtype(d).name for name, d in checked.dtypes.items()}
    metadata["channels"] = {name: int(first.channels[name]) for name in first.images}
    subjects = []
    start = 0
    with open(folder / CSV_NAME, "w", encoding="utf-8", newline="") as table:
        with progress_bar(checked.patches * len(first.images), progress) as bar:
            for shard in shards:
                with open(shard.path / CSV_NAME, encoding="utf-8", newline="") as stream:
                    header = stream.readline()
                    if shard is first:
                        table.write(header)
                    shutil.copyfileobj(stream, table)
                for record in shard.subjects:
                    (folder / record.id).mkdir()
                for name in first.images:
                    dtype = checked.dtypes[name]
                    for relative in shard.nifti_files[name]:
                        if shard.dtypes[name] == dtype:
                            _link_or_copy(shard.path / relative, folder / relative)
                        else:  # stored as an unsharded run would have
                            _convert_patch(shard.path / relative, folder / relative, dtype)
                        bar.update(1)
                for record in shard.subjects:
                    subjects.append(
                        subject_entry(replace(record, patch_start=start + record.patch_start))
                    )
                start += shard.num_patches
    config = metadata.pop("config", "")
    metadata["subjects"] = subjects
    metadata.pop("skipped_subjects", None)  # the first shard's; the merge lists all shards'
    if checked.skipped:
        metadata["skipped_subjects"] = [asdict(skipped) for skipped in checked.skipped]
    metadata["config"] = _merged_config(config, checked.dtypes)
    write_metadata(folder, metadata)


def _convert_patch(source: Path, target: Path, dtype: np.dtype) -> None:
    """A patch file rewritten in the merged ``dtype`` (values fit: it holds them all)."""
    import nibabel as nib

    image = nib.load(source)
    data = np.asanyarray(image.dataobj)
    patch = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    write_patch_nifti(target, patch.astype(dtype), image.affine)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


__all__ = ["MergeSummary", "check_shards", "find_shard_outputs", "merge"]
