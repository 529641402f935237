"""Whole grid outputs reassembled into NIfTI volumes, one per subject.

:func:`aggregate_file` reassembles every subject of a grid output (or a
model's predictions on it) with :class:`~patchcli.aggregate.GridAggregator`,
streaming each subject's patches in blocks of :data:`BLOCK_BYTES` and writing
one ``<subject>_<name>.nii.gz`` per subject.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..io.atomic import atomic_output, check_output_free
from ..io.hdf5 import open_hdf5
from ..io.reader import read_patch_output
from ..progress import progress_bar
from ..sampling.geometry import Triplet
from ..sampling.grid import grid_locations
from ..subjects import check_subject_id
from ..transforms.spatial.resample import INTERPOLATIONS, resample_to_grid
from .aggregator import OVERLAP_MODES, GridAggregator, output_affine
from .grid_file import GridFile, Rows, prediction_dataset

__all__ = ["BLOCK_BYTES", "aggregate_file"]

#: Bytes of patches read from the file at once by :func:`aggregate_file`.
BLOCK_BYTES = 64 * 2**20


def _check_name(name: str, where: Path) -> None:
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise DataError(f"{where}: name {name!r} is not usable in a file name")


def _nifti_data(volume: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) -> what NIfTI stores: 3D for one channel, else 4D (X, Y, Z, C)."""
    if volume.dtype == np.bool_:
        volume = volume.astype(np.uint8)
    elif volume.dtype == np.float16:
        volume = volume.astype(np.float32)  # NIfTI-1 has no float16
    return volume[0] if volume.shape[0] == 1 else np.moveaxis(volume, 0, -1)


