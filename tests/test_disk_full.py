"""Runs that fill a real disk: a small tmpfs mounted for the test.

A full disk must stop a run with a one-line error naming the output, keep the
complete subjects in the ``.partial``, and leave a file that ``--resume``
finishes, once there is room, into the output of an uninterrupted run. HDF5
must never see the full disk itself: after a failed write it cannot close its
file and crashes when the process exits (io/space.py).

Mounting needs root. These tests are skipped without it, except when
``PATCHCLI_REQUIRE_TMPFS=1`` (set by CI): then they fail.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from patchcli.io import space
from patchcli.phantom import write_phantom_dataset

from .helpers import assert_same_output, write_config

SUBJECTS = 6


def _require_tmpfs() -> bool:
    return os.environ.get("PATCHCLI_REQUIRE_TMPFS", "") == "1"


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)``: a fresh tmpfs of ``size`` (e.g. "6m"); ``resize(size)`` remounts it."""
    if os.geteuid() != 0:
        if _require_tmpfs():
            pytest.fail("PATCHCLI_REQUIRE_TMPFS=1 but mounting a tmpfs needs root")
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    class Disk:
        def mount(self, size: str) -> Path:
            point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
            point.mkdir()
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                message = f"cannot mount a tmpfs: {result.stderr.strip()}"
                if _require_tmpfs():
                    pytest.fail(message)
                pytest.skip(message)
            mounted.append(point)
            return point

        def resize(self, point: Path, size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)

    yield Disk()
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("disk-full-data")
    return write_phantom_dataset(folder / "data", SUBJECTS, (40, 40, 36), seed=0)


def _config(path: Path, manifest: Path, output: Path, fmt: str, compression) -> Path:
    return write_config(
        path,
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=16,
        # HDF5: 600 patches of 12 KiB, 7 MiB a subject; NIfTI: 200 pairs of small files.
        num_patches=600 if fmt == "hdf5" else 200,
        seed=3,
        output={"path": str(output), "format": fmt, "compression": compression},
    )


