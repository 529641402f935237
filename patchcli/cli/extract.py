"""``patchcli uniform | weighted | label | grid``: sample patches and write them."""

from __future__ import annotations

from typing import Any

import click

from .common import (
    ConfigOption,
    DtypeType,
    PaddingModeType,
    ProbabilitiesType,
    TripletType,
    config_overrides,
    run_command,
    show_progress,
    with_config_options,
)

# Options shared by the four samplers: name -> (config key, click kwargs).
COMMON_OPTIONS: list[ConfigOption] = [
    (
        "--subjects",
        "subjects",
        dict(type=click.Path(dir_okay=False), help="Subjects CSV manifest."),
    ),
    ("--patch-size", "patch_size", dict(type=TripletType(), help="Patch size: N or X,Y,Z.")),
    ("--seed", "seed", dict(type=click.IntRange(min=0), help="Random seed.")),
    (
        "--output",
        "output.path",
        dict(type=click.Path(), help="Output file (hdf5) or folder (nifti)."),
    ),
    (
        "--format",
        "output.format",
        dict(type=click.Choice(["hdf5", "nifti"]), help="Output format."),
    ),
    (
        "--compression",
        "output.compression",
        dict(type=click.Choice(["none", "gzip", "lz4", "zstd"]), help="HDF5 compression."),
    ),
    ("--compression-level", "output.compression_level", dict(type=int, help="Compression level.")),
    (
        "--dtype",
        "output.dtype",
        dict(
            type=DtypeType(nullable=True), help="Cast intensity images to this dtype, e.g. float32."
        ),
    ),
    (
        "--reader",
        "reader",
        dict(type=click.Choice(["auto", "nibabel", "sitk"]), help="Image reader."),
    ),
    (
        "--workers",
        "workers",
        dict(metavar="N|auto", help="Worker processes (0: none); default auto: one per core."),
    ),
    (
        "--shard",
        "shard",
        dict(
            metavar="I/N|auto",
            help="Handle the I-th of N blocks of subjects (0-based); auto: from the array job.",
        ),
    ),
    ("--block-size", "block_size", dict(help="Bytes of patches written at once, e.g. 64MiB.")),
    (
        "--on-error",
        "on_error",
        dict(
            type=click.Choice(["fail", "skip"]),
            help="A bad subject stops the run (fail, the default) or is left out and listed.",
        ),
    ),
]
RANDOM_OPTIONS = [
    ("--num-patches", "num_patches", dict(type=click.IntRange(min=1), help="Patches per subject.")),
]
SAMPLER_OPTIONS = {
    "uniform": RANDOM_OPTIONS,
    "weighted": RANDOM_OPTIONS
    + [("--probability-map", "probability_map", dict(help="Name of the sampling image."))],
    "volumes": [],
    "label": RANDOM_OPTIONS
    + [
        ("--label-name", "label_name", dict(help="Name of the label image.")),
        (
            "--label-probabilities",
            "label_probabilities",
            dict(type=ProbabilitiesType(), help="Class probabilities, e.g. 0:1,1:2."),
        ),
    ],
    "grid": [
        (
            "--patch-overlap",
            "patch_overlap",
            dict(type=TripletType(), help="Even overlap: N or X,Y,Z."),
        ),
        (
            "--padding-mode",
            "padding_mode",
            dict(type=PaddingModeType(), help="Pad by overlap/2: a number or a numpy mode."),
        ),
    ],
}

HELP = {
    "uniform": (
        "Sample patches uniformly: every position inside the volume is equally likely.",
        "patchcli uniform configs/uniform.yaml --num-patches 20 --seed 3",
    ),
    "weighted": (
        "Sample patches whose centres follow a probability map (an image of the subject).",
        "patchcli weighted configs/weighted.yaml --seed 3 --output out/w.h5",
    ),
    "label": (
        "Sample patches centred on labelled voxels, optionally balanced by class.",
        "patchcli label configs/label.yaml --label-probabilities 0:1,1:1,2:1",
    ),
    "grid": (
        "Tile every volume with overlapping patches, for dense inference.",
        "patchcli grid configs/grid.yaml --patch-overlap 16 --format nifti --output out/grid/",
    ),
    "volumes": (
        "Store every subject's (preprocessed) volumes, chunked and compressed, with the "
        "tables its samplers need: patches are then drawn while training (VolumeDataset). "
        "--patch-size sets the size the weighted sampler's tables are made for.",
        "patchcli volumes configs/volumes.yaml --workers 4",
    ),
}


