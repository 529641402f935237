"""The NIfTI patch folder: one ``.nii.gz`` file per patch and image.

Layout (docs/format.md)::

    OUTDIR/patches.csv                  subject,patch,[copy,]i0,j0,k0,i1,j1,k1,<image>,...
    OUTDIR/patchcli.yaml                run metadata and the subjects table
    OUTDIR/<subject>/<image>_<NNNNNN>.nii.gz

Each file's affine is moved to the patch origin, so a patch overlays its source
volume in any viewer.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from ..errors import DataError
from ..handover import Arrays
from ..sampling.geometry import patch_affine
from .atomic import FOLDER_MARKER
from .format import FORMAT_NAME, FORMAT_VERSION
from .space import is_disk_full, write_error
from .writer import (
    PartialUnusable,
    PatchWriter,
    SkippedSubject,
    SubjectRecord,
    source_grids_to_plain,
)

CSV_NAME = "patches.csv"


def patch_file_name(image: str, patch_number: int) -> str:
    return f"{image}_{patch_number:06d}.nii.gz"


def write_patch_nifti(path: Path, patch: np.ndarray, affine: np.ndarray) -> None:
    """Save one (C, X, Y, Z) patch; several channels are stored as a 4D (X, Y, Z, C) image."""
    data = patch[0] if patch.shape[0] == 1 else np.moveaxis(patch, 0, -1)
    if data.dtype == bool:  # NIfTI has no boolean type
        data = data.astype(np.uint8)
    # An explicit dtype: nibabel refuses int64 data without one.
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine, dtype=data.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


class NiftiPatchWriter(PatchWriter):
    """Write a run's patches as NIfTI files plus ``patches.csv`` and ``patchcli.yaml``.

    With ``done`` and ``csv_offset`` (from a checkpoint), continue a folder in
    which the subjects ``done`` are complete: ``patches.csv`` is cut back to
    ``csv_offset`` and the folders of other subjects are removed.
    """

    def __init__(
        self,
        folder: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        patch_size: Sequence[int],
        attributes: Mapping[str, Any],
        padding: Sequence[int] = (0, 0, 0),
        *,
        done: Sequence[SubjectRecord] = (),
        csv_offset: int | None = None,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.image_names = list(images)
        self.padding = np.asarray(padding, dtype=np.int64)
        self.metadata: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **{key: _plain(value) for key, value in attributes.items() if key != "config"},
            "patch_size": [int(n) for n in patch_size],
            "images": self.image_names,
            "image_types": [spec[2] for spec in images.values()],
            "channels": {name: int(spec[0]) for name, spec in images.items()},
            "dtypes": {name: np.dtype(spec[1]).name for name, spec in images.items()},
        }
        self.config_text = attributes.get("config", "")
        #: Augmented copies per subject (None without augmentation: no ``copy`` column).
        self.copies = attributes.get("augment_copies")
        table = self.folder / CSV_NAME
        if csv_offset is None:
            self._stream = open(table, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._stream)
            copy_column = [] if self.copies is None else ["copy"]
            self._csv.writerow(
                ["subject", "patch", *copy_column, "i0", "j0", "k0", "i1", "j1", "k1"]
                + self.image_names
            )
        else:
            self._resume(table, done, csv_offset)

    def _resume(self, table: Path, done: Sequence[SubjectRecord], csv_offset: int) -> None:
        try:
            self._stream = open(table, "r+", newline="", encoding="utf-8")
        except OSError as error:
            raise PartialUnusable(f"{table}: cannot be reopened ({error.strerror})") from None
        size = self._stream.seek(0, os.SEEK_END)
        if size < csv_offset:
            self._stream.close()
            raise PartialUnusable(
                f"{table}: holds {size} bytes, fewer than the {csv_offset} its progress "
                "record says were written"
            )
        self._stream.truncate(csv_offset)
        self._stream.seek(csv_offset)
        self._csv = csv.writer(self._stream)
        keep = {record.id for record in done}
        for entry in self.folder.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)
        for record in done:
            if not (self.folder / record.id).is_dir():
                self._stream.close()
                raise PartialUnusable(
                    f"{self.folder / record.id}: a completed subject's folder is gone"
                )
        self.subjects = list(done)

    def begin_subject(self, subject_id: str, *args: Any, **kwargs: Any) -> None:
        super().begin_subject(subject_id, *args, **kwargs)
        self._stream.flush()
        self._subject_offset = self._stream.tell()
        (self.folder / subject_id).mkdir(exist_ok=True)

    def skip_subject(self, skipped: SkippedSubject, patch_start: int, patch_count: int) -> None:
        """Give up a subject: its folder is removed and its rows of ``patches.csv`` cut."""
        begun = bool(self.subjects) and self.current.id == skipped.id
        super().skip_subject(skipped, patch_start, patch_count)
        if begun:
            self._stream.flush()
            self._stream.truncate(self._subject_offset)
            self._stream.seek(self._subject_offset)
            shutil.rmtree(self.folder / skipped.id, ignore_errors=True)

    def write_block(
        self,
        row: int,
        arrays: Mapping[str, np.ndarray],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        subject = self.current
        try:
            for offset, location in enumerate(locations):
                number = row + offset - subject.patch_start
                world = patch_affine(subject.affine, location[:3] - self.padding)
                relative = []
                for name in self.image_names:
                    relative_path = f"{subject.id}/{patch_file_name(name, number)}"
                    write_patch_nifti(self.folder / relative_path, arrays[name][offset], world)
                    relative.append(relative_path)
                per_copy = subject.patch_count // (self.copies or 1)
                copy = [] if self.copies is None else [number // per_copy]
                self._csv.writerow([subject.id, number, *copy, *location.tolist(), *relative])
        except OSError as error:
            if not is_disk_full(error):
                raise
            raise write_error(self.folder, error) from None

    def target(self):
        """How workers hand over patches for this folder: as arrays (patchcli.handover)."""
        return Arrays()

    def flush(self) -> int:
        """Flush ``patches.csv``; returns its size, the offset a resumed run cuts it back to."""
        self._stream.flush()
        return self._stream.tell()

    def close(self) -> None:
        if self._stream.closed:
            return
        self._stream.close()
        self.metadata["subjects"] = [subject_entry(r) for r in self.compacted_subjects()]
        if self.skipped:
            self.metadata["skipped_subjects"] = [
                asdict(skipped) for skipped in self.skipped_in_manifest_order()
            ]
        self.metadata["config"] = self.config_text
        write_metadata(self.folder, self.metadata)

    def abort(self) -> None:
        if not self._stream.closed:
            try:
                self._stream.close()
            except OSError:
                # A full disk: the unflushed rows are lost, and not needed: a resumed
                # run cuts the table back to its last checkpoint.
                pass


def subject_entry(record: SubjectRecord) -> dict[str, Any]:
    """A subject's entry in ``patchcli.yaml``'s ``subjects`` list."""
    entry: dict[str, Any] = {
        "id": record.id,
        "shape": list(record.shape),
        "affine": record.affine.tolist(),
        "source": record.source,
        "patch_start": record.patch_start,
        "patch_count": record.patch_count,
    }
    if record.manifest_row is not None:
        entry["manifest_row"] = record.manifest_row
    if record.source_grids is not None:
        entry["source_grid"] = source_grids_to_plain(record.source_grids)
    return entry


def write_metadata(folder: Path, metadata: Mapping[str, Any]) -> None:
    """Write a folder's ``patchcli.yaml``."""
    with open(folder / FOLDER_MARKER, "w", encoding="utf-8") as stream:
        yaml.safe_dump(dict(metadata), stream, sort_keys=False)


def _plain(value: Any) -> Any:
    """numpy values as plain YAML-able Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_nifti_patch(path: Path, shape: Sequence[int]) -> np.ndarray:
    """A (C, X, Y, Z) patch from one NIfTI file (a 4D file holds channels last)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except FileNotFoundError:
        raise DataError(f"{path}: patch file missing from the output folder") from None
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise DataError(f"{path}: cannot read the patch ({error})") from None
    data = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    if data.shape != tuple(shape):
        raise DataError(f"{path}: patch shape {data.shape}, expected {tuple(shape)}")
    return data
