"""Reading images into ``(C, X, Y, Z)`` arrays with a RAS affine.

Two readers: nibabel (NIfTI, MGH/MGZ, Analyze) and SimpleITK (NRRD, MetaImage,
DICOM series folders and anything else ITK reads, NIfTI included). Both give
the same array and the same RAS+ affine for the same file: SimpleITK's arrays
come as (z, y, x) and its geometry in LPS+, and are converted here.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, SystemFault

NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".img", ".hdr", ".img.gz")
READERS = ("auto", "nibabel", "sitk")

# LPS+ (ITK) <-> RAS+ (NIfTI, nibabel): negate the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """An image read from disk: ``array`` is ``(C, X, Y, Z)``, ``affine`` maps voxels to RAS+ mm."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class Header:
    """What an image holds, read without loading its voxels."""

    channels: int
    spatial_shape: tuple[int, int, int]
    dtype: np.dtype
    affine: np.ndarray
    path: Path

    @property
    def nbytes(self) -> int:
        return int(self.channels * np.prod(self.spatial_shape) * self.dtype.itemsize)


def choose_reader(path: Path, reader: str = "auto") -> str:
    """``"nibabel"`` or ``"sitk"`` for ``path``; folders (DICOM series) go to SimpleITK."""
    if reader not in READERS:
        raise DataError(f"{path}: unknown reader {reader!r}; use one of {', '.join(READERS)}")
    if reader != "auto":
        return reader
    if path.is_dir():
        return "sitk"
    name = path.name.lower()
    return "nibabel" if name.endswith(NIBABEL_SUFFIXES) else "sitk"


def _check_exists(path: Path) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")


def read_volume(path: str | os.PathLike, reader: str = "auto") -> Volume:
    """Read an image as a ``(C, X, Y, Z)`` array in its stored dtype, and its RAS affine.

    A 2D image becomes ``(C, X, Y, 1)``; a 4D NIfTI's last axis (or a 5D NIfTI's
    fifth, TorchIO's convention) holds the channels.

    Examples
    --------
    >>> import nibabel as nib, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), path)
    >>> volume = read_volume(path)
    >>> volume.array.shape, volume.array.dtype
    ((1, 4, 5, 6), dtype('uint8'))
    """
    path = Path(path)
    _check_exists(path)
    try:
        if choose_reader(path, reader) == "nibabel":
            return _read_nibabel(path)
        return _read_sitk(path)
    except DataError:
        raise
    except Exception as error:  # the readers' own errors are many and unstable
        raise _read_error(path, "cannot read image", error) from error


def read_header(path: str | os.PathLike, reader: str = "auto") -> Header:
    """Read an image's channels, spatial shape, dtype and affine, not its voxels."""
    path = Path(path)
    _check_exists(path)
    try:
        if choose_reader(path, reader) == "nibabel":
            return _header_nibabel(path)
        return _header_sitk(path)
    except DataError:
        raise
    except Exception as error:
        raise _read_error(path, "cannot read image header", error) from error


#: errno values that say the machine or its file system failed, not the file.
_SYSTEM_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EIO", "ENOMEM", "EMFILE", "ENFILE", "ESTALE", "EAGAIN", "ETIMEDOUT", "EINTR")
    if hasattr(errno, name)
)


def _read_error(path: Path, what: str, error: Exception) -> DataError:
    """One line naming ``path``; a :class:`SystemFault` when the system, not the file, failed
    (``on_error: skip`` must not leave a subject out for a full memory or a stale NFS mount)."""
    if isinstance(error, MemoryError) or getattr(error, "errno", None) in _SYSTEM_ERRNOS:
        return SystemFault(f"{path}: {what} ({_one_line(error) or type(error).__name__})")
    return DataError(f"{path}: {what} ({_one_line(error)})")


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


# -- nibabel -------------------------------------------------------------------


