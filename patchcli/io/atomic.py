"""Outputs that appear complete or not at all.

Everything is written under ``<final>.partial`` and renamed to the final name
only once complete, so a failed or interrupted run never leaves a
half-written output at the final path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DataError

#: A folder holding this file is a patchcli output that --overwrite may replace.
FOLDER_MARKER = "patchcli.yaml"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def check_output_free(path: Path, overwrite: bool, folder: bool = False) -> None:
    """Refuse an existing output unless ``overwrite``; never replace a foreign folder."""
    if not path.exists() and not path.is_symlink():
        parent = path.parent
        if not parent.exists():
            return
        if not parent.is_dir():
            raise DataError(f"{path}: parent {parent} is not a folder")
        return
    if path.is_dir():
        if not folder:
            raise DataError(f"{path}: is a folder; give a file name for the output")
        if not any(path.iterdir()):
            return
        if not overwrite:
            raise DataError(f"{path}: output folder exists and is not empty (use --overwrite)")
        if not (path / FOLDER_MARKER).exists():
            raise DataError(
                f"{path}: refusing to replace a folder that is not a patchcli output "
                f"(it has no {FOLDER_MARKER})"
            )
    else:
        if folder:
            raise DataError(f"{path}: exists and is not a folder")
        if not overwrite:
            raise DataError(f"{path}: output exists (use --overwrite)")


@contextmanager
def atomic_output(path: Path, overwrite: bool, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary output is
    removed and the final path is left untouched.
    """
    path = Path(path)
    check_output_free(path, overwrite, folder)
    temporary = partial_path(path)
    _remove(temporary)
    temporary.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        temporary.mkdir()
    try:
        yield temporary
        check_output_free(path, overwrite, folder)  # something may have appeared meanwhile
        if folder:
            if path.exists():
                _remove(path)
            os.rename(temporary, path)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
