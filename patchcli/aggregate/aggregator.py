"""The in-memory aggregator: one subject's volume from batches of its grid patches.

:class:`GridAggregator` is TorchIO's ``GridAggregator`` without torch: it is
built from one subject's grid geometry, takes batches of ``(patches,
locations)`` in an inference loop and returns the volume with any padding
removed. :func:`hann_window` and :func:`output_affine` give the weights of the
``hann`` mode and the affine of a downsampled output.

Overlap modes (docs/aggregate.md):

``crop``
    Each patch loses half the overlap on each side (except on the sides that
    touch the border of an unpadded volume); where cropped patches still meet,
    the later patch wins. An unmodified grid gives back its source exactly.
``average``
    Sum of the patches over the number of patches, per voxel.
``hann``
    Each patch weighted by a separable Hann window; weighted sum over the sum
    of weights, per voxel.

Beyond TorchIO: sums are accumulated in float64 for integer patches (TorchIO's
average overflows on uint8), a model output smaller than its input by an
integer factor works in all three modes, and the output's channels and dtype
may differ from the input's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..io.reader import read_patch_output
from ..sampling.geometry import Triplet, to_triplet
from ..sampling.grid import check_grid, grid_starts
from .grid_file import GridFile

__all__ = ["OVERLAP_MODES", "GridAggregator", "hann_window", "output_affine"]

OVERLAP_MODES = ("crop", "average", "hann")


def hann_window(patch_size: Sequence[int]) -> np.ndarray:
    """The separable 3D Hann window TorchIO's ``hann`` mode weights patches with.

    Each axis of length ``s`` uses a Hann window of length ``s + 2`` with its two
    zero ends dropped, so every voxel of a patch has a positive weight.

    Parameters
    ----------
    patch_size : sequence of 3 ints

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``patch_size``.

    Examples
    --------
    >>> hann_window((1, 2, 3))[0].round(4).tolist()
    [[0.375, 0.75, 0.375], [0.375, 0.75, 0.375]]
    """
    window = np.ones((1, 1, 1))
    for axis, size in enumerate(patch_size):
        profile = np.hanning(int(size) + 2)[1:-1]
        shape = [1, 1, 1]
        shape[axis] = int(size)
        window = window * profile.reshape(shape)
    return window


def output_affine(affine: np.ndarray, downsampling_factor: Sequence[int]) -> np.ndarray:
    """The affine of a volume downsampled by an integer factor per axis.

    Output voxel ``u`` covers source voxels ``f * u`` to ``f * u + f - 1``, so its
    centre is at source index ``f * u + (f - 1) / 2``.

    Examples
    --------
    >>> affine = np.diag([2.0, 3.0, 4.0, 1.0])
    >>> output_affine(affine, (2, 1, 1))[0].tolist()
    [4.0, 0.0, 0.0, 1.0]
    """
    factor = np.asarray(downsampling_factor, dtype=np.float64)
    scaling = np.eye(4)
    scaling[:3, :3] = np.diag(factor)
    scaling[:3, 3] = (factor - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ scaling


def _as_array(value: Any) -> np.ndarray:
    """A numpy array from an array or a torch tensor (on any device, with or without grad)."""
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if str(getattr(value, "dtype", "")) == "torch.bfloat16":
        value = value.float()  # numpy has no bfloat16 (mixed-precision models output it)
    return np.asarray(value)


def _padding_triplet(padding: bool | Sequence[int], patch_overlap: Triplet) -> Triplet:
    half_overlap = tuple(o // 2 for o in patch_overlap)
    if isinstance(padding, (bool, np.bool_)):
        return half_overlap if padding else (0, 0, 0)  # type: ignore[return-value]
    values = to_triplet(list(padding), "padding", minimum=0)
    if any(values) and values != half_overlap:
        raise ConfigError(
            f"padding {values} must be patch_overlap // 2 = {half_overlap} (a padded grid) "
            "or 0 (an unpadded one)"
        )
    return values


class GridAggregator:
    """Build one subject's volume from batches of its grid patches.

    Parameters
    ----------
    spatial_shape : sequence of 3 ints
        Shape of the source volume, before any padding (``/subjects/shape``).
    patch_size : int or sequence of 3 ints
        The grid's patch size, in source voxels.
    patch_overlap : int or sequence of 3 ints
        The grid's overlap (even), in source voxels.
    padding : bool or sequence of 3 ints
        Whether the grid was sampled from a padded volume: ``True`` (or the
        file's ``padding`` attribute, ``patch_overlap // 2``) for a padded grid,
        ``False`` (or zeros) otherwise. Locations are then in padded coordinates
        and the padding is removed from the output.
    overlap_mode : {"crop", "average", "hann"}
    downsampling_factor : int or sequence of 3 ints
        How much smaller the patches given to :meth:`add_batch` are than the
        grid's (a model that pools by 2 has factor 2). Patch size, padding and
        every patch start must be multiples of it.
    channels : int, optional
        Channels of the patches; by default taken from the first batch.
    dtype : numpy dtype, optional
        dtype of the output. By default: the patches' dtype in ``crop`` mode;
        float32 in ``average`` and ``hann`` modes (float64 for float64 patches).
        An integer dtype with ``average`` or ``hann`` rounds to the nearest value.

    Attributes
    ----------
    output_shape : tuple of 3 ints
        Spatial shape of :meth:`get_output`: ``spatial_shape // downsampling_factor``.

    Notes
    -----
    The aggregator holds one output volume (plus, in ``average`` and ``hann``
    modes, a float sum volume and a single-channel weight volume instead).
    Sums are kept in float64 for integer or float64 patches and in float32 for
    float32 or float16 patches. In ``crop`` mode, where cropped patches still
    overlap (near the last patch of an axis) the patch added later wins, so
    add patches in grid order (the order of the file, or of TorchIO's
    ``GridSampler`` through a DataLoader without shuffling). Voxels no patch
    reached are 0.

    Examples
    --------
    >>> volume = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(1, 4, 5, 3)
    >>> aggregator = GridAggregator((4, 5, 3), (2, 3, 3), (0, 2, 0))
    >>> from patchcli.sampling.grid import grid_locations
    >>> locations = grid_locations((4, 5, 3), (2, 3, 3), (0, 2, 0))
    >>> patches = np.stack([volume[:, a:d, b:e, c:f] for a, b, c, d, e, f in locations])
    >>> aggregator.add_batch(patches, locations)
    >>> bool((aggregator.get_output() == volume).all())
    True
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        patch_size: int | Sequence[int],
        patch_overlap: int | Sequence[int] = 0,
        *,
        padding: bool | Sequence[int] = False,
        overlap_mode: str = "crop",
        downsampling_factor: int | Sequence[int] = 1,
        channels: int | None = None,
        dtype: Any = None,
    ) -> None:
        if overlap_mode not in OVERLAP_MODES:
            raise ConfigError(
                f"overlap_mode must be one of {', '.join(OVERLAP_MODES)}, not {overlap_mode!r}"
            )
        self.overlap_mode = overlap_mode
        self.spatial_shape = to_triplet(list(np.asarray(spatial_shape).tolist()), "spatial_shape")
        self.patch_size = to_triplet(_plain(patch_size), "patch_size")
        self.patch_overlap = to_triplet(_plain(patch_overlap), "patch_overlap", minimum=0)
        self.padding = _padding_triplet(padding, self.patch_overlap)
        self.downsampling_factor = to_triplet(_plain(downsampling_factor), "downsampling_factor")
        if channels is not None and (isinstance(channels, bool) or int(channels) < 1):
            raise ConfigError(f"channels must be a positive int, not {channels!r}")
        self.channels = None if channels is None else int(channels)
        self.dtype = None if dtype is None else np.dtype(dtype)

        self.padded_shape = tuple(
            n + 2 * p for n, p in zip(self.spatial_shape, self.padding, strict=True)
        )
        check_grid(self.padded_shape, self.patch_size, self.patch_overlap)
        self._check_factor()
        factor = self.downsampling_factor
        # Everything below is in output voxels (source voxels // factor).
        self._grid_shape = tuple(n // f for n, f in zip(self.padded_shape, factor, strict=True))
        self._patch_shape = tuple(p // f for p, f in zip(self.patch_size, factor, strict=True))
        self._padding = tuple(p // f for p, f in zip(self.padding, factor, strict=True))
        # Half overlaps that do not fall on an output voxel boundary are rounded
        # down: cropped patches then still cover every voxel, later ones winning.
        self._half_overlap = tuple(
            o // 2 // f for o, f in zip(self.patch_overlap, factor, strict=True)
        )
        self.output_shape = tuple(n // f for n, f in zip(self.spatial_shape, factor, strict=True))

        self._volume: np.ndarray | None = None  # crop: output; average, hann: sums
        self._weights: np.ndarray | None = None  # average, hann: (X, Y, Z)
        self._window: np.ndarray | None = None
        self._patches_dtype: np.dtype | None = None
        self.patches_added = 0

    def _check_factor(self) -> None:
        for axis, factor in enumerate(self.downsampling_factor):
            if factor == 1:
                continue
            size, patch = self.padded_shape[axis], self.patch_size[axis]
            overlap, padding = self.patch_overlap[axis], self.padding[axis]
            starts = grid_starts(size, patch, overlap)
            bad = [s for s in starts if s % factor]
            if patch % factor or padding % factor or bad:
                raise ConfigError(
                    f"downsampling factor {factor} does not divide the grid on axis {axis}: "
                    f"patch size {patch}, padding {padding}, patch starts "
                    f"{', '.join(map(str, starts))} must all be multiples of it (choose a shape, "
                    "patch size and overlap that are)"
                )

    @classmethod
    def from_file(
        cls,
        patches: str | os.PathLike | Any,
        subject: int | str,
        *,
        overlap_mode: str = "crop",
        downsampling_factor: int | Sequence[int] = 1,
        channels: int | None = None,
        dtype: Any = None,
    ) -> GridAggregator:
        """An aggregator for one subject of a grid HDF5 file.

        Parameters
        ----------
        patches : path or h5py.File
            A grid output written by ``patchcli grid`` (an HDF5 file, a merge
            of grid shards, or a NIfTI folder), or an open h5py handle on one.
        subject : int or str
            The subject's row in ``/subjects`` or its id.
        overlap_mode, downsampling_factor, channels, dtype
            As for :class:`GridAggregator`.

        Returns
        -------
        GridAggregator
        """
        path = Path(patches.filename) if hasattr(patches, "attrs") else Path(patches)
        grid = GridFile(read_patch_output(path))
        row = grid.subject_row(subject)
        return cls(
            grid.shapes[row],
            grid.patch_size,
            grid.patch_overlap,
            padding=grid.padding,
            overlap_mode=overlap_mode,
            downsampling_factor=downsampling_factor,
            channels=channels,
            dtype=dtype,
        )

    def __repr__(self) -> str:
        return (
            f"GridAggregator(spatial_shape={self.spatial_shape}, patch_size={self.patch_size}, "
            f"patch_overlap={self.patch_overlap}, padding={self.padding}, "
            f"overlap_mode={self.overlap_mode!r}, downsampling_factor={self.downsampling_factor}, "
            f"patches_added={self.patches_added})"
        )

    def add_batch(self, patches: Any, locations: Any) -> None:
        """Add a batch of patches (typically a model's outputs) at their grid locations.

        Parameters
        ----------
        patches : array-like or torch.Tensor, shape (B, C, X, Y, Z)
            Spatial shape ``patch_size // downsampling_factor``.
        locations : array-like or torch.Tensor, shape (B, 6)
            ``[i0, j0, k0, i1, j1, k1]`` of each patch in source voxels (of the
            padded volume for a padded grid), as stored in ``/locations`` or
            given by TorchIO's ``batch["location"]``.
        """
        patches = _as_array(patches)
        locations = _as_array(locations)
        self._check_batch(patches, locations)
        if len(patches) == 0:
            return
        locations = locations.astype(np.int64) // np.tile(self.downsampling_factor, 2)
        self._allocate(patches)
        if self.overlap_mode == "crop":
            self._add_cropped(patches, locations)
        else:
            self._add_weighted(patches, locations)
        self.patches_added += len(patches)

    def _check_batch(self, patches: np.ndarray, locations: np.ndarray) -> None:
        if patches.ndim != 5:
            raise DataError(f"patches must be a (B, C, X, Y, Z) array, not shape {patches.shape}")
        if locations.shape != (len(patches), 6):
            raise DataError(
                f"locations must have shape ({len(patches)}, 6) for {len(patches)} patches, "
                f"not {locations.shape}"
            )
        if not np.issubdtype(locations.dtype, np.integer):
            raise DataError(f"locations must be integers, not {locations.dtype}")
        expected_channels = self.channels
        if self._volume is not None:
            expected_channels = self._volume.shape[0]
        if expected_channels is not None and patches.shape[1] != expected_channels:
            raise DataError(
                f"patches have {patches.shape[1]} channels, expected {expected_channels}"
            )
        if tuple(patches.shape[2:]) != self._patch_shape:
            scaled = " / downsampling factor " + str(self.downsampling_factor)
            raise DataError(
                f"patches have spatial shape {tuple(patches.shape[2:])}, expected "
                f"{self._patch_shape} (patch size {self.patch_size}"
                f"{scaled if any(f > 1 for f in self.downsampling_factor) else ''})"
            )
        if len(locations) == 0:
            return
        starts, ends = locations[:, :3], locations[:, 3:]
        if (ends - starts != np.asarray(self.patch_size)).any():
            raise DataError(f"locations must span the patch size {self.patch_size} on every axis")
        if (starts < 0).any() or (ends > np.asarray(self.padded_shape)).any():
            raise DataError(
                f"locations fall outside the {'padded ' if any(self.padding) else ''}volume "
                f"of shape {self.padded_shape}"
            )
        if (starts % np.asarray(self.downsampling_factor)).any():
            raise DataError(
                f"patch starts must be multiples of the downsampling factor "
                f"{self.downsampling_factor}"
            )

    def _allocate(self, patches: np.ndarray) -> None:
        if self._volume is not None:
            return
        channels = patches.shape[1]
        self._patches_dtype = patches.dtype
        if self.overlap_mode == "crop":
            dtype = self.dtype or patches.dtype
            self._volume = np.zeros((channels, *self._grid_shape), dtype=dtype)
            return
        self._volume = np.zeros((channels, *self._grid_shape), dtype=self._sum_dtype(patches.dtype))
        # The weight of a voxel is the same for every channel: store it once.
        self._weights = np.zeros(self._grid_shape, dtype=self._volume.dtype)
        if self.overlap_mode == "hann":
            self._window = hann_window(self._patch_shape).astype(self._volume.dtype)

    def _sum_dtype(self, patches_dtype: np.dtype) -> np.dtype:
        wide = (
            not np.issubdtype(patches_dtype, np.floating)
            or np.dtype(patches_dtype).itemsize > 4
            or (self.dtype is not None and self.dtype.itemsize > 4)
        )
        return np.dtype(np.float64 if wide else np.float32)

    def _crop_margins(
        self, start: Sequence[int], end: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """Output voxels cropped at the start and end of a patch, per axis."""
        padded = any(self.padding)
        crop_start, crop_end = [], []
        for axis in range(3):
            half = self._half_overlap[axis]
            # Without padding, sides on the volume's border keep their voxels.
            crop_start.append(half if padded or start[axis] > 0 else 0)
            crop_end.append(half if padded or end[axis] != self._grid_shape[axis] else 0)
        return crop_start, crop_end

    def _add_cropped(self, patches: np.ndarray, locations: np.ndarray) -> None:
        assert self._volume is not None
        size = self._patch_shape
        for patch, location in zip(patches, locations.tolist(), strict=True):
            start, end = location[:3], location[3:]
            crop_start, crop_end = self._crop_margins(start, end)
            target = tuple(slice(start[a] + crop_start[a], end[a] - crop_end[a]) for a in range(3))
            source = tuple(slice(crop_start[a], size[a] - crop_end[a]) for a in range(3))
            self._volume[(slice(None), *target)] = patch[(slice(None), *source)]

    def _add_weighted(self, patches: np.ndarray, locations: np.ndarray) -> None:
        assert self._volume is not None and self._weights is not None
        window = self._window
        for patch, (i0, j0, k0, i1, j1, k1) in zip(patches, locations.tolist(), strict=True):
            target = self._volume[:, i0:i1, j0:j1, k0:k1]
            if window is None:
                target += patch
                self._weights[i0:i1, j0:j1, k0:k1] += 1
            else:
                # One patch at a time: weighting a whole batch would hold a float copy of it.
                target += np.multiply(patch, window, dtype=self._volume.dtype)
                self._weights[i0:i1, j0:j1, k0:k1] += window

    def get_output(self) -> np.ndarray:
        """The aggregated volume, padding removed.

        Returns
        -------
        numpy.ndarray
            A new ``(C, X, Y, Z)`` array of spatial shape :attr:`output_shape`.
            dtype: ``dtype`` if given; otherwise the patches' dtype in ``crop``
            mode and float32 (float64 for float64 patches) in the other modes.
        """
        if self._volume is None:
            raise DataError("no patches were added to the aggregator")
        unpadded = tuple(
            slice(p, p + n) for p, n in zip(self._padding, self.output_shape, strict=True)
        )
        volume = self._volume[(slice(None), *unpadded)]
        if self.overlap_mode == "crop":
            return volume.copy()
        assert self._weights is not None and self._patches_dtype is not None
        weights = self._weights[unpadded]
        covered = weights > 0
        if self.dtype is None:
            floating = np.issubdtype(self._patches_dtype, np.floating)
            wide = floating and self._patches_dtype.itemsize > 4
            dtype = np.dtype(np.float64 if wide else np.float32)
        else:
            dtype = self.dtype
        if np.issubdtype(dtype, np.floating):
            output = np.zeros(volume.shape, dtype=dtype)
            np.divide(volume, weights, out=output, where=covered, casting="same_kind")
            return output
        quotient = np.zeros(volume.shape, dtype=volume.dtype)
        np.divide(volume, weights, out=quotient, where=covered)
        np.rint(quotient, out=quotient)
        if np.issubdtype(dtype, np.integer):
            limits = np.iinfo(dtype)
            np.clip(quotient, limits.min, limits.max, out=quotient)
        return quotient.astype(dtype)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars as Python ints / lists, for :func:`to_triplet`."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value
