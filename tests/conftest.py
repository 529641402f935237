"""Shared fixtures.

TorchIO parity tests use the ``torchio`` fixture. Where TorchIO is not installed
they are skipped, except when ``PATCHCLI_REQUIRE_PARITY=1`` (set by CI): then a
missing TorchIO is a failure, so a broken install can never pass as green.
"""

from __future__ import annotations

import importlib
import os

import pytest


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
