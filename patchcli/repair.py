"""Which shards of a sharded run are current, and which must run again.

A shard's output records the fingerprint of the settings and of its own
manifest rows (patchcli.fingerprint). Against the current config and
manifest, each shard is:

- ``current``: made from exactly its current rows and settings;
- ``skipped``: current, but it left subjects out (``on_error: skip``);
  ``--retry-skipped`` runs it again so that repaired files come in;
- ``stale``: made with the same settings from rows that have changed since
  (a manifest row fixed): it runs again, and replaces its output;
- ``unfinished``: only a ``.partial`` (stopped, failed, or running);
- ``missing``: nothing there;
- ``foreign``: made with other settings, or unreadable: in the way.

The merge is current when it was made from the current shards. ``submit``
runs what is not current; ``info`` reports it with the command that repairs it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import Config, load_config
from .errors import DataError
from .fingerprint import (
    config_fingerprint,
    merge_fingerprint,
    settings_fingerprint,
    shard_fingerprint,
)
from .io.atomic import partial_path
from .io.hdf5 import open_hdf5, plain_value
from .io.reader import PatchOutput, read_patch_output
from .shards import Shard, find_shards, merged_output_of, shard_output_path, slurm_folder
from .subjects import SubjectSpec, config_manifest

#: Shard states that need the shard run (again).
TO_RUN = ("missing", "unfinished", "stale")


@dataclass(frozen=True)
class ShardStatus:
    """One shard of a run: where its output is, its state, and why."""

    index: int
    path: Path
    state: str
    detail: str = ""
    skipped: int = 0


@dataclass
class RunStatus:
    """Every shard of a run, and its merge, against the current config and manifest."""

    output: Path
    sampler: str
    count: int
    shards: list[ShardStatus] = field(default_factory=list)
    #: The merged output: ``current``, ``skipped``, ``stale``, ``missing`` or ``foreign``.
    merged: str = "missing"
    #: The fingerprint a merge of the current shards has.
    merge_fingerprint: str = ""

    def to_run(self, retry_skipped: bool = False) -> list[int]:
        """The shards to run: missing, unfinished, stale (and with skips, when retried)."""
        states = TO_RUN + (("skipped",) if retry_skipped else ())
        return [shard.index for shard in self.shards if shard.state in states]

    @property
    def foreign(self) -> list[ShardStatus]:
        return [shard for shard in self.shards if shard.state == "foreign"]


def run_status(
    config: Config,
    sampler: str,
    manifest: Sequence[SubjectSpec],
    output: Path,
    count: int,
    paths: Sequence[Path] | None = None,
) -> RunStatus:
    """The state of each of ``count`` shards of ``output`` (and of the merge), for the
    current ``config`` and ``manifest`` (the whole manifest); ``paths``, the shards' outputs
    when they are not named after ``output`` (a virtual merge records its own)."""
    folder = config.output.format == "nifti"
    settings = settings_fingerprint(config, sampler)
    # The whole run's fingerprint: what shards carried before they had their own.
    run = config_fingerprint(config, sampler, manifest)
    status = RunStatus(Path(output), sampler, count)
    expected = []
    for index in range(count):
        shard = Shard(index, count)
        fingerprint = shard_fingerprint(config, sampler, manifest, shard)
        expected.append(fingerprint)
        path = shard_output_path(Path(output), shard, folder) if paths is None else paths[index]
        status.shards.append(_shard_status(path, shard, fingerprint, settings, run, manifest))
    status.merge_fingerprint = merge_fingerprint(settings, expected)
    status.merged = _merged_state(Path(output), status.merge_fingerprint, settings, run)
    return status


def _read(path: Path) -> PatchOutput | None:
    try:
        return read_patch_output(path)
    except DataError:
        return None


def _shard_status(
    path: Path,
    shard: Shard,
    expected: str,
    settings: str,
    run: str,
    manifest: Sequence[SubjectSpec],
) -> ShardStatus:
    if not path.exists():
        if partial_path(path).exists():
            return ShardStatus(shard.index, path, "unfinished", "only a .partial")
        return ShardStatus(shard.index, path, "missing")
    found = _read(path)
    if found is None:
        return ShardStatus(shard.index, path, "foreign", "not a readable patch output")
    current = found.fingerprint == expected or (
        found.settings_fingerprint is None and found.fingerprint == run
    )
    if current:
        if found.skipped:
            ids = ", ".join(repr(s.id) for s in found.skipped[:3])
            more = " ..." if len(found.skipped) > 3 else ""
            return ShardStatus(
                shard.index, path, "skipped", f"skipped {ids}{more}", len(found.skipped)
            )
        return ShardStatus(shard.index, path, "current")
    if found.settings_fingerprint == settings and found.shard == shard:
        return ShardStatus(shard.index, path, "stale", changed_rows(found, shard, manifest))
    return ShardStatus(shard.index, path, "foreign", "made with other settings")


def changed_rows(found: PatchOutput, shard: Shard, manifest: Sequence[SubjectSpec]) -> str:
    """Which of a stale shard's rows changed, as far as its output records them."""
    total = found.attributes.get("total_subjects")
    if total is not None and int(total) != len(manifest):
        return f"the manifest has {len(manifest)} rows, {total} when it was made"
    recorded = {s.manifest_row: (s.id, s.source) for s in found.subjects}
    recorded.update({s.manifest_row: (s.id, None) for s in found.skipped})
    changed = []
    for spec in manifest[shard.rows(len(manifest)).start : shard.rows(len(manifest)).stop]:
        then = recorded.get(spec.index)
        now_sources = {name: str(path) for name, path in spec.paths.items()}
        if then is None or then[0] != spec.id or (then[1] is not None and then[1] != now_sources):
            changed.append(spec.index)
    if not changed:
        return "its rows' num_samples changed"
    shown = ", ".join(map(str, changed[:5])) + (" ..." if len(changed) > 5 else "")
    return f"manifest row{'s' if len(changed) > 1 else ''} {shown} changed"


