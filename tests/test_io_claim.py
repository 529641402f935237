"""Claims on outputs: two runs never write one output; dead claimants are detected."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchcli.errors import DataError
from patchcli.io.claim import Claim, _process_start, lock_path
from patchcli.phantom import write_phantom_dataset

from .helpers import assert_same_output, write_config


def _write_claim(output: Path, **record) -> Path:
    path = lock_path(output)
    path.write_text(json.dumps(record))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_claim_excludes_others_and_is_released(tmp_path):
    output = tmp_path / "out.h5"
    with Claim(output) as claim:
        assert claim.path == tmp_path / "out.h5.lock"
        record = json.loads(claim.path.read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        with pytest.raises(DataError) as caught:
            Claim(output)
        message = str(caught.value)
        assert message.startswith(f"{output}: being written by another run (host ")
        assert f"pid {os.getpid()}" in message and "\n" not in message
    assert not claim.path.exists()
    Claim(output).release()


def test_a_dead_process_on_this_host_leaves_a_stale_claim(tmp_path):
    output = tmp_path / "out.h5"
    _write_claim(output, host=socket.gethostname(), pid=_dead_pid(), start="1", time=time.time())
    with Claim(output) as claim:
        assert json.loads(claim.path.read_text())["pid"] == os.getpid()
    # A live pid whose start time differs: the pid was reused by another process.
    _write_claim(output, host=socket.gethostname(), pid=os.getppid(), start="-1", time=time.time())
    assert _process_start(os.getppid()) != "-1"
    Claim(output).release()
    # The same live process (same start time) is not stale.
    _write_claim(
        output,
        host=socket.gethostname(),
        pid=os.getppid(),
        start=_process_start(os.getppid()),
        time=time.time(),
    )
    with pytest.raises(DataError, match="being written by another run"):
        Claim(output)


def test_claims_from_other_hosts(tmp_path):
    output = tmp_path / "out.h5"
    lock = _write_claim(output, host="node042", pid=123, time=time.time())
    with pytest.raises(DataError, match=rf"host node042, pid 123.*remove {lock}"):
        Claim(output)
    # The same SLURM job, requeued onto this node (a higher restart count): stale.
    job = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"}
    _write_claim(output, host="node042", pid=123, job=job, time=time.time())
    requeued = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}
    Claim(output, environ=requeued).release()
    # Two steps of one job at once (same restart count): refused.
    _write_claim(output, host="node042", pid=123, job=job, time=time.time())
    with pytest.raises(DataError, match="SLURM job 77"):
        Claim(output, environ={"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"})


def test_an_unreadable_claim_is_stale_only_once_old(tmp_path):
    output = tmp_path / "out.h5"
    lock = lock_path(output)
    lock.write_text("")  # a claimant killed between creating and writing it
    with pytest.raises(DataError, match="being written by another run"):
        Claim(output)
    old = time.time() - 60
    os.utime(lock, (old, old))
    Claim(output).release()
    assert not lock.exists()


def test_release_leaves_a_claim_taken_over_by_another(tmp_path):
    output = tmp_path / "out.h5"
    claim = Claim(output)
    _write_claim(output, host="node042", pid=1, time=time.time())  # replaced meanwhile
    claim.release()
    assert json.loads(lock_path(output).read_text())["host"] == "node042"


@pytest.mark.slow
@pytest.mark.parametrize("second", [(), ("--overwrite",), ("--resume",)])
def test_a_second_run_on_a_claimed_output_is_refused(tmp_path, second):
    manifest = write_phantom_dataset(tmp_path / "data", 6, (40, 40, 36), seed=0)
    keys = dict(subjects=str(manifest), images={"t1": "intensity"}, patch_size=16, num_patches=3000)
    config = write_config(tmp_path / "c.yaml", **keys, output=str(tmp_path / "out.h5"))
    command = [sys.executable, "-m", "patchcli", "uniform", str(config), "-q"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "out.h5.lock"
    journal = tmp_path / "out.h5.partial.progress"
    deadline = time.monotonic() + 60
    while not journal.exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.005)
    holder = json.loads(lock.read_text())
    # Frozen (alive, not running) while the second run tries, so that it cannot finish first.
    first.send_signal(signal.SIGSTOP)
    try:
        refused = subprocess.run([*command, *second], capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "being written by another run" in lines[0]
    assert f"host {holder['host']}, pid {holder['pid']}" in lines[0]
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    reference = write_config(tmp_path / "r.yaml", **keys, output=str(tmp_path / "ref.h5"))
    subprocess.run([sys.executable, "-m", "patchcli", "uniform", str(reference), "-q"], check=True)
    assert_same_output(tmp_path / "out.h5", tmp_path / "ref.h5")
    assert not lock.exists()
