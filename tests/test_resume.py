"""Runs stopped by real signals, then resumed: the output of an uninterrupted run.

Every test here runs patchcli as a real process and stops it with a real
signal (SIGKILL, SIGTERM, SIGINT) at a moment chosen by watching its progress
journal. Waits have timeouts as safety nets only; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchcli.io.progress import ProgressJournal, boot_id, journal_path
from patchcli.phantom import write_phantom_dataset

from .helpers import assert_same_output, write_config

pytestmark = pytest.mark.slow
SUBJECTS = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-data")
    return write_phantom_dataset(folder / "data", SUBJECTS, (40, 40, 36), seed=0)


def _config(folder: Path, manifest: Path, name: str, fmt: str = "hdf5", **keys) -> Path:
    output = folder / name
    base = dict(
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=16,
        num_patches=600 if fmt == "hdf5" else 40,
        seed=5,
        output={"path": str(output), "format": fmt, "compression": "lz4"},
    )
    base.update(keys)
    return write_config(folder / f"{name}.yaml", **base)


def _command(config: Path, sampler: str = "uniform", *extra) -> list[str]:
    return [sys.executable, "-m", "patchcli", sampler, str(config), "--quiet", *map(str, extra)]


def _run(config: Path, *extra, sampler="uniform") -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(config, sampler, *extra), capture_output=True, text=True, timeout=300
    )


def _output(config: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(config.read_text())["output"]["path"])


def _subjects_done(output: Path) -> int:
    try:
        return (
            journal_path(output.with_name(output.name + ".partial")).read_text().count('"subject"')
        )
    except OSError:
        return 0


def _default_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_and_stop(config: Path, after: int, signum: int, *extra) -> subprocess.CompletedProcess:
    """Start a run, send ``signum`` once ``after`` subjects are journaled (or, for 0, once the
    output is claimed), and return the finished process."""
    output = _output(config)
    lock = output.with_name(output.name + ".lock")
    process = subprocess.Popen(
        _command(config, "uniform", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A run started with SIGINT ignored (a background job, nohup) keeps ignoring it,
        # as it should; these tests need it delivered, wherever they run from.
        preexec_fn=_default_stop_signals,
    )
    deadline = time.monotonic() + 120
    while not (lock.exists() and _subjects_done(output) >= after):
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended before the signal: {err}")
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("references")
    outputs = {}
    for fmt in ("hdf5", "nifti"):
        config = _config(folder, data, f"reference-{fmt}", fmt)
        result = _run(config)
        assert result.returncode == 0, result.stderr
        outputs[fmt] = _output(config)
    return outputs


@pytest.mark.parametrize(
    ("fmt", "after", "workers"),
    [("hdf5", 0, 0), ("hdf5", 1, 0), ("hdf5", 4, 2), ("nifti", 1, 0), ("nifti", 3, 2)],
)
def test_sigkill_then_resume_gives_the_uninterrupted_output(
    tmp_path, data, references, fmt, after, workers
):
    config = _config(tmp_path, data, f"out-{fmt}", fmt)
    output = _output(config)
    stopped = _start_and_stop(config, after, signal.SIGKILL, "--workers", workers)
    assert stopped.returncode == -signal.SIGKILL
    assert not output.exists()
    partial = output.with_name(output.name + ".partial")
    if after:
        _, trusted, _ = ProgressJournal.read(partial)
        assert len(trusted) >= after
    # With nothing complete there is nothing to resume: a plain run starts again.
    again = ("--resume",) if after else ()
    result = _run(config, *again, "--workers", workers)
    assert result.returncode == 0, result.stderr
    assert_same_output(output, references[fmt])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(output.name + ".")]
    assert leftovers == [f"{output.name}.yaml"]  # no partial, journal or lock


def test_sigterm_stops_keeps_and_says_how_to_resume(tmp_path, data, references):
    config = _config(tmp_path, data, "out-hdf5")
    stopped = _start_and_stop(config, 2, signal.SIGTERM)
    assert stopped.returncode == 143
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1, stopped.stderr
    assert lines[0].startswith("Interrupted (SIGTERM): ") and "subjects complete" in lines[0]
    assert "out-hdf5.partial" in lines[0]
    command = lines[0].split("resume with: ")[1]
    assert command.endswith("--resume") and command.startswith("patchcli uniform")
    # The command it gives, run as given.
    arguments = shlex.split(command)[1:]
    result = subprocess.run(
        [sys.executable, "-m", "patchcli", *arguments], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "resumed)" in result.stdout
    assert_same_output(_output(config), references["hdf5"])


def test_sigint_stops_with_130(tmp_path, data, references):
    config = _config(tmp_path, data, "out-hdf5")
    stopped = _start_and_stop(config, 1, signal.SIGINT)
    assert stopped.returncode == 130
    assert "Interrupted (SIGINT)" in stopped.stderr
    assert _run(config, "--resume").returncode == 0
    assert_same_output(_output(config), references["hdf5"])


def test_an_existing_partial_needs_resume_or_overwrite(tmp_path, data, references):
    config = _config(tmp_path, data, "out-hdf5")
    _start_and_stop(config, 2, signal.SIGKILL)
    refused = _run(config)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "out-hdf5.partial: left by an earlier run" in lines[0]
    assert "--resume" in lines[0] and "--overwrite" in lines[0]
    both = _run(config, "--resume", "--overwrite")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    assert _run(config, "--overwrite").returncode == 0
    assert_same_output(_output(config), references["hdf5"])


def test_resume_checks_the_config_and_leaves_a_complete_output_alone(tmp_path, data, references):
    config = _config(tmp_path, data, "out-hdf5")
    _start_and_stop(config, 1, signal.SIGKILL)
    other = _config(tmp_path, data, "out-hdf5", seed=6)  # same output, another seed
    refused = _run(other, "--resume")
    assert refused.returncode == 1 and "fingerprint differs" in refused.stderr
    config = _config(tmp_path, data, "out-hdf5")
    assert _run(config, "--resume").returncode == 0
    output = _output(config)
    before = output.stat().st_mtime_ns
    again = _run(config, "--resume")
    assert again.returncode == 0 and "already complete" in again.stdout
    assert output.stat().st_mtime_ns == before


def test_a_damaged_partial_starts_again_with_a_warning(tmp_path, data, references):
    config = _config(tmp_path, data, "out-hdf5")
    _start_and_stop(config, 2, signal.SIGKILL)
    partial = tmp_path / "out-hdf5.partial"
    with open(partial, "r+b") as stream:
        stream.truncate(4096)  # the superblock survives, the rest is gone
    result = _run(config, "--resume")
    assert result.returncode == 0, result.stderr
    assert "out-hdf5.partial: cannot be continued" in result.stderr
    assert "starting again" in result.stderr and "resumed" not in result.stdout
    assert_same_output(_output(config), references["hdf5"])


# ------------------------------------------------------------ journal trust
def _journal(tmp_path: Path, host: str, boot: str | None, lines: list) -> Path:
    data_path = tmp_path / "x.partial"
    header = {"journal": "patchcli-progress", "version": 1, "host": host, "boot": boot}
    text = "\n".join(json.dumps(line) for line in [header, *lines])
    journal_path(data_path).write_text(text + "\n")
    return data_path


def test_the_journal_trusts_unsynced_subjects_only_on_the_same_boot(tmp_path):
    lines = [{"subject": {"id": "a"}}, {"subject": {"id": "b"}}, {"durable": 2}]
    lines += [{"subject": {"id": "c"}}]
    here = _journal(tmp_path, socket.gethostname(), boot_id(), lines)
    assert [r["id"] for r in ProgressJournal.read(here)[1]] == ["a", "b", "c"]
    elsewhere = _journal(tmp_path, "other-node", "x", lines)
    header, trusted, complete = ProgressJournal.read(elsewhere)
    assert [r["id"] for r in trusted] == ["a", "b"] and not complete
    rebooted = _journal(tmp_path, socket.gethostname(), "another-boot", lines)
    assert len(ProgressJournal.read(rebooted)[1]) == 2
    torn = _journal(tmp_path, socket.gethostname(), boot_id(), lines)
    with open(journal_path(torn), "a") as stream:
        stream.write('{"subject": {"id": "d"')  # a kill mid-line
    assert [r["id"] for r in ProgressJournal.read(torn)[1]] == ["a", "b", "c"]


def test_a_journal_from_another_node_resumes_from_its_last_durable_line(tmp_path, data, references):
    config = _config(tmp_path, data, "out-hdf5")
    _start_and_stop(config, 4, signal.SIGKILL)
    journal = journal_path(tmp_path / "out-hdf5.partial")
    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    subjects = [line for line in lines if "subject" in line]
    assert len(subjects) >= 4
    # As if written on another node, and synced after the second subject only.
    lines = [{**lines[0], "host": "other-node"}, *subjects[:2], {"durable": 2}, *subjects[2:]]
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = _run(config, "--resume")
    assert result.returncode == 0, result.stderr
    assert "(2 resumed)" in result.stdout
    assert_same_output(_output(config), references["hdf5"])


# ----------------------------------------------------------------- orphans
def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_the_main_process_is_killed(tmp_path, data):
    config = _config(tmp_path, data, "out-hdf5", num_patches=4000)
    process = subprocess.Popen(
        _command(config, "uniform", "--workers", 2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "no workers started"
        time.sleep(0.01)
    workers = _children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, f"orphaned workers: {workers}"
        time.sleep(0.05)
