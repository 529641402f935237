"""The command line: help, exit codes, one-line errors, overrides, summary."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from patchcli import __version__
from patchcli.cli import main

from .helpers import make_subjects, write_config


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    manifest, _ = make_subjects(folder / "data", [(16, 16, 12), (18, 15, 14)])
    return write_config(
        folder / "config.yaml",
        subjects="data/subjects.csv",
        images={"t1": "intensity", "seg": "label", "prob": "sampling_map"},
        patch_size=8,
        num_patches=4,
        probability_map="prob",
        patch_overlap=2,
        output={"path": "out/patches.h5"},
    )


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output and f"patchcli {command}" in result.output


@pytest.mark.parametrize("sampler", ["uniform", "weighted", "label", "grid"])
def test_each_sampler_runs_and_prints_a_summary(tmp_path, config_path, sampler):
    output = tmp_path / f"{sampler}.h5"
    result = invoke(sampler, config_path, "--output", output, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"{sampler}:" in result.output and "2 subjects" in result.output
    assert "written to" in result.output and " s" in result.output
    assert h5py.is_hdf5(output)


def test_options_override_config_keys(tmp_path, config_path):
    output = tmp_path / "o.h5"
    result = invoke(
        "label",
        config_path,
        "--output",
        output,
        "--patch-size",
        "4,6,8",
        "--num-patches",
        3,
        "--seed",
        9,
        "--label-probabilities",
        "1:1,2:3",
        "--compression",
        "none",
        "-q",
    )
    assert result.exit_code == 0, result.output
    with h5py.File(output) as file:
        assert file["patches/t1"].shape == (6, 1, 4, 6, 8)
        assert file.attrs["seed"] == 9
        assert "label_probabilities" in file.attrs["config"]


def test_data_errors_exit_1_with_one_line(tmp_path, config_path):
    result = invoke("uniform", config_path, "--patch-size", 40, "--output", tmp_path / "x.h5")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "subject 's0'" in lines[0] and "cannot be larger" in lines[0]
    assert "Traceback" not in result.output


def test_config_errors_exit_1_and_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("patch_size: [1, 2]\n")
    result = invoke("uniform", bad)
    assert result.exit_code == 1
    assert str(bad) in result.output and "patch_size" in result.output


def test_usage_errors_exit_2(config_path):
    assert invoke("uniform").exit_code == 2
    assert invoke("uniform", config_path, "--patch-size", "a,b").exit_code == 2
    assert invoke("label", config_path, "--label-probabilities", "1=2").exit_code == 2
    assert invoke("uniform", config_path, "--format", "png").exit_code == 2
    assert invoke("no-such-command").exit_code == 2


def test_debug_shows_the_traceback(tmp_path, config_path):
    result = invoke(
        "uniform", config_path, "--patch-size", 40, "--debug", "--output", tmp_path / "x.h5"
    )
    assert result.exit_code == 1
    assert result.exception is not None and type(result.exception).__name__ == "DataError"


def test_existing_output_needs_overwrite(tmp_path, config_path):
    output = tmp_path / "twice.h5"
    assert invoke("uniform", config_path, "--output", output, "-q").exit_code == 0
    again = invoke("uniform", config_path, "--output", output, "-q")
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert invoke("uniform", config_path, "--output", output, "-q", "--overwrite").exit_code == 0


def test_nifti_format_option(tmp_path, config_path):
    output = tmp_path / "grid_dir"
    result = invoke(
        "grid", config_path, "--format", "nifti", "--output", output, "--padding-mode", 0, "-q"
    )
    assert result.exit_code == 0, result.output
    assert (output / "patches.csv").exists()


def test_label_warning_is_one_line_on_stderr(tmp_path, config_path):
    result = invoke(
        "label",
        config_path,
        "--label-probabilities",
        "1:1,9:1",
        "--output",
        tmp_path / "w.h5",
        "-q",
    )
    assert result.exit_code == 0
    warning_lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 2 and all("label 9" in line for line in warning_lines)


def test_phantom_then_extract(tmp_path):
    data = tmp_path / "phantom"
    assert invoke("phantom", data, "--subjects", 2, "--shape", "24,24,20").exit_code == 0
    config = write_config(
        tmp_path / "c.yaml",
        subjects="phantom/subjects.csv",
        images={"t1": "intensity", "seg": "label", "prob": "sampling_map"},
        patch_size=8,
        num_patches=5,
        output="p.h5",
    )
    result = invoke("weighted", config, "-q")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "p.h5") as file:
        seg = file["patches/seg"][:]
        # prob is 0 outside the brain, so every centre is in brain (2) or lesion (3).
        centres = seg[:, 0, 4, 4, 4]
        assert np.isin(centres, [2, 3]).all()


def test_cli_does_not_import_torch():
    code = (
        "import sys; from click.testing import CliRunner; from patchcli.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
        "import patchcli.extract, patchcli.config; "
        "print('torch' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"


def test_none_resets_a_config_key_from_the_command_line(tmp_path, config_path):
    padded, plain = tmp_path / "padded.h5", tmp_path / "plain.h5"
    edge_config = config_path.parent / "edge.yaml"  # beside data/, which it refers to
    edge_config.write_text(config_path.read_text() + "padding_mode: edge\n")
    assert invoke("grid", edge_config, "--output", padded, "-q").exit_code == 0
    result = invoke("grid", edge_config, "--output", plain, "--padding-mode", "none", "-q")
    assert result.exit_code == 0, result.output
    with h5py.File(padded) as a, h5py.File(plain) as b:
        assert a.attrs["padding_mode"] == "edge" and b.attrs["padding_mode"] == ""
        assert len(a["locations"]) > len(b["locations"])


def test_bad_dtype_options_are_usage_errors(tmp_path, config_path):
    assert invoke("uniform", config_path, "--dtype", "float99").exit_code == 2
    assert (
        invoke("aggregate", tmp_path / "x.h5", "--dtype", "foo", "--output-dir", tmp_path).exit_code
        == 2
    )


def test_shell_completion_scripts_and_answers():
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "patchcli"]
    for shell in ("bash", "zsh", "fish"):
        env = {**os.environ, "_PATCHCLI_COMPLETE": f"{shell}_source"}
        script = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        assert "_PATCHCLI_COMPLETE" in script.stdout
    env = {**os.environ, "_PATCHCLI_COMPLETE": "bash_complete", "COMP_WORDS": "patchcli mer"}
    env["COMP_CWORD"] = "1"
    answer = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "merge" in answer.stdout and "uniform" not in answer.stdout
    env["COMP_WORDS"], env["COMP_CWORD"] = "patchcli uniform config.yaml --dry", "3"
    answer = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "--dry-run" in answer.stdout