def _write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``.nii.gz`` to ``path`` whatever its name (nibabel guesses from the suffix)."""
    import nibabel as nib

    data = _nifti_data(volume)
    # An explicit dtype keeps int64 data int64 (nibabel refuses it implicitly).
    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as stream:
        image.to_file_map({"image": nib.FileHolder(fileobj=stream)})


def aggregate_file(
    patches_path: str | os.PathLike,
    image: str | None,
    output_dir: str | os.PathLike,
    *,
    overlap_mode: str = "crop",
    predictions_path: str | os.PathLike | None = None,
    prediction_name: str | None = None,
    dtype: Any = None,
    source_grid: str | None = None,
    interpolation: str | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
) -> list[Path]:
    """Reassemble every subject of a grid HDF5 file into one NIfTI per subject.

    Subjects are processed one at a time and their patches read in blocks, so
    memory holds one subject's output (and weight) volume plus one block.

    Parameters
    ----------
    patches_path : path
        A grid output written by ``patchcli grid``: an HDF5 file, a merge of
        grid shards, or a NIfTI folder.
    image : str or None
        The image of the grid file to reassemble. With ``predictions_path`` it
        is the default for ``prediction_name`` and may be None.
    output_dir : path
        Folder of the outputs, ``<subject>_<name>.nii.gz`` (created if needed).
    overlap_mode : {"crop", "average", "hann"}
    predictions_path : path, optional
        An HDF5 file holding a model's outputs as ``/patches/<name>``, shape
        ``(N, C, x, y, z)``, row ``n`` being the output for row ``n`` of the grid
        file (docs/aggregate.md). Spatial sizes smaller than the grid's patch
        size by an integer factor are aggregated at that lower resolution.
    prediction_name : str, optional
        The dataset of ``predictions_path`` to read (default: ``image``, or the
        file's only dataset). Outputs are named after it.
    dtype : numpy dtype, optional
        Output dtype (see :class:`GridAggregator`).
    source_grid : str, optional
        Write each volume on the grid image ``source_grid`` had before preprocessing
        (its orientation, spacing and shape, as recorded by a run with ``preprocess``),
        undoing the spatial preprocessing (through world coordinates, whatever it was);
        voxels outside the preprocessed volume (cropped away) are 0.
    interpolation : str, optional
        How ``source_grid`` resamples: ``nearest`` (default for integer volumes, such as
        label predictions), ``linear`` (default for float volumes), or any of
        ``Resample``'s interpolations.
    overwrite : bool
        Replace existing outputs; otherwise any existing output is an error
        raised before anything is written.
    progress : bool or None
        Show a progress bar on stderr; None shows it only on a terminal.

    Returns
    -------
    list of Path
        The files written, in subject order.

    Examples
    --------
    Reassemble the ``t1`` patches of ``grid.h5`` into ``out/<subject>_t1.nii.gz``::

        aggregate_file("grid.h5", "t1", "out")
    """
    if overlap_mode not in OVERLAP_MODES:
        raise ConfigError(
            f"overlap_mode must be one of {', '.join(OVERLAP_MODES)}, not {overlap_mode!r}"
        )
    patches_path, output_dir = Path(patches_path), Path(output_dir)
    grid = GridFile(read_patch_output(patches_path))
    back = None
    if source_grid is not None:
        back = _SourceGrids(grid, source_grid, interpolation)
    elif interpolation is not None:
        raise ConfigError("interpolation is for source_grid (--source-grid IMAGE)")
    if predictions_path is None:
        if image is None:
            raise ConfigError(f"{patches_path}: give the image to aggregate")
        _check_name(image, patches_path)
        rows = grid.image_rows(image)
        try:
            return _aggregate_all(
                grid,
                rows,
                image,
                (1, 1, 1),
                output_dir,
                overlap_mode,
                dtype,
                back,
                overwrite,
                progress,
            )
        finally:
            rows.close()
    predictions_path = Path(predictions_path)
    with open_hdf5(predictions_path) as predictions:
        name, rows, factor = prediction_dataset(
            predictions_path, predictions, prediction_name, image, grid
        )
        _check_name(name, predictions_path)
        return _aggregate_all(
            grid, rows, name, factor, output_dir, overlap_mode, dtype, back, overwrite, progress
        )


def _aggregate_all(
    grid: GridFile,
    rows: Rows,
    name: str,
    factor: Triplet,
    output_dir: Path,
    overlap_mode: str,
    dtype: Any,
    back: _SourceGrids | None,
    overwrite: bool,
    progress: bool | None,
) -> list[Path]:
    """Every subject of ``grid`` aggregated from ``rows`` into ``DIR/<subject>_<name>.nii.gz``
    (on its source grid with ``back``)."""
    outputs = []
    for subject_id in grid.ids:
        check_subject_id(subject_id, str(grid.path))
        path = output_dir / f"{subject_id}_{name}.nii.gz"
        if path in outputs:
            raise DataError(f"{grid.path}: subject id {subject_id!r} appears twice")
        check_output_free(path, overwrite)
        outputs.append(path)
    output_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(int(grid.patch_counts.sum()), progress) as bar:
        for row, path in enumerate(outputs):
            volume = _aggregate_subject(grid, row, rows, factor, overlap_mode, dtype, bar)
            affine = output_affine(grid.affines[row], factor)
            if back is not None:
                volume, affine = back.resample(row, volume, affine)
            with atomic_output(path, overwrite) as temporary:
                _write_nifti(temporary, volume, affine)
            del volume
    return outputs


class _SourceGrids:
    """Each subject's grid before preprocessing, for image ``name``, and the way back."""

    def __init__(self, grid: GridFile, name: str, interpolation: str | None) -> None:
        interpolation = None if interpolation is None else interpolation.lower()
        if interpolation is not None and interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if name not in grid.output.images:
            raise ConfigError(
                f"{grid.path}: source_grid {name!r} is not an image of it "
                f"(images: {', '.join(grid.output.images)})"
            )
        self.grid, self.name, self.interpolation = grid, name, interpolation
        for record in grid.output.subjects:
            if not record.source_grids or name not in record.source_grids:
                raise DataError(
                    f"{grid.path}: subject {record.id!r} has no grid before preprocessing "
                    "(its run had no preprocess: its volumes are on their source grid already)"
                )

    def resample(self, row: int, volume: np.ndarray, affine: np.ndarray):
        shape, source_affine = self.grid.output.subjects[row].source_grids[self.name]
        interpolation = self.interpolation or (
            "linear" if np.dtype(volume.dtype).kind == "f" else "nearest"
        )
        return resample_to_grid(volume, affine, shape, source_affine, interpolation)


def _aggregate_subject(
    grid: GridFile,
    row: int,
    rows: Rows,
    factor: Triplet,
    overlap_mode: str,
    dtype: Any,
    bar: Any,
) -> np.ndarray:
    """One subject's volume, its patches read block by block into one buffer."""
    subject_id = grid.ids[row]
    first, last = grid.rows(row)
    shape = tuple(int(n) for n in grid.shapes[row])
    padded_shape = tuple(n + 2 * p for n, p in zip(shape, grid.padding, strict=True))
    locations = grid.output.locations[first:last]
    expected = grid_locations(padded_shape, grid.patch_size, grid.patch_overlap)
    if not np.array_equal(locations, expected):
        raise DataError(
            f"{grid.path}: subject {subject_id!r}: its {last - first} rows are not the "
            f"{len(expected)} grid patches of shape {shape} in grid order"
        )
    try:
        aggregator = GridAggregator(
            shape,
            grid.patch_size,
            grid.patch_overlap,
            padding=grid.padding,
            overlap_mode=overlap_mode,
            downsampling_factor=factor,
            channels=rows.shape[0],
            dtype=dtype,
        )
    except (ConfigError, DataError) as error:
        raise DataError(f"{grid.path}: subject {subject_id!r}: {error}") from error
    patch_bytes = int(np.prod(rows.shape)) * rows.dtype.itemsize
    block = max(1, min(last - first, BLOCK_BYTES // max(1, patch_bytes)))
    buffer = np.empty((block, *rows.shape), dtype=rows.dtype)
    for start in range(first, last, block):
        count = min(block, last - start)
        rows.read(start, count, buffer[:count])
        aggregator.add_batch(buffer[:count], locations[start - first : start - first + count])
        bar.update(count)
    del buffer
    return aggregator.get_output()