def _run(config: Path, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "patchcli", "uniform", str(config), "--quiet", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "compression", "size"),
    # Uncompressed, workers write up to 3 subjects (4.7 MiB each) in place before the first
    # is recorded: the disk holds them (and the 4 MiB kept for HDF5) but not the whole run,
    # so the first subject is always complete when the disk fills.
    [("hdf5", "none", "24m"), ("hdf5", "lz4", "9m"), ("nifti", "gzip", "3m")],
)
def test_full_disk_stops_cleanly_and_resumes(tmp_path, small_disk, data, fmt, compression, size):
    suffix = ".h5" if fmt == "hdf5" else ""
    reference_config = _config(
        tmp_path / "reference.yaml", data, tmp_path / f"reference{suffix}", fmt, compression
    )
    assert _run(reference_config).returncode == 0

    disk = small_disk.mount(size)
    output = disk / f"out{suffix}"
    config = _config(tmp_path / "small.yaml", data, output, fmt, compression)
    # Checked before any work: the run cannot fit (uncompressed), and says so.
    refused = _run(config)
    assert refused.returncode == 1
    assert "--no-space-check" in refused.stderr and str(output) in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not list(disk.iterdir())
    # Started anyway, it stops cleanly when the disk is full.
    result = _run(config, "--no-space-check")

    # A clean stop: exit 1 (not a crash by signal), one error line naming the output, then
    # the note on what was kept.
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and str(disk) in lines[0], result.stderr
    assert "no space left" in lines[0]
    assert any("--resume" in line for line in lines[1:]), result.stderr
    assert "HDF5-DIAG" not in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()
    partial = output.with_name(output.name + ".partial")
    assert partial.exists()
    assert not output.with_name(output.name + ".lock").exists()

    # Without room, resuming stops the same way; with room, it finishes the run exactly.
    again = _run(config, "--resume", "--no-space-check")
    assert again.returncode == 1 and "no space left" in again.stderr
    assert not output.with_name(output.name + ".lock").exists()  # no claim left behind
    small_disk.resize(disk, "200m")
    resumed = _run(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    assert_same_output(output, reference_config.parent / f"reference{suffix}")


def test_reservation_refused_on_a_full_disk(small_disk):
    disk = small_disk.mount("1m")
    path = disk / "file"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert space.reserve(descriptor, 0, 256 * 1024)
        # Reserved blocks count as used, and are given back on release.
        with pytest.raises(
            space.DiskFull, match=r"file: no space left .*\(768 KiB free; .*needs up to 8.00 MiB"
        ):
            space.ensure_space(descriptor, path, 0, 2 * 2**20, 8 * 2**20)
        before = space.free_bytes(disk)
        space.release(descriptor)
        assert space.free_bytes(disk) > before
        assert os.fstat(descriptor).st_size == 0
    finally:
        os.close(descriptor)


def test_free_space_checked_where_reservation_is_unsupported(tmp_path, monkeypatch):
    # No root needed: without fallocate, statvfs decides.
    monkeypatch.setattr(space, "_fallocate", lambda: None)
    path = tmp_path / "file"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        space.ensure_space(descriptor, path, 0, 1024, 1024)
        monkeypatch.setattr(space, "free_bytes", lambda folder: 100)
        with pytest.raises(space.DiskFull, match="no space left"):
            space.ensure_space(descriptor, path, 0, 1024, 4096)
    finally:
        os.close(descriptor)


def test_other_write_errors_are_not_called_a_full_disk():
    assert space.is_disk_full(OSError(errno.ENOSPC, "full"))
    assert space.is_disk_full(OSError(errno.EDQUOT, "quota"))
    assert not space.is_disk_full(OSError(errno.EIO, "I/O error"))


@pytest.fixture(scope="module")
def data_with_a_bad_subject(tmp_path_factory, data):
    """The phantoms, the third subject's first image cut short (found by its worker)."""
    import shutil

    folder = tmp_path_factory.mktemp("disk-full-bad") / "data"
    shutil.copytree(data.parent, folder)
    manifest = folder / data.name
    third = manifest.read_text().splitlines()[3].split(",")[1]
    broken = folder / third
    content = broken.read_bytes()
    broken.write_bytes(content[: len(content) // 2])
    return manifest


@pytest.mark.slow
def test_a_full_disk_is_never_skipped_and_the_final_copy_needs_room(
    tmp_path, small_disk, data_with_a_bad_subject
):
    manifest = data_with_a_bad_subject

    def config(name: str, output: Path) -> Path:
        path = _config(tmp_path / f"{name}.yaml", manifest, output, "hdf5", "none")
        path.write_text(path.read_text() + "on_error: skip\n")
        return path

    reference = config("reference", tmp_path / "reference.h5")
    assert _run(reference).returncode == 0

    # A disk too small for the run: the run stops, no subject is skipped for it.
    small = small_disk.mount("16m")
    result = _run(config("small", small / "out.h5"), "--no-space-check")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert result.returncode == 1 and len(errors) == 1 and "no space left" in errors[0]
    skipped = [line for line in result.stderr.splitlines() if "skipped subject" in line]
    assert all("skipped subject 'sub-003'" in line for line in skipped), result.stderr

    # Room for the run (28 MiB of rows, the skipped subject's 4.7 MiB never written) but
    # not for the copy without that subject's rows made at the end: a clean stop with every
    # subject done, and --resume makes the copy once there is room.
    disk = small_disk.mount("40m")
    output = disk / "out.h5"
    stopped = _run(config("tight", output))
    assert stopped.returncode == 1, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert any(
        line.startswith("warning: skipped subject 'sub-003' (manifest row 2): ") for line in lines
    )
    error = next(line for line in lines if line.startswith("Error: "))
    assert f"{output}.partial.compacting: no space left" in error
    assert "HDF5-DIAG" not in stopped.stderr and "Traceback" not in stopped.stderr
    assert not output.exists() and output.with_name("out.h5.partial").exists()
    assert not output.with_name("out.h5.partial.compacting").exists()
    small_disk.resize(disk, "200m")
    resumed = _run(config("tight", output), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "1 subject skipped" in resumed.stdout
    assert_same_output(output, tmp_path / "reference.h5")
