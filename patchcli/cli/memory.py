"""``patchcli memory``: how much RAM a TorchIO-style patches queue needs."""

from __future__ import annotations

import json
from typing import Any

import click

from .common import config_overrides, run_command, with_config_options
from .sizing_options import QUEUE_OPTIONS


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@with_config_options(QUEUE_OPTIONS)
@click.option("--budget", help="Find the largest max_length that fits, e.g. 8GiB.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@run_command
def memory(config: str, budget: str | None, as_json: bool, **values: Any) -> None:
    """Estimate the memory of a patches queue from image headers only.

    Prints TorchIO's own figure (get_max_memory) and the realistic peak,
    itemised; with --budget, the largest max_length that fits. Patches
    extracted ahead of time and read with PatchDataset need no queue at all;
    a stored pool with patches_per_subject keeps fresh patches every epoch
    (docs/reader.md).

    \b
    Example:
      patchcli memory configs/memory.yaml --max-length 300 --num-workers 4
      patchcli memory configs/memory.yaml --budget 8GiB --json
    """
    from ..config import load_config
    from ..sizing import memory_from_config
    from ..units import format_bytes, parse_size

    loaded = load_config(config, config_overrides(QUEUE_OPTIONS, values))
    budget_bytes = parse_size(budget) if budget is not None else None
    estimate = memory_from_config(loaded, budget_bytes)
    if as_json:
        click.echo(json.dumps(estimate.to_json(), indent=2))
        return
    settings = (
        f"patch {'x'.join(map(str, loaded.patch_triplet))}, max_length {estimate.max_length}, "
        f"{loaded.num_workers} workers x prefetch {loaded.prefetch_factor}, "
        f"batch {loaded.batch_size}, {loaded.sampler} sampler"
    )
    click.echo(f"memory: {settings}")
    if budget_bytes is not None:
        click.echo(f"largest max_length within {format_bytes(budget_bytes)}: {estimate.max_length}")
    click.echo(
        f"TorchIO's figure (get_max_memory): {estimate.torchio_bytes} bytes "
        f"= {estimate.torchio_pretty}"
    )
    click.echo("realistic peak:")
    width = max(len(name) for name in estimate.items) + 2
    for name, value in estimate.items.items():
        click.echo(f"  {name:<{width}}{format_bytes(value):>12}")
    click.echo(f"  {'total':<{width}}{format_bytes(estimate.total_bytes):>12}")
