"""Reading a grid output for aggregation.

:class:`GridFile` holds the validated geometry and subjects table of a grid
output (an HDF5 file, a merge of grid shards, or a NIfTI folder) and the rows
of one of its images. :func:`prediction_dataset` checks that a predictions
file (docs/format.md) is aligned with the grid row by row and infers its
downsampling factor. Either way the patches to aggregate are a :class:`Rows`:
their shape, dtype and a reader of blocks of rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..io.reader import HandleCache
from ..sampling.geometry import Triplet, to_triplet


class GridFile:
    """The validated geometry and subjects table of a grid output."""

    def __init__(self, output: Any) -> None:
        self.output = output
        self.path = path = output.path
        sampler = output.sampler
        if sampler != "grid":
            raise DataError(
                f"{path}: holds {sampler!r} patches, not 'grid' ones; only a grid output "
                "(patchcli grid) can be aggregated"
            )
        attributes = output.attributes
        try:
            self.patch_size = to_triplet(list(output.patch_size), "patch_size")
            self.patch_overlap = to_triplet(
                list(attributes["patch_overlap"]), "patch_overlap", minimum=0
            )
            self.padding = to_triplet(output.padding.tolist(), "padding", minimum=0)
        except (KeyError, TypeError, ConfigError) as error:
            raise DataError(f"{path}: incomplete grid file ({error})") from error
        self.images = output.images
        self.num_rows = output.num_patches
        subjects = output.subjects
        self.ids = [subject.id for subject in subjects]
        self.shapes = np.array([subject.shape for subject in subjects], np.int64).reshape(-1, 3)
        self.affines = np.array([subject.affine for subject in subjects]).reshape(-1, 4, 4)
        self.patch_starts = np.array([subject.patch_start for subject in subjects], np.int64)
        self.patch_counts = np.array([subject.patch_count for subject in subjects], np.int64)

    def subject_row(self, subject: int | str) -> int:
        if isinstance(subject, (int, np.integer)) and not isinstance(subject, bool):
            if not 0 <= subject < len(self.ids):
                raise DataError(f"{self.path}: no subject row {subject} ({len(self.ids)} subjects)")
            return int(subject)
        if subject not in self.ids:
            raise DataError(f"{self.path}: no subject {subject!r}")
        return self.ids.index(subject)

    def rows(self, row: int) -> tuple[int, int]:
        start, count = int(self.patch_starts[row]), int(self.patch_counts[row])
        return start, start + count

    def image_rows(self, image: str) -> Rows:
        """The grid's own patches of ``image``, as rows to aggregate."""
        if image not in self.images:
            raise DataError(
                f"{self.path}: no image {image!r}; available: {', '.join(self.images) or 'none'}"
            )
        self.output.complete_image_info([image])
        handles = HandleCache(max_open=8)
        return Rows(
            (self.output.channels[image], *self.patch_size),
            self.output.dtypes[image],
            lambda start, count, out: self.output.read_rows(image, start, count, out, handles),
            handles.close,
        )


class Rows:
    """Rows of patches to aggregate: their (C, x, y, z) shape, dtype, and a block reader."""

    def __init__(self, shape, dtype, read, close=lambda: None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.read = read
        self.close = close


def prediction_dataset(
    path: Path, handle: Any, name: str | None, image: str | None, grid: GridFile
) -> tuple[str, Rows, Triplet]:
    """The predictions' rows, their name and the downsampling factor, all checked."""
    group = handle.get("patches")
    available = sorted(group) if group is not None and hasattr(group, "keys") else []
    if name is None:
        if image is not None and image in available:
            name = image
        elif len(available) == 1:
            name = available[0]
        else:
            raise DataError(
                f"{path}: give the predictions' name; /patches holds "
                f"{', '.join(available) or 'nothing'}"
            )
    if name not in available:
        raise DataError(
            f"{path}: no predictions /patches/{name}; available: {', '.join(available) or 'none'}"
        )
    dataset = group[name]
    if len(dataset.shape) != 5:
        raise DataError(
            f"{path}: /patches/{name} must be (N, C, X, Y, Z), not shape {dataset.shape}"
        )
    if dataset.shape[0] != grid.num_rows:
        raise DataError(
            f"{path}: /patches/{name} has {dataset.shape[0]} rows but {grid.path} has "
            f"{grid.num_rows} grid locations; predictions must be aligned row by row"
        )
    if "locations" in handle:
        own = handle["locations"][()]
        if own.shape != (grid.num_rows, 6) or not np.array_equal(own, grid.output.locations):
            raise DataError(f"{path}: /locations differ from the grid locations of {grid.path}")
    spatial = tuple(int(n) for n in dataset.shape[2:])
    if any(n < 1 or p % n for p, n in zip(grid.patch_size, spatial, strict=True)):
        raise DataError(
            f"{path}: /patches/{name} patches are {spatial} but the grid's patch size is "
            f"{grid.patch_size}: not an integer downsampling factor"
        )
    factor = to_triplet(
        [p // n for p, n in zip(grid.patch_size, spatial, strict=True)], "downsampling factor"
    )
    rows = Rows(
        dataset.shape[1:],
        dataset.dtype,
        lambda start, count, out: dataset.read_direct(
            out, np.s_[start : start + count], np.s_[0:count]
        ),
    )
    return name, rows, factor
