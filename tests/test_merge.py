"""``patchcli merge``: shards back into one run, exactly, or a clear refusal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from patchcli.aggregate import aggregate_file
from patchcli.config import load_config
from patchcli.errors import ConfigError, DataError
from patchcli.extract import extract
from patchcli.merge import merge

from .helpers import assert_same_output, make_subjects, save_nifti, write_config

SHAPES = [(14, 12, 10), (12, 14, 11), (13, 11, 12), (11, 13, 14), (12, 12, 12)]
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path, _ = make_subjects(tmp_path_factory.mktemp("merge-data"), SHAPES)
    return path


def _config(output: Path, manifest: Path, **keys):
    base = dict(
        subjects=str(manifest),
        images=IMAGES,
        patch_size=[6, 5, 4],
        num_patches=4,
        seed=3,
        output={"path": str(output)},
    )
    base.update(keys)
    for key in ("format", "compression"):  # output keys given flat
        if key in keys:
            base["output"][key] = base.pop(key)
    return load_config(write_config(output.parent / f"{output.name}.yaml", **base))


def _shards(output: Path, manifest: Path, count: int, sampler="weighted", **keys) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    config = _config(output, manifest, **keys)
    return [
        extract(config.model_copy(update={"shard": f"{i}/{count}"}), sampler).path
        for i in range(count)
    ]


def _reference(folder: Path, manifest: Path, sampler="weighted", name="reference.h5", **keys):
    folder.mkdir(parents=True, exist_ok=True)
    return extract(_config(folder / name, manifest, **keys), sampler).path


def _nothing_written(output: Path) -> bool:
    return not [p for p in output.parent.iterdir() if p.name.startswith(output.name)]


# ------------------------------------------------------------------ exact
@pytest.mark.parametrize("count", [1, 2, 3])
def test_hdf5_merges_equal_an_unsharded_run(tmp_path, manifest, count):
    reference = _reference(tmp_path / "ref", manifest)
    output = tmp_path / "out" / "patches.h5"
    shards = _shards(output, manifest, count)
    summary = merge(output)
    assert (summary.mode, summary.shards, summary.subjects) == ("virtual", count, len(SHAPES))
    assert_same_output(output, reference, merged=True)
    with h5py.File(output) as file:
        dataset = file["patches/t1"]
        assert dataset.is_virtual
        assert {m.file_name for m in dataset.virtual_sources()} == {p.name for p in shards}
        assert file.attrs["merge"] == "virtual" and file.attrs["shard_count"] == count
        assert "shard_index" not in file.attrs

    copied = tmp_path / "copied" / "patches.h5"
    copied.parent.mkdir()
    summary = merge(copied, shards, copy=True)
    assert summary.mode == "copy"
    for shard in shards:
        shard.rename(shard.with_suffix(".moved"))
    with h5py.File(copied) as file:
        assert not any(file[f"patches/{name}"].is_virtual for name in IMAGES)
    assert_same_output(copied, reference, merged=True)


@pytest.mark.parametrize("copy", [False, True])
def test_nifti_merges_equal_an_unsharded_run(tmp_path, manifest, copy):
    reference = _reference(tmp_path / "ref", manifest, name="reference", format="nifti")
    output = tmp_path / "out" / "patches"
    shards = _shards(output, manifest, 3, format="nifti")
    summary = merge(output, copy=copy)
    assert summary.mode == "nifti" and summary.patches == 4 * len(SHAPES)
    assert_same_output(output, reference, merged=True)
    assert all(shard.exists() for shard in shards) == copy
    assert not any(shard.exists() for shard in shards) or copy


def test_patch_dataset_reads_a_merge_like_the_unsharded_run_even_moved(tmp_path, manifest, torch):
    from patchcli import PatchDataset

    reference = PatchDataset(_reference(tmp_path / "ref", manifest))
    output = tmp_path / "run" / "patches.h5"
    _shards(output, manifest, 3)
    merge(output)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "run", moved)
    merged = PatchDataset(moved / "patches.h5")
    assert len(merged) == len(reference)
    for index in range(len(reference)):
        a, b = merged[index], reference[index]
        assert a["subject"] == b["subject"]
        assert torch.equal(a["location"], b["location"])
        for name in IMAGES:
            assert torch.equal(a[name]["data"], b[name]["data"])
            assert torch.equal(a[name]["affine"], b[name]["affine"])
    batch = merged[[17, 2, 9]]
    assert torch.equal(batch["t1"]["data"], reference[[17, 2, 9]]["t1"]["data"])
    with h5py.File(moved / "patches.h5") as file, h5py.File(reference.paths[0]) as plain:
        np.testing.assert_array_equal(file["patches/seg"][()], plain["patches/seg"][()])


def test_grid_shards_aggregate_like_the_unsharded_grid(tmp_path, manifest):
    grid = dict(patch_overlap=2, padding_mode="edge")
    reference = _reference(tmp_path / "ref", manifest, "grid", **grid)
    output = tmp_path / "out" / "grid.h5"
    _shards(output, manifest, 2, "grid", **grid)
    merge(output)
    mine = aggregate_file(output, "t1", tmp_path / "merged-volumes")
    theirs = aggregate_file(reference, "t1", tmp_path / "reference-volumes")
    assert [p.name for p in mine] == [p.name for p in theirs]
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())
    source = nib.load(manifest.parent / "s2_t1.nii.gz").get_fdata()
    np.testing.assert_array_equal(nib.load(mine[2]).get_fdata(), source)


def test_shards_of_different_dtypes_merge_to_the_unsharded_dtype(tmp_path):
    manifest = _mixed_dtype_manifest(tmp_path)
    keys = dict(images={"t1": "intensity"}, patch_size=4, num_patches=3)
    config = load_config(
        None, {"subjects": str(manifest), **keys, "output.path": str(tmp_path / "o.h5")}
    )
    shards = [
        extract(config.model_copy(update={"shard": f"{i}/2"}), "uniform").path for i in range(2)
    ]
    with h5py.File(shards[0]) as a, h5py.File(shards[1]) as b:
        assert (a["patches/t1"].dtype, b["patches/t1"].dtype) == (np.uint8, np.int16)
    whole = extract(
        config.model_copy(
            update={"output": config.output.model_copy(update={"path": tmp_path / "w.h5"})}
        ),
        "uniform",
    )
    merge(tmp_path / "o.h5")
    merge(tmp_path / "c.h5", shards, copy=True)
    for merged in (tmp_path / "o.h5", tmp_path / "c.h5"):
        with h5py.File(merged) as file, h5py.File(whole.path) as reference:
            assert file["patches/t1"].dtype == reference["patches/t1"].dtype == np.int16
            np.testing.assert_array_equal(file["patches/t1"][()], reference["patches/t1"][()])


def test_gzip_copy_reads_without_the_plugin(tmp_path, manifest):
    output = tmp_path / "patches.h5"
    # Patches large enough that Blosc compresses them (it stores tiny chunks as they are).
    shards = _shards(output, manifest, 2, patch_size=10)
    merge(output, copy=True, compression="gzip")
    with h5py.File(output) as file:
        assert file["patches/t1"].compression == "gzip"
        assert file.attrs["compression"] == "gzip"
        assert "compression: gzip" in file.attrs["config"]
    merge(tmp_path / "lz4.h5", shards, copy=True)
    with h5py.File(tmp_path / "lz4.h5") as file:
        info = file["patches/seg"].id.get_chunk_info(0)
        assert info.filter_mask == 0 and info.size < 1000  # lz4 applied to its 1000 bytes
    # seg compresses (t1 here is noise, which Blosc stores as is).
    code = "import h5py, sys; print(h5py.File(sys.argv[1])['patches/seg'][:].sum())"
    plain = subprocess.run(
        [sys.executable, "-c", code, str(output)], capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    with h5py.File(output) as file:
        assert int(plain.stdout) == int(file["patches/seg"][:].sum())
    blosc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "lz4.h5")], capture_output=True, text=True
    )
    assert blosc.returncode != 0  # the default lz4 needs hdf5plugin (docs/format.md)


# --------------------------------------------------------------- refusals
def _refused(output: Path, *args, match: str, error=DataError, **kwargs) -> str:
    with pytest.raises(error, match=match) as caught:
        merge(output, *args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_missing_duplicated_and_mismatched_shards_are_refused(tmp_path, manifest):
    output = tmp_path / "patches.h5"
    shards = _shards(output, manifest, 3)
    shards[1].rename(tmp_path / "aside.h5")
    (tmp_path / "patches.shard-1-of-3.h5.partial").touch()
    message = _refused(output, match="missing 1 of 3 shards: patches.shard-1-of-3.h5")
    assert "only as .partial" in message
    assert _nothing_written(output) or not (tmp_path / "patches.h5").exists()
    (tmp_path / "aside.h5").rename(shards[1])

    _refused(output, [shards[0], shards[0], shards[1], shards[2]], match="shard 0 of 3 appears 2")

    (tmp_path / "seed").mkdir()
    other = _config(tmp_path / "seed" / "patches.h5", manifest, seed=99)
    odd = extract(other.model_copy(update={"shard": "1/3"}), "weighted").path
    message = _refused(output, [shards[0], odd, shards[2]], match="fingerprint")
    assert "mismatched shards: patches.shard-1-of-3.h5" in message

    four = _shards(tmp_path / "four" / "patches.h5", manifest, 4)
    _refused(output, [shards[0], shards[1], four[2]], match="shard count")

    whole = _reference(tmp_path / "whole", manifest)
    _refused(output, [whole], match="not a shard")  # virtually: nothing to merge
    _refused(output, [whole, shards[1]], match="not a shard", copy=True)

    version1 = tmp_path / "v1.h5"
    shutil.copy(shards[0], version1)
    with h5py.File(version1, "r+") as file:
        file.attrs["format_version"] = 1
    _refused(output, [version1, shards[1], shards[2]], match=r"v1.h5: differs .* format version")

    assert not (tmp_path / "patches.h5").exists() and not (tmp_path / "patches.h5.partial").exists()
    assert not (tmp_path / "patches.h5.lock").exists()
    with pytest.raises(ConfigError, match="need --copy"):
        merge(output, compression="gzip")


def test_manifest_rows_missing_or_held_twice_are_refused(tmp_path, manifest):
    output = tmp_path / "patches.h5"
    shards = _shards(output, manifest, 2)
    tampered = tmp_path / "tampered.shard-1-of-2.h5"
    shutil.copy(shards[1], tampered)
    with h5py.File(tampered, "r+") as file:
        rows = file["subjects/manifest_row"]
        rows[0] = 0  # also in shard 0
    _refused(output, [shards[0], tampered], match="manifest row 0 .* is in both")
    with h5py.File(tampered, "r+") as file:
        file["subjects/manifest_row"][0] = 2
        file["subjects/manifest_row"][-1] = 3  # rows 2, 3, 3: row 4 missing, 3 twice
    _refused(output, [shards[0], tampered], match="manifest row 3 .* is in both")
    with h5py.File(tampered, "r+") as file:
        file["subjects/manifest_row"][-1] = 99
    _refused(output, [shards[0], tampered], match="manifest row 99, outside the manifest's 5")
    alone = tmp_path / "alone.h5"
    shutil.copy(shards[0], alone)
    with h5py.File(alone, "r+") as file:
        file.attrs["shard_count"] = 1
        file.attrs["shard_index"] = 0
    _refused(output, [alone], match=r"do not hold manifest rows 2, 3, 4 of 5")
    renamed = tmp_path / "patches.shard-1-of-2.h5"
    shutil.copy(shards[0], tmp_path / "copy0.h5")
    renamed.unlink()
    shutil.copy(tmp_path / "copy0.h5", renamed)
    _refused(output, match="appears 2 times")


def test_a_virtual_merge_of_shards_elsewhere_is_refused(tmp_path, manifest):
    shards = _shards(tmp_path / "elsewhere" / "patches.h5", manifest, 2)
    output = tmp_path / "out" / "patches.h5"
    output.parent.mkdir()
    _refused(output, shards, match="--copy")
    assert merge(output, shards, copy=True).mode == "copy"


def test_a_missing_shard_of_a_merge_is_refused_by_every_reader(tmp_path, manifest, torch):
    from patchcli import PatchDataset

    output = tmp_path / "grid.h5"
    shards = _shards(output, manifest, 3, "grid", patch_overlap=2)
    merge(output)
    shards[2].unlink()
    with h5py.File(output) as file:
        last = file["patches/t1"][len(file["locations"]) - 1]
    assert not last.any()  # what HDF5 alone gives: zeros, no error
    with pytest.raises(
        DataError, match=r"1 of the 3 shards it reads are missing \(grid.shard-2-of-3.h5\)"
    ):
        PatchDataset(output)
    with pytest.raises(DataError, match="shards it reads are missing"):
        aggregate_file(output, "t1", tmp_path / "volumes")


def test_merge_command(tmp_path, manifest):
    from patchcli.cli import main

    output = tmp_path / "patches.h5"
    shards = _shards(output, manifest, 2)
    runner = CliRunner()
    result = runner.invoke(main, ["merge", str(output), "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("merge: 2 shards, 20 patches from 5 subjects (virtual")
    again = runner.invoke(main, ["merge", str(output)])
    assert (
        again.exit_code == 1
        and again.output.startswith("Error: ")
        and "--overwrite" in again.output
    )
    named = runner.invoke(main, ["merge", str(tmp_path / "named.h5"), *map(str, shards), "--copy"])
    assert named.exit_code == 0 and "(copied)" in named.output
    bad = runner.invoke(main, ["merge", str(tmp_path / "x.h5"), "--compression", "gzip"])
    assert bad.exit_code == 1 and "need --copy" in bad.output


def test_merge_is_refused_while_another_process_claims_the_output(tmp_path, manifest):
    import os
    import socket

    from patchcli.io.claim import Claim

    output = tmp_path / "patches.h5"
    _shards(output, manifest, 2)
    with Claim(output):
        message = _refused(output, match="being written by another run")
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in message
    assert merge(output).shards == 2


def test_no_shards_at_all_or_not_patch_outputs(tmp_path):
    _refused(tmp_path / "patches.h5", match="no shards found beside it")
    (tmp_path / "grid.shard-0-of-1").mkdir()
    _refused(tmp_path / "grid", match="not a patchcli NIfTI output folder")


def _mixed_dtype_manifest(folder: Path) -> Path:
    """4 subjects: t1 uint8 in the first two, int16 in the others."""
    rng = np.random.default_rng(0)
    rows = ["subject,t1"]
    for index in range(4):
        dtype, high = (np.uint8, 200) if index < 2 else (np.int16, 3000)
        path = save_nifti(
            folder / f"m{index}.nii.gz", rng.integers(0, high, (9, 9, 9)).astype(dtype)
        )
        rows.append(f"m{index},{path.name}")
    manifest = folder / "mixed.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_nifti_shards_of_different_dtypes_merge_to_the_unsharded_files(tmp_path):
    manifest = _mixed_dtype_manifest(tmp_path)
    keys = dict(images={"t1": "intensity"}, patch_size=4, num_patches=3, format="nifti")
    reference = _reference(tmp_path / "ref", manifest, "uniform", name="reference", **keys)
    output = tmp_path / "out" / "patches"
    _shards(output, manifest, 2, "uniform", **keys)
    merge(output)
    assert nib.load(output / "m0" / "t1_000000.nii.gz").get_data_dtype() == np.int16
    assert_same_output(output, reference, merged=True)


def test_a_shard_replaced_after_a_virtual_merge_is_refused_on_reading(tmp_path, manifest, torch):
    from patchcli import PatchDataset

    output = tmp_path / "patches.h5"
    shards = _shards(output, manifest, 3)
    merge(output)
    other = _config(output, manifest, seed=99)  # same shapes, another run
    shards[1].unlink()
    extract(other.model_copy(update={"shard": "1/3"}), "weighted")
    dataset = PatchDataset(output)
    dataset[0]  # shard 0 is the merge's own
    with pytest.raises(DataError, match=r"shard-1-of-3.h5: is not the shard .* replaced"):
        dataset[len(dataset) // 2]


def test_a_compression_level_alone_recompresses_with_the_shards_compression(tmp_path, manifest):
    output = tmp_path / "patches.h5"
    _shards(output, manifest, 2, patch_size=10, compression="gzip")
    merge(output, copy=True, compression_level=9)
    with h5py.File(output) as file:
        assert file["patches/seg"].compression == "gzip"
        assert file["patches/seg"].compression_opts == 9
        assert "compression_level: 9" in file.attrs["config"]
    none = tmp_path / "none" / "patches.h5"
    none.parent.mkdir()
    _shards(none, manifest, 2, compression="none")
    with pytest.raises(ConfigError, match="the shards have none"):
        merge(none, copy=True, compression_level=3)
