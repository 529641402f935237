"""Read patch outputs: one torch-free reader for every tool.

A patch output is an HDF5 file (one run, one shard, or a merge of shards) or
a NIfTI folder (docs/format.md). :func:`read_patch_output` reads its small
tables once (locations, subject of each row, subjects, attributes) and checks
the layout; :meth:`PatchOutput.read_rows` reads patches on demand through a
:class:`HandleCache`, which opens each HDF5 file once per process.

``PatchDataset``, ``aggregate``, ``merge`` and ``info`` all read through here.

A merge made by ``patchcli merge`` (virtual datasets over its shards) is read
from the shard files directly: with HDF5 1.14 (h5py 3.8 to 3.11 wheels) a
random read through a virtual dataset of 1,000 sources is 44 times slower
than from a plain file, and it keeps every source open (docs/cluster.md has
the measurements). A virtual dataset whose source is gone reads as zeros
without an error, so every shard is checked to exist first.
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..shards import Shard
from .atomic import FOLDER_MARKER
from .hdf5 import (
    FORMAT_NAME,
    FORMAT_VERSION,
    decode_strings,
    open_hdf5,
    read_skipped,
    read_subjects,
)
from .writer import SkippedSubject, SubjectRecord

CSV_NAME = "patches.csv"
#: How a user accepts a file that reads from outside its folder.
_ALLOW = "refused unless allowed: allow_external=True, or info --allow-external"
#: Root attributes copied into :attr:`PatchOutput.attributes` (when present).
_ATTRIBUTES = (
    "patchcli_version",
    "sampler",
    "config",
    "seed",
    "compression",
    "patch_overlap",
    "padding_mode",
    "padding",
    "config_fingerprint",
    "total_subjects",
    "shard_index",
    "shard_count",
    "merge",
)


@dataclass(frozen=True)
class Part:
    """An HDF5 file holding rows ``[start, start + count)`` of an output, in ``/patches``."""

    path: Path
    start: int
    count: int


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
                if found != self.fingerprint:
                    raise DataError(
                        f"{part.path}: is not the shard {self.path} was merged from (another "
                        "run's fingerprint); it was replaced after the merge"
                    )
            self._checked_parts.add(key)
        return dataset


# ----------------------------------------------------------------- handles
# Handles opened by a parent process and found after a fork. They are kept
# referenced and never closed here: the HDF5 state behind them belongs to the
# parent, and h5py objects must not be used across a fork.
_INHERITED_HANDLES: list[Any] = []


class _OpenFile:
    """An HDF5 file opened for reading in one process, with the datasets used so far."""

    def __init__(self, path: Path) -> None:
        self.file = open_hdf5(path)
        self.datasets: dict[str, Any] = {}
        self.plains: dict[str, tuple[int, int] | None] = {}

    def dataset(self, name: str):
        dataset = self.datasets.get(name)
        if dataset is None:
            try:
                dataset = self.file[name].id
            except KeyError:
                raise DataError(f"{self.file.filename}: no dataset /{name}") from None
            self.datasets[name] = dataset
        return dataset

    def plain(self, name: str) -> tuple[int, int] | None:
        """``(file descriptor, byte offset)`` of a dataset stored contiguously and
        unfiltered in a plain file, which a reader may read with ``pread``; else None."""
        if name not in self.plains:
            from h5py import h5d, h5fd, h5i

            dataset = self.dataset(name)
            dcpl = dataset.get_create_plist()
            offset = dataset.get_offset()
            # The file that stores it: another one when /patches/<name> is an external link.
            stored_in = h5i.get_file_id(dataset)
            plain = (
                stored_in.get_access_plist().get_driver() == h5fd.SEC2
                and dcpl.get_layout() == h5d.CONTIGUOUS
                and dcpl.get_nfilters() == 0
                and offset is not None
                and dataset.dtype.isnative
            )
            self.plains[name] = (stored_in.get_vfd_handle(), offset) if plain else None
        return self.plains[name]

    def close(self) -> None:
        self.datasets.clear()
        self.plains.clear()
        if self.file.id.valid:
            self.file.close()


def default_max_open() -> int:
    """Files a reader may keep open: half this process's descriptor limit, at most 4096.

    A merge of N shards reads at full speed only with N files open: reopening
    a file for each patch read is ten times slower (bench_merge.py).
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 4096
    return int(max(16, min(4096, soft // 2)))


class HandleCache:
    """HDF5 files opened lazily, once per process, at most ``max_open`` at a time.

    A process that finds handles opened by its parent (after a fork) opens its
    own and never touches the inherited ones; pickling drops the handles. The
    least recently used file is closed first. Files are opened without a chunk
    cache (:func:`~patchcli.io.hdf5.open_hdf5`), so an open file costs a few
    KiB.
    """

    def __init__(self, max_open: int | None = None) -> None:
        self.max_open = default_max_open() if max_open is None else max_open
        self._files: OrderedDict[Path, _OpenFile] = OrderedDict()
        self._pid = os.getpid()

    def dataset(self, path: Path, name: str):
        """The low-level ``DatasetID`` of ``name`` in the file at ``path``."""
        pid = os.getpid()
        if pid != self._pid:
            # Handles inherited through fork belong to the parent: open our own.
            _INHERITED_HANDLES.extend(self._files.values())
            self._files = OrderedDict()
            self._pid = pid
        handle = self._files.get(path)
        if handle is None:
            while len(self._files) >= max(1, self.max_open):
                _, oldest = self._files.popitem(last=False)
                oldest.close()
            handle = _OpenFile(path)
            self._files[path] = handle
        else:
            self._files.move_to_end(path)
        return handle.dataset(name)

    def plain(self, path: Path, name: str) -> tuple[int, int] | None:
        """:meth:`_OpenFile.plain` of a file opened by :meth:`dataset`."""
        return self._files[path].plain(name)

    def attribute(self, path: Path, name: str):
        """A root attribute of a file opened by :meth:`dataset`, as a plain value, or None."""
        handle = self._files.get(path)
        if handle is None:
            return None
        return _plain(handle.file.attrs.get(name))

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        """Close the files this process opened (reading again reopens them)."""
        if self._pid == os.getpid():
            for handle in self._files.values():
                handle.close()
        else:
            _INHERITED_HANDLES.extend(self._files.values())
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "_files": OrderedDict(), "_pid": None}


# ------------------------------------------------------------------ opening
def read_patch_output(path: str | os.PathLike, *, allow_external: bool = False) -> PatchOutput:
    """Read the tables of a patch output (HDF5 file or NIfTI folder) and check its layout.

    Parameters
    ----------
    path : path-like
    allow_external : bool
        Accept virtual datasets and external links that point outside the
        file's folder (refused by default: a file should not read from places
        its name does not suggest).

    Raises
    ------
    DataError
        One line naming the file: missing, not a patch output, a newer format,
        incomplete, or a merge whose shards are missing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_nifti_folder(path)
    try:
        return _read_hdf5(path, allow_external)
    except DataError:
        raise
    except (
        OSError,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as error:
        # h5py's own errors on a damaged file (a bad attribute, a broken object header).
        raise DataError(f"{path}: damaged patch file ({damage_reason(error)})") from None


def damage_reason(error: BaseException) -> str:
    """One line from an h5py error (its messages run over several lines)."""
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return decode_strings(value)
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_format(found: Any, version: Any, where: Path) -> int:
    """The format version of an output whose ``format``/``format_version`` were read."""
    if found != FORMAT_NAME:
        raise DataError(
            f"{where}: not a patchcli patch file (format attribute {found!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    try:
        number = int(version)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {version} cannot be read by this patchcli "
            f"(it reads versions 1 to {FORMAT_VERSION}); upgrade patchcli"
        )
    return number


def _read_hdf5(path: Path, allow_external: bool) -> PatchOutput:
    with open_hdf5(path) as file:
        attributes = file.attrs
        found = decode_strings(attributes["format"])[0] if "format" in attributes else None
        if "patches" not in file:
            found = found if found != FORMAT_NAME else f"{found} without /patches"
        version = check_format(found, attributes.get("format_version"), path)
        plain = {key: _plain(attributes[key]) for key in _ATTRIBUTES if key in attributes}
        subjects = read_subjects(file, path)
        skipped = read_skipped(file, path)
        try:
            images = decode_strings(attributes["images"])
            image_types = decode_strings(attributes["image_types"])
            patch_size = tuple(int(n) for n in attributes["patch_size"])
            padding = np.asarray(attributes.get("padding", np.zeros(3)), dtype=np.int64)
            locations = np.asarray(file["locations"][()], dtype=np.int64).reshape(-1, 6)
            subject_index = np.asarray(file["subject_index"][()], dtype=np.int64).reshape(-1)
            channels, dtypes = {}, {}
            for name in images:
                _check_link(file, f"patches/{name}", path, allow_external)
                dataset = file[f"patches/{name}"]
                if not hasattr(dataset, "ndim"):  # a group or a named type, not a dataset
                    raise DataError(f"{path}: /patches/{name} is not a dataset")
                if dataset.ndim != 5 or tuple(dataset.shape[2:]) != patch_size:
                    raise DataError(
                        f"{path}: /patches/{name} has shape {dataset.shape}, expected "
                        f"(N, C, {', '.join(map(str, patch_size))})"
                    )
                if dataset.shape[0] != len(locations):
                    raise DataError(
                        f"{path}: /patches/{name} has {dataset.shape[0]} rows but /locations "
                        f"has {len(locations)}"
                    )
                channels[name] = int(dataset.shape[1])
                dtypes[name] = dataset.dtype.newbyteorder("=")
                if dataset.is_virtual and plain.get("merge") != "virtual":
                    _check_virtual_sources(dataset, name, path, allow_external)
            if plain.get("merge") == "virtual":
                parts = _merge_parts(file, path, len(locations), allow_external)
            else:
                parts = [Part(path, 0, len(locations))]
        except KeyError as error:
            raise DataError(
                f"{path}: incomplete patchcli patch file (missing {error.args[0]!s})"
            ) from None
    if len(subject_index) != len(locations):
        raise DataError(
            f"{path}: /subject_index has {len(subject_index)} rows but /locations has "
            f"{len(locations)}"
        )
    if len(subject_index) and (subject_index.min() < 0 or subject_index.max() >= len(subjects)):
        raise DataError(f"{path}: /subject_index points outside the subjects table")
    for subject in subjects:  # images without a recorded source path
        for name in images:
            subject.source.setdefault(name, "")
    return PatchOutput(
        path=path,
        kind="hdf5",
        version=version,
        images=images,
        image_types=image_types,
        patch_size=patch_size,  # type: ignore[arg-type]
        padding=padding.reshape(3),
        locations=locations,
        subject_index=subject_index,
        subjects=subjects,
        channels=channels,
        dtypes=dtypes,
        attributes=plain,
        parts=parts,
        skipped=skipped,
    )


def _inside(relative: str, folder: Path) -> bool:
    """Whether a link target named ``relative`` to ``folder`` stays inside it."""
    if not relative or os.path.isabs(relative):
        return False
    normal = os.path.normpath(relative)
    return normal != ".." and not normal.startswith(".." + os.sep)


def _check_link(file, name: str, path: Path, allow_external: bool) -> None:
    import h5py

    link = file.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        target = link.filename
        if not allow_external and not _inside(target, path.parent):
            raise DataError(
                f"{path}: /{name} is an external link to {target}, outside the file's folder "
                f"({_ALLOW})"
            )
        if not (path.parent / target).is_file():
            raise DataError(f"{path}: /{name} links to {target}, which does not exist")


def _check_virtual_sources(dataset, name: str, path: Path, allow_external: bool) -> None:
    for mapping in dataset.virtual_sources():
        target = mapping.file_name
        if target == ".":
            continue
        if not allow_external and not _inside(target, path.parent):
            raise DataError(
                f"{path}: /patches/{name} reads from {target}, outside the file's folder ({_ALLOW})"
            )
        if not (path.parent / target).is_file():
            raise DataError(
                f"{path}: /patches/{name} reads from {target}, which is missing (HDF5 would "
                "read its patches as zeros)"
            )


def _merge_parts(file, path: Path, rows: int, allow_external: bool) -> list[Part]:
    """The shards of a virtual merge, each checked to exist beside the merged file."""
    group = file["shards"]
    names = decode_strings(group["file"][()])
    starts = np.asarray(group["patch_start"][()], dtype=np.int64).reshape(-1)
    counts = np.asarray(group["patch_count"][()], dtype=np.int64).reshape(-1)
    if not len(names) == len(starts) == len(counts):
        raise DataError(f"{path}: /shards tables differ in length")
    parts, missing = [], []
    expected_start = 0
    for name, start, count in zip(names, starts.tolist(), counts.tolist(), strict=True):
        if not allow_external and not _inside(name, path.parent):
            raise DataError(f"{path}: merged from {name}, outside the file's folder ({_ALLOW})")
        if start != expected_start:
            raise DataError(f"{path}: /shards rows are not contiguous at {name}")
        expected_start += count
        source = path.parent / name
        if not source.is_file():
            missing.append(name)
        parts.append(Part(source, start, count))
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise DataError(
            f"{path}: {len(missing)} of the {len(names)} shards it reads are missing ({shown}); "
            "a virtual merge needs its shards beside it (merge --copy makes a standalone file)"
        )
    if expected_start != rows:
        raise DataError(f"{path}: /shards cover {expected_start} rows, the file has {rows}")
    return parts


def _read_nifti_folder(folder: Path) -> PatchOutput:
    import yaml

    metadata_path = folder / FOLDER_MARKER
    table_path = folder / CSV_NAME
    if not metadata_path.is_file():
        raise DataError(f"{folder}: not a patchcli NIfTI output folder (no {FOLDER_MARKER})")
    try:
        with open(metadata_path, encoding="utf-8") as stream:
            metadata = yaml.safe_load(stream)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DataError(f"{metadata_path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise DataError(f"{metadata_path}: not a patchcli output description")
    version = check_format(metadata.get("format"), metadata.get("format_version"), metadata_path)
    if not table_path.is_file():
        raise DataError(f"{folder}: no {CSV_NAME}; the output is incomplete")
    try:
        images = [str(name) for name in metadata["images"]]
        image_types = [str(kind) for kind in metadata["image_types"]]
        patch_size = tuple(int(n) for n in metadata["patch_size"])
        padding = np.asarray(metadata.get("padding") or [0, 0, 0], dtype=np.int64).reshape(3)
        subject_rows = metadata["subjects"] or []
        channels = {str(k): int(v) for k, v in (metadata.get("channels") or {}).items()}
        dtypes = {str(k): np.dtype(str(v)) for k, v in (metadata.get("dtypes") or {}).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{metadata_path}: missing or invalid entry ({error})") from None

    position_of = {str(row["id"]): number for number, row in enumerate(subject_rows)}
    locations = []
    subject_index = []
    files: dict[str, list[str]] = {name: [] for name in images}
    with open(table_path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        expected = ["subject", "patch", "i0", "j0", "k0", "i1", "j1", "k1", *images]
        if reader.fieldnames != expected:
            raise DataError(
                f"{table_path}: header {reader.fieldnames} does not match the images of "
                f"{FOLDER_MARKER} (expected {expected})"
            )
        for line_number, row in enumerate(reader, start=2):
            subject = row["subject"]
            if subject not in position_of:
                raise DataError(f"{table_path}: line {line_number}: unknown subject {subject!r}")
            subject_index.append(position_of[subject])
            try:
                locations.append([int(row[key]) for key in ("i0", "j0", "k0", "i1", "j1", "k1")])
            except (TypeError, ValueError):
                raise DataError(f"{table_path}: line {line_number}: invalid location") from None
            for name in images:
                relative = row[name] or ""
                if not _inside(relative, folder):
                    raise DataError(
                        f"{table_path}: line {line_number}: {relative!r} is not a file inside "
                        "the folder"
                    )
                files[name].append(relative)
    subject_array = np.asarray(subject_index, dtype=np.int64)
    subjects = []
    try:
        for number, row in enumerate(subject_rows):
            rows = np.flatnonzero(subject_array == number)
            manifest_row = row.get("manifest_row")
            subjects.append(
                SubjectRecord(
                    id=str(row["id"]),
                    affine=np.asarray(row["affine"], dtype=np.float64).reshape(4, 4),
                    shape=tuple(int(n) for n in row["shape"]),  # type: ignore[arg-type]
                    source={str(k): str(v) for k, v in (row.get("source") or {}).items()},
                    patch_start=int(rows[0]) if len(rows) else int(row.get("patch_start", 0)),
                    patch_count=len(rows),
                    manifest_row=None if manifest_row is None else int(manifest_row),
                )
            )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{metadata_path}: invalid subjects entry ({error})") from None
    try:
        skipped = [
            SkippedSubject(
                str(row["id"]),
                None if row.get("manifest_row") is None else int(row["manifest_row"]),
                str(row["reason"]),
                str(row["stage"]),
            )
            for row in metadata.get("skipped_subjects") or []
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{metadata_path}: invalid skipped_subjects entry ({error})") from None
    for subject in subjects:
        for name in images:
            subject.source.setdefault(name, "")
    attributes = {key: metadata[key] for key in _ATTRIBUTES if key in metadata}
    return PatchOutput(
        path=folder,
        kind="nifti",
        version=version,
        images=images,
        image_types=image_types,
        patch_size=patch_size,  # type: ignore[arg-type]
        padding=padding,
        locations=np.asarray(locations, dtype=np.int64).reshape(-1, 6),
        subject_index=subject_array,
        subjects=subjects,
        channels=channels,
        dtypes=dtypes,
        attributes=attributes,
        skipped=skipped,
        nifti_files={name: np.array(paths, dtype=str) for name, paths in files.items()},
    )


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


__all__ = [
    "HandleCache",
    "Part",
    "PatchOutput",
    "check_format",
    "read_nifti_patch",
    "read_patch_output",
]