def _nibabel_channels_first(shape: tuple[int, ...], path: Path) -> tuple[int, tuple[int, int, int]]:
    """(channels, spatial shape) of a nibabel array shape; see :func:`read_volume`."""
    if len(shape) == 2:
        return 1, (shape[0], shape[1], 1)
    if len(shape) == 3:
        return 1, (shape[0], shape[1], shape[2])
    if len(shape) == 4:
        return shape[3], (shape[0], shape[1], shape[2])
    if len(shape) == 5 and shape[3] == 1:
        return shape[4], (shape[0], shape[1], shape[2])
    raise DataError(f"{path}: cannot use an image of shape {shape} (expected 2 to 4 dimensions)")


def _gunzip(path: Path) -> bytes | None:
    """A gzip file's content, decompressed with ISA-L, or None where it is not installed.

    ISA-L's inflate is about twice as fast as zlib's on .nii.gz volumes
    (docs/benchmarks.md), and it releases the GIL.
    """
    try:
        from isal import igzip
    except ImportError:
        return None
    with open(path, "rb") as stream:
        return igzip.decompress(stream.read())


def _load_nibabel(path: Path):
    import nibabel as nib

    image = nib.load(path)  # reads the header only
    if path.name.lower().endswith(".gz") and hasattr(type(image), "from_bytes"):
        content = _gunzip(path)
        if content is not None:
            return type(image).from_bytes(content)
    return image


def _read_nibabel(path: Path) -> Volume:
    image = _load_nibabel(path)
    # dataobj keeps the stored dtype unless the header asks for scaling.
    data = np.asanyarray(image.dataobj)
    channels, spatial = _nibabel_channels_first(data.shape, path)
    if data.ndim <= 3:
        array = data.reshape((1, *spatial))
    else:
        array = np.moveaxis(data.reshape((*spatial, channels)), -1, 0)
    return Volume(array, np.asarray(image.affine, dtype=np.float64), path)


def _header_nibabel(path: Path) -> Header:
    import nibabel as nib
    from nibabel.volumeutils import apply_read_scaling

    image = nib.load(path)
    channels, spatial = _nibabel_channels_first(tuple(image.shape), path)
    raw_dtype = image.get_data_dtype()
    # nibabel moves the scaling from the header to the array proxy on load.
    slope = getattr(image.dataobj, "slope", None)
    inter = getattr(image.dataobj, "inter", None)
    # The dtype nibabel returns once scaled, found on a single zero, not on the voxels.
    dtype = apply_read_scaling(np.zeros(1, dtype=raw_dtype), slope, inter).dtype
    return Header(channels, spatial, np.dtype(dtype), np.asarray(image.affine, float), path)


# -- SimpleITK -----------------------------------------------------------------


def _sitk_affine(spacing, direction, origin) -> np.ndarray:
    dimension = len(spacing)
    rotation = np.eye(3)
    zooms = np.ones(3)
    translation = np.zeros(3)
    usable = min(dimension, 3)
    matrix = np.asarray(direction, dtype=np.float64).reshape(dimension, dimension)
    rotation[:usable, :usable] = matrix[:usable, :usable]
    zooms[:usable] = np.asarray(spacing, dtype=np.float64)[:usable]
    translation[:usable] = np.asarray(origin, dtype=np.float64)[:usable]
    affine = np.eye(4)
    affine[:3, :3] = rotation * zooms
    affine[:3, 3] = translation
    return _LPS_TO_RAS @ affine


def _series_files(path: Path) -> list[str]:
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
    if not files:
        raise DataError(f"{path}: folder holds no DICOM series")
    return list(files)


