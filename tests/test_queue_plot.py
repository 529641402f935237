"""Tests for patchcli.queue.plot: the picture of a simulated queue."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from patchcli.errors import ConfigError
from patchcli.queue import plot_queue, simulate_queue

from .helpers import ordered_trace as _ordered


def test_plot_queue_writes_a_png(tmp_path):
    trace = simulate_queue([5] * 6, 12, batch_size=4, num_epochs=2, rng=np.random.default_rng(0))
    path = tmp_path / "queue.png"
    plot_queue(trace, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["queue.png"]


def test_plot_queue_window(tmp_path):
    trace = _ordered([50] * 10, 20, num_epochs=3)
    plot_queue(trace, tmp_path / "first.png", max_pops=100)
    assert (tmp_path / "first.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError):
        plot_queue(trace, tmp_path / "none.png", max_pops=0)
    assert not (tmp_path / "none.png").exists()


def test_plot_queue_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'patchcli\[plot\]'"):
        plot_queue(_ordered([2], 2), tmp_path / "queue.png")
    assert not (tmp_path / "queue.png").exists()
