"""The looking-before-training commands on a real-sized subject (197 x 233 x 189, MNI-like)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.phantom import write_phantom_dataset

from .helpers import write_config

pytestmark = pytest.mark.slow


def test_dry_run_extract_info_and_preview_on_a_real_sized_subject(tmp_path):
    manifest = write_phantom_dataset(
        tmp_path / "data", 1, (197, 233, 189), seed=0, vary_shape=False
    )
    config = write_config(
        tmp_path / "label.yaml",
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=64,
        num_patches=40,
        label_name="seg",
        label_probabilities={1: 1, 2: 1, 3: 1},
        output={"path": str(tmp_path / "out" / "label.h5")},
    )
    runner = CliRunner()
    planned = runner.invoke(main, ["label", str(config), "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert "patches: 40 (40 to 40 a subject)" in planned.output
    assert not (tmp_path / "out").exists()

    run = runner.invoke(main, ["label", str(config), "--quiet"])
    assert run.exit_code == 0, run.output
    described = json.loads(runner.invoke(main, ["info", str(tmp_path / "out" / "label.h5"),
                                                 "--json"]).output)  # fmt: skip
    assert described["patches"] == 40 and described["subjects"][0]["shape"] == [197, 233, 189]
    assert described["compression_ratio"] > 1  # lz4 on a phantom

    png = tmp_path / "label.png"
    drawn = runner.invoke(main, ["preview", str(tmp_path / "out" / "label.h5"), "-o", str(png)])
    assert drawn.exit_code == 0, drawn.output
    assert png.stat().st_size > 20_000
