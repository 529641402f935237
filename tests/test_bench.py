"""The benchmarks run (on small data): ``make bench`` must not break unnoticed.

Nothing here looks at a timing; the numbers are docs/benchmarks.md's business.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SMALL = ["--shape", "40", "40", "36", "--patch-size", "16", "--repeats", "1"]

pytestmark = pytest.mark.slow


def _run(script: str, *arguments) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_extraction_benchmark_runs(tmp_path, torchio):
    output = tmp_path / "extract.json"
    plot = tmp_path / "memory.png"
    result = _run(
        "bench_extract.py", *SMALL, "--patches", 10, "--subjects", 1, 2,
        "--memory-scale", 2, "--workdir", tmp_path, "--out-json", output, "--plot", plot,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    assert set(results["per_subject"]) == {"uniform", "weighted", "label", "grid"}
    for row in results["per_subject"].values():
        assert set(row) == {"patchcli", "patchcli none", "torchio"}
    assert results["limits"]["load s/subject"] > 0
    assert all(mib > 0 for mib in results["peak_memory_mib"].values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vs torchio" in result.stdout


def test_reading_benchmark_runs(tmp_path, torchio):
    output = tmp_path / "queue.json"
    result = _run(
        "bench_queue.py", *SMALL, "--subjects", 2, "--patches", 8, "--workdir", tmp_path,
        "--out-json", output,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    assert results["page cache (preadv)"] > 0
    assert any(name.startswith("torchio Queue") for name in results)
    assert any(name.startswith("PatchDataset lz4, loader + collate_patches") for name in results)


def test_reader_benchmark_runs(tmp_path, torch):
    output = tmp_path / "reader.json"
    result = _run(
        "bench_reader.py", "--patches", 24, "--workers", 0, "--batch-size", 8, "--repeats", 1,
        "--out-json", output,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text())


def test_merge_benchmark_runs(tmp_path, torch):
    output = tmp_path / "merge.json"
    result = _run(
        "bench_merge.py", "--shards", 6, "--patches", 2, "--reads", 20, "--repeats", 1,
        "--folder", tmp_path, "--out-json", output,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text())


def test_preprocessing_benchmark_runs(tmp_path, torchio):
    output = tmp_path / "preprocess.json"
    result = _run(
        "bench_preprocess.py", *SMALL, "--patches", 10, "--subjects", 1, 2,
        "--torchio-workers", 0, 2, "--workdir", tmp_path, "--out-json", output,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    contenders = {"patchcli", "patchcli none", "torchio", "torchio loader 2"}
    assert set(results["per_subject"]) == contenders
    assert results["torchio_best"] in {"torchio", "torchio loader 2"}
    assert set(results["speedup_vs_torchio"]) == {"patchcli", "patchcli none"}
    transforms = {"ToCanonical", "Resample", "ZNormalization", "RescaleIntensity"}
    patchcli, reference = results["breakdown"]["patchcli"], results["breakdown"]["torchio"]
    assert transforms | {"load", "sampling", "crop", "total lz4", "total none"} <= set(patchcli)
    assert transforms | {"load", "sampling + crop", "write", "total"} <= set(reference)
    assert all(seconds >= 0 for seconds in [*patchcli.values(), *reference.values()])
    assert "vs torchio" in result.stdout
