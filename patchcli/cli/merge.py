"""``patchcli merge``: put the shards of a run back together."""

from __future__ import annotations

import click

from .common import run_command, show_progress


@click.command()
@click.argument("output", type=click.Path())
@click.argument("shards", nargs=-1, type=click.Path(exists=False))
@click.option(
    "--copy",
    is_flag=True,
    help="HDF5: one self-contained file instead of virtual datasets. NIfTI: keep the shards.",
)
@click.option(
    "--compression",
    type=click.Choice(["none", "gzip", "lz4", "zstd"]),
    help="With --copy: recompress (gzip is read by every HDF5 tool).",
)
@click.option("--compression-level", type=click.IntRange(0, 9), help="With --compression.")
@click.option("--overwrite", is_flag=True, help="Replace an existing merged output.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The run's config: refuse shards made from other manifest rows than its manifest's.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@run_command
def merge(output, shards, copy, compression, compression_level, overwrite, config_path, quiet):
    """Merge the shards of a run (out.shard-I-of-N.h5, ...) into OUTPUT.

    With no SHARDS named, the shards are OUTPUT's siblings named after it. They
    must share one run's settings and hold every subject of its manifest exactly
    once; with --config, each must also have been made from its current rows of
    the config's manifest. Otherwise nothing is written.

    \b
    Example:
      patchcli uniform configs/uniform.yaml --shard 0/2
      patchcli uniform configs/uniform.yaml --shard 1/2
      patchcli merge demo/out/uniform.h5
    """
    from ..config import load_config
    from ..merge import merge as merge_shards
    from ..units import count, format_bytes

    config = None if config_path is None else load_config(config_path, {"shard": None})
    result = merge_shards(
        output,
        shards or None,
        copy=copy,
        compression=compression,
        compression_level=compression_level,
        overwrite=overwrite,
        progress=show_progress(quiet),
        config=config,
    )
    how = {"virtual": "virtual datasets over the shards", "copy": "copied", "nifti": "one folder"}
    what = f"{count(result.patches, 'patch')} from {count(result.subjects, 'subject')}"
    if result.kind == "volumes":
        how["virtual"] = "links to the shards"
        what = f"the volumes of {count(result.subjects, 'subject')}"
    skipped = f"; {count(result.skipped, 'subject')} skipped" if result.skipped else ""
    click.echo(
        f"merge: {count(result.shards, 'shard')}, {what} ({how[result.mode]}{skipped}), "
        f"{format_bytes(result.bytes_written)} written to "
        f"{result.path} in {result.seconds:.1f} s"
    )
