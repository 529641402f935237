"""Reassemble grid patches (or a model's outputs on them) into whole volumes.

:class:`GridAggregator` (:mod:`patchcli.aggregate.aggregator`) builds one
subject's volume from batches of ``(patches, locations)`` in an inference loop;
:func:`aggregate_file` (:mod:`patchcli.aggregate.files`) writes one NIfTI per
subject of a grid output, read through :mod:`patchcli.aggregate.grid_file`.
Neither needs torch. Overlap modes and dtypes: docs/aggregate.md.
"""

from __future__ import annotations

from .aggregator import OVERLAP_MODES, GridAggregator, hann_window, output_affine
from .files import aggregate_file

__all__ = ["OVERLAP_MODES", "GridAggregator", "aggregate_file", "hann_window", "output_affine"]
