"""The NIfTI patch folder: one ``.nii.gz`` file per patch and image.

Layout (docs/format.md)::

    OUTDIR/patches.csv                  subject,patch,i0,j0,k0,i1,j1,k1,<image>,...
    OUTDIR/patchcli.yaml                run metadata and the subjects table
    OUTDIR/<subject>/<image>_<NNNNNN>.nii.gz

Each file's affine is moved to the patch origin, so a patch overlays its source
volume in any viewer.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from ..sampling.geometry import patch_affine
from .atomic import FOLDER_MARKER
from .hdf5 import FORMAT_NAME, FORMAT_VERSION
from .writer import PatchWriter

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
    """Write a run's patches as NIfTI files plus ``patches.csv`` and ``patchcli.yaml``."""

    def __init__(
        self,
        folder: Path,
        images: Mapping[str, tuple[int, np.dtype, str]],
        patch_size: Sequence[int],
        attributes: Mapping[str, Any],
        padding: Sequence[int] = (0, 0, 0),
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
        }
        self.config_text = attributes.get("config", "")
        self._stream = open(self.folder / CSV_NAME, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._stream)
        self._csv.writerow(
            ["subject", "patch", "i0", "j0", "k0", "i1", "j1", "k1", *self.image_names]
        )

    def begin_subject(self, subject_id: str, *args: Any, **kwargs: Any) -> None:
        super().begin_subject(subject_id, *args, **kwargs)
        (self.folder / subject_id).mkdir(exist_ok=True)

    def write_block(
        self,
        row: int,
        arrays: Mapping[str, np.ndarray],
        locations: np.ndarray,
        subject_index: int,
    ) -> None:
        subject = self.current
        for offset, location in enumerate(locations):
            number = row + offset - subject.patch_start
            world = patch_affine(subject.affine, location[:3] - self.padding)
            relative = []
            for name in self.image_names:
                relative_path = f"{subject.id}/{patch_file_name(name, number)}"
                write_patch_nifti(self.folder / relative_path, arrays[name][offset], world)
                relative.append(relative_path)
            self._csv.writerow([subject.id, number, *location.tolist(), *relative])

    def close(self) -> None:
        if self._stream.closed:
            return
        self._stream.close()
        self.metadata["subjects"] = [
            {
                "id": record.id,
                "shape": list(record.shape),
                "affine": record.affine.tolist(),
                "source": record.source,
                "patch_start": record.patch_start,
                "patch_count": record.patch_count,
            }
            for record in self.subjects
        ]
        self.metadata["config"] = self.config_text
        with open(self.folder / FOLDER_MARKER, "w", encoding="utf-8") as stream:
            yaml.safe_dump(self.metadata, stream, sort_keys=False)

    def abort(self) -> None:
        if not self._stream.closed:
            self._stream.close()


def _plain(value: Any) -> Any:
    """numpy values as plain YAML-able Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
