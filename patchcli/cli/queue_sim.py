"""``patchcli queue-sim``: simulate a TorchIO patches queue without image data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import ConfigOption, config_overrides, run_command, with_config_options
from .sizing_options import QUEUE_OPTIONS

SIMULATION_OPTIONS: list[ConfigOption] = [
    (
        "--shuffle-subjects/--no-shuffle-subjects",
        "shuffle_subjects",
        dict(help="Shuffle subjects each epoch."),
    ),
    (
        "--shuffle-patches/--no-shuffle-patches",
        "shuffle_patches",
        dict(help="Shuffle the queue after each fill."),
    ),
    ("--num-epochs", "num_epochs", dict(type=click.IntRange(min=1), help="Epochs to simulate.")),
    ("--seed", "seed", dict(type=click.IntRange(min=0), help="Seed of the shuffles.")),
    (
        "--load-seconds",
        "load_seconds",
        dict(type=click.FloatRange(min=0), help="Seconds to load and transform one subject."),
    ),
    (
        "--step-seconds",
        "step_seconds",
        dict(type=click.FloatRange(min=0), help="Seconds per training step."),
    ),
]


def _list(values) -> str:
    values = list(values)
    if len(set(values)) == 1:
        return f"{values[0]} (every epoch)" if len(values) > 1 else str(values[0])
    return ", ".join(str(value) for value in values)


@click.command("queue-sim")
@click.argument("config", type=click.Path(dir_okay=False))
@with_config_options(QUEUE_OPTIONS + SIMULATION_OPTIONS)
@click.option(
    "--trace", type=click.Path(dir_okay=False), help="Write one CSV row per popped patch."
)
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw the queue over time (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace existing --trace and --plot files.")
@run_command
def queue_sim(
    config: str, trace: str | None, plot: str | None, as_json: bool, overwrite: bool, **values: Any
) -> None:
    """Simulate a TorchIO Queue: fills, splits, batch mixing, memory and waiting.

    Needs no image data: a number of subjects or a subjects manifest is
    enough (image headers, if readable, add the memory estimate). The
    alternative without a queue: extract patches ahead of time and draw
    fresh ones every epoch with patches_per_subject (docs/reader.md).

    \b
    Example:
      patchcli queue-sim configs/queue-sim.yaml --max-length 60 --trace trace.csv
    """
    from ..config import load_config
    from ..errors import DataError
    from ..io.atomic import check_output_free
    from ..queue import plot_queue, write_trace_csv
    from ..sizing import memory_from_config, simulate_from_config, timing_from_config
    from ..units import format_bytes

    options = QUEUE_OPTIONS + SIMULATION_OPTIONS
    loaded = load_config(config, config_overrides(options, values))
    for output in (trace, plot):  # both checked before either is written
        if output:
            check_output_free(Path(output), overwrite)
    simulated = simulate_from_config(loaded)
    summary = simulated.summary()
    memory = None
    memory_note = ""
    if loaded.images and loaded.patch_size is not None:
        try:
            memory = memory_from_config(loaded)
        except DataError as error:
            memory_note = f"unavailable ({error})"
    else:
        memory_note = "unavailable (give images and patch_size)"
    timing = timing_from_config(loaded, simulated)
    if trace:
        write_trace_csv(simulated, trace, overwrite=overwrite)
    if plot:
        plot_queue(simulated, plot, overwrite=overwrite)

    if as_json:
        result: dict[str, Any] = {"summary": summary.to_dict()}
        if memory is not None:
            result["memory"] = memory.to_json()
        if timing is not None:
            result["timing"] = timing.to_dict()
        click.echo(json.dumps(result, indent=2))
        return
    counts = simulated.num_samples
    on_off = {True: "on", False: "off"}
    click.echo(
        f"queue-sim: {len(counts)} subjects, {int(sum(counts))} patches per epoch, "
        f"max_length {loaded.max_length}, batch_size {loaded.batch_size}, "
        f"{loaded.num_epochs} epochs, shuffle subjects {on_off[loaded.shuffle_subjects]}, "
        f"patches {on_off[loaded.shuffle_patches]}, seed {loaded.seed}"
    )
    rows = [
        ("iterations per epoch", str(summary.iterations_per_epoch)),
        ("batches per epoch", str(summary.batches_per_epoch)),
        ("fills per epoch", _list(summary.fills_per_epoch)),
        ("subjects split per epoch", _list(summary.splits_per_epoch)),
        (
            "peak patches held",
            f"{summary.peak_patches_held} ({summary.peak_patches_in_queue} in the queue)",
        ),
        (
            "subjects per batch",
            f"mean {summary.mean_subjects_per_batch:.2f}, min {summary.min_subjects_per_batch}",
        ),
    ]
    if memory is not None:
        rows.append(
            (
                "memory",
                f"{format_bytes(memory.total_bytes)} realistic peak "
                f"(TorchIO's figure: {memory.torchio_pretty}; details: patchcli memory)",
            )
        )
    else:
        rows.append(("memory", memory_note))
    if timing is not None:
        for epoch, (wait, total, idle) in enumerate(
            zip(timing.wait_seconds, timing.epoch_seconds, timing.gpu_idle_share)
        ):
            rows.append(
                (
                    f"epoch {epoch} waiting",
                    f"{wait:.1f} s of {total:.1f} s (GPU idle {100 * idle:.0f}%)",
                )
            )
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        click.echo(f"  {name:<{width}}{value}")
    if trace:
        click.echo(f"trace: {len(simulated.epoch)} rows written to {trace}")
    if plot:
        click.echo(f"plot: written to {plot}")
