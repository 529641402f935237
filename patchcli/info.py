"""What a patch output holds, for ``patchcli info``: a plain dictionary, read once.

Everything comes from :func:`patchcli.io.reader.read_patch_output` (the one
reader of the layout) and the file system: the run that made the output
(sampler, seed, config, shard or merge), its images, its subjects with their
patch counts, its size on disk against the patches' uncompressed size, and
for a virtual merge whether each shard is there.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, PatchcliError
from .io.atomic import size_on_disk
from .io.hdf5 import decode_strings, open_hdf5
from .io.reader import PatchOutput, read_patch_output
from .repair import repair_report

#: Compressions whose HDF5 filter is a plugin (Blosc, from hdf5plugin).
PLUGIN_COMPRESSIONS = ("lz4", "zstd")
PLUGIN_NOTE = (
    "{compression} goes through the Blosc filter plugin: in Python, `import hdf5plugin` "
    "before opening the file with h5py; for h5dump and other HDF5 tools, set "
    "HDF5_PLUGIN_PATH to hdf5plugin's plugin folder "
    '(python -c "import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)"); or make a gzip copy '
    "that every HDF5 tool reads: patchcli merge {copy} {path} --copy --compression gzip"
)


STORE_PLUGIN_NOTE = (
    "{compression} goes through the Blosc filter plugin: in Python, `import hdf5plugin` "
    "before opening the store with h5py; for other HDF5 tools, set HDF5_PLUGIN_PATH to "
    "hdf5plugin's plugin folder; or make the store with output.compression: gzip, which "
    "every HDF5 tool reads"
)


def describe_output(path: str | os.PathLike, *, allow_external: bool = False) -> dict[str, Any]:
    """Describe a patch output (HDF5 file, shard, merge, or NIfTI folder).

    ``allow_external`` accepts a file reading from outside its folder
    (:func:`~patchcli.io.reader.read_patch_output`).

    Returns
    -------
    dict
        ``path``, ``kind``, ``format_version``, ``patchcli_version``,
        ``sampler``, ``seed``, ``role`` (``run``, ``shard`` or ``merge``
        details), ``images`` (name, type, dtype, channels, patch shape),
        ``subjects`` (id, manifest row, patches), ``skipped_subjects`` (id,
        manifest row, reason), ``patches``,
        ``bytes_on_disk``, ``bytes_uncompressed``, ``compression``,
        ``compression_ratio``, ``notes`` and ``config`` (the YAML it was made
        with). A virtual merge lists its shards with ``present`` flags.

    Raises
    ------
    DataError
        When ``path`` is not a readable patch output; a virtual merge with
        missing shards is described instead, with ``problems``.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        status = describe_run_status(path)
        if status is None:
            raise DataError(f"{path}: not found, and no shards named after it beside it")
        return {"path": str(path), "kind": None, "role": {"kind": "shards"}, "run_status": status}
    try:
        output = read_patch_output(path, allow_external=allow_external)
    except DataError as error:
        shards = _virtual_merge_shards(path)
        if shards is None:
            raise
        return {
            "path": str(path),
            "kind": "hdf5",
            "role": {"kind": "merge", "mode": "virtual", "shards": shards},
            "problems": [str(error)],
            "run_status": describe_run_status(path),
        }
    description = _describe(output)
    if output.merge or output.shard is not None:
        description["run_status"] = describe_run_status(path)
    return description


def describe_run_status(path: Path) -> dict[str, Any] | None:
    """The state of each shard of the run ``path`` belongs to (a merge, a shard, or the
    name of a merged output with shards beside it), against its config and manifest now,
    and the command that repairs it (patchcli.repair); None for an unsharded run."""
    try:
        report = repair_report(path)
    except PatchcliError as error:
        return {"problem": f"cannot check the shards against the manifest: {error}"}
    if report is None:
        return None
    status = report.status
    return {
        "config": report.config_source,
        "shard_count": status.count,
        "shards": [
            {
                "index": shard.index,
                "file": str(shard.path),
                "state": shard.state,
                "detail": shard.detail,
            }
            for shard in status.shards
        ],
        "merged": status.merged,
        "repair": report.command,
    }


