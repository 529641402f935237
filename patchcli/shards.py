"""Shards: one contiguous block of the manifest's subjects per array task.

A run with ``shard: I/N`` handles the ``I``-th of ``N`` contiguous blocks of
the manifest (0-based), balanced to within one subject, and writes its output
under a name derived from the run's (``out.h5`` -> ``out.shard-03-of-16.h5``).
Seeds depend on a subject's row in the whole manifest, never on the shard, so
the shards together hold exactly the patches of an unsharded run, and merging
them in shard order gives manifest order.

``shard: auto`` reads the array job's own variables (SLURM, SGE; PBS and LSF
with ``PATCHCLI_SHARD_COUNT``). patchcli never shards without being asked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError

#: Set by ``patchcli submit``'s scripts (or by hand): the number of shards. With it,
#: ``auto`` takes the array index itself as the shard index, so an array that runs only
#: some shards (``--array=3,7``) still names them right.
SHARD_COUNT_VARIABLE = "PATCHCLI_SHARD_COUNT"

_SHARD_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
#: ``<stem>.shard-<I>-of-<N><suffix>``, as made by :func:`shard_output_path`.
SHARD_NAME = re.compile(r"^(?P<stem>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)(?P<suffix>.*)$")


@dataclass(frozen=True, order=True)
class Shard:
    """The ``index``-th (0-based) of ``count`` shards.

    Examples
    --------
    >>> shard = Shard(1, 3)
    >>> shard.rows(10)
    range(3, 6)
    >>> str(shard)
    '1/3'
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"shard count must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard index {self.index} is not in 0..{self.count - 1} (shards are 0-based)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def rows(self, total: int) -> range:
        """The manifest rows of this shard among ``total`` subjects.

        Blocks are contiguous and their sizes differ by at most one; every row
        belongs to exactly one shard.
        """
        if total < self.count:
            raise DataError(
                f"{total} subjects cannot be split into {self.count} shards; "
                f"use at most {total} shards"
            )
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)

    @property
    def label(self) -> str:
        """``shard-03-of-16``: both numbers zero-padded to the width of the count."""
        width = len(str(self.count))
        return f"shard-{self.index:0{width}d}-of-{self.count}"


