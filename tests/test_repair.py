"""Repairing a sharded run in place (patchcli.repair): a fixed manifest row or a repaired
skipped subject reruns only its shard, and the merge equals a clean run.

The same flows on a real SLURM are in test_cluster.py.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcli import cluster
from patchcli.cli import main
from patchcli.config import load_config
from patchcli.errors import DataError
from patchcli.extract import extract
from patchcli.fingerprint import settings_fingerprint
from patchcli.info import describe_output
from patchcli.io.reader import read_patch_output
from patchcli.merge import merge
from patchcli.repair import repair_report

from .helpers import assert_same_output, make_subjects, write_config

SHAPES = [(20, 18, 16), (18, 20, 17), (21, 17, 18), (16, 19, 20), (19, 16, 18), (17, 18, 19)]
IMAGES = {"t1": "intensity", "seg": "label"}


def _setup(folder: Path, **keys) -> Path:
    manifest, _ = make_subjects(folder / "data", SHAPES, with_prob=False)
    return write_config(
        folder / "config.yaml",
        subjects=str(manifest),
        images=IMAGES,
        patch_size=[8, 6, 5],
        num_patches=4,
        seed=4,
        workers=0,
        output={"path": str(folder / "out" / "patches.h5"), "compression": "none"},
        **keys,
    )


def _run_shards(config: Path, count: int, **options) -> list[Path]:
    return [
        extract(load_config(config, {"shard": f"{index}/{count}"}), "label", **options).path
        for index in range(count)
    ]


def _repoint(folder: Path, subject: str, image: str = "t1") -> Path:
    """Point a subject's manifest row at a re-exported copy of its file (the usual fix)."""
    manifest = folder / "data" / "subjects.csv"
    rows = list(csv.DictReader(manifest.open()))
    for row in rows:
        if row["subject"] == subject:
            source = manifest.parent / row[image]  # paths relative to the manifest
            copy = source.with_name(source.name.replace(".nii.gz", "_reexported.nii.gz"))
            shutil.copyfile(source, copy)
            row[image] = copy.name
    with manifest.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return copy


def _reference(config: Path, folder: Path) -> Path:
    loaded = load_config(config, {"output.path": str(folder / "reference.h5")})
    return extract(loaded, "label", overwrite=True).path


def test_a_fixed_manifest_row_makes_only_its_shard_stale(tmp_path):
    config = _setup(tmp_path)
    shards = _run_shards(config, 3)
    before = {path: path.stat().st_mtime_ns for path in shards}
    _repoint(tmp_path, "s3")  # row 3: shard 1 of 3 (rows 2-3)

    plan = cluster.plan_submission("label", config, 3)
    assert plan.todo == [1] and plan.merge
    states = {shard.index: shard.state for shard in plan.status.shards}
    assert states == {0: "current", 1: "stale", 2: "current"}
    assert plan.status.shards[1].detail == "manifest row 3 changed"

    # --resume reruns the stale shard (replacing it), and leaves the others alone.
    with pytest.warns(UserWarning, match="manifest rows changed"):
        _run_shards(config, 3, resume=True)
    assert shards[0].stat().st_mtime_ns == before[shards[0]]
    assert shards[2].stat().st_mtime_ns == before[shards[2]]
    assert shards[1].stat().st_mtime_ns != before[shards[1]]
    rerun = read_patch_output(shards[1])
    assert rerun.subjects[1].source["t1"].endswith("s3_t1_reexported.nii.gz")

    merged = merge(tmp_path / "out" / "patches.h5", config=load_config(config, {})).path
    assert_same_output(merged, _reference(config, tmp_path), merged=True)
    assert cluster.plan_submission("label", config, 3).todo == []


def test_a_settings_change_still_refuses_the_shards_in_the_way(tmp_path):
    config = _setup(tmp_path)
    _run_shards(config, 2)
    changed = write_config(
        tmp_path / "seed.yaml", **{**load_config(config, {}).model_dump(mode="json"), "seed": 5}
    )
    with pytest.raises(DataError, match="made with other settings are in the way"):
        cluster.plan_submission("label", changed, 2)
    shards = [read_patch_output(path) for path in sorted((tmp_path / "out").glob("*.h5"))]
    assert len({shard.settings_fingerprint for shard in shards}) == 1
    assert shards[0].settings_fingerprint != settings_fingerprint(load_config(changed, {}), "label")


def test_merge_refuses_mixed_settings_and_with_config_stale_rows(tmp_path):
    config = _setup(tmp_path)
    first = _run_shards(config, 2)
    _repoint(tmp_path, "s4")  # row 4: shard 1 of 2
    loaded = load_config(config, {})
    output = tmp_path / "out" / "patches.h5"
    # Without the config, shards of one setting merge; with it, the stale one is named.
    with pytest.raises(DataError, match=r"patches.shard-1-of-2.h5 \(manifest row 4 changed\)"):
        merge(output, config=loaded)
    assert not output.exists()
    merge(output)  # the shards alone are consistent: one setting, every row once
    output.unlink()
    # A shard of another seed is refused, naming the settings.
    other = write_config(
        tmp_path / "other.yaml",
        **{**loaded.model_dump(mode="json"), "seed": 9, "output": {"path": str(tmp_path / "o.h5")}},
    )
    odd = extract(load_config(other, {"shard": "1/2"}), "label").path
    with pytest.raises(DataError, match="settings fingerprint"):
        merge(output, [first[0], odd])


