"""Tests for patchcli.units: TorchIO's size format, our own, and size parsing."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from patchcli.errors import ConfigError
from patchcli.units import format_bytes, format_bytes_torchio, parse_size


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3185049600, "3.0 GiB"),
        (384, "384 Bytes"),
        (1024, "1.0 KiB"),
        (0, "0 Bytes"),
        (1, "1 Byte"),
        (1023, "1023 Bytes"),
        (1536, "1.5 KiB"),
        (1048524, "1023.9 KiB"),
        (1048575, "1.0 MiB"),  # rounds up to 1024.0 KiB, so moves up a unit
        (-1024, "-1.0 KiB"),
    ],
)
def test_format_bytes_torchio_examples(n, expected):
    assert format_bytes_torchio(n) == expected


def _torchio_sizes() -> list[int]:
    rng = np.random.default_rng(0)
    sizes = list(range(0, 3000))
    for power in range(1, 11):
        base = 1024**power
        sizes += [base - 1, base, base + 1, base - base // 20480, base * 1023 + base // 2]
    sizes += [int(value) for value in rng.integers(0, 2**62, size=2000)]
    sizes += [int(value) for value in rng.integers(0, 2**32, size=2000)]
    return sizes


def test_format_bytes_torchio_equals_humanize_used_by_torchio(torchio):
    # TorchIO's get_max_memory_pretty calls humanize.naturalsize(n, binary=True);
    # humanize is one of TorchIO's dependencies.
    humanize = importlib.import_module("humanize")
    for n in _torchio_sizes():
        assert format_bytes_torchio(n) == humanize.naturalsize(n, binary=True), n


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (384, "384 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (12_900_000, "12.3 MiB"),
        (384 * 1024**2, "384 MiB"),
        (3185049600, "2.97 GiB"),
        (1024**2 - 1, "1.00 MiB"),  # 1023.999 KiB would print as 1024 KiB
        (-2048, "-2.00 KiB"),
    ],
)
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


def test_format_bytes_never_prints_1024_of_a_unit():
    for power in range(1, 6):
        for n in (1024**power * 1024 - 1, 1024**power * 1023 + 1024**power * 999 // 1000):
            number = float(format_bytes(n).split()[0])
            assert number < 1024, format_bytes(n)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 1024**3),
        ("500MB", 500_000_000),
        ("1.5 GiB", 1610612736),
        ("123", 123),
        ("123B", 123),
        ("1 kB", 1000),
        ("2 KiB", 2048),
        ("8G", 8 * 1024**3),
        ("8g", 8 * 1024**3),
        ("  4 mib ", 4 * 1024**2),
        (".5KiB", 512),
        ("1.0005 KB", 1001),  # 1000.5 bytes rounds half up
        ("0", 0),
        (42, 42),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "GiB", "8 XB", "1.2.3 GiB", "-5", "8 GiB extra", "1e9", "five"]
)
def test_parse_size_rejects_bad_text(text):
    with pytest.raises(ConfigError) as error:
        parse_size(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", [-1, True, 1.5, None])
def test_parse_size_rejects_bad_values(value):
    with pytest.raises(ConfigError):
        parse_size(value)


def test_parse_size_reads_format_bytes_output():
    # A size printed in binary units parses back to within the printed precision.
    for n in (1024, 3185049600, 5 * 1024**4 + 12345):
        text = format_bytes(n)
        assert abs(parse_size(text.replace(" ", "")) - n) <= 0.005 * n