def _read_sitk(path: Path) -> Volume:
    import SimpleITK as sitk

    if path.is_dir():
        image = sitk.ReadImage(_series_files(path))
    else:
        image = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) or (t, z, y, x) for 4D images
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        data = data[np.newaxis] if dimension == 2 else data  # (y, x, c) -> (1, y, x, c)
        array = data.transpose(3, 2, 1, 0)
    elif dimension == 2:
        array = data.T[np.newaxis, :, :, np.newaxis]
    elif dimension == 3:
        array = data.T[np.newaxis]
    elif dimension == 4:
        array = data.transpose(0, 3, 2, 1)  # time or channels first
    else:
        raise DataError(f"{path}: cannot use a {dimension}D image")
    affine = _sitk_affine(image.GetSpacing(), image.GetDirection(), image.GetOrigin())
    return Volume(array, affine, path)


_SITK_DTYPES = {
    "8-bit unsigned integer": np.uint8,
    "8-bit signed integer": np.int8,
    "16-bit unsigned integer": np.uint16,
    "16-bit signed integer": np.int16,
    "32-bit unsigned integer": np.uint32,
    "32-bit signed integer": np.int32,
    "64-bit unsigned integer": np.uint64,
    "64-bit signed integer": np.int64,
    "32-bit float": np.float32,
    "64-bit float": np.float64,
}


def _image_information(file: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader


def _series_geometry(files: list[str]) -> tuple[list[int], tuple, tuple, tuple]:
    """Size, spacing, direction and origin of a DICOM series, from its first and last
    slices' headers: the slice spacing and axis come from their positions, as
    ITK's series reader does, not from one slice (which has no slice spacing)."""
    first = _image_information(files[0])
    size = [int(n) for n in first.GetSize()[:2]] + [len(files)]
    spacing = list(first.GetSpacing()[:3])
    direction = np.asarray(first.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(first.GetOrigin()[:3], dtype=np.float64)
    if len(files) > 1:
        # Every slice's position, read once: to check they are evenly spaced, and for the
        # slice step from the first to the last.
        positions = np.array(
            [origin] + [_image_information(name).GetOrigin()[:3] for name in files[1:]],
            dtype=np.float64,
        )
        _check_even_slices(positions, Path(files[0]).parent)
        step = (positions[-1] - origin) / (len(files) - 1)
        distance = float(np.linalg.norm(step))
        if distance > 0:
            spacing[2] = distance
            direction[:, 2] = step / distance
    return size, tuple(spacing), tuple(direction.ravel()), tuple(origin)


def _check_even_slices(positions: np.ndarray, folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced: a missing slice would
    otherwise be read over silently, with every slice after it misplaced."""
    if len(positions) < 3:
        return
    distances = np.linalg.norm(positions - positions[0], axis=1)
    gaps = np.diff(distances)
    typical = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - typical) > max(0.01 * abs(typical), 1e-3))
    if typical <= 0 or len(uneven):
        where = int(uneven[0]) if len(uneven) else 0
        raise DataError(
            f"{folder}: DICOM slices are not evenly spaced ({gaps[where]:.3g} mm after slice "
            f"{where + 1} of {len(positions)}, {typical:.3g} mm elsewhere): a missing or repeated "
            "slice?"
        )


def _header_sitk(path: Path) -> Header:
    import SimpleITK as sitk

    if path.is_dir():
        files = _series_files(path)
        reader = _image_information(files[0])
        size, spacing, direction, origin = _series_geometry(files)
    else:
        reader = _image_information(str(path))
        size = list(reader.GetSize())
        spacing, direction, origin = reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin()
    channels = reader.GetNumberOfComponents()
    if len(size) == 4:
        channels, size = size[3], size[:3]
    spatial = tuple(int(n) for n in (list(size) + [1, 1])[:3])
    name = sitk.GetPixelIDValueAsString(reader.GetPixelID()).replace("vector of ", "")
    if name not in _SITK_DTYPES:
        raise DataError(f"{path}: unsupported pixel type {name!r}")
    affine = _sitk_affine(spacing, direction, origin)
    return Header(int(channels), spatial, np.dtype(_SITK_DTYPES[name]), affine, path)  # type: ignore[arg-type]