def parse_shard(
    value: str | Shard | None, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """A :class:`Shard` from ``"I/N"``, ``"auto"`` (the array job's variables) or None.

    Raises
    ------
    ConfigError
        For text that is neither, and for ``auto`` outside an array job.

    Examples
    --------
    >>> parse_shard("2/8")
    Shard(index=2, count=8)
    >>> parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
    ...                      "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_COUNT": "8"})
    Shard(index=4, count=8)
    """
    if value is None or isinstance(value, Shard):
        return value
    text = str(value).strip()
    if text.lower() == "auto":
        return shard_from_environment(os.environ if environ is None else environ)
    match = _SHARD_TEXT.match(text)
    if match is None:
        raise ConfigError(f"shard must be I/N (e.g. 3/16, 0-based) or auto, not {value!r}")
    return Shard(int(match[1]), int(match[2]))


def _integer(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value or value.lower() == "undefined":  # SGE sets "undefined" outside arrays
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"shard auto: {name}={value!r} is not an integer") from None


def shard_from_environment(environ: Mapping[str, str]) -> Shard:
    """The shard of this array task, from the scheduler's variables.

    - With ``PATCHCLI_SHARD_COUNT=N``: the array index itself (SLURM, SGE, PBS
      Pro, Torque or LSF) is the shard index; the array runs indices ``0..N-1``
      or a subset of them.
    - SLURM: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / step`` of
      ``SLURM_ARRAY_TASK_COUNT`` tasks, for a regular range such as ``0-15``
      or ``1-31:2``.
    - SGE: ``(SGE_TASK_ID - SGE_TASK_FIRST) / SGE_TASK_STEPSIZE`` of the
      range up to ``SGE_TASK_LAST``.
    - PBS and LSF do not give the array's size: they need ``PATCHCLI_SHARD_COUNT``.
    """
    count = _integer(environ, SHARD_COUNT_VARIABLE)
    sources = (
        ("SLURM_ARRAY_TASK_ID", "SLURM"),
        ("SGE_TASK_ID", "SGE"),
        ("PBS_ARRAY_INDEX", "PBS Pro"),
        ("PBS_ARRAYID", "Torque"),
        ("LSB_JOBINDEX", "LSF"),
    )
    for variable, scheduler in sources:
        index = _integer(environ, variable)
        if index is None or (variable == "LSB_JOBINDEX" and index == 0):  # 0: not an array
            continue
        if count is not None:
            return _checked(index, count, f"{variable}={index} with {SHARD_COUNT_VARIABLE}={count}")
        if scheduler == "SLURM":
            return _regular_range(
                index,
                _integer(environ, "SLURM_ARRAY_TASK_MIN"),
                _integer(environ, "SLURM_ARRAY_TASK_MAX"),
                _integer(environ, "SLURM_ARRAY_TASK_STEP") or 1,
                _integer(environ, "SLURM_ARRAY_TASK_COUNT"),
                "SLURM_ARRAY_TASK",
            )
        if scheduler == "SGE":
            first = _integer(environ, "SGE_TASK_FIRST")
            last = _integer(environ, "SGE_TASK_LAST")
            step = _integer(environ, "SGE_TASK_STEPSIZE") or 1
            tasks = None if first is None or last is None else (last - first) // step + 1
            return _regular_range(index, first, last, step, tasks, "SGE_TASK")
        raise ConfigError(
            f"shard auto: {scheduler} sets {variable}={index} but not the array's size; "
            f"set {SHARD_COUNT_VARIABLE}=N (array indices 0..N-1) or give --shard I/N"
        )
    raise ConfigError(
        "shard auto: not in an array job (no SLURM_ARRAY_TASK_ID, SGE_TASK_ID, PBS_ARRAY_INDEX, "
        "PBS_ARRAYID or LSB_JOBINDEX); give --shard I/N"
    )


def _regular_range(index, first, last, step, count, prefix) -> Shard:
    if first is None or last is None or count is None:
        raise ConfigError(
            f"shard auto: {prefix}_ID is set but not the array's range ({prefix}_MIN/FIRST, "
            f"MAX/LAST, COUNT); set {SHARD_COUNT_VARIABLE}=N or give --shard I/N"
        )
    if step < 1 or last - first != (count - 1) * step or (index - first) % step:
        raise ConfigError(
            f"shard auto: the array's indices ({first} to {last}, {count} tasks) are not a "
            f"regular range; set {SHARD_COUNT_VARIABLE}=N (array indices 0..N-1) or give "
            "--shard I/N"
        )
    return _checked((index - first) // step, count, f"{prefix}_ID={index}")


def _checked(index: int, count: int, where: str) -> Shard:
    try:
        return Shard(index, count)
    except ConfigError as error:
        raise ConfigError(f"shard auto: {where}: {error}") from None


def shard_output_path(path: Path, shard: Shard, folder: bool = False) -> Path:
    """The output of one shard: ``out.h5`` -> ``out.shard-03-of-16.h5``; a folder gets a suffix.

    Examples
    --------
    >>> shard_output_path(Path("data/out.h5"), Shard(3, 16)).as_posix()
    'data/out.shard-03-of-16.h5'
    >>> shard_output_path(Path("out"), Shard(0, 2), folder=True).as_posix()
    'out.shard-0-of-2'
    """
    path = Path(path)
    if folder or not path.suffix:
        return path.with_name(f"{path.name}.{shard.label}")
    return path.with_name(f"{path.stem}.{shard.label}{path.suffix}")


def parse_shard_name(path: Path, output: Path, folder: bool = False) -> Shard | None:
    """The shard a sibling of ``output`` is named after, or None if it is not one."""
    path, output = Path(path), Path(output)
    match = SHARD_NAME.match(path.name)
    if match is None:
        return None
    stem, suffix = (
        (output.name, "") if folder or not output.suffix else (output.stem, output.suffix)
    )
    if match["stem"] != stem or match["suffix"] != suffix:
        return None
    index, count = int(match["index"]), int(match["count"])
    if count < 1 or index >= count:
        return None
    shard = Shard(index, count)
    # Only the canonical spelling: 'shard-3-of-16' is not a name patchcli writes.
    return shard if path.name == shard_output_path(output, shard, folder).name else None


def find_shards(output: Path, folder: bool = False) -> dict[Path, Shard]:
    """The shard outputs beside ``output`` (named by :func:`shard_output_path`), by path.

    ``.partial`` outputs of unfinished shards are not shards; they are not listed.
    """
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        return {}
    found = {}
    for entry in sorted(parent.iterdir()):
        shard = parse_shard_name(entry, output, folder)
        if shard is not None:
            found[entry] = shard
    return found


def slurm_folder(output: Path) -> Path:
    """Where ``patchcli submit`` keeps the scripts, the config snapshot and the logs of
    ``output``'s jobs: ``out.h5`` -> ``out.h5.slurm``."""
    return Path(output).with_name(Path(output).name + ".slurm")


def merged_output_of(path: Path) -> tuple[Path, Shard] | None:
    """The merged output a shard's output is named after, and its shard (None if ``path``
    is not named as a shard).

    Examples
    --------
    >>> merged, shard = merged_output_of(Path("data/out.shard-03-of-16.h5"))
    >>> merged.as_posix(), str(shard)
    ('data/out.h5', '3/16')
    """
    match = SHARD_NAME.match(Path(path).name)
    if match is None:
        return None
    shard = Shard(int(match["index"]), int(match["count"]))
    output = Path(path).with_name(match["stem"] + match["suffix"])
    folder = not match["suffix"]
    return (output, shard) if parse_shard_name(path, output, folder) == shard else None


__all__ = [
    "SHARD_COUNT_VARIABLE",
    "merged_output_of",
    "slurm_folder",
    "Shard",
    "find_shards",
    "parse_shard",
    "parse_shard_name",
    "shard_from_environment",
    "shard_output_path",
]
