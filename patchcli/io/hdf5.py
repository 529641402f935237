"""The HDF5 patch file: one file per run (layout in docs/format.md), written and read.

Patches are written in blocks straight from the buffers they were cropped
into. Each patch is one chunk, so reading a random patch touches exactly one
chunk (h5py's automatic chunking cut patches across chunks and made random
reads hundreds of times slower).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .writer import PatchWriter, SubjectRecord

FORMAT_NAME = "patchcli-patches"
FORMAT_VERSION = 1
_STRING = h5py.string_dtype("utf-8")


def compression_options(compression: str, level: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``create_dataset`` for a compression name."""
    if compression == "none":
        return {}
    if compression == "gzip":
        return {
            "compression": "gzip",
            "compression_opts": 4 if level is None else level,
            "shuffle": True,
        }
    if compression in ("lz4", "zstd"):
        import hdf5plugin

        default_level = 5 if compression == "lz4" else 3
        return dict(
            hdf5plugin.Blosc(
                cname=compression,
                clevel=default_level if level is None else min(level, 9),
                shuffle=hdf5plugin.Blosc.SHUFFLE,
            )
        )
    raise ValueError(f"unknown compression {compression!r}")


class Hdf5PatchWriter(PatchWriter):
    """Write a run's patches, locations and subjects table to an HDF5 file.

    Parameters
    ----------
    path : Path
        The file to create (normally the ``.partial`` temporary name).
    images : mapping
        Image name -> ``(channels, dtype, type)``.
    patch_size : tuple of 3 ints
    num_patches : int
        Total rows of the file (known before writing starts).
    num_subjects : int
    attributes : mapping
        Root attributes (sampler, config, seed, ...).
    compression : str
    compression_level : int, optional
    """

    def __init__(
        self,
        path: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        patch_size: Sequence[int],
        num_patches: int,
        num_subjects: int,
        attributes: Mapping[str, Any],
        compression: str = "none",
        compression_level: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.file = h5py.File(self.path, "w", locking=False)
        self.image_names = list(images)
        filters = compression_options(compression, compression_level)
        root = self.file.attrs
        root["format"] = FORMAT_NAME
        root["format_version"] = FORMAT_VERSION
        root["images"] = np.array(self.image_names, dtype=_STRING)
        root["image_types"] = np.array([spec[2] for spec in images.values()], dtype=_STRING)
        root["patch_size"] = np.asarray(patch_size, dtype=np.int64)
        root["compression"] = compression
        for key, value in attributes.items():
            root[key] = value
        patches = self.file.create_group("patches")
        self.patches: dict[str, h5py.Dataset] = {}
        for name, (channels, dtype, image_type) in images.items():
            shape = (num_patches, channels, *patch_size)
            dataset = patches.create_dataset(
                name,
                shape=shape,
                dtype=dtype,
                chunks=(1, channels, *patch_size) if num_patches else None,
                **(filters if num_patches else {}),
            )
            dataset.attrs["type"] = image_type
            self.patches[name] = dataset
        self.locations = self.file.create_dataset("locations", (num_patches, 6), dtype=np.int64)
        self.subject_index = self.file.create_dataset(
            "subject_index", (num_patches,), dtype=np.int64
        )
        self.num_subjects = num_subjects

    def write_block(
        self,
        row: int,
        arrays: Mapping[str, np.ndarray],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        """Write ``len(locations)`` patches starting at ``row``; arrays are (b, C, X, Y, Z)."""
        count = len(locations)
        selection = np.s_[row : row + count]
        for name, array in arrays.items():
            self.patches[name].write_direct(array, np.s_[0:count], selection)
        self.locations[selection] = locations
        self.subject_index[selection] = subject_index

    def close(self) -> None:
        """Write the subjects table and close the file."""
        if not self.file.id.valid:
            return
        rows = self.subjects
        group = self.file.create_group("subjects")
        tables = {
            "id": np.array([r.id for r in rows], dtype=_STRING),
            "affine": np.array([r.affine for r in rows], np.float64).reshape(-1, 4, 4),
            "shape": np.array([r.shape for r in rows], np.int64).reshape(-1, 3),
            "patch_start": np.array([r.patch_start for r in rows], np.int64),
            "patch_count": np.array([r.patch_count for r in rows], np.int64),
        }
        for key, values in tables.items():
            group.create_dataset(key, data=values)
        sources = group.create_group("source")
        for name in self.image_names:
            paths = np.array([r.source[name] for r in rows], dtype=_STRING)
            sources.create_dataset(name, data=paths)
        self.file.close()

    def abort(self) -> None:
        if self.file.id.valid:
            self.file.close()


# -- reading -------------------------------------------------------------------


def decode_strings(values) -> list[str]:
    """HDF5 strings (bytes or str, any shape) as a flat list of str."""
    return [
        value.decode("utf-8") if isinstance(value, bytes) else str(value)
        for value in np.asarray(values, dtype=object).reshape(-1)
    ]


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading, with the Blosc filters registered.

    Without file locks: cluster file systems (NFS, Lustre) often refuse them and
    reading does not need them. Errors are one-line :class:`DataError`.
    """
    import hdf5plugin  # noqa: F401  (registers the Blosc filters of lz4 and zstd files)

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an HDF5 file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not an HDF5 file ({reason})") from None


def check_patch_file(file: h5py.File, path: str | os.PathLike) -> None:
    """Raise :class:`DataError` unless ``file`` is a patch file of a version this reads."""
    attributes = file.attrs
    found = decode_strings(attributes["format"])[0] if "format" in attributes else None
    if found != FORMAT_NAME or "patches" not in file:
        raise DataError(
            f"{path}: not a patchcli patch file (format attribute {found!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    version = int(attributes.get("format_version", 0))
    if not 1 <= version <= FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {version} cannot be read by this patchcli "
            f"(it reads versions 1 to {FORMAT_VERSION})"
        )


def open_patch_file(path: str | os.PathLike) -> h5py.File:
    """Open a patchcli HDF5 patch file, checking its format and version."""
    file = open_hdf5(path)
    try:
        check_patch_file(file, path)
    except BaseException:
        file.close()
        raise
    return file


def read_subjects(file: h5py.File, path: str | os.PathLike) -> list[SubjectRecord]:
    """The subjects table of an open patch file (``/subjects``)."""
    try:
        group = file["subjects"]
        ids = decode_strings(group["id"][()])
        affines = np.asarray(group["affine"][()], dtype=np.float64).reshape(-1, 4, 4)
        shapes = np.asarray(group["shape"][()], dtype=np.int64).reshape(-1, 3)
        starts = np.asarray(group["patch_start"][()], dtype=np.int64).reshape(-1)
        counts = np.asarray(group["patch_count"][()], dtype=np.int64).reshape(-1)
        sources = {
            name: decode_strings(group["source"][name][()])
            for name in (group["source"] if "source" in group else ())
        }
    except KeyError as error:
        raise DataError(
            f"{path}: incomplete patchcli patch file (missing {error.args[0]!s})"
        ) from None
    return [
        SubjectRecord(
            id=ids[row],
            affine=affines[row],
            shape=tuple(int(n) for n in shapes[row]),  # type: ignore[arg-type]
            source={name: paths[row] for name, paths in sources.items()},
            patch_start=int(starts[row]),
            patch_count=int(counts[row]),
        )
        for row in range(len(ids))
    ]
