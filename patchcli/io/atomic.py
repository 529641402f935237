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


def folder_format(path: Path) -> str | None:
    """The ``format`` named by a folder's marker file, or None."""
    import yaml

    try:
        data = yaml.safe_load((path / FOLDER_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def check_output_free(
    path: Path, overwrite: bool, folder: bool = False, kind: str | None = None
) -> None:
    """Refuse an existing output unless ``overwrite``; never replace a foreign folder.

    With ``overwrite``, a non-empty folder is replaced only if its marker file
    names the format ``kind`` (so that patches never replace a dataset, say).
    """
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
        found = folder_format(path)
        if found is None or (kind is not None and found != kind):
            what = f"a {found} folder" if found else f"a folder without a readable {FOLDER_MARKER}"
            raise DataError(
                f"{path}: refusing to replace {what} with a {kind or 'patchcli'} output"
            )
    else:
        if folder:
            raise DataError(f"{path}: exists and is not a folder")
        if not overwrite:
            raise DataError(f"{path}: output exists (use --overwrite)")


@contextmanager
def atomic_output(
    path: Path, overwrite: bool, folder: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary output is
    removed and the final path is left untouched.
    """
    path = Path(path)
    check_output_free(path, overwrite, folder, kind)
    temporary = partial_path(path)
    _remove(temporary)
    temporary.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        temporary.mkdir()
    try:
        yield temporary
        check_output_free(path, overwrite, folder, kind)  # something may have appeared meanwhile
        if folder:
            if path.exists():
                _remove(path)
            os.rename(temporary, path)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def size_on_disk(path: Path) -> int:
    """Bytes of an output: a file's size, or the sum over a folder's files."""
    path = Path(path)
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
