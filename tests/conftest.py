"""Shared fixtures.

TorchIO parity tests use the ``torchio`` fixture. Where TorchIO is not installed
they are skipped, except when ``PATCHCLI_REQUIRE_PARITY=1`` (set by CI): then a
missing TorchIO is a failure, so a broken install can never pass as green.

Tests marked ``slurm`` use the ``slurm`` fixture: a real one-node SLURM started
once per session by tests/slurm/start-slurm.sh (root and apt needed). Where it
cannot start they are skipped, except when ``PATCHCLI_REQUIRE_SLURM=1`` (set by
CI): then they fail. The full-disk tests (test_disk_full.py) mount small tmpfs file
systems and are required the same way by ``PATCHCLI_REQUIRE_TMPFS=1``.

The training reader's tests share ``subjects``, ``patch_file`` (a file holding
their patches, written with h5py) and ``dataset_class`` (``PatchDataset``).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .helpers import make_patch_subjects, write_patch_file

SLURM_SCRIPTS = Path(__file__).parent / "slurm"


def _require_parity() -> bool:
    return os.environ.get("PATCHCLI_REQUIRE_PARITY", "") == "1"


@pytest.fixture(scope="session")
def torchio():
    """The ``torchio`` module, for direct comparisons."""
    try:
        return importlib.import_module("torchio")
    except ImportError as error:
        if _require_parity():
            pytest.fail(f"PATCHCLI_REQUIRE_PARITY=1 but TorchIO cannot be imported: {error}")
        pytest.skip("TorchIO is not installed (pip install -e '.[parity]')")


@pytest.fixture(scope="session")
def torch():
    """The ``torch`` module, for the training reader's tests."""
    try:
        return importlib.import_module("torch")
    except ImportError as error:
        if _require_parity():
            pytest.fail(f"PATCHCLI_REQUIRE_PARITY=1 but torch cannot be imported: {error}")
        pytest.skip("torch is not installed (pip install -e '.[torch]')")


@pytest.fixture
def subjects() -> list[dict]:
    """Three subjects in memory, 4 patches each (:func:`helpers.make_patch_subjects`)."""
    return make_patch_subjects(np.random.default_rng(12))


@pytest.fixture
def patch_file(tmp_path, subjects) -> Path:
    """An HDF5 patch file holding the patches of ``subjects``."""
    return write_patch_file(tmp_path / "patches.h5", subjects)


@pytest.fixture
def dataset_class(torch):
    """:class:`patchcli.dataset.PatchDataset` (imported only where torch is installed)."""
    from patchcli.dataset import PatchDataset

    return PatchDataset


def _require_slurm() -> bool:
    return os.environ.get("PATCHCLI_REQUIRE_SLURM", "") == "1"


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return state.returncode == 0 and any(
        line.strip() in ("idle", "mix", "alloc") for line in state.stdout.splitlines()
    )


@pytest.fixture(scope="session")
def slurm():
    """A SLURM controller with an idle node; stopped at the end if this session started it."""

    def unavailable(reason: str):
        if _require_slurm():
            pytest.fail(f"PATCHCLI_REQUIRE_SLURM=1 but SLURM is unavailable: {reason}")
        pytest.skip(f"SLURM is unavailable: {reason}")

    started = False
    if not _slurm_up():
        if os.geteuid() != 0:
            unavailable("not running, and starting it needs root")
        result = subprocess.run(
            ["bash", str(SLURM_SCRIPTS / "start-slurm.sh")], capture_output=True, text=True
        )
        if result.returncode != 0 or not _slurm_up():
            unavailable((result.stderr or result.stdout).strip()[-2000:])
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-slurm.sh")], capture_output=True)
