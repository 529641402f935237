"""``patchcli subjects``: the resolved manifest of a config, printed or frozen."""

from __future__ import annotations

import sys

import click

from .common import run_command


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Write the manifest to this CSV file (default: print it).",
)
@click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    help="A subject missing a file: stop (fail), or leave it out and list it (skip).",
)
@run_command
def subjects(config, output, on_error):
    """Print the subjects CONFIG resolves to, as a CSV manifest (or write it with -o).

    For a dataset in a standard layout (subjects: {bids: DIR}, {nnunet: DIR},
    {decathlon: DIR}), the manifest every node resolves it to: sorted by subject
    id, one absolute path per image. Check it, and freeze it before a cluster
    run (subjects: manifest.csv in the config gives the same subjects, rows and
    fingerprint). A summary goes to stderr.

    \b
    Example:
      patchcli subjects configs/bids.yaml -o manifest.csv
    """
    from pathlib import Path

    from ..config import load_config
    from ..subjects import config_manifest, describe_manifest, write_manifest, write_manifest_rows

    loaded = load_config(config, {"on_error": on_error})
    manifest = config_manifest(loaded)
    images = list(loaded.images)
    if output is None:
        with_samples = any(spec.num_samples for spec in manifest.subjects)
        write_manifest_rows(manifest.subjects, images, sys.stdout, with_samples)
    else:
        write_manifest(manifest.subjects, images, Path(output))
    click.echo(f"subjects: {describe_manifest(manifest)}", err=True)
    for subject, reason in manifest.incomplete:
        click.echo(f"  left out {subject!r}: {reason}", err=True)
