"""The progress bar every long-running command shows (on stderr)."""

from __future__ import annotations


def progress_bar(total: int, progress: bool | None, unit: str = "patch"):
    """A tqdm bar over ``total`` items.

    ``progress`` True shows it, False hides it, None shows it only when stderr
    is a terminal (so batch-job logs stay clean).
    """
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