def _merged_state(output: Path, expected: str, settings: str, run: str) -> str:
    if not output.exists():
        return "missing"
    found = _read(output)
    if found is None:
        # A virtual merge whose shards are gone or replaced no longer reads: stale if it
        # was a merge of these settings.
        return "stale" if _merge_settings(output) in (settings, run) else "foreign"
    if found.fingerprint in (expected, run):
        return "skipped" if found.skipped else "current"
    if (found.settings_fingerprint or found.fingerprint) in (settings, run):
        return "stale"
    return "foreign"


def _merge_settings(output: Path) -> str | None:
    """The settings fingerprint an HDF5 merge records, read from its attributes alone."""
    try:
        with open_hdf5(output) as file:
            if not file.attrs.get("merge"):
                return None
            value = file.attrs.get("settings_fingerprint", file.attrs.get("config_fingerprint"))
            return None if value is None else str(plain_value(value))
    except (OSError, DataError):
        return None


def stale_shards(
    config: Config, outputs: Sequence[PatchOutput], manifest: Sequence[SubjectSpec]
) -> list[tuple[PatchOutput, str]]:
    """The shard outputs not made from their current rows of ``manifest``, with what changed
    (shards made before shards had fingerprints of their own are judged by the run's)."""
    stale = []
    for output in outputs:
        sampler = str(output.sampler)
        shard = output.shard
        if shard is None:
            continue
        expected = shard_fingerprint(config, sampler, manifest, shard)
        legacy = output.settings_fingerprint is None and output.fingerprint == (
            config_fingerprint(config, sampler, manifest)
        )
        if output.fingerprint != expected and not legacy:
            stale.append((output, changed_rows(output, shard, manifest)))
    return stale


@dataclass(frozen=True)
class RepairReport:
    """A sharded run's state, for ``info``: each shard's, the config it was judged
    against, and the command that brings the run up to date ("" when it is)."""

    status: RunStatus
    config_source: str
    command: str


def repair_report(path: str | os.PathLike) -> RepairReport | None:
    """The state of the run a merge, a shard, or a merged output's name (with shards
    beside it) belongs to, against its config and manifest now; None for an unsharded
    run or a name with no shards.

    The config is ``patchcli submit``'s snapshot beside the output when there is one,
    else the config recorded in the outputs (with its manifest file as it is now).

    Raises
    ------
    DataError, ConfigError
        The config or the manifest cannot be read.
    """
    path = Path(path)
    found = _read(path) if path.exists() else None
    paths = None
    if found is not None and found.merge:
        output, count = path, int(found.attributes.get("shard_count") or 0)
        if found.merge == "virtual" and len(found.parts) == count:
            paths = [part.path for part in found.parts]
    elif found is not None and found.shard is not None:
        named = merged_output_of(path)
        if named is None:
            return None
        output, count = named[0], found.shard.count
    elif found is not None:
        return None
    else:
        shards = {**find_shards(path, folder=False), **find_shards(path, folder=True)}
        if not shards:
            return None
        output = path
        counts = Counter(shard.count for shard in shards.values())
        count = counts.most_common(1)[0][0]
        found = next(
            (o for p, s in shards.items() if s.count == count and (o := _read(p)) is not None),
            None,
        )
    snapshot = slurm_folder(output) / "config.yaml"
    if snapshot.is_file():
        config, source = load_config(snapshot, {"shard": None}), str(snapshot)
    elif found is not None and found.attributes.get("config"):
        recorded = yaml.safe_load(found.attributes["config"]) or {}
        recorded.pop("shard", None)
        config, source = load_config(None, recorded), "the config recorded in the shards"
    else:
        raise DataError(f"{output}: no readable shard to take the run's config from")
    sampler = str(found.sampler) if found is not None and found.sampler else None
    if sampler is None:
        raise DataError(f"{output}: no readable shard says which sampler made the run")
    manifest = config_manifest(config).subjects
    status = run_status(config, sampler, manifest, output, count, paths)
    return RepairReport(status, source, _repair_command(status, snapshot))


def _repair_command(status: RunStatus, snapshot: Path) -> str:
    retry = any(shard.state == "skipped" for shard in status.shards)
    todo = status.to_run()
    if not todo and status.merged in ("current", "skipped") and not retry:
        return ""
    if status.foreign:
        names = ", ".join(shard.path.name for shard in status.foreign[:3])
        return f"move away the shards made with other settings ({names}) first"
    retry_option = " --retry-skipped" if retry else ""
    if snapshot.is_file():
        return f"patchcli submit {status.sampler} {snapshot} --shards {status.count}{retry_option}"
    again = "--retry-skipped" if retry else "--resume"
    runs = [
        f"patchcli {status.sampler} CONFIG --shard {index}/{status.count} {again}"
        for index in todo or [s.index for s in status.shards if s.state == "skipped"]
    ]
    replace = " --overwrite" if status.merged != "missing" else ""
    return "; ".join(runs + [f"patchcli merge {status.output} --config CONFIG{replace}"])


__all__ = [
    "TO_RUN",
    "RepairReport",
    "RunStatus",
    "ShardStatus",
    "changed_rows",
    "repair_report",
    "run_status",
    "stale_shards",
]
