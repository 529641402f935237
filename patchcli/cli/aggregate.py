"""``patchcli aggregate``: put grid patches (or a model's predictions) back into volumes."""

from __future__ import annotations

import click

from .common import DtypeType, run_command, show_progress


@click.command()
@click.argument("patches", type=click.Path())
@click.option("--image", help="The image of the grid file to reassemble.")
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for DIR/<subject>_<image>.nii.gz.",
)
@click.option(
    "--overlap-mode",
    type=click.Choice(["crop", "average", "hann"]),
    default="crop",
    show_default=True,
    help="How overlapping patches are combined.",
)
@click.option(
    "--predictions",
    type=click.Path(dir_okay=False),
    help="HDF5 file of model outputs, /patches/<name> aligned row by row with PATCHES.",
)
@click.option("--prediction-name", help="The dataset of --predictions to reassemble.")
@click.option(
    "--dtype", type=DtypeType(), help="Output dtype (default: crop keeps it, average/hann float32)."
)
@click.option(
    "--source-grid",
    metavar="IMAGE",
    help="Write each volume on IMAGE's grid before preprocessing (undoes the spatial preprocess).",
)
@click.option(
    "--interpolation",
    help="With --source-grid: nearest (default for integer volumes), linear (default for "
    "float volumes), bspline, ...",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@run_command
def aggregate(
    patches,
    image,
    output_dir,
    overlap_mode,
    predictions,
    prediction_name,
    dtype,
    source_grid,
    interpolation,
    overwrite,
    quiet,
):
    """Reassemble every subject of a grid output into one NIfTI per subject.

    PATCHES is a grid output: an HDF5 file, a merge of grid shards, or a NIfTI
    folder. The volumes get their source's shape and affine (padding removed), or,
    with --source-grid, the grid an image had before the run's preprocess.

    \b
    Example:
      patchcli aggregate demo/out/grid.h5 --image t1 --output-dir demo/out/volumes
    """
    from ..aggregate import aggregate_file

    written = aggregate_file(
        patches,
        image,
        output_dir,
        overlap_mode=overlap_mode,
        predictions_path=predictions,
        prediction_name=prediction_name,
        dtype=dtype,
        source_grid=source_grid,
        interpolation=interpolation,
        overwrite=overwrite,
        progress=show_progress(quiet),
    )
    click.echo(f"aggregate: {len(written)} volumes written to {output_dir} ({overlap_mode} mode)")
