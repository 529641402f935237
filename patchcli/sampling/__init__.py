"""Patch locations from arrays: pure numpy, no I/O.

Every sampler returns an ``(n, 6)`` int64 array of locations
``[i0, j0, k0, i1, j1, k1]`` (exclusive ends).
"""

from .geometry import patch_affine, to_triplet, valid_centre_box
from .grid import count_grid_patches, grid_locations, grid_padding, pad_volume
from .label import label_candidates, label_locations
from .random import copy_rng, copy_torch_seed, subject_rng
from .uniform import uniform_locations
from .weighted import weighted_locations

__all__ = [
    "copy_rng",
    "copy_torch_seed",
    "count_grid_patches",
    "grid_locations",
    "grid_padding",
    "label_candidates",
    "label_locations",
    "pad_volume",
    "patch_affine",
    "subject_rng",
    "to_triplet",
    "uniform_locations",
    "valid_centre_box",
    "weighted_locations",
]
