"""The HDF5 patch file: one file per run (layout in docs/format.md).

Patches are written in blocks straight from the buffers they were cropped
into. Each patch is one chunk, so reading a random patch touches exactly one
chunk (h5py's automatic chunking cut patches across chunks and made random
reads hundreds of times slower).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .writer import PatchWriter

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
