"""Shards: blocks of the manifest, array-job variables, names, and sharded runs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from patchcli.config import load_config
from patchcli.errors import ConfigError, DataError
from patchcli.extract import extract
from patchcli.io.reader import read_patch_output
from patchcli.shards import (
    Shard,
    find_shards,
    parse_shard,
    parse_shard_name,
    shard_from_environment,
    shard_output_path,
)

from .helpers import make_subjects, write_config

SHAPES = [(14, 12, 10), (12, 14, 11), (13, 11, 12), (11, 13, 14), (12, 12, 12)]
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


# ------------------------------------------------------------------ blocks
@given(st.data())
def test_blocks_are_contiguous_balanced_and_cover_every_row_once(data):
    total = data.draw(st.integers(1, 500))
    count = data.draw(st.integers(1, total))
    blocks = [Shard(index, count).rows(total) for index in range(count)]
    assert [row for block in blocks for row in block] == list(range(total))
    sizes = [len(block) for block in blocks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_block_examples_and_errors():
    assert [list(Shard(i, 3).rows(5)) for i in range(3)] == [[0], [1, 2], [3, 4]]
    assert Shard(0, 1).rows(4) == range(0, 4)
    with pytest.raises(DataError, match="4 subjects cannot be split into 5 shards; use at most 4"):
        Shard(0, 5).rows(4)
    with pytest.raises(ConfigError, match="0-based"):
        Shard(3, 3)
    with pytest.raises(ConfigError, match="at least 1"):
        Shard(0, 0)


def test_parse_shard_text():
    assert parse_shard("3/16") == Shard(3, 16)
    assert parse_shard(" 3 / 16 ") == Shard(3, 16)
    assert parse_shard(None) is None
    for bad in ("16/16", "-1/4"):
        with pytest.raises(ConfigError) as caught:
            parse_shard(bad)
        assert "\n" not in str(caught.value)
    for bad in ("a/b", "3", "3/"):
        with pytest.raises(ConfigError, match="I/N"):
            parse_shard(bad)


# ----------------------------------------------------------- array variables
def _slurm(task, low, high, count, step=None):
    environ = {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }
    if step is not None:
        environ["SLURM_ARRAY_TASK_STEP"] = str(step)
    return environ


def test_slurm_arrays():
    assert shard_from_environment(_slurm(5, 0, 15, 16)) == Shard(5, 16)
    assert shard_from_environment(_slurm(1, 1, 16, 16)) == Shard(0, 16)
    assert shard_from_environment(_slurm(5, 1, 31, 16, step=2)) == Shard(2, 16)
    assert parse_shard("auto", _slurm(3, 0, 3, 4)) == Shard(3, 4)
    # --array=1,5,9: not a regular range.
    with pytest.raises(ConfigError, match="PATCHCLI_SHARD_COUNT"):
        shard_from_environment(_slurm(5, 1, 9, 3))
    # A resubmission of shards 3 and 7 of 16 (what patchcli submit does).
    resubmitted = _slurm(7, 3, 7, 2) | {"PATCHCLI_SHARD_COUNT": "16"}
    assert shard_from_environment(resubmitted) == Shard(7, 16)
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID=16"):
        shard_from_environment(_slurm(16, 3, 16, 2) | {"PATCHCLI_SHARD_COUNT": "16"})


def test_sge_pbs_and_lsf_arrays():
    sge = {
        "SGE_TASK_ID": "7",
        "SGE_TASK_FIRST": "1",
        "SGE_TASK_LAST": "31",
        "SGE_TASK_STEPSIZE": "2",
    }
    assert shard_from_environment(sge) == Shard(3, 16)
    undefined = dict.fromkeys(sge, "undefined")
    with pytest.raises(ConfigError, match="not in an array job"):
        shard_from_environment(undefined)
    for variable in ("PBS_ARRAY_INDEX", "PBS_ARRAYID", "LSB_JOBINDEX"):
        with pytest.raises(ConfigError, match=f"{variable}=4 but not the array's size"):
            shard_from_environment({variable: "4"})
        environ = {variable: "4", "PATCHCLI_SHARD_COUNT": "8"}
        assert shard_from_environment(environ) == Shard(4, 8)
    with pytest.raises(ConfigError, match="not in an array job"):
        shard_from_environment({"LSB_JOBINDEX": "0"})  # LSF's value outside arrays
    with pytest.raises(ConfigError, match=r"not in an array job \(no SLURM.*\); give --shard I/N"):
        parse_shard("auto", {})
    with pytest.raises(ConfigError, match="not an integer"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "x"})


# ------------------------------------------------------------------- names
def test_shard_output_names():
    assert shard_output_path(Path("d/out.h5"), Shard(3, 16)) == Path("d/out.shard-03-of-16.h5")
    assert shard_output_path(Path("out.h5"), Shard(3, 1000)).name == "out.shard-0003-of-1000.h5"
    assert shard_output_path(Path("out.d"), Shard(1, 2), folder=True).name == "out.d.shard-1-of-2"
    assert shard_output_path(Path("out"), Shard(1, 2)).name == "out.shard-1-of-2"


def test_find_shards_lists_only_canonical_names_of_this_output(tmp_path):
    output = tmp_path / "out.h5"
    keep = ["out.shard-00-of-12.h5", "out.shard-11-of-12.h5"]
    other = [
        "out.shard-3-of-12.h5",  # not zero-padded: not a name patchcli writes
        "other.shard-01-of-12.h5",
        "out.shard-02-of-12.h5.partial",
        "out.shard-12-of-12.h5",
        "out.shard-01-of-12.nii",
    ]
    for name in keep + other:
        (tmp_path / name).touch()
    assert [p.name for p in find_shards(output)] == keep
    assert find_shards(output)[tmp_path / keep[1]] == Shard(11, 12)
    assert parse_shard_name(tmp_path / "out.shard-3-of-12.h5", output) is None
    (tmp_path / "grid.shard-1-of-2").mkdir()
    assert list(find_shards(tmp_path / "grid", folder=True).values()) == [Shard(1, 2)]
    assert find_shards(tmp_path / "missing" / "out.h5") == {}


# -------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path, _ = make_subjects(tmp_path_factory.mktemp("shard-data"), SHAPES)
    return path


def _config(folder: Path, manifest: Path, **keys):
    base = dict(
        subjects=str(manifest),
        images=IMAGES,
        patch_size=[6, 5, 4],
        num_patches=5,
        seed=7,
        patch_overlap=2,
        padding_mode="edge",
        output={"path": str(folder / "out.h5"), "compression": "lz4"},
    )
    base.update(keys)
    return load_config(write_config(folder / "config.yaml", **base))


@pytest.mark.parametrize("sampler", ["uniform", "weighted", "label", "grid"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_shards_hold_exactly_the_patches_of_an_unsharded_run(tmp_path, manifest, sampler, count):
    whole = extract(
        _config(tmp_path, manifest, output={"path": str(tmp_path / "whole.h5")}), sampler
    )
    reference = read_patch_output(whole.path)
    config = _config(tmp_path, manifest)
    outputs = [
        read_patch_output(
            extract(config.model_copy(update={"shard": f"{i}/{count}"}), sampler).path
        )
        for i in range(count)
    ]
    assert [s.id for o in outputs for s in o.subjects] == [s.id for s in reference.subjects]
    assert [s.manifest_row for o in outputs for s in o.subjects] == list(range(len(SHAPES)))
    np.testing.assert_array_equal(
        np.concatenate([o.locations for o in outputs]), reference.locations
    )
    with h5py.File(whole.path) as file:
        expected = {name: file[f"patches/{name}"][()] for name in IMAGES}
    for name in IMAGES:
        stacked = []
        for output in outputs:
            with h5py.File(output.path) as file:
                stacked.append(file[f"patches/{name}"][()])
        np.testing.assert_array_equal(np.concatenate(stacked), expected[name])
    for index, output in enumerate(outputs):
        assert output.shard == Shard(index, count)
        assert output.attributes["total_subjects"] == len(SHAPES)
        # Shards share the run's settings; each fingerprint covers the shard's own rows.
        assert output.settings_fingerprint == reference.settings_fingerprint
        assert output.fingerprint != reference.fingerprint
        assert output.path.name == f"out.{Shard(index, count).label}.h5"


def test_auto_reads_the_slurm_variables_and_the_record_says_what_was_run(
    tmp_path, manifest, monkeypatch
):
    for key, value in _slurm(1, 0, 2, 3).items():
        monkeypatch.setenv(key, value)
    summary = extract(_config(tmp_path, manifest, shard="auto"), "uniform")
    assert summary.path == tmp_path / "out.shard-1-of-3.h5"
    with h5py.File(summary.path) as file:
        recorded = yaml.safe_load(file.attrs["config"])
        assert (file.attrs["shard_index"], file.attrs["shard_count"]) == (1, 3)
        assert file["subjects/manifest_row"][()].tolist() == [1, 2]
        assert file["patches/t1"].dtype == np.int16 and file["patches/seg"].dtype == np.uint8
    assert recorded["shard"] == "1/3"
    assert recorded["images"]["t1"] == {"type": "intensity", "channels": 1, "dtype": "int16"}
    assert recorded["images"]["seg"]["dtype"] == "uint8"


def test_shard_option_on_the_command_line(tmp_path, manifest, monkeypatch):
    from patchcli.cli import main

    for key in ("SLURM_ARRAY_TASK_ID", "SGE_TASK_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("LSB_JOBINDEX", raising=False)
    config = tmp_path / "config.yaml"
    _config(tmp_path, manifest)
    runner = CliRunner()
    result = runner.invoke(main, ["uniform", str(config), "--shard", "1/2", "-q"])
    assert result.exit_code == 0, result.output
    assert "out.shard-1-of-2.h5" in result.output and "3 subjects" in result.output
    for shard, message in (("2/2", "0-based"), ("auto", "not in an array job")):
        result = runner.invoke(main, ["uniform", str(config), "--shard", shard])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    bad = write_config(tmp_path / "bad.yaml", subjects=str(manifest), shard="5/x")
    result = runner.invoke(main, ["uniform", str(bad)])
    assert result.exit_code == 1 and "bad.yaml: shard" in result.output
