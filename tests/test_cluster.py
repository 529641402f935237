"""``patchcli submit`` and patchcli.cluster: scripts, checks, and runs on a real SLURM.

The tests marked ``slurm`` submit real jobs to the one-node SLURM of the
``slurm`` fixture (tests/conftest.py) and wait for them.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcli import cluster
from patchcli.cli import main
from patchcli.config import load_config
from patchcli.errors import ConfigError, DataError
from patchcli.extract import extract
from patchcli.io.reader import read_patch_output

from .helpers import assert_same_output, make_subjects, write_config

SHAPES = [(20, 18, 16), (18, 20, 17), (21, 17, 18), (16, 19, 20), (19, 16, 18)]
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


def _setup(folder: Path, num_patches: int = 6, shapes=SHAPES, patch_size=(8, 6, 5)) -> Path:
    manifest, _ = make_subjects(folder / "data", shapes)
    return write_config(
        folder / "config.yaml",
        subjects=str(manifest),
        images=IMAGES,
        patch_size=list(patch_size),
        num_patches=num_patches,
        seed=4,
        output={"path": str(folder / "out" / "patches.h5"), "compression": "none"},
    )


def _reference(config_path: Path, folder: Path, sampler: str = "weighted") -> Path:
    config = load_config(config_path, {"output.path": str(folder / "reference.h5")})
    return extract(config, sampler).path


# ------------------------------------------------------------- no scheduler
def test_scripts_run_every_shard_as_a_job_step_with_resume(tmp_path):
    config = _setup(tmp_path)
    options = cluster.SlurmOptions(
        partition="short",
        time="00:30:00",
        cpus_per_task=4,
        mem="8G",
        account="lab",
        max_parallel=2,
        sbatch_options=("--qos=long", "--constraint=skylake"),
    )
    plan = cluster.plan_submission("weighted", config, 3, options)
    assert plan.todo == [0, 1, 2] and plan.merge
    assert plan.folder == tmp_path / "out" / "patches.h5.slurm"
    array = plan.scripts["array.sbatch"]
    for line in (
        "#SBATCH --array=0-2%2",
        f"#SBATCH --output={plan.folder}/shard-%a.log",
        "#SBATCH --partition=short",
        "#SBATCH --time=00:30:00",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH --account=lab",
        "#SBATCH --qos=long",
        "#SBATCH --constraint=skylake",
        "export PATCHCLI_SHARD_COUNT=3",
    ):
        assert line in array.splitlines(), line
    task = array.splitlines()[-1]
    assert task.startswith('exec srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"')
    assert f"-m patchcli weighted {plan.folder}/config.yaml --shard auto --resume" in task
    merge = plan.scripts["merge.sbatch"]
    assert f"-m patchcli merge {tmp_path}/out/patches.h5" in merge
    assert "#SBATCH --cpus-per-task" not in merge and "#SBATCH --mem" not in merge
    assert "#SBATCH --qos=long" in merge
    # Planning wrote nothing.
    assert not (tmp_path / "out").exists()


def test_array_ranges():
    assert cluster.array_range([0, 1, 2, 3]) == "0-3"
    assert cluster.array_range([3, 7]) == "3,7"
    assert cluster.array_range([0, 2, 3, 4, 9]) == "0,2-4,9"
    assert cluster.array_range([5]) == "5"


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    config = _setup(tmp_path)
    with pytest.raises(DataError, match="5 subjects cannot be split into 6 shards"):
        cluster.plan_submission("weighted", config, 6)
    broken = tmp_path / "data" / "s2_t1.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="s2_t1.nii.gz"):
        cluster.plan_submission("weighted", config, 2)
    typo = write_config(tmp_path / "typo.yaml", subjects="x.csv", imagez={})
    with pytest.raises(ConfigError, match="typo.yaml: imagez: unknown key"):
        cluster.plan_submission("weighted", typo, 2)
    with pytest.raises(ConfigError, match="unknown command"):
        cluster.plan_submission("random", config, 2)
    assert not (tmp_path / "out").exists()


def test_complete_shards_are_not_planned_again(tmp_path):
    config = _setup(tmp_path)
    for index in (0, 2):
        extract(load_config(config, {"shard": f"{index}/3"}), "weighted")
    plan = cluster.plan_submission("weighted", config, 3)
    assert plan.todo == [1] and "#SBATCH --array=1\n" in plan.scripts["array.sbatch"]
    # A shard of other settings (another seed) in the way is refused, named.
    other = load_config(config, {"shard": "1/3", "seed": 99})
    extract(other, "weighted")
    with pytest.raises(DataError, match=r"other settings .*patches\.shard-1-of-3\.h5"):
        cluster.plan_submission("weighted", config, 3)


def test_dry_run_prints_the_scripts_and_writes_nothing(tmp_path):
    config = _setup(tmp_path)
    result = CliRunner().invoke(
        main, ["submit", "label", str(config), "--shards", "2", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-1" in result.output and "patchcli merge" in result.output
    assert "nothing written or submitted" in result.output
    assert not (tmp_path / "out").exists()


def test_submit_help_has_an_example():
    result = CliRunner().invoke(main, ["submit", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--shards" in result.output


# ------------------------------------------------------------ a real SLURM
def _submit(*arguments) -> subprocess.CompletedProcess:
    """``patchcli submit`` as a real process (it waits for real jobs)."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "patchcli", "submit", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _job_count() -> int:
    listed = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True
    )
    return len(listed.stdout.split())


