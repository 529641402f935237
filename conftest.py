"""Fixtures for the docstring examples of the patchcli package (``--doctest-modules``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _doctest_patches(tmp_path_factory):
    """A small patch file for the reader's docstring examples: 2 phantoms, 8 patches each."""
    from patchcli.config import load_config
    from patchcli.extract import extract
    from patchcli.phantom import write_phantom_dataset

    folder = tmp_path_factory.mktemp("doctest")
    manifest = write_phantom_dataset(folder / "data", num_subjects=2, shape=(24, 24, 20))
    config = load_config(
        None,
        {
            "subjects": str(manifest),
            "images": {"t1": "intensity", "seg": "label"},
            "patch_size": 8,
            "num_patches": 8,
            "output.path": str(folder / "patches.h5"),
        },
    )
    return str(extract(config, "uniform").path)


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    # Only docstrings that use it pay for the file.
    if (
        isinstance(request.node, pytest.DoctestItem)
        and "patches_h5" in request.node.dtest.docstring
    ):
        doctest_namespace["patches_h5"] = request.getfixturevalue("_doctest_patches")