def test_a_change_in_the_number_of_rows_makes_every_shard_stale(tmp_path):
    config = _setup(tmp_path)
    _run_shards(config, 2)
    manifest = tmp_path / "data" / "subjects.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")  # drop the last subject
    plan = cluster.plan_submission("label", config, 2)
    assert plan.todo == [0, 1]
    assert all(
        "the manifest has 5 rows, 6 when it was made" in s.detail for s in plan.status.shards
    )


def test_a_stale_partial_starts_again(tmp_path):
    config = _setup(tmp_path)
    volume = tmp_path / "data" / "s3_t1.nii.gz"  # row 3: the second subject of shard 1 of 3
    good = volume.read_bytes()
    volume.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="s3_t1.nii.gz"):
        extract(load_config(config, {"shard": "1/3"}), "label")
    partial = tmp_path / "out" / "patches.shard-1-of-3.h5.partial"
    assert partial.exists()  # s2 was complete: kept for --resume
    volume.write_bytes(good)
    _repoint(tmp_path, "s3")  # the fix: s3's row names a re-exported file
    with pytest.warns(UserWarning, match="manifest rows changed since it was begun"):
        result = extract(load_config(config, {"shard": "1/3"}), "label", resume=True)
    assert result.resumed == 0 and not partial.exists()
    assert read_patch_output(result.path).subjects[1].source["t1"].endswith("_reexported.nii.gz")


def test_retry_skipped_brings_a_repaired_subject_back(tmp_path):
    config = _setup(tmp_path, on_error="skip")
    volume = tmp_path / "data" / "s2_t1.nii.gz"  # row 2: shard 1 of 3
    good = volume.read_bytes()
    volume.write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="skipped subject 's2'"):
        shards = _run_shards(config, 3)
    assert [s.id for s in read_patch_output(shards[1]).skipped] == ["s2"]
    plan = cluster.plan_submission("label", config, 3)
    assert plan.todo == [] and plan.merge  # skipped subjects stay skipped unless retried
    retried = cluster.plan_submission("label", config, 3, retry_skipped=True)
    assert retried.todo == [1] and "--retry-skipped" in retried.scripts["array.sbatch"]

    volume.write_bytes(good)
    runner = CliRunner()
    for index in range(3):
        result = runner.invoke(
            main, ["label", str(config), "--shard", f"{index}/3", "--retry-skipped", "-q"]
        )
        assert result.exit_code == 0, result.output
    assert not read_patch_output(shards[1]).skipped
    merged = merge(tmp_path / "out" / "patches.h5").path
    assert_same_output(merged, _reference(config, tmp_path), merged=True)


def test_retry_skipped_keeps_a_still_bad_subject_skipped(tmp_path):
    config = _setup(tmp_path, on_error="skip")
    volume = tmp_path / "data" / "s0_t1.nii.gz"
    volume.write_bytes(volume.read_bytes()[:100])
    with pytest.warns(UserWarning, match="skipped subject 's0'"):
        _run_shards(config, 2)
    with pytest.warns(UserWarning) as caught:
        shard = extract(
            load_config(config, {"shard": "0/2"}), "label", resume=True, retry_skipped=True
        )
    messages = [str(warning.message) for warning in caught]
    assert any("retrying 1 skipped subject" in message for message in messages)
    assert any("skipped subject 's0'" in message for message in messages)
    assert [s.id for s in shard.skipped] == ["s0"]


def test_info_names_stale_and_missing_shards_and_the_repair(tmp_path):
    config = _setup(tmp_path)
    shards = _run_shards(config, 3)
    merged = tmp_path / "out" / "patches.h5"
    merge(merged)
    _repoint(tmp_path, "s1")  # shard 0
    shards[2].unlink()

    status = describe_output(merged)["run_status"]
    assert [s["state"] for s in status["shards"]] == ["stale", "current", "missing"]
    assert status["merged"] == "stale"
    assert "--shard 0/3 --resume" in status["repair"] and "--shard 2/3" in status["repair"]
    assert "merge" in status["repair"] and "--overwrite" in status["repair"]

    # Without the merge: the shards beside its name, and exit 1 (not complete).
    merged.unlink()
    result = CliRunner().invoke(main, ["info", str(merged)])
    assert result.exit_code == 1
    assert "shard 0 (patches.shard-0-of-3.h5): stale: manifest row 1 changed" in result.output
    assert "shard 2 (patches.shard-2-of-3.h5): missing" in result.output
    assert "repair: patchcli label CONFIG --shard 0/3 --resume" in result.output

    # With submit's config snapshot, the repair is the same submit.
    snapshot_folder = tmp_path / "out" / "patches.h5.slurm"
    snapshot_folder.mkdir()
    shutil.copyfile(config, snapshot_folder / "config.yaml")
    report = repair_report(merged)
    assert report.command == (f"patchcli submit label {snapshot_folder / 'config.yaml'} --shards 3")


def test_info_on_a_current_run_says_it_is_up_to_date(tmp_path):
    config = _setup(tmp_path)
    _run_shards(config, 2)
    merged = merge(tmp_path / "out" / "patches.h5").path
    result = CliRunner().invoke(main, ["info", str(merged)])
    assert result.exit_code == 0, result.output
    assert "2 current; merge current" in result.output and "up to date" in result.output
    # An unsharded run has no shards to report.
    whole = _reference(config, tmp_path)
    assert describe_output(whole).get("run_status") is None
