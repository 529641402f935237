"""Label sampling: patch centres on labelled voxels, optionally balanced by class.

Matches TorchIO's LabelSampler, with one correction: without
``label_probabilities``, a multi-channel (one-hot) map samples voxels where any
*foreground* channel (1 and up) is positive, where TorchIO uses channel 0,
usually the background.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

from ..errors import DataError, PatchcliWarning
from .geometry import Triplet, check_patch_fits, valid_centre_box
from .weighted import (
    EMPTY_MAP_HINT,
    centres_to_locations,
    check_probability_values,
    draw_from_candidates,
)


def label_candidates(
    label_map: np.ndarray,
    patch_size: Triplet,
    label_probabilities: Mapping[int, float] | None = None,
) -> tuple[tuple[slice, ...], tuple[int, ...], np.ndarray, np.ndarray | None]:
    """The voxels that can be patch centres, and their weights.

    Parameters
    ----------
    label_map : (C, X, Y, Z) array
        A label map (one channel of label values) or a one-hot / soft map with
        one channel per class.
    patch_size : tuple of 3 ints
    label_probabilities : mapping of int to float, optional
        Label value (or channel index for a multi-channel map) -> probability
        that a patch is centred on that class. Need not be normalised.

    Returns
    -------
    region : tuple of slices
        The valid-centre box the flat indices refer to.
    region_shape : tuple of 3 ints
    flat_indices : int64 array
        C-order indices into the region of the candidate centres.
    weights : float64 array or None
        Unnormalised weights of the candidates; None when they are all equal.

    Notes
    -----
    With probabilities, each class with ``n`` voxels inside the region gives each
    of them ``p / n`` (for a multi-channel map, the channel's values times
    ``p / sum``), so every present class is drawn with its probability. A
    requested class absent from the region is skipped with a warning, and its
    probability goes to the present ones, as in TorchIO.

    Examples
    --------
    The fixture of TorchIO's tests: labels (0,0,1,1,2,1,0) along the last axis,
    patch (1, 1, 5), probabilities {0: 0, 1: 50, 2: 25, 3: 25}.

    >>> label_map = np.array([0, 0, 1, 1, 2, 1, 0]).reshape(1, 1, 1, 7)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     region, shape, indices, weights = label_candidates(
    ...         label_map, (1, 1, 5), {0: 0, 1: 50, 2: 25, 3: 25})
    >>> [region[2].start + int(i) for i in indices], weights.tolist()
    ([2, 3, 4], [0.25, 0.25, 0.25])
    """
    if label_map.ndim != 4:
        raise ValueError("label_map must have shape (C, X, Y, Z)")
    spatial_shape = label_map.shape[1:]
    check_patch_fits(patch_size, spatial_shape)
    region = valid_centre_box(spatial_shape, patch_size)
    inside = label_map[(slice(None), *region)]
    region_shape = tuple(int(n) for n in inside.shape[1:])
    multichannel = label_map.shape[0] > 1

    if label_probabilities is None:
        if multichannel:
            foreground = (inside[1:] > 0).any(axis=0)
        else:
            foreground = inside[0] > 0
        return region, region_shape, np.flatnonzero(foreground), None

    probabilities = checked_probabilities(label_probabilities)
    total = sum(probabilities.values())
    if multichannel:
        return region, region_shape, *_channel_candidates(label_map, inside, probabilities, total)
    return region, region_shape, *_value_candidates(label_map, inside[0], probabilities, total)


def checked_probabilities(label_probabilities: Mapping[int, float]) -> dict[int, float]:
    """``label_probabilities`` sorted by key (the draws do not depend on the order the keys
    were written in), refused unless finite and non-negative with a positive sum."""
    probabilities = {
        int(key): float(label_probabilities[key]) for key in sorted(label_probabilities)
    }
    total = sum(probabilities.values())
    valid = all(math.isfinite(value) and value >= 0 for value in probabilities.values())
    if not valid or total <= 0:
        raise DataError(
            "label_probabilities must be finite and non-negative with a positive sum, "
            f"not {probabilities}"
        )
    return probabilities


def check_channels(probabilities: Mapping[int, float], channels: int) -> None:
    """Refuse keys of ``label_probabilities`` that are not channels of the map."""
    for channel in probabilities:
        if not 0 <= channel < channels:
            raise DataError(
                f"label_probabilities refers to channel {channel} but the label map "
                f"has {channels} channels"
            )


def no_centre_error(requested: list[int], what: str, patch_size: Triplet) -> DataError:
    """The error of a map where none of the ``requested`` labels or channels (``what``)
    has a voxel that can be a patch centre."""
    return DataError(
        f"none of the requested {what} {requested} has a voxel where a patch centre "
        "can lie (absent, or only near the border): "
        + EMPTY_MAP_HINT.format(patch_size=tuple(patch_size))
    )


def _value_candidates(label_map, inside, probabilities, total):
    indices, weights = [], []
    for label, probability in probabilities.items():
        if probability == 0:
            continue
        members = np.flatnonzero(inside == label)
        if members.size == 0:
            warn_absent(f"label {label}", bool((label_map == label).any()))
            continue
        indices.append(members)
        weights.append(np.full(members.size, probability / total / members.size))
    if not indices:
        return np.empty(0, dtype=np.int64), np.empty(0)
    return np.concatenate(indices), np.concatenate(weights)


def _channel_candidates(label_map, inside, probabilities, total):
    check_channels(probabilities, label_map.shape[0])
    check_probability_values(inside, "multi-channel label map")
    weights = np.zeros(inside[0].size, dtype=np.float64)
    for channel, probability in probabilities.items():
        if probability == 0:
            continue
        values = inside[channel].ravel()
        mass = values.sum(dtype=np.float64)
        if mass == 0:
            warn_absent(f"channel {channel}", bool((label_map[channel] > 0).any()))
            continue
        weights += values * (probability / total / mass)
    flat_indices = np.flatnonzero(weights)
    return flat_indices, weights[flat_indices]


def warn_absent(what: str, present_near_border: bool) -> None:
    """Warn that a requested label or channel has no voxel where a patch centre can lie
    (the caller's caller named as where it happened)."""
    where = "only near the border, where no patch centre can lie" if present_near_border else ""
    message = f"{what} is requested in label_probabilities but absent" + (
        f" ({where})" if where else ""
    )
    warnings.warn(message, PatchcliWarning, stacklevel=3)


def label_locations(
    label_map: np.ndarray,
    patch_size: Triplet,
    num_patches: int,
    rng: np.random.Generator,
    label_probabilities: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Draw patch locations centred on labelled voxels.

    Parameters
    ----------
    label_map : (C, X, Y, Z) array
    patch_size : tuple of 3 ints
    num_patches : int
    rng : numpy.random.Generator
    label_probabilities : mapping of int to float, optional
        See :func:`label_candidates`.

    Returns
    -------
    locations : (num_patches, 6) int64 array

    Examples
    --------
    >>> label_map = np.zeros((1, 9, 9, 9), dtype=np.uint8); label_map[0, 4, 4, 4] = 1
    >>> label_locations(label_map, (3, 3, 3), 1, np.random.default_rng(0))
    array([[3, 3, 3, 6, 6, 6]])
    """
    region, region_shape, flat_indices, weights = label_centres(
        label_map, patch_size, label_probabilities
    )
    drawn = draw_from_candidates(flat_indices, weights, num_patches, rng)
    return centres_to_locations(drawn, region, region_shape, patch_size)


def label_centres(
    label_map: np.ndarray,
    patch_size: Triplet,
    label_probabilities: Mapping[int, float] | None = None,
):
    """:func:`label_candidates`, refusing a map that leaves no centre to draw from."""
    region, region_shape, flat_indices, weights = label_candidates(
        label_map, patch_size, label_probabilities
    )
    if flat_indices.size == 0:
        if label_probabilities:
            requested = sorted(int(k) for k, p in label_probabilities.items() if p > 0)
            what = "channels" if label_map.shape[0] > 1 else "labels"
            raise no_centre_error(requested, what, patch_size)
        raise DataError(
            "no labelled voxel can be a patch centre: "
            + EMPTY_MAP_HINT.format(patch_size=tuple(patch_size))
        )
    return region, region_shape, flat_indices, weights