def _describe(output: PatchOutput) -> dict[str, Any]:
    output.complete_image_info()  # a version-1 NIfTI folder records no dtypes
    attributes = output.attributes
    patch_voxels = int(np.prod(output.patch_size))
    images = []
    row_bytes = 0
    for name, kind in zip(output.images, output.image_types, strict=True):
        dtype = np.dtype(output.dtypes[name])
        channels = int(output.channels[name])
        row_bytes += channels * patch_voxels * dtype.itemsize
        images.append(
            {
                "name": name,
                "type": kind,
                "dtype": dtype.name,
                "channels": channels,
                "patch_shape": [channels, *map(int, output.patch_size)],
            }
        )
    counts = np.bincount(output.subject_index, minlength=len(output.subjects))
    subjects = [
        {
            "id": record.id,
            "manifest_row": record.manifest_row,
            "patches": int(counts[number]),
            "shape": list(record.shape),
        }
        for number, record in enumerate(output.subjects)
    ]
    patches = int(len(output.locations))
    on_disk = _bytes_on_disk(output)
    uncompressed = patches * row_bytes
    if output.kind == "volumes":  # a store: each subject's whole volumes
        voxel_bytes = sum(
            int(output.channels[name]) * np.dtype(output.dtypes[name]).itemsize
            for name in output.images
        )
        uncompressed = sum(int(np.prod(record.shape)) for record in output.subjects) * voxel_bytes
        for image in images:
            image["patch_shape"] = [image["channels"], "X", "Y", "Z"]

    compression = "gzip (NIfTI)" if output.kind == "nifti" else attributes.get("compression")
    notes = []
    if output.kind == "hdf5" and compression in PLUGIN_COMPRESSIONS:
        copy = output.path.with_name(f"{output.path.stem}.gzip{output.path.suffix}")
        notes.append(PLUGIN_NOTE.format(compression=compression, copy=copy, path=output.path))
    if output.kind == "volumes" and compression in PLUGIN_COMPRESSIONS:
        notes.append(STORE_PLUGIN_NOTE.format(compression=compression))
    description = {
        "path": str(output.path),
        "kind": output.kind,
        "format_version": output.version,
        "patchcli_version": attributes.get("patchcli_version"),
        "sampler": attributes.get("sampler"),
        "seed": attributes.get("seed"),
        "patch_size": list(map(int, output.patch_size)),
        "role": _role(output),
        "images": images,
        "subjects": subjects,
        "skipped_subjects": [asdict(skipped) for skipped in output.skipped],
        "patches": patches,
        "bytes_on_disk": on_disk,
        "bytes_uncompressed": uncompressed,
        "compression": compression,
        "compression_ratio": round(uncompressed / on_disk, 2) if on_disk else None,
        "config_fingerprint": attributes.get("config_fingerprint"),
        "notes": notes,
        "config": attributes.get("config"),
    }
    description["parameters"] = _sampler_parameters(attributes.get("config"))
    if output.kind == "volumes":
        tables = attributes.get("patch_size")
        description["tables_patch_size"] = None if tables is None else list(map(int, tables))
    recorded = _recorded_config(attributes.get("config"))
    description["preprocess"] = recorded.get("preprocess") or []
    description["augment"] = recorded.get("augment")
    if attributes.get("sampler") == "grid":
        overlap = attributes.get("patch_overlap")
        description["patch_overlap"] = None if overlap is None else list(map(int, overlap))
        description["padding_mode"] = attributes.get("padding_mode") or None
    return description


#: Config keys that say how the sampler drew the patches.
SAMPLER_KEYS = ("num_patches", "probability_map", "label_name", "label_probabilities")


def _recorded_config(config_text: str | None) -> dict[str, Any]:
    """The recorded config as a mapping ({} when absent or unreadable)."""
    import yaml

    try:
        config = yaml.safe_load(config_text or "") or {}
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def _sampler_parameters(config_text: str | None) -> dict[str, Any]:
    """The sampler's parameters from the recorded config (those that are set)."""
    config = _recorded_config(config_text)
    return {key: config[key] for key in SAMPLER_KEYS if config.get(key) is not None}


def _role(output: PatchOutput) -> dict[str, Any]:
    attributes = output.attributes
    total = attributes.get("total_subjects")
    if attributes.get("merge"):
        role: dict[str, Any] = {"kind": "merge", "mode": attributes["merge"]}
        if attributes["merge"] == "virtual":
            role["shards"] = [
                {"file": str(part.path), "patches": part.count, "present": part.path.is_file()}
                for part in output.parts
            ]
        return role
    if attributes.get("shard_count") is not None:
        return {
            "kind": "shard",
            "index": int(attributes["shard_index"]),
            "count": int(attributes["shard_count"]),
            "total_subjects": None if total is None else int(total),
        }
    return {"kind": "run", "total_subjects": None if total is None else int(total)}


def _bytes_on_disk(output: PatchOutput) -> int:
    if output.kind == "nifti":
        return size_on_disk(output.path)
    files = {output.path, *(part.path for part in output.parts)}
    return sum(_allocated(file) for file in files)


def _allocated(path: Path) -> int:
    """Bytes a file takes: its size, or less where it is sparse."""
    stat = path.stat()
    blocks = getattr(stat, "st_blocks", None)
    return min(stat.st_size, blocks * 512) if blocks is not None else stat.st_size


def _virtual_merge_shards(path: Path) -> list[dict[str, Any]] | None:
    """The shards a virtual merge names, with ``present`` flags; None for anything else."""
    if not path.is_file():
        return None
    try:
        with open_hdf5(path) as file:
            if file.attrs.get("merge") not in ("virtual", b"virtual") or "shards" not in file:
                return None
            names = decode_strings(file["shards/file"][()])
            counts = np.asarray(file["shards/patch_count"][()]).reshape(-1).tolist()
    except (DataError, OSError, KeyError):
        return None
    return [
        {"file": name, "patches": int(count), "present": (path.parent / name).is_file()}
        for name, count in zip(names, counts, strict=False)
    ]


__all__ = ["PLUGIN_NOTE", "describe_output"]
