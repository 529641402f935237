"""The ``patchcli`` command line: thin click commands over the library.

Each subcommand lives in its own module and only parses options, calls a
library function and prints. Heavy imports (h5py, nibabel, SimpleITK) happen
inside the commands so that ``patchcli --help`` stays fast; torch is never
imported here.
"""

from __future__ import annotations

import click

from .._version import __version__
from .common import PatchcliGroup


@click.group(cls=PatchcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="patchcli")
def main() -> None:
    """Pre-extract patches from 3D medical images for patch-based training.

    Each subcommand takes a YAML config; any key can be overridden by the
    option of the same name (dashes for underscores). Exit status: 0 on
    success, 1 for bad data or config, 2 for bad usage.

    \b
    Example:
      patchcli phantom demo/data
      patchcli uniform configs/uniform.yaml --seed 3 --output out/u.h5
    """


def _register() -> None:
    from . import (
        aggregate,
        extract,
        info,
        memory,
        merge,
        phantom,
        preview,
        queue_sim,
        subjects,
        submit,
    )

    for command in (
        *extract.COMMANDS,
        merge.merge,
        info.info,
        preview.preview,
        submit.submit,
        subjects.subjects,
        aggregate.aggregate,
        queue_sim.queue_sim,
        memory.memory,
        phantom.phantom,
    ):
        main.add_command(command)


_register()
