"""Options shared by ``memory`` and ``queue-sim``: the queue's settings."""

from __future__ import annotations

import click

from .common import ConfigOption, DtypeType, TripletType

QUEUE_OPTIONS: list[ConfigOption] = [
    ("--subjects", "subjects", dict(type=click.Path(dir_okay=False), help="Subjects manifest.")),
    (
        "--num-subjects",
        "num_subjects",
        dict(type=click.IntRange(min=1), help="Subjects (no manifest)."),
    ),
    ("--patch-size", "patch_size", dict(type=TripletType(), help="Patch size: N or X,Y,Z.")),
    (
        "--sampler",
        "sampler",
        dict(type=click.Choice(["uniform", "weighted", "label", "grid"]), help="Patch sampler."),
    ),
    ("--max-length", "max_length", dict(type=click.IntRange(min=1), help="Queue max_length.")),
    (
        "--samples-per-volume",
        "samples_per_volume",
        dict(type=click.IntRange(min=1), help="Patches per subject per epoch."),
    ),
    (
        "--num-workers",
        "num_workers",
        dict(type=click.IntRange(min=0), help="Subject-loading workers."),
    ),
    (
        "--prefetch-factor",
        "prefetch_factor",
        dict(type=click.IntRange(min=1), help="Subjects each worker loads ahead."),
    ),
    ("--batch-size", "batch_size", dict(type=click.IntRange(min=1), help="Training batch size.")),
    (
        "--dtype",
        "output.dtype",
        dict(type=DtypeType(nullable=True), help="dtype intensity images are cast to."),
    ),
]
