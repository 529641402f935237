"""``--dry-run``: the run checked and estimated, nothing written."""

from __future__ import annotations

from click.testing import CliRunner

from patchcli.cli import main
from patchcli.config import load_config
from patchcli.dryrun import dry_run
from patchcli.extract import extract
from patchcli.phantom import write_phantom_dataset

from .helpers import write_config


def _config(tmp_path, manifest, **keys):
    return write_config(
        tmp_path / "config.yaml",
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=12,
        num_patches=40,
        seed=1,
        output={"path": str(tmp_path / "out" / "patches.h5")},
        **keys,
    )


def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    manifest = write_phantom_dataset(tmp_path / "data", 3, (40, 40, 36), seed=0)
    config = _config(tmp_path, manifest)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["uniform", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "uniform: dry run, nothing written"
    assert "  subjects: 3 subjects" in lines
    assert "  patches: 120 (40 to 40 a subject)" in lines
    # 120 patches of 12^3 voxels, two uint8 images, and 56 bytes of tables each: 412 KiB.
    assert any(line.startswith("  size: up to 412 KiB uncompressed, about ") for line in lines)
    assert any("free space there:" in line and "(fits)" in line for line in lines)
    assert any(line.startswith("  time: about ") for line in lines)
    assert sorted(tmp_path.rglob("*")) == before  # not even the output folder


def test_the_compressed_size_is_estimated_from_one_subject(tmp_path):
    manifest = write_phantom_dataset(tmp_path / "data", 4, (40, 40, 36), seed=0)
    config = load_config(_config(tmp_path, manifest))
    planned = dry_run(config, "uniform")
    assert planned.bytes_uncompressed == 160 * 12**3 * 2 + 160 * 56  # t1 and seg are uint8
    written = extract(config, "uniform")
    # Phantom subjects compress alike: the estimate from one is within a fifth of the
    # whole file (which also holds the tables and HDF5's metadata).
    assert abs(planned.bytes_estimated - written.bytes_written) < 0.2 * written.bytes_written


def test_a_dry_run_refuses_what_the_run_would_refuse(tmp_path):
    manifest = write_phantom_dataset(tmp_path / "data", 2, (40, 40, 36), seed=0)
    (manifest.parent / "sub-002_seg.nii.gz").unlink()
    result = CliRunner().invoke(main, ["uniform", str(_config(tmp_path, manifest)), "--dry-run"])
    assert result.exit_code == 1
    assert "sub-002_seg.nii.gz" in result.output and result.output.count("\n") == 1


def test_a_sharded_dry_run_shows_its_part(tmp_path):
    manifest = write_phantom_dataset(tmp_path / "data", 5, (40, 40, 36), seed=0)
    config = _config(tmp_path, manifest)
    result = CliRunner().invoke(main, ["uniform", str(config), "--shard", "1/2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "  subjects: 3 subjects (shard 1 of 2, of 5 in all)" in result.output
    assert "patches.shard-1-of-2.h5" in result.output
