"""A patch output as read: its tables, and its patches read on demand.

:class:`PatchOutput` holds what :func:`patchcli.io.reader.read_patch_output`
read once (locations, subject of each row, subjects, attributes);
:meth:`PatchOutput.read_rows` reads patches through a
:class:`~patchcli.io.handles.HandleCache`, from the file itself, the shards of a
merge, or a NIfTI folder's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..shards import Shard
from .handles import HandleCache
from .hdf5 import damage_reason
from .nifti import read_nifti_patch
from .writer import SkippedSubject, SubjectRecord


@dataclass(frozen=True)
class Part:
    """An HDF5 file holding rows ``[start, start + count)`` of an output, in ``/patches``."""

    path: Path
    start: int
    count: int
    #: The fingerprint the part had when merged (None: the merge's own, in older merges).
    fingerprint: str | None = None


@dataclass
class PatchOutput:
    """What a patch output holds, read once; patches are read with :meth:`read_rows`.

    Attributes
    ----------
    path : Path
        The HDF5 file or NIfTI folder.
    kind : {"hdf5", "nifti"}
    version : int
        The layout's ``format_version``.
    images : list of str
        Image names, in file order.
    image_types : list of str
        ``intensity``, ``label`` or ``sampling_map``, one per image.
    patch_size : tuple of 3 ints
    padding : numpy.ndarray
        (3,) voxels added on each side by a padded grid.
    locations : numpy.ndarray
        (N, 6) int64.
    subject_index : numpy.ndarray
        (N,) int64, the row of :attr:`subjects` of each patch.
    subjects : list of SubjectRecord
    channels, dtypes : dict
        Image name -> channel count and numpy dtype (for a version-1 NIfTI
        folder, filled in by :meth:`complete_image_info`).
    attributes : dict
        Root attributes as plain Python values (``sampler``, ``config``,
        ``seed``, ``config_fingerprint``, ``shard_index``, ...).
    parts : list of Part
        HDF5 only: the files the patches are read from (the file itself, or
        the shards of a merge).
    skipped : list of SkippedSubject
        Subjects of the run left out by ``on_error: skip``, in manifest order.
    copy_index : numpy.ndarray or None
        (N,) int64, the augmented copy of each patch (None for a run without ``augment``).
    """

    path: Path
    kind: str
    version: int
    images: list[str]
    image_types: list[str]
    patch_size: tuple[int, int, int]
    padding: np.ndarray
    locations: np.ndarray
    subject_index: np.ndarray
    subjects: list[SubjectRecord]
    channels: dict[str, int] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    skipped: list[SkippedSubject] = field(default_factory=list)
    copy_index: np.ndarray | None = None
    # NIfTI only: image name -> (N,) array of file paths relative to the folder. A
    # numpy array rather than a list of str: forked workers touching the refcounts
    # of millions of small objects would copy them page by page.
    nifti_files: dict[str, np.ndarray] = field(default_factory=dict)
    _checked_parts: set = field(default_factory=set, repr=False)

    # ----------------------------------------------------------- metadata
    @property
    def num_patches(self) -> int:
        return len(self.locations)

    @property
    def sampler(self) -> str | None:
        return self.attributes.get("sampler")

    @property
    def fingerprint(self) -> str | None:
        return self.attributes.get("config_fingerprint")

    @property
    def settings_fingerprint(self) -> str | None:
        """The digest of the run's settings alone (None in outputs made before it)."""
        return self.attributes.get("settings_fingerprint")

    @property
    def shard(self) -> Shard | None:
        """The shard this output is, or None (a whole run or a merge)."""
        index, count = self.attributes.get("shard_index"), self.attributes.get("shard_count")
        if index is None or count is None or self.attributes.get("merge"):
            return None
        return Shard(int(index), int(count))

    @property
    def merge(self) -> str | None:
        """``"virtual"`` or ``"copy"`` for an output made by ``patchcli merge``, else None."""
        return self.attributes.get("merge") or None

    @property
    def copies(self) -> int:
        """Augmented copies of each subject (1 for a run without ``augment``)."""
        return int(self.attributes.get("augment_copies") or 1)

    @property
    def manifest_rows(self) -> list[int | None]:
        return [subject.manifest_row for subject in self.subjects]

    def complete_image_info(self, images: Iterable[str] | None = None) -> None:
        """Channels and dtypes of a version-1 NIfTI folder's images, from their first patch."""
        for name in self.images if images is None else images:
            if name in self.channels:
                continue
            if self.num_patches == 0:
                self.channels[name], self.dtypes[name] = 1, np.dtype(np.float32)
                continue
            import nibabel as nib

            path = self.path / str(self.nifti_files[name][0])
            try:
                header = nib.load(path).header
            except (OSError, nib.filebasedimages.ImageFileError) as error:
                raise DataError(f"{path}: cannot read the patch ({error})") from None
            shape = tuple(int(n) for n in header.get_data_shape())
            self.channels[name] = shape[3] if len(shape) == 4 else 1
            self.dtypes[name] = np.dtype(header.get_data_dtype()).newbyteorder("=")

    # ------------------------------------------------------------ reading
    def read_rows(
        self, name: str, row: int, count: int, out: np.ndarray, handles: HandleCache
    ) -> None:
        """Read ``count`` consecutive patches of image ``name`` from ``row`` into ``out``.

        ``out`` is ``(count, C, X, Y, Z)`` of any dtype the image's values fit;
        HDF5 converts on the way.
        """
        if self.kind == "nifti":
            for offset in range(count):
                patch = read_nifti_patch(
                    self.path / str(self.nifti_files[name][row + offset]), out.shape[1:]
                )
                out[offset] = patch
            return
        from h5py import h5s

        done = 0
        while done < count:
            number, part = self._part_of(row + done)
            local = row + done - part.start
            length = min(count - done, part.count - local)
            dataset = self._dataset(number, part, name, handles)
            target = out[done : done + length]
            plain = handles.plain(part.path, f"patches/{name}")
            if plain is not None and target.dtype == dataset.dtype and target.flags.c_contiguous:
                # Uncompressed and contiguous: one pread into the output, no HDF5 machinery.
                descriptor, offset = plain
                view = memoryview(target).cast("B")
                read = os.preadv(descriptor, [view], offset + local * (view.nbytes // length))
                if read != view.nbytes:
                    raise DataError(f"{part.path}: /patches/{name} is cut short (truncated file)")
                done += length
                continue
            file_space = dataset.get_space()
            file_space.select_hyperslab((local, 0, 0, 0, 0), (length, *target.shape[1:]))
            # DatasetID.read is what Dataset.read_direct calls, without re-parsing a
            # selection object for every patch.
            try:
                dataset.read(h5s.create_simple(target.shape), file_space, target)
            except (OSError, RuntimeError, ValueError) as error:
                raise DataError(
                    f"{part.path}: /patches/{name} rows {local} to {local + length - 1} cannot "
                    f"be read ({damage_reason(error)})"
                ) from None
            done += length

    def _part_of(self, row: int) -> tuple[int, Part]:
        if len(self.parts) == 1:
            return 0, self.parts[0]
        starts = self._part_starts
        number = int(np.searchsorted(starts, row, side="right") - 1)
        return number, self.parts[number]

    @cached_property
    def _part_starts(self) -> np.ndarray:
        return np.array([part.start for part in self.parts], dtype=np.int64)

    def _dataset(self, number: int, part: Part, name: str, handles: HandleCache):
        dataset = handles.dataset(part.path, f"patches/{name}")
        key = (number, name)
        if key not in self._checked_parts:
            expected = (part.count, self.channels[name], *self.patch_size)
            if tuple(dataset.shape) != expected:
                raise DataError(
                    f"{part.path}: /patches/{name} has shape {tuple(dataset.shape)}, but "
                    f"{self.path} expects {expected} from it"
                )
            if part.path != self.path:  # a merge's shard: still the one it was made from?
                found = handles.attribute(part.path, "config_fingerprint")
                if found != (part.fingerprint or self.fingerprint):
                    raise DataError(
                        f"{part.path}: is not the shard {self.path} was merged from (another "
                        "run's fingerprint); it was replaced after the merge"
                    )
            self._checked_parts.add(key)
        return dataset


__all__ = ["Part", "PatchOutput"]
