"""``patchcli info``: what a patch output holds."""

from __future__ import annotations

import json

import click

from .common import run_command
from .extract import SHOWN_SKIPPED


@click.command()
@click.argument("output", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object.")
@click.option("--config", "show_config", is_flag=True, help="Also print the config of the run.")
@click.option(
    "--allow-external",
    is_flag=True,
    help="Accept a file whose patches are links to files outside its folder.",
)
@run_command
def info(output, as_json, show_config, allow_external):
    """Describe a patch output: an HDF5 file (a run, a shard or a merge) or a NIfTI folder.

    The run that made it, its images, its subjects and patch counts, its size on
    disk and compression ratio, and for a virtual merge whether every shard is
    there (exit 1 when one is missing). For a shard or a merge (or OUTPUT's name
    with its shards beside it), each shard's state against the run's config and
    manifest now (current, stale, skipped, unfinished, missing), and the one
    command that repairs the run.

    \b
    Example:
      patchcli info demo/out/uniform.h5
      patchcli info demo/out/uniform.h5 --json | python -m json.tool
    """
    from ..info import describe_output

    description = describe_output(output, allow_external=allow_external)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo(format_description(description, show_config))
    if description.get("problems"):
        raise SystemExit(1)
    status = description.get("run_status") or {}
    if description["role"]["kind"] == "shards" and status.get("repair"):
        raise SystemExit(1)  # the run is not complete


def format_run_status(status: dict | None) -> list[str]:
    """Lines on the state of a sharded run's shards (``describe_run_status``)."""
    from ..units import count

    if not status:
        return []
    if "problem" in status:
        return [f"  shards: {status['problem']}"]
    states: dict[str, int] = {}
    for shard in status["shards"]:
        states[shard["state"]] = states.get(shard["state"], 0) + 1
    summary = ", ".join(f"{number} {state}" for state, number in states.items())
    lines = [
        f"  shards now ({count(status['shard_count'], 'shard')}, against {status['config']}): "
        f"{summary}; merge {status['merged']}"
    ]
    for shard in status["shards"]:
        if shard["state"] != "current":
            detail = f": {shard['detail']}" if shard["detail"] else ""
            name = shard["file"].rsplit("/", 1)[-1]
            lines.append(f"    shard {shard['index']} ({name}): {shard['state']}{detail}")
    lines.append(f"  repair: {status['repair']}" if status["repair"] else "  up to date")
    return lines


def format_description(description: dict, show_config: bool = False) -> str:
    """The text ``patchcli info`` prints."""
    from ..transforms import describe_preprocess
    from ..units import count, format_bytes

    lines = [description["path"]]
    role = description["role"]
    if role["kind"] == "shards":  # a merged output's name, not there yet: its shards
        return "\n".join(lines + format_run_status(description["run_status"]))
    if description.get("problems"):
        shards = role["shards"]
        present = sum(shard["present"] for shard in shards)
        lines.append(f"  virtual merge of {count(len(shards), 'shard')}, {present} present:")
        lines += [
            f"    {shard['file']}: {'present' if shard['present'] else 'MISSING'}"
            for shard in shards
        ]
        lines += [f"  problem: {problem}" for problem in description["problems"]]
        return "\n".join(lines + format_run_status(description.get("run_status")))
    kind = {"hdf5": "HDF5 file", "nifti": "NIfTI folder", "volumes": "volume store (HDF5)"}[
        description["kind"]
    ]
    if role["kind"] == "shard":
        made = f"shard {role['index']} of {role['count']} (0-based)"
    elif role["kind"] == "merge":
        made = f"merge ({role['mode']})"
    else:
        made = "one run"
    lines.append(
        f"  {kind}, format version {description['format_version']}, {made}, "
        f"patchcli {description['patchcli_version']}"
    )
    sampler = f"  sampler: {description['sampler']}, seed {description['seed']}, patch size "
    sampler += "x".join(map(str, description["patch_size"]))
    if description.get("patch_overlap") is not None:
        sampler += f", overlap {'x'.join(map(str, description['patch_overlap']))}"
        sampler += f", padding {description.get('padding_mode') or 'none'}"
    for key, value in description.get("parameters", {}).items():
        sampler += f", {key} {value}"
    if description["kind"] == "volumes":
        tables = description.get("tables_patch_size")
        sampler = "  volumes: each subject's images, chunked for patch reads" + (
            f"; weighted tables for patches of {'x'.join(map(str, tables))}" if tables else ""
        )
    lines.append(sampler)
    if description.get("preprocess"):
        lines.append(f"  preprocess: {describe_preprocess(description['preprocess'])}")
    augment = description.get("augment")
    if augment:
        lines.append(
            f"  augment: {count(augment.get('copies', 1), 'copy')} of each subject: "
            f"{describe_preprocess(augment.get('transforms') or [])}"
        )
    subjects = description["subjects"]
    patches = description["patches"]
    if description["kind"] == "volumes":
        lines.append(f"  the volumes of {count(len(subjects), 'subject')}")
    else:
        lines.append(f"  {count(patches, 'patch')} from {count(len(subjects), 'subject')}")
    lines.append("  images:")
    for image in description["images"]:
        shape = "x".join(map(str, image["patch_shape"]))
        lines.append(f"    {image['name']:<12} {image['type']:<13} {image['dtype']:<8} {shape}")
    ratio = description["compression_ratio"]
    lines.append(
        f"  size: {format_bytes(description['bytes_on_disk'])} on disk, "
        f"{format_bytes(description['bytes_uncompressed'])} uncompressed"
        + (f" (ratio {ratio:.2f}, {description['compression']})" if ratio else "")
    )
    if role["kind"] == "merge" and role.get("shards"):
        present = sum(shard["present"] for shard in role["shards"])
        lines.append(f"  shards: {present} of {len(role['shards'])} present")
    lines.append("  subjects (id, manifest row, patches):")
    shown = subjects if len(subjects) <= 20 else subjects[:10] + [None] + subjects[-5:]
    for subject in shown:
        if subject is None:
            lines.append(f"    ... {len(subjects) - 15} more")
            continue
        row = "-" if subject["manifest_row"] is None else subject["manifest_row"]
        lines.append(f"    {subject['id']:<16} {row!s:>6} {subject['patches']:>8}")
    skipped = description.get("skipped_subjects") or []
    if skipped:
        lines.append(
            f"  skipped (on_error: skip): {count(len(skipped), 'subject')} (id, manifest row, "
            "found before the run or during it, reason)"
        )
        for subject in skipped[:SHOWN_SKIPPED]:
            row = "-" if subject["manifest_row"] is None else subject["manifest_row"]
            stage = "before" if subject["stage"] == "plan" else "during"
            lines.append(f"    {subject['id']:<16} {row!s:>6} {stage:>6}  {subject['reason']}")
        if len(skipped) > SHOWN_SKIPPED:
            lines.append(f"    ... {len(skipped) - SHOWN_SKIPPED} more (--json lists them all)")
    lines += [f"  note: {note}" for note in description["notes"]]
    lines += format_run_status(description.get("run_status"))
    if show_config and description.get("config"):
        lines.append("  config:")
        lines += [f"    {line}" for line in str(description["config"]).splitlines()]
    return "\n".join(lines)
