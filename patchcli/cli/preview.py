"""``patchcli preview``: where the patches of one subject are, as a PNG."""

from __future__ import annotations

from pathlib import Path

import click

from .common import run_command


@click.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--output", "-o", "png", required=True, type=click.Path(), help="PNG to write.")
@click.option("--subject", help="Subject id (default: the first).")
@click.option(
    "--sampler",
    type=click.Choice(["uniform", "weighted", "label", "grid"]),
    help="With a config: the sampler to preview (default: uniform).",
)
@click.option(
    "--copy",
    type=click.IntRange(min=0),
    help="With augment: the augmented copy to draw, with its patches (default: 0).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing PNG.")
@run_command
def preview(source, png, subject, sampler, copy, overwrite):
    """Draw one subject's patches over its images: SOURCE is a config or an output.

    From a config, the subject is sampled in memory and nothing else is
    written; from an output (HDF5 file or NIfTI folder), its stored locations
    are drawn over the source images it records. With augment, one copy of
    the subject is drawn (--copy), made again as the run made it.

    \b
    Example:
      patchcli preview configs/label.yaml --sampler label -o demo/out/label.png
      patchcli preview demo/out/grid.h5 -o demo/out/grid.png --subject sub-002
      patchcli preview demo/out/augmented.h5 -o demo/out/copy2.png --copy 2
    """
    from ..preview import describe_copy, draw_preview, preview_from_config, preview_from_output

    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml"):
        from ..config import load_config

        data = preview_from_config(load_config(path), sampler or "uniform", subject, copy)
    else:
        if sampler is not None:
            raise click.UsageError("--sampler is for configs; an output records its sampler")
        data = preview_from_output(path, subject, copy)
    written = draw_preview(data, png, overwrite=overwrite)
    click.echo(
        f"preview: {data.sampler}, subject {data.subject!r}{describe_copy(data)}, "
        f"{len(data.locations)} patches, "
        f"written to {written}"
    )
