"""``patchcli phantom``: write a synthetic dataset to try patchcli on."""

from __future__ import annotations

import click

from .common import TripletType, run_command


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--subjects", "num_subjects", type=click.IntRange(min=1), default=4, show_default=True
)
@click.option(
    "--shape", type=TripletType(), default="64,72,56", show_default=True, help="Volume size."
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing phantom folder.")
@run_command
def phantom(folder: str, num_subjects: int, shape, seed: int, overwrite: bool) -> None:
    """Write synthetic subjects (t1, seg, prob NIfTI images) and a subjects.csv.

    \b
    Example:
      patchcli phantom demo/data --subjects 4 --shape 96,96,80
    """
    from ..phantom import write_phantom_dataset

    size = (shape,) * 3 if isinstance(shape, int) else tuple(shape)
    manifest = write_phantom_dataset(folder, num_subjects, size, seed, overwrite=overwrite)
    click.echo(f"phantom: {num_subjects} subjects written, manifest {manifest}")
