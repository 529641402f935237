"""Byte counts as text, and text as byte counts.

Three helpers:

- :func:`format_bytes_torchio` prints a size exactly as TorchIO's
  ``Queue.get_max_memory_pretty`` does, so users can compare the two figures;
- :func:`format_bytes` is patchcli's own, slightly more precise, binary format;
- :func:`parse_size` reads sizes such as ``"8GiB"`` from configs and options.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from numbers import Integral

from .errors import ConfigError

__all__ = ["format_bytes", "format_bytes_torchio", "parse_size"]

_BINARY_SUFFIXES = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB", "RiB", "QiB")

# Unit multipliers for parse_size, keyed by lower-case unit. Single letters follow
# Slurm and GNU tools, where "8G" means 8 GiB.
_UNITS = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "p": 1024**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
}

_SIZE_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def format_bytes_torchio(n: int) -> str:
    """Format ``n`` bytes exactly as TorchIO's ``Queue.get_max_memory_pretty``.

    TorchIO delegates to ``humanize.naturalsize(n, binary=True)`` (humanize 4.x):
    whole bytes below 1024 ("384 Bytes", "1 Byte"), otherwise one decimal in the
    binary unit chosen from the unrounded size, moving up one unit when the
    rounding reaches 1024 ("1023.9 KiB" but "1.0 MiB" for 1048575 bytes).

    Parameters
    ----------
    n : int
        A number of bytes (negative numbers keep their sign).

    Returns
    -------
    str

    Examples
    --------
    >>> format_bytes_torchio(3185049600)
    '3.0 GiB'
    >>> format_bytes_torchio(384)
    '384 Bytes'
    >>> format_bytes_torchio(1024)
    '1.0 KiB'
    """
    value = float(n)
    size = abs(value)
    if size == 1:
        return f"{int(value)} Byte"
    if size < 1024:
        return f"{int(value)} Bytes"
    # The exponent comes from a floating-point logarithm, as in humanize, so that
    # borderline sizes land in the same unit as TorchIO's output.
    exponent = int(min(math.log(size, 1024), len(_BINARY_SUFFIXES)))
    if exponent < len(_BINARY_SUFFIXES) and float(f"{size / 1024**exponent:.1f}") >= 1024:
        exponent += 1
    return f"{value / 1024**exponent:.1f} {_BINARY_SUFFIXES[exponent - 1]}"


def format_bytes(n: int) -> str:
    """Format ``n`` bytes in binary units with three significant digits.

    Sizes below 1 KiB are printed as whole bytes ("384 B"). Larger sizes use the
    largest binary unit that keeps the printed number below 1024, with two
    decimals below 10, one below 100 and none above ("2.97 GiB", "12.3 MiB",
    "384 MiB").

    Parameters
    ----------
    n : int
        A number of bytes.

    Returns
    -------
    str

    Examples
    --------
    >>> format_bytes(384)
    '384 B'
    >>> format_bytes(3185049600)
    '2.97 GiB'
    >>> format_bytes(1536)
    '1.50 KiB'
    """
    n = int(n)
    sign = "-" if n < 0 else ""
    size = abs(n)
    if size < 1024:
        return f"{sign}{size} B"
    exponent = 0
    while True:
        exponent += 1
        scaled = size / 1024**exponent
        text = _three_digits(scaled)
        # Move up a unit when rounding would print 1024 or more of this one.
        if float(text) < 1024 or exponent == len(_BINARY_SUFFIXES):
            return f"{sign}{text} {_BINARY_SUFFIXES[exponent - 1]}"


def _three_digits(value: float) -> str:
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


def count(number: int, noun: str) -> str:
    """``1 subject``, ``3 subjects``: a number and its noun, plural when not one.

    Examples
    --------
    >>> count(1, "subject"), count(0, "patch"), count(2, "shard"), count(3, "copy")
    ('1 subject', '0 patches', '2 shards', '3 copies')
    """
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        plural = noun[:-1] + "ies"
    else:
        plural = noun + ("es" if noun.endswith(("ch", "sh", "s", "x")) else "s")
    return f"{number} {noun if number == 1 else plural}"


def parse_size(text: str | int) -> int:
    """Read a size in bytes such as ``"8GiB"``, ``"500MB"``, ``"1.5 GiB"`` or ``"123"``.

    Binary units (KiB, MiB, GiB, TiB, PiB) are powers of 1024, decimal units (kB,
    MB, GB, TB, PB) powers of 1000, and single letters (K, M, G, T, P) are binary,
    as in Slurm's ``--mem=8G``. Units are case-insensitive; a bare number or the
    unit ``B`` means bytes. Fractions are allowed; the result is rounded to a
    whole number of bytes, half up (``"1.5 KiB"`` is 1536).

    Parameters
    ----------
    text : str or int
        The size. An int is returned as is (it must not be negative).

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    ConfigError
        For text that is not a non-negative number followed by a known unit.

    Examples
    --------
    >>> parse_size("8GiB")
    8589934592
    >>> parse_size("500MB")
    500000000
    >>> parse_size("1.5 GiB")
    1610612736
    >>> parse_size("123")
    123
    """
    if isinstance(text, Integral) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"size must not be negative, not {text!r}")
        return int(text)
    if not isinstance(text, str):
        raise ConfigError(f"size must be text such as '8GiB' or a number of bytes, not {text!r}")
    match = _SIZE_PATTERN.match(text)
    if match is None:
        raise ConfigError(
            f"cannot read size {text!r}: expected a number and a unit such as '8GiB', "
            "'500MB' or '123'"
        )
    number_text, unit_text = match.groups()
    unit = unit_text.lower()
    if unit not in _UNITS:
        raise ConfigError(
            f"unknown unit {unit_text!r} in size {text!r}: use B, KiB, MiB, GiB, TiB, PiB "
            "(powers of 1024), kB, MB, GB, TB, PB (powers of 1000) or K, M, G, T, P (1024)"
        )
    try:
        number = Decimal(number_text)
    except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
        raise ConfigError(f"cannot read the number in size {text!r}") from None
    # Decimal keeps "1.5 GiB" exact; round half up to whole bytes.
    return int((number * _UNITS[unit]).to_integral_value(rounding="ROUND_HALF_UP"))
