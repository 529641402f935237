"""``patchcli info``: what an output holds, as text and as JSON."""

from __future__ import annotations

import json

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.config import load_config
from patchcli.extract import extract
from patchcli.info import describe_output

from .helpers import make_subjects, write_config

SHAPES = [(14, 12, 10), (12, 14, 10), (10, 12, 14)]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_subjects(tmp_path_factory.mktemp("info-data"), SHAPES)[0]


def _run(folder, manifest, name, sampler="uniform", **keys):
    output = {"path": str(folder / name), **keys.pop("output", {})}
    config = write_config(
        folder / f"{name}.yaml",
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=[6, 5, 4],
        num_patches=7,
        seed=2,
        output=output,
        **keys,
    )
    return extract(load_config(config), sampler).path


def _info(*arguments):
    return CliRunner().invoke(main, ["info", *map(str, arguments)])


def test_an_hdf5_run_described_as_text_and_json(tmp_path, manifest):
    path = _run(tmp_path, manifest, "run.h5")
    result = _info(path)
    assert result.exit_code == 0, result.output
    assert "one run" in result.output
    assert "sampler: uniform, seed 2, patch size 6x5x4" in result.output
    assert "21 patches from 3 subjects" in result.output
    assert "t1           intensity     int16    1x6x5x4" in result.output
    assert "import hdf5plugin" in result.output  # lz4, the default, needs the plugin
    described = json.loads(_info(path, "--json").output)
    assert [s["patches"] for s in described["subjects"]] == [7, 7, 7]
    assert [s["manifest_row"] for s in described["subjects"]] == [0, 1, 2]
    assert described["images"][1] == {
        "name": "seg", "type": "label", "dtype": "uint8", "channels": 1, "patch_shape": [1, 6, 5, 4]
    }  # fmt: skip
    # The patches' own bytes: 21 x 120 voxels x (2 + 1) bytes.
    assert described["bytes_uncompressed"] == 21 * 120 * 3
    assert described["bytes_on_disk"] == path.stat().st_size
    assert described["role"] == {"kind": "run", "total_subjects": 3}
    assert described["parameters"] == {"num_patches": 7}
    assert "uniform" in described["config"] and described["config_fingerprint"]


def test_gzip_and_uncompressed_files_need_no_plugin_note(tmp_path, manifest):
    for compression in ("gzip", "none"):
        path = _run(tmp_path, manifest, f"{compression}.h5", output={"compression": compression})
        described = describe_output(path)
        assert described["compression"] == compression and described["notes"] == []


def test_a_shard_and_a_grid_say_what_they_are(tmp_path, manifest):
    path = _run(tmp_path, manifest, "grid.h5", "grid", shard="1/2", patch_overlap=2)
    described = describe_output(path.with_name("grid.shard-1-of-2.h5"))
    assert described["role"] == {"kind": "shard", "index": 1, "count": 2, "total_subjects": 3}
    assert described["patch_overlap"] == [2, 2, 2] and described["sampler"] == "grid"
    assert [s["id"] for s in described["subjects"]] == ["s1", "s2"]  # blocks of 1 and 2


def test_a_nifti_folder(tmp_path, manifest, torch):
    folder = _run(tmp_path, manifest, "folder", output={"format": "nifti"})
    result = _info(folder)
    assert result.exit_code == 0, result.output
    assert "NIfTI folder" in result.output and "21 patches from 3 subjects" in result.output
    described = describe_output(folder)
    files = [item for item in folder.rglob("*") if item.is_file()]
    assert described["bytes_on_disk"] == sum(item.stat().st_size for item in files)


def test_a_virtual_merge_with_a_missing_shard_is_reported(tmp_path, manifest):
    for index in (0, 1):
        _run(tmp_path, manifest, "merged.h5", shard=f"{index}/2")
    runner = CliRunner()
    assert runner.invoke(main, ["merge", str(tmp_path / "merged.h5")]).exit_code == 0
    complete = describe_output(tmp_path / "merged.h5")
    assert [shard["present"] for shard in complete["role"]["shards"]] == [True, True]
    (tmp_path / "merged.shard-1-of-2.h5").unlink()
    result = _info(tmp_path / "merged.h5")
    assert result.exit_code == 1
    assert "merged.shard-0-of-2.h5: present" in result.output
    assert "merged.shard-1-of-2.h5: MISSING" in result.output


def test_not_a_patch_output_is_a_one_line_error(tmp_path):
    stray = tmp_path / "stray.h5"
    with h5py.File(stray, "w") as file:
        file["x"] = np.zeros(3)
    result = _info(stray)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "stray.h5" in result.output


def test_a_whole_run_is_converted_to_gzip_by_merge_copy(tmp_path, manifest):
    path = _run(tmp_path, manifest, "lz4.h5")
    copy = tmp_path / "lz4.gzip.h5"
    result = CliRunner().invoke(
        main, ["merge", str(copy), str(path), "--copy", "--compression", "gzip"]
    )
    assert result.exit_code == 0, result.output
    with h5py.File(copy) as converted, h5py.File(path) as original:
        assert converted["patches/t1"].compression == "gzip"
        for name in ("patches/t1", "patches/seg", "locations", "subject_index"):
            np.testing.assert_array_equal(converted[name][:], original[name][:])
