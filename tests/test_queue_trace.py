"""Tests for patchcli.queue.trace: the trace of a simulated queue as CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from patchcli.errors import DataError
from patchcli.queue import TRACE_COLUMNS, simulate_queue, write_trace_csv

from .helpers import ordered_trace as _ordered


def test_trace_csv(tmp_path):
    trace = simulate_queue([3, 4, 2], 4, batch_size=3, num_epochs=2, rng=np.random.default_rng(0))
    path = tmp_path / "trace.csv"
    write_trace_csv(trace, path)
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["epoch", "iteration", "batch", "subject", "patch", "queue_length", "filled"]
    assert tuple(rows[0]) == TRACE_COLUMNS
    table = np.array(rows[1:], dtype=np.int64)
    assert table.shape == (len(trace), 7)
    for index, name in enumerate(TRACE_COLUMNS):
        assert table[:, index].tolist() == getattr(trace, name).tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["trace.csv"]  # no temporary left


def test_trace_csv_replaces_an_existing_file_unless_told_not_to(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("old\n")
    with pytest.raises(DataError):
        write_trace_csv(_ordered([1], 1), path, overwrite=False)
    assert path.read_text() == "old\n"
    write_trace_csv(_ordered([1], 1), path)
    assert path.read_text().splitlines() == [",".join(TRACE_COLUMNS), "0,0,0,0,0,0,1"]
