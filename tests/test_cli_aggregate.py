"""`patchcli grid` then `patchcli aggregate` from the shell: round trips and errors."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from patchcli.cli import main

from .helpers import affine_for, make_subjects, write_config


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agg")
    _, arrays = make_subjects(folder / "data", [(21, 18, 16), (17, 20, 19)], with_prob=False)
    config = write_config(
        folder / "grid.yaml",
        subjects="data/subjects.csv",
        images={"t1": "intensity", "seg": "label"},
        patch_size=[8, 7, 6],
        patch_overlap=[4, 2, 2],
        output="grid.h5",
    )
    return folder, config, arrays


@pytest.mark.parametrize("padding", [None, "edge"])
@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
def test_grid_then_aggregate_gives_back_the_sources(tmp_path, grid_run, padding, mode):
    folder, config, arrays = grid_run
    patches = tmp_path / "grid.h5"
    args = ["grid", config, "--output", patches, "-q"]
    if padding:
        args += ["--padding-mode", padding]
    assert invoke(*args).exit_code == 0
    result = invoke(
        "aggregate",
        patches,
        "--image",
        "t1",
        "--output-dir",
        tmp_path / "out",
        "--overlap-mode",
        mode,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "2 volumes written" in result.output
    for subject in ("s0", "s1"):
        image = nib.load(tmp_path / "out" / f"{subject}_t1.nii.gz")
        data = np.asanyarray(image.dataobj)
        if mode == "crop":
            assert data.dtype == np.int16
            np.testing.assert_array_equal(data, arrays[subject]["t1"])
        else:  # averaging identical copies of a voxel gives it back (float32 rounding)
            np.testing.assert_allclose(data, arrays[subject]["t1"], atol=1e-3)
        np.testing.assert_allclose(image.affine, affine_for(None), atol=1e-6)


def test_aggregate_predictions_file(tmp_path, grid_run):
    folder, config, arrays = grid_run
    patches = tmp_path / "grid.h5"
    assert invoke("grid", config, "--output", patches, "-q").exit_code == 0
    predictions = tmp_path / "pred.h5"
    with h5py.File(patches) as source, h5py.File(predictions, "w") as target:
        # A "model" that outputs 2 float channels: the input and its negative.
        t1 = source["patches/t1"][:].astype(np.float32)
        target["patches/logits"] = np.concatenate([t1, -t1], axis=1)
    result = invoke(
        "aggregate",
        patches,
        "--predictions",
        predictions,
        "--prediction-name",
        "logits",
        "--output-dir",
        tmp_path / "pred",
        "-q",
    )
    assert result.exit_code == 0, result.output
    data = np.asanyarray(nib.load(tmp_path / "pred" / "s1_logits.nii.gz").dataobj)
    assert data.shape == (17, 20, 19, 2)
    np.testing.assert_array_equal(data[..., 1], -arrays["s1"]["t1"].astype(np.float32))


def test_aggregate_errors_are_one_line(tmp_path, grid_run):
    folder, config, _ = grid_run
    patches = tmp_path / "grid.h5"
    assert invoke("grid", config, "--output", patches, "-q").exit_code == 0
    uniform = tmp_path / "uniform.h5"
    assert invoke("uniform", config, "--output", uniform, "--num-patches", 2, "-q").exit_code == 0
    short = tmp_path / "short.h5"
    with h5py.File(short, "w") as file:
        file["patches/t1"] = np.zeros((3, 1, 8, 7, 6), np.float32)
    cases = [
        (["aggregate", patches, "--image", "flair"], "flair"),
        (["aggregate", uniform, "--image", "t1"], "grid"),
        (["aggregate", patches, "--predictions", short], "rows"),
        (["aggregate", tmp_path / "none.h5", "--image", "t1"], "none.h5"),
    ]
    for args, expected in cases:
        result = invoke(*args, "--output-dir", tmp_path / "x", "-q")
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], lines
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_aggregate_needs_output_dir(grid_run):
    folder, _, _ = grid_run
    assert invoke("aggregate", folder / "grid.h5", "--image", "t1").exit_code == 2