@pytest.mark.slurm
def test_an_array_of_three_shards_and_the_merge_equal_an_unsharded_run(tmp_path, slurm):
    config = _setup(tmp_path)
    result = _submit("weighted", config, "--shards", 3, "--time", "00:10:00", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "array job" in result.stdout and "merge job" in result.stdout
    assert "submit: done" in result.stdout
    merged = tmp_path / "out" / "patches.h5"
    assert_same_output(merged, _reference(config, tmp_path), merged=True)
    folder = tmp_path / "out" / "patches.h5.slurm"
    assert {p.name for p in folder.iterdir()} >= {
        "array.sbatch",
        "merge.sbatch",
        "config.yaml",
        "jobs.json",
        "merge.log",
        "shard-0.log",
        "shard-1.log",
        "shard-2.log",
    }
    assert "weighted: 12 patches from 2 subjects" in (folder / "shard-1.log").read_text()
    # Submitting again finds everything done.
    again = _submit("weighted", config, "--shards", 3)
    assert again.returncode == 0 and "already complete; nothing to submit" in again.stdout


@pytest.mark.slurm
def test_a_failed_task_is_named_and_only_it_runs_again(tmp_path, slurm):
    config = _setup(tmp_path)
    # Subject s3 (shard 1 of 3 holds s1, s2... rows 1-2; shard 2 holds rows 3-4): its t1
    # keeps a readable header but loses the end of its data.
    volume = tmp_path / "data" / "s3_t1.nii.gz"
    good = volume.read_bytes()
    volume.write_bytes(good[: len(good) // 2])
    failed = _submit("weighted", config, "--shards", 3, "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stderr.splitlines()
    assert lines[0].startswith("Error: 1 of 3 shards failed: shard 2 (log ")
    assert "shard-2.log" in lines[0]
    assert any("s3_t1.nii.gz: cannot read image" in line for line in lines[1:])
    out = tmp_path / "out"
    assert (out / "patches.shard-0-of-3.h5").is_file() and (
        out / "patches.shard-1-of-3.h5"
    ).is_file()
    # s3 is shard 2's first subject: nothing of shard 2 was complete, nothing is kept.
    assert not list(out.glob("patches.shard-2-of-3.h5*")) and not (out / "patches.h5").exists()

    volume.write_bytes(good)
    fixed = _submit("weighted", config, "--shards", 3, "--wait")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "shards 2 (2 of 3 already complete)" in fixed.stdout
    jobs = json.loads((out / "patches.h5.slurm" / "jobs.json").read_text())
    assert jobs["shards"] == [2]
    assert_same_output(out / "patches.h5", _reference(config, tmp_path), merged=True)


@pytest.mark.slurm
def test_dry_run_submits_nothing(tmp_path, slurm):
    config = _setup(tmp_path)
    before = _job_count()
    result = _submit("uniform", config, "--shards", 2, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --array=0-1" in result.stdout
    assert _job_count() == before
    assert not (tmp_path / "out").exists()


def _wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slurm
def test_a_task_cancelled_with_sigterm_resumes_when_submitted_again(tmp_path, slurm):
    # One shard of 12 subjects with enough patches that, once its first subject is
    # complete, the rest still takes seconds: the signal arrives mid-run.
    config = _setup(tmp_path, num_patches=4000, shapes=[(40, 40, 36)] * 12, patch_size=(12,) * 3)
    plan = cluster.plan_submission("uniform", config, 1)
    submission = cluster.submit(plan)
    journal = tmp_path / "out" / "patches.shard-0-of-1.h5.partial.progress"

    def subjects_done() -> int:
        try:
            return journal.read_text().count('"subject"')
        except OSError:
            return 0

    _wait_for(lambda: subjects_done() >= 1, what="a complete subject")
    task = f"{submission.array_job}_0"
    subprocess.run(["scancel", "--signal=TERM", task], check=True)
    result = cluster.wait(submission, poll_seconds=0.5, timeout=120)
    assert not result.ok and [failed.shard for failed in result.failed] == [0]
    log = (plan.folder / "shard-0.log").read_text()
    assert "Interrupted (SIGTERM)" in log and "--resume" in log
    assert (tmp_path / "out" / "patches.shard-0-of-1.h5.partial").exists()

    again = _submit("uniform", config, "--shards", 1, "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    log = (plan.folder / "shard-0.log").read_text()
    assert "resumed)" in log.splitlines()[-1]
    reference = _reference(config, tmp_path, "uniform")
    assert_same_output(tmp_path / "out" / "patches.h5", reference, merged=True)


def test_a_skipped_subject_still_counts_when_splitting_into_shards(tmp_path):
    # Shards split the whole manifest, skipped subjects included.
    config = _setup(tmp_path)
    (tmp_path / "data" / "s2_t1.nii.gz").unlink()
    plan = cluster.plan_submission("weighted", config, 5, overrides={"on_error": "skip"})
    assert plan.shards == 5


def _repoint(folder: Path, subject: str) -> None:
    """Point a subject's t1 at a re-exported copy of its file (the usual manifest fix)."""
    manifest = folder / "data" / "subjects.csv"
    text = manifest.read_text()
    copy = folder / "data" / f"{subject}_t1_reexported.nii.gz"
    copy.write_bytes((folder / "data" / f"{subject}_t1.nii.gz").read_bytes())
    manifest.write_text(text.replace(f"{subject}_t1.nii.gz", copy.name))


@pytest.mark.slurm
def test_a_fixed_manifest_row_reruns_only_its_shard(tmp_path, slurm):
    config = _setup(tmp_path)
    first = _submit("weighted", config, "--shards", 3, "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "out"
    shard_files = {index: out / f"patches.shard-{index}-of-3.h5" for index in range(3)}
    made = {index: path.stat().st_mtime_ns for index, path in shard_files.items()}
    _repoint(tmp_path, "s4")  # row 4: the last shard's
    fixed = _submit("weighted", config, "--shards", 3, "--wait")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "shard 2 runs again: stale, manifest row 4 changed" in fixed.stdout
    jobs = json.loads((out / "patches.h5.slurm" / "jobs.json").read_text())
    assert jobs["shards"] == [2]
    assert all(shard_files[i].stat().st_mtime_ns == made[i] for i in (0, 1))
    assert_same_output(out / "patches.h5", _reference(config, tmp_path), merged=True)


@pytest.mark.slurm
def test_retry_skipped_brings_a_repaired_subject_back_on_slurm(tmp_path, slurm):
    config = _setup(tmp_path)
    text = config.read_text()
    config.write_text(text + "on_error: skip\n")
    volume = tmp_path / "data" / "s1_t1.nii.gz"  # row 1: shard 1 of 3 (rows 1-2)
    good = volume.read_bytes()
    volume.write_bytes(good[: len(good) // 2])
    skipped = _submit("weighted", config, "--shards", 3, "--wait")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    out = tmp_path / "out"
    assert [s.id for s in read_patch_output(out / "patches.h5").skipped] == ["s1"]
    volume.write_bytes(good)
    again = _submit("weighted", config, "--shards", 3)
    assert "already complete; nothing to submit" in again.stdout  # skips stay unless retried
    retried = _submit("weighted", config, "--shards", 3, "--retry-skipped", "--wait")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    jobs = json.loads((out / "patches.h5.slurm" / "jobs.json").read_text())
    assert jobs["shards"] == [1]
    assert not read_patch_output(out / "patches.h5").skipped
    assert_same_output(out / "patches.h5", _reference(config, tmp_path), merged=True)


@pytest.mark.slurm
def test_a_volume_store_is_submitted_sharded_and_merged(tmp_path, slurm):
    config = _setup(tmp_path)
    result = _submit("volumes", config, "--shards", 2, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    merged = read_patch_output(tmp_path / "out" / "patches.h5")
    assert merged.kind == "volumes" and merged.merge == "virtual"
    reference = read_patch_output(
        extract(load_config(config, {"output.path": str(tmp_path / "whole.h5")}), "volumes").path
    )
    assert [s.id for s in merged.subjects] == [s.id for s in reference.subjects]
    import h5py
    import hdf5plugin  # noqa: F401
    import numpy as np

    with h5py.File(merged.path, "r") as a, h5py.File(reference.path, "r") as b:
        for subject in reference.subjects:
            for image in IMAGES:
                key = f"volumes/{subject.id}/{image}"
                np.testing.assert_array_equal(a[key][()], b[key][()], err_msg=key)