#: Skipped subjects listed in a run's summary (``patchcli info --json`` lists them all).
SHOWN_SKIPPED = 20


def summary_text(result, volumes: bool = False) -> str:
    """The last line of a run: what was written, where, how fast."""
    from ..units import count, format_bytes

    what = f"{count(result.patches, 'patch')} from {count(result.subjects, 'subject')}"
    if volumes:  # a volume store: each subject's volumes
        what = f"the volumes of {count(result.subjects, 'subject')}"
    skipped = "".join(f"\n  skipped {s.describe()}" for s in result.skipped[:SHOWN_SKIPPED])
    if len(result.skipped) > SHOWN_SKIPPED:
        skipped += (
            f"\n  ... {len(result.skipped) - SHOWN_SKIPPED} more (patchcli info {result.path} "
            "--json lists them all)"
        )
    if skipped:
        what += f", {count(len(result.skipped), 'subject')} skipped"
    if result.already_complete:
        return f"{result.path} is already complete ({what}); nothing to do{skipped}"
    resumed = f" ({result.resumed} resumed)" if result.resumed else ""
    return (
        f"{what}{resumed}, {format_bytes(result.bytes_written)} written to {result.path} "
        f"in {result.seconds:.1f} s{skipped}"
    )


def _make_command(sampler: str) -> click.Command:
    summary, example = HELP[sampler]
    options = COMMON_OPTIONS + SAMPLER_OPTIONS[sampler]

    @run_command
    def command(
        config: str,
        overwrite: bool,
        resume: bool,
        retry_skipped: bool,
        quiet: bool,
        space_check: bool,
        dry_run: bool,
        **values: Any,
    ) -> None:
        from ..config import load_config
        from ..extract import extract

        if overwrite and (resume or retry_skipped):
            flag = "--resume" if resume else "--retry-skipped"
            raise click.UsageError(f"--overwrite and {flag} exclude each other")
        loaded = load_config(config, config_overrides(options, values))
        if dry_run:
            from ..dryrun import dry_run as plan_only
            from ..dryrun import format_dry_run

            click.echo(format_dry_run(plan_only(loaded, sampler), sampler))
            return
        result = extract(
            loaded,
            sampler,
            overwrite=overwrite,
            resume=resume or retry_skipped,
            progress=show_progress(quiet),
            space_check=space_check,
            retry_skipped=retry_skipped,
        )
        click.echo(f"{sampler}: {summary_text(result, volumes=sampler == 'volumes')}")

    command.__doc__ = f"{summary}\n\n\b\nExample:\n  {example}"
    command = with_config_options(options)(command)
    command = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(command)
    command = click.option(
        "--dry-run",
        is_flag=True,
        help="Check the config and inputs, sample one subject, print the plan; write nothing.",
    )(command)
    command = click.option(
        "--no-space-check",
        "space_check",
        is_flag=True,
        flag_value=False,
        default=True,
        help="Start even when the output's size (uncompressed) exceeds the free space.",
    )(command)
    command = click.option(
        "--retry-skipped",
        is_flag=True,
        help="As --resume, but make an output (or .partial) that skipped subjects again, "
        "so that repaired files come in.",
    )(command)
    command = click.option(
        "--resume",
        is_flag=True,
        help="Continue the .partial of a stopped run; do nothing if the output is complete; "
        "run a shard again whose manifest rows changed.",
    )(command)
    command = click.option("--overwrite", is_flag=True, help="Replace an existing output.")(command)
    command = click.argument("config", type=click.Path(dir_okay=False))(command)
    return click.command(sampler, help=command.__doc__)(command)


COMMANDS = [
    _make_command(sampler) for sampler in ("uniform", "weighted", "label", "grid", "volumes")
]
