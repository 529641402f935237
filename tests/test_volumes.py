"""``patchcli volumes``: each subject's volumes stored whole, chunked, with sampling tables.

A store is written by the same run as patch outputs (claims, checkpoints, resume,
shards, merge, info, dry runs, the fingerprint, full-disk reservations); these tests
check that what it stores is the source (or the preprocessed source) exactly, and that
each of those mechanisms gives the store an uninterrupted, unsharded run writes.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filters for reading)
import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.config import load_config
from patchcli.errors import ConfigError, DataError, PatchcliWarning
from patchcli.extract import extract
from patchcli.info import describe_output
from patchcli.io.partial import PartialOutput
from patchcli.io.reader import read_patch_output
from patchcli.io.store import VolumeStoreWriter, read_label_runs, read_row_totals
from patchcli.plan import plan_extraction
from patchcli.sampling.tables import LabelRuns, RowTotals
from patchcli.signals import Interrupted

from .helpers import assert_same_output, make_subjects, save_nifti, write_config
from .test_disk_full import small_disk  # noqa: F401  (the tmpfs fixture, required the same way)

#: s1 spans more than one 32^3 chunk on two axes; s2 is the only one under 20 voxels wide.
SHAPES = [(20, 22, 18), (40, 34, 21), (19, 19, 19), (21, 20, 19)]
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map", "dwi": "intensity"}
PATCH_SIZE = (8, 6, 5)
#: Blosc's code of each compressor (the last value of the filter's parameters).
BLOSC_COMPRESSORS = {"lz4": 1, "zstd": 5}
BLOSC = 32001


def make_store_subjects(folder: Path, shapes=SHAPES, seed: int = 0):
    """make_subjects' t1 (int16), seg (uint8, labels 0 to 2) and prob (float32), and a
    two-channel float32 "dwi". Returns (manifest, {subject: {image: (C, X, Y, Z)}})."""
    manifest, arrays = make_subjects(folder, shapes, seed)
    rng = np.random.default_rng(seed + 100)
    with open(manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))
    volumes = {}
    for row in rows:
        subject = row["subject"]
        dwi = rng.standard_normal((2, *arrays[subject]["t1"].shape)).astype(np.float32)
        row["dwi"] = save_nifti(folder / f"{subject}_dwi.nii.gz", dwi).name
        volumes[subject] = {name: array[np.newaxis] for name, array in arrays[subject].items()}
        volumes[subject]["dwi"] = dwi
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, volumes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_store_subjects(tmp_path_factory.mktemp("volumes-data") / "data")


def config_keys(folder: Path, manifest: Path, name: str = "store.h5", **keys) -> dict:
    """A store's config as a mapping; ``None`` values drop a key (``patch_size=None``)."""
    base = dict(
        subjects=str(manifest),
        images=IMAGES,
        patch_size=list(PATCH_SIZE),
        seed=1,
        workers=0,
        output={"path": str(folder / name)},
    )
    output = keys.pop("output", {})
    base.update(keys)
    base["output"] = {**base["output"], **output}
    return {key: value for key, value in base.items() if value is not None}


def store_config(folder: Path, manifest: Path, name: str = "store.h5", **keys):
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder / f"{name}.yaml", **config_keys(folder, manifest, name, **keys))
    return load_config(path)


def config_file(folder: Path, manifest: Path, name: str = "store.h5", **keys) -> Path:
    return write_config(folder / f"{name}.yaml", **config_keys(folder, manifest, name, **keys))


def stored_volumes(path: Path) -> dict:
    """``{subject: {image: array}}`` of a store, read with h5py (external links followed)."""
    with h5py.File(path, "r") as file:
        return {
            subject: {name: file[f"volumes/{subject}/{name}"][()] for name in IMAGES}
            for subject in file["volumes"]
        }


def subjects_table(path: Path) -> dict:
    with h5py.File(path, "r") as file:
        group = file["subjects"]
        return {
            "id": [value.decode() for value in group["id"][()]],
            "shape": group["shape"][()].tolist(),
            "affine": group["affine"][()],
            "manifest_row": group["manifest_row"][()].tolist(),
            "patch_start": group["patch_start"][()].tolist(),
            "patch_count": group["patch_count"][()].tolist(),
            "source": {
                name: [value.decode() for value in group[f"source/{name}"][()]] for name in IMAGES
            },
        }


def chunk_storage(dataset: h5py.Dataset) -> list:
    """How a dataset's chunks are stored: (offset, filter mask, bytes), in order."""
    chunks = []
    dataset.id.chunk_iter(
        lambda info: chunks.append((info.chunk_offset, info.filter_mask, info.size))
    )
    return sorted(chunks)


def invoke(*arguments: str):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


# ------------------------------------------------------------ what is stored
@pytest.mark.parametrize(
    ("compression", "chunks"), [(None, None), ("gzip", None), ("zstd", 16), ("none", [16, 40, 8])]
)
def test_stored_volumes_equal_the_sources(tmp_path, data, compression, chunks):
    manifest, volumes = data
    output = {} if compression is None else {"compression": compression}
    if chunks is not None:
        output["chunks"] = chunks
    summary = extract(store_config(tmp_path, manifest, output=output), "volumes")
    assert (summary.subjects, summary.patches) == (len(SHAPES), len(SHAPES))
    chosen = compression or "lz4"  # lz4 by default
    chunk_shape = (32, 32, 32) if chunks is None else np.broadcast_to(chunks, 3).tolist()
    with h5py.File(summary.path, "r") as file:
        attributes = file.attrs
        assert attributes["format"] == "patchcli-volumes" and attributes["format_version"] == 1
        assert attributes["sampler"] == "volumes" and attributes["compression"] == chosen
        assert list(attributes["images"]) == list(IMAGES)
        assert list(attributes["image_types"]) == list(IMAGES.values())
        assert attributes["chunk_shape"].tolist() == list(chunk_shape)
        assert attributes["patch_size"].tolist() == list(PATCH_SIZE)
        assert sorted(file["volumes"]) == ["s0", "s1", "s2", "s3"]
        for subject, shape in zip(["s0", "s1", "s2", "s3"], SHAPES):
            assert sorted(file[f"volumes/{subject}"]) == sorted(IMAGES)
            for name, source in volumes[subject].items():
                dataset = file[f"volumes/{subject}/{name}"]
                # Channels first, every channel in each chunk, cut to the volume.
                assert dataset.shape == (source.shape[0], *shape), (subject, name)
                assert dataset.dtype == source.dtype
                cut = tuple(min(c, n) for c, n in zip(chunk_shape, shape))
                assert dataset.chunks == (source.shape[0], *cut)
                np.testing.assert_array_equal(dataset[()], source, err_msg=f"{subject} {name}")
                # A (C, X, Y, Z) volume in C order: voxel (c, x, y, z) is the source's.
                assert dataset[1 if name == "dwi" else 0, 3, 2, 1] == source[-1, 3, 2, 1]
                # Every chunk carries a checksum: a damaged chunk is an error, not other values.
                assert dataset.fletcher32
                if chosen == "gzip":
                    assert dataset.compression == "gzip"
                elif chosen == "none":
                    assert dataset.compression is None and set(dataset._filters) == {"fletcher32"}
                else:
                    parameters = dataset._filters[str(BLOSC)]
                    assert parameters[-1] == BLOSC_COMPRESSORS[chosen]
            if chosen != "none":
                # The filter ran: the mostly empty label map takes a fraction of its bytes.
                seg = file[f"volumes/{subject}/seg"]
                assert sum(size for _, _, size in chunk_storage(seg)) < seg.nbytes / 4
    # The subjects table, as in patch files: one "row" per subject.
    table = subjects_table(summary.path)
    assert table["id"] == ["s0", "s1", "s2", "s3"]
    assert table["shape"] == [list(shape) for shape in SHAPES]
    assert table["manifest_row"] == [0, 1, 2, 3]
    assert (table["patch_start"], table["patch_count"]) == ([0, 1, 2, 3], [1, 1, 1, 1])
    for number, subject in enumerate(table["id"]):
        source = manifest.parent / f"{subject}_t1.nii.gz"
        np.testing.assert_allclose(table["affine"][number], nib.load(source).affine, atol=1e-6)
        for name in IMAGES:
            assert table["source"][name][number] == str(
                manifest.parent / f"{subject}_{name}.nii.gz"
            )
    output_ = read_patch_output(summary.path)
    assert output_.kind == "volumes" and output_.num_patches == len(SHAPES)
    assert output_.locations.tolist() == [[0, 0, 0, *shape] for shape in SHAPES]
    assert output_.channels == {"t1": 1, "seg": 1, "prob": 1, "dwi": 2}


def test_to_canonical_stores_the_reoriented_volumes(tmp_path):
    rng = np.random.default_rng(4)
    shape = (13, 11, 9)
    lps = np.diag([-1.2, -1.0, 2.0, 1.0])  # x and y point left and posterior
    lps[:3, 3] = (30.0, 40.0, -5.0)
    t1 = rng.integers(-100, 1000, shape).astype(np.int16)
    seg = (t1 > 600).astype(np.uint8) + (t1 > 900)
    paths = {
        "t1": save_nifti(tmp_path / "a_t1.nii.gz", t1, lps),
        "seg": save_nifti(tmp_path / "a_seg.nii.gz", seg, lps),
    }
    subjects = [{"id": "a", **{name: str(path) for name, path in paths.items()}}]
    keys = dict(images={"t1": "intensity", "seg": "label"}, output={"path": str(tmp_path / "s.h5")})
    plain = extract(
        load_config(write_config(tmp_path / "plain.yaml", subjects=subjects, **keys)), "volumes"
    )
    config = write_config(
        tmp_path / "canonical.yaml",
        subjects=subjects,
        preprocess=["ToCanonical"],
        **{**keys, "output": {"path": str(tmp_path / "c.h5")}},
    )
    canonical = extract(load_config(config), "volumes")
    reference = nib.as_closest_canonical(nib.load(paths["t1"]))
    with h5py.File(plain.path) as before, h5py.File(canonical.path) as after:
        np.testing.assert_allclose(before["subjects/affine"][0], lps, atol=1e-6)
        affine = after["subjects/affine"][0]
        # RAS: positive axes, and the origin moved to the voxel that was last along x and y.
        np.testing.assert_allclose(affine, reference.affine, atol=1e-5)
        np.testing.assert_allclose(np.diag(affine)[:3], [1.2, 1.0, 2.0], atol=1e-6)
        np.testing.assert_allclose(affine[:3, 3], lps[:3, :3] @ [12, 10, 0] + lps[:3, 3], atol=1e-5)
        np.testing.assert_array_equal(after["volumes/a/t1"][0], t1[::-1, ::-1, :])
        np.testing.assert_array_equal(after["volumes/a/t1"][0], np.asanyarray(reference.dataobj))
        np.testing.assert_array_equal(after["volumes/a/seg"][0], seg[::-1, ::-1, :])
        # The label runs are those of the stored (reoriented) map.
        _same_runs(read_label_runs(after, "a", "seg"), LabelRuns.of(seg[::-1, ::-1, :]))
        # The grid before preprocessing is recorded, as for patch outputs.
        np.testing.assert_allclose(after["subjects/source_grid/t1/affine"][0], lps, atol=1e-6)
        assert after["subjects/source_grid/t1/shape"][0].tolist() == list(shape)
        assert "ToCanonical" in after.attrs["config"]


def _same_runs(found: LabelRuns, expected: LabelRuns) -> bool:
    assert found.shape == expected.shape
    for key in ("labels", "offsets", "rows", "starts", "stops"):
        np.testing.assert_array_equal(getattr(found, key), getattr(expected, key), err_msg=key)
    return True


def rebuild(runs: LabelRuns) -> np.ndarray:
    """The (X, Y, Z) label map that label runs describe (-1 where no run covers a voxel)."""
    size_x, size_y, size_z = runs.shape
    rebuilt = np.full((size_x * size_y, size_z), -1, dtype=np.int64)
    for number, label in enumerate(runs.labels.tolist()):
        part = slice(int(runs.offsets[number]), int(runs.offsets[number + 1]))
        for row, start, stop in zip(runs.rows[part], runs.starts[part], runs.stops[part]):
            assert (rebuilt[row, start:stop] == -1).all(), "two runs cover one voxel"
            rebuilt[row, start:stop] = label
    return rebuilt.reshape(runs.shape)


def row_totals(probability_map: np.ndarray, patch_size) -> np.ndarray:
    """``(X * Y,)``: each row's sum over the centres a patch can have (0 for other rows).

    A patch of ``p`` voxels centred on ``c`` (its first voxel at ``c - p // 2``) fits an
    axis of ``n`` voxels when ``p // 2 <= c <= n - p + p // 2``.
    """
    size_x, size_y, _ = probability_map.shape
    totals = np.zeros((size_x, size_y))
    low = [p // 2 for p in patch_size]
    high = [n - p + p // 2 for n, p in zip(probability_map.shape, patch_size)]
    for x in range(low[0], high[0] + 1):
        for y in range(low[1], high[1] + 1):
            totals[x, y] = probability_map[x, y, low[2] : high[2] + 1].astype(np.float64).sum()
    return totals.ravel()


# ---------------------------------------------------------------- the tables
def test_label_runs_rebuild_each_label_map_and_row_totals_follow_the_map(tmp_path, data):
    manifest, volumes = data
    summary = extract(store_config(tmp_path, manifest), "volumes")
    with h5py.File(summary.path, "r") as file:
        for subject, shape in zip(["s0", "s1", "s2", "s3"], SHAPES):
            assert sorted(file[f"tables/{subject}"]) == ["label", "weights"]
            # Tables for the single-channel label image and the sampling map only.
            assert list(file[f"tables/{subject}/label"]) == ["seg"]
            assert list(file[f"tables/{subject}/weights"]) == ["prob"]
            runs = read_label_runs(file, subject, "seg")
            seg = volumes[subject]["seg"][0]
            assert runs.shape == shape
            np.testing.assert_array_equal(rebuild(runs), seg)
            assert runs.labels.tolist() == [0, 1, 2]
            _same_runs(runs, LabelRuns.of(seg))
            # Runs are maximal: no two runs of one label meet in a row.
            order = np.lexsort((runs.starts, runs.rows))
            rows, starts, stops = runs.rows[order], runs.starts[order], runs.stops[order]
            labels = np.repeat(runs.labels, np.diff(runs.offsets))[order]
            meet = (rows[1:] == rows[:-1]) & (starts[1:] == stops[:-1])
            assert not (meet & (labels[1:] == labels[:-1])).any()

            totals = read_row_totals(file, subject, "prob")
            assert totals.shape == shape and totals.patch_size == PATCH_SIZE
            assert totals.totals.dtype == np.float64
            expected = row_totals(volumes[subject]["prob"][0], PATCH_SIZE)
            np.testing.assert_allclose(totals.totals, expected, rtol=1e-12)
            assert (totals.totals == 0).sum() == (expected == 0).sum() > 0
            np.testing.assert_array_equal(
                totals.totals, RowTotals.of(volumes[subject]["prob"], PATCH_SIZE).totals
            )
            assert read_row_totals(file, subject, "seg") is None
            assert read_label_runs(file, subject, "prob") is None


def test_row_totals_only_with_a_patch_size(tmp_path, data):
    manifest, volumes = data
    summary = extract(store_config(tmp_path, manifest, patch_size=None), "volumes")
    with h5py.File(summary.path, "r") as file:
        assert "patch_size" not in file.attrs
        for subject in ("s0", "s1", "s2", "s3"):
            assert list(file[f"tables/{subject}"]) == ["label"]
            assert read_row_totals(file, subject, "prob") is None
            np.testing.assert_array_equal(
                rebuild(read_label_runs(file, subject, "seg")), volumes[subject]["seg"][0]
            )
    other = extract(store_config(tmp_path, manifest, "other.h5", patch_size=[4, 4, 4]), "volumes")
    with h5py.File(other.path, "r") as file:
        totals = read_row_totals(file, "s1", "prob")
        assert totals.patch_size == (4, 4, 4)
        expected = row_totals(volumes["s1"]["prob"][0], (4, 4, 4))
        np.testing.assert_allclose(totals.totals, expected, rtol=1e-12)


# ---------------------------------------------------- workers, shards, merges
def test_workers_do_not_change_the_store(tmp_path, data):
    manifest, _ = data
    serial = extract(store_config(tmp_path, manifest, "serial.h5", workers=0), "volumes")
    parallel = extract(store_config(tmp_path, manifest, "parallel.h5", workers=2), "volumes")
    # Every dataset, attribute and compressed chunk alike (but the recorded config).
    assert_same_output(parallel.path, serial.path)


def _assert_same_store(found: Path, reference: Path) -> None:
    """Two stores hold the same volumes, tables and subjects (read through any links)."""
    expected, got = stored_volumes(reference), stored_volumes(found)
    assert list(got) == list(expected)
    for subject, images in expected.items():
        for name, volume in images.items():
            assert got[subject][name].dtype == volume.dtype
            np.testing.assert_array_equal(got[subject][name], volume, err_msg=f"{subject} {name}")
    with h5py.File(found, "r") as a, h5py.File(reference, "r") as b:
        for subject in expected:
            _same_runs(read_label_runs(a, subject, "seg"), read_label_runs(b, subject, "seg"))
            np.testing.assert_array_equal(
                read_row_totals(a, subject, "prob").totals,
                read_row_totals(b, subject, "prob").totals,
            )
        for key in ("images", "image_types", "chunk_shape", "patch_size", "settings_fingerprint"):
            np.testing.assert_array_equal(a.attrs[key], b.attrs[key], err_msg=key)
        assert a.attrs["sampler"] == "volumes" and a.attrs["compression"] == b.attrs["compression"]
    table, reference_table = subjects_table(found), subjects_table(reference)
    for key, value in reference_table.items():
        np.testing.assert_equal(table[key], value, err_msg=key)


@pytest.mark.parametrize("copy", [False, True])
def test_shards_merge_to_the_unsharded_store(tmp_path, data, copy):
    manifest, _ = data
    reference = extract(store_config(tmp_path / "ref", manifest), "volumes").path
    folder = tmp_path / "run"
    folder.mkdir()
    config = config_file(folder, manifest)
    for shard in ("0/2", "1/2"):
        result = invoke("volumes", config, "--quiet", "--shard", shard)
        assert result.exit_code == 0, result.output
        assert "volumes: the volumes of 2 subjects" in result.output
    shards = sorted(folder.glob("store.shard-*"))
    assert [p.name for p in shards] == ["store.shard-0-of-2.h5", "store.shard-1-of-2.h5"]
    with h5py.File(shards[1], "r") as file:
        assert sorted(file["volumes"]) == ["s2", "s3"]
        assert (file.attrs["shard_index"], file.attrs["shard_count"]) == (1, 2)
    merged = folder / "store.h5"
    result = invoke("merge", merged, *(["--copy"] if copy else []), "--quiet")
    assert result.exit_code == 0, result.output
    how = "copied" if copy else "links to the shards"
    assert f"merge: 2 shards, the volumes of 4 subjects ({how})" in result.output
    _assert_same_store(merged, reference)
    with h5py.File(merged, "r") as file:
        assert file.attrs["merge"] == ("copy" if copy else "virtual")
        assert file.attrs["shard_count"] == 2 and "shard_index" not in file.attrs
        assert [f.decode() for f in file["shards/file"][()]] == [p.name for p in shards]
        for subject in ("s0", "s3"):
            link = file.get(f"volumes/{subject}", getlink=True)
            if copy:
                assert isinstance(link, h5py.HardLink)
                with h5py.File(reference, "r") as unsharded:
                    # Copied chunk for chunk: stored exactly as the unsharded run stores them.
                    for name in IMAGES:
                        assert chunk_storage(file[f"volumes/{subject}/{name}"]) == chunk_storage(
                            unsharded[f"volumes/{subject}/{name}"]
                        )
            else:
                assert isinstance(link, h5py.ExternalLink)
                assert link.filename == shards[0 if subject == "s0" else 1].name
                assert link.path == f"volumes/{subject}"
    if copy:  # self-contained: the shards can go
        for shard in shards:
            shard.unlink()
        _assert_same_store(merged, reference)
        assert read_patch_output(merged).kind == "volumes"


@pytest.mark.parametrize("copy", [False, True])
def test_a_merged_store_records_the_config_of_the_unsharded_run(tmp_path, data, copy):
    """As a merge of patch files does: the shards' config without their ``shard``."""
    manifest, _ = data
    config = store_config(tmp_path, manifest)
    for index in range(2):
        extract(config.model_copy(update={"shard": f"{index}/2"}), "volumes")
    assert invoke("merge", tmp_path / "store.h5", *(["--copy"] if copy else [])).exit_code == 0
    unsharded = extract(store_config(tmp_path / "whole", manifest), "volumes").path
    with h5py.File(tmp_path / "store.h5", "r") as merged, h5py.File(unsharded, "r") as whole:
        recorded = yaml.safe_load(merged.attrs["config"])
        expected = yaml.safe_load(whole.attrs["config"])
    assert "shard" not in recorded, recorded.get("shard")
    recorded["output"].pop("path"), expected["output"].pop("path")
    assert recorded == expected


def test_a_copied_merge_can_be_written_to_another_folder(tmp_path, data):
    """--copy writes one self-contained file: it needs no shards beside it (unlike a
    virtual merge, whose links are relative to its folder)."""
    manifest, _ = data
    reference = extract(store_config(tmp_path / "ref", manifest), "volumes").path
    folder = tmp_path / "run"
    folder.mkdir()
    config = store_config(folder, manifest)
    shards = [
        extract(config.model_copy(update={"shard": f"{i}/2"}), "volumes").path for i in range(2)
    ]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A virtual merge there is refused, naming the shard outside its folder...
    refused = invoke("merge", elsewhere / "virtual.h5", *shards, "--quiet")
    assert refused.exit_code == 1 and f"{shards[0]}: outside" in refused.output
    assert "merge with --copy" in refused.output
    # ... and with --copy, as that message says, the merge is made.
    result = invoke("merge", elsewhere / "store.h5", *shards, "--copy", "--quiet")
    assert result.exit_code == 0, result.output
    _assert_same_store(elsewhere / "store.h5", reference)


def test_info_describes_a_store_and_its_merge(tmp_path, data):
    manifest, _ = data
    folder = tmp_path / "run"
    folder.mkdir()
    config = store_config(folder, manifest)
    whole = extract(
        config.model_copy(
            update={"output": config.output.model_copy(update={"path": folder / "whole.h5"})}
        ),
        "volumes",
    ).path
    for index in range(2):
        extract(config.model_copy(update={"shard": f"{index}/2"}), "volumes")
    assert invoke("merge", folder / "store.h5", "--quiet").exit_code == 0

    result = invoke("info", whole)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == str(whole)
    assert lines[1].startswith("  volume store (HDF5), format version 1, one run, patchcli ")
    assert lines[2] == (
        "  volumes: each subject's images, chunked for patch reads; weighted tables for "
        "patches of 8x6x5"
    )
    assert "  the volumes of 4 subjects" in lines
    assert any(line.split() == ["t1", "intensity", "int16", "1xXxYxZ"] for line in lines)
    assert any(line.split() == ["dwi", "intensity", "float32", "2xXxYxZ"] for line in lines)
    assert any(line.split() == ["s2", "2", "1"] for line in lines)

    description = describe_output(whole)
    assert description["kind"] == "volumes" and description["tables_patch_size"] == [8, 6, 5]
    assert [s["shape"] for s in description["subjects"]] == [list(s) for s in SHAPES]
    voxel_bytes = 2 + 1 + 4 + 2 * 4
    assert description["bytes_uncompressed"] == voxel_bytes * sum(int(np.prod(s)) for s in SHAPES)

    merged = invoke("info", folder / "store.h5")
    assert merged.exit_code == 0, merged.output
    assert "volume store (HDF5), format version 1, merge (virtual)" in merged.output
    assert "  shards: 2 of 2 present" in merged.output
    assert "  the volumes of 4 subjects" in merged.output
    as_json = json.loads(invoke("info", folder / "store.h5", "--json").output)
    assert as_json["role"]["kind"] == "merge" and as_json["role"]["mode"] == "virtual"
    assert [s["id"] for s in as_json["subjects"]] == ["s0", "s1", "s2", "s3"]

    # A merge whose shard is gone is described, not read.
    (folder / "store.shard-1-of-2.h5").unlink()
    missing = invoke("info", folder / "store.h5")
    assert missing.exit_code == 1
    assert "  virtual merge of 2 shards, 1 present:" in missing.output
    assert "    store.shard-1-of-2.h5: MISSING" in missing.output


def test_the_gzip_store_info_suggests_for_an_lz4_store_can_be_made(tmp_path, data):
    """info's note on an lz4 store says how to make one every HDF5 tool reads (gzip); a store
    made so holds the same values, compressed with gzip."""
    manifest, _ = data
    store = extract(store_config(tmp_path, manifest), "volumes").path
    notes = describe_output(store)["notes"]
    assert any("output.compression: gzip" in note and "Blosc" in note for note in notes)
    config = store_config(tmp_path, manifest)
    gzip = config.model_copy(
        update={
            "output": config.output.model_copy(
                update={"compression": "gzip", "path": tmp_path / "gzip.h5"}
            )
        }
    )
    copy = extract(gzip, "volumes").path
    _assert_same_store_values(copy, store)
    with h5py.File(copy, "r") as file:
        assert file["volumes/s1/t1"].compression == "gzip"


def _assert_same_store_values(found: Path, reference: Path) -> None:
    expected, got = stored_volumes(reference), stored_volumes(found)
    assert list(got) == list(expected)
    for subject, images in expected.items():
        for name, volume in images.items():
            np.testing.assert_array_equal(got[subject][name], volume)


def test_dry_run_describes_the_store_and_writes_nothing(tmp_path, data):
    manifest, _ = data
    config = config_file(tmp_path, manifest)
    result = invoke("volumes", config, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "volumes: dry run, nothing written"
    assert "  subjects: 4 subjects" in lines
    assert "  volumes: each subject's 4 images, weighted tables for patches of 8x6x5" in lines
    assert f"  output: {tmp_path / 'store.h5'} (hdf5)" in lines
    assert not any(line.startswith("  patches:") for line in lines)
    assert [p.name for p in tmp_path.iterdir()] == ["store.h5.yaml"]


def test_dry_run_of_a_store_without_a_patch_size(tmp_path, data):
    # A store needs no patch size (then it has no weighted tables): its dry run neither.
    manifest, _ = data
    result = invoke("volumes", config_file(tmp_path, manifest, patch_size=None), "--dry-run")
    assert result.exit_code == 0, repr(result.exception)
    assert "  volumes: each subject's 4 images\n" in result.output
    assert "weighted tables" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["store.h5.yaml"]


# ---------------------------------------------------------------- resuming
def _stop_after_first_checkpoint(monkeypatch, config) -> Interrupted:
    """Run ``config``, stopped as by SIGTERM right after its first subject is recorded."""
    checkpoint = PartialOutput.checkpoint

    def stop(self, record):
        checkpoint(self, record)
        raise Interrupted(15)

    with monkeypatch.context() as patched:
        patched.setattr(PartialOutput, "checkpoint", stop)
        with pytest.raises(Interrupted) as caught:
            extract(config, "volumes")
    return caught.value


def _stop_inside_third_subject(monkeypatch, config) -> KeyboardInterrupt:
    """Run ``config``, stopped after the third subject's volumes are written, before it is
    recorded (its volumes and tables are in the ``.partial``, not in the journal)."""
    write_block = VolumeStoreWriter.write_block

    def stop(self, row, arrays, locations, subject_index):
        write_block(self, row, arrays, locations, subject_index)
        if subject_index == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(VolumeStoreWriter, "write_block", stop)
        with pytest.raises(KeyboardInterrupt) as caught:
            extract(config, "volumes")
    return caught.value


@pytest.mark.parametrize(
    ("stop", "workers", "done"),
    [(_stop_after_first_checkpoint, 0, 1), (_stop_inside_third_subject, 2, 2)],
)
def test_an_interrupted_run_resumes_to_the_uninterrupted_store(
    tmp_path, data, monkeypatch, stop, workers, done
):
    manifest, _ = data
    reference = extract(store_config(tmp_path, manifest, "reference.h5"), "volumes").path
    config = store_config(tmp_path, manifest, workers=workers)
    stopped = stop(monkeypatch, config)
    kept = stopped.kept_partial
    assert (kept.path, kept.done, kept.total) == (tmp_path / "store.h5.partial", done, 4)
    assert not (tmp_path / "store.h5").exists()
    assert not (tmp_path / "store.h5.lock").exists()
    if done == 2:  # the third subject's volumes are in the partial, unrecorded
        with h5py.File(kept.path, "r") as file:
            assert "s2" in file["volumes"] and "s2" in file["tables"]
    with pytest.raises(DataError, match=rf"left by an earlier run .*{done} of 4 subjects complete"):
        extract(config, "volumes")
    # Another preprocessing is another run: it cannot continue this one's subjects.
    other = store_config(tmp_path, manifest, "other.h5", preprocess=["ToCanonical"])
    other = other.model_copy(update={"output": config.output})
    with pytest.raises(DataError, match="fingerprint differs"):
        extract(other, "volumes", resume=True)
    summary = extract(config, "volumes", resume=True)
    assert summary.resumed == done and summary.subjects == 4
    assert_same_output(tmp_path / "store.h5", reference)
    leftovers = sorted(p.name for p in tmp_path.glob("store.h5*"))
    assert leftovers == ["store.h5", "store.h5.yaml"]  # no partial, journal or lock
    again = extract(config, "volumes", resume=True)
    assert again.already_complete and again.subjects == 4


def test_resume_through_the_cli_says_what_was_resumed(tmp_path, data, monkeypatch):
    manifest, _ = data
    path = config_file(tmp_path, manifest)
    _stop_after_first_checkpoint(monkeypatch, load_config(path))
    refused = invoke("volumes", path, "--quiet")
    assert refused.exit_code == 1 and "--resume" in refused.output
    result = invoke("volumes", path, "--quiet", "--resume")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("volumes: the volumes of 4 subjects (1 resumed)")


# ------------------------------------------------------------- bad subjects
@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, data):
    """The subjects, s1 missing its seg (found before any work) and s2's t1 cut short (its
    header reads, its voxels do not: found when the subject is loaded)."""
    manifest, _ = data
    folder = tmp_path_factory.mktemp("volumes-bad")
    for path in manifest.parent.iterdir():
        shutil.copy(path, folder / path.name)
    (folder / "s1_seg.nii.gz").unlink()
    content = (folder / "s2_t1.nii.gz").read_bytes()
    (folder / "s2_t1.nii.gz").write_bytes(content[: len(content) // 2])
    return folder / manifest.name


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_leaves_bad_subjects_out_and_lists_them(tmp_path, data, bad_data, workers):
    manifest, volumes = data
    config = store_config(tmp_path, bad_data, workers=workers, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatchcliWarning)
        summary = extract(config, "volumes")
    messages = [str(w.message) for w in caught if w.category is PatchcliWarning]
    assert [(s.id, s.manifest_row, s.stage) for s in summary.skipped] == [
        ("s1", 1, "plan"),
        ("s2", 2, "run"),
    ]
    assert summary.skipped[0].reason == f"{bad_data.parent / 's1_seg.nii.gz'}: file not found"
    assert summary.skipped[1].reason.startswith(f"{bad_data.parent / 's2_t1.nii.gz'}: cannot read")
    assert [m.split(":")[0] for m in messages] == [
        "skipped subject 's1' (manifest row 1)",
        "skipped subject 's2' (manifest row 2)",
    ]
    assert summary.subjects == 2
    output = read_patch_output(summary.path)
    assert [s.id for s in output.subjects] == ["s0", "s3"]
    assert [s.manifest_row for s in output.subjects] == [0, 3]
    assert output.skipped == list(summary.skipped)
    with h5py.File(summary.path, "r") as file:
        assert sorted(file["volumes"]) == sorted(file["tables"]) == ["s0", "s3"]
        assert [s.decode() for s in file["skipped_subjects/id"][()]] == ["s1", "s2"]
        assert file["skipped_subjects/manifest_row"][()].tolist() == [1, 2]
        for subject in ("s0", "s3"):
            for name in IMAGES:
                np.testing.assert_array_equal(
                    file[f"volumes/{subject}/{name}"][()], volumes[subject][name]
                )
    skipped = describe_output(summary.path)["skipped_subjects"]
    assert [(s["id"], s["manifest_row"]) for s in skipped] == [("s1", 1), ("s2", 2)]


def test_a_truncated_input_stops_the_run_naming_the_file(tmp_path, data, bad_data):
    # Without on_error: skip (the default is fail), the missing file stops the plan...
    with pytest.raises(DataError, match=r"s1_seg\.nii\.gz: file not found"):
        extract(store_config(tmp_path, bad_data), "volumes")
    # ... and, with it back, the truncated one stops the run, keeping s0 and s1.
    folder = tmp_path / "data"
    shutil.copytree(bad_data.parent, folder)
    shutil.copy(data[0].parent / "s1_seg.nii.gz", folder / "s1_seg.nii.gz")
    with pytest.raises(DataError, match=r"s2_t1\.nii\.gz: cannot read") as caught:
        extract(store_config(tmp_path, folder / bad_data.name), "volumes")
    assert caught.value.kept_partial.done == 2
    assert not (tmp_path / "store.h5").exists()


# --------------------------------------------------------------- bad input
def test_augment_and_nifti_outputs_are_refused(tmp_path, data):
    manifest, _ = data
    augment = {"copies": 2, "transforms": ["RandomFlip"]}
    with pytest.raises(ConfigError, match="augment them while training"):
        extract(store_config(tmp_path, manifest, augment=augment), "volumes")
    with pytest.raises(ConfigError, match="output.format must be hdf5"):
        extract(store_config(tmp_path, manifest, output={"format": "nifti"}), "volumes")
    result = invoke("volumes", config_file(tmp_path, manifest), "--format", "nifti", "--quiet")
    assert result.exit_code == 1 and "output.format must be hdf5" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.h5.yaml"]


def test_a_patch_larger_than_a_volume_is_refused_naming_the_subject(tmp_path, data):
    manifest, _ = data
    # Only s2 (19 voxels wide) is narrower than 20.
    config = store_config(tmp_path, manifest, patch_size=[20, 8, 8])
    with pytest.raises(DataError, match=r"s2_t1\.nii\.gz: subject 's2': patch size") as caught:
        extract(config, "volumes")
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.glob("store.h5*.partial"))
    # Left out and listed with on_error: skip.
    skipping = store_config(tmp_path, manifest, patch_size=[20, 8, 8], on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchcliWarning)
        summary = extract(skipping, "volumes")
    assert [s.id for s in summary.skipped] == ["s2"] and summary.subjects == 3


def test_the_fingerprint_covers_the_store(tmp_path, data):
    manifest, _ = data

    def fingerprint(**keys) -> str:
        return plan_extraction(store_config(tmp_path, manifest, **keys), "volumes").fingerprint

    base = fingerprint()
    assert fingerprint(workers=2) == base
    assert fingerprint(output={"path": str(tmp_path / "elsewhere.h5")}) == base
    assert fingerprint(patch_size=8) == fingerprint(patch_size=[8, 8, 8])
    changed = {
        "preprocess": fingerprint(preprocess=["ToCanonical"]),
        "patch size": fingerprint(patch_size=[8, 6, 6]),
        "no patch size": fingerprint(patch_size=None),
        "compression": fingerprint(output={"compression": "gzip"}),
        "chunks": fingerprint(output={"chunks": 16}),
        "dtype": fingerprint(output={"dtype": "float32"}),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed
    # A patch run on the same config is another run.
    assert plan_extraction(
        store_config(tmp_path, manifest, num_patches=2), "uniform"
    ).fingerprint != (base)
    summary = extract(store_config(tmp_path, manifest, preprocess=["ToCanonical"]), "volumes")
    with h5py.File(summary.path, "r") as file:
        assert file.attrs["config_fingerprint"] == changed["preprocess"]


# ----------------------------------------------------------------- full disk
def _run_cli(config: Path, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "patchcli", "volumes", str(config), "--quiet", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_full_disk_stops_cleanly_and_resumes(tmp_path, small_disk):  # noqa: F811
    # Five subjects of 64x64x48 (random t1: about 400 KiB each compressed); a 5 MiB disk
    # holds the 4 MiB the writer keeps for HDF5's metadata and two subjects' volumes.
    manifest, _ = make_subjects(tmp_path / "data", [(64, 64, 48)] * 5)
    images = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}
    reference = config_file(tmp_path, manifest, "reference.h5", workers=None, images=images)
    assert _run_cli(reference).returncode == 0
    disk = small_disk.mount("5m")
    output = disk / "store.h5"
    keys = dict(workers=None, images=images, output={"path": str(output)})
    config = write_config(tmp_path / "small.yaml", **config_keys(tmp_path, manifest, **keys))
    # Checked before any work: the store cannot fit (uncompressed), and says so.
    refused = _run_cli(config)
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "--no-space-check" in refused.stderr and str(output) in refused.stderr
    assert not list(disk.iterdir())

    # Started anyway, it stops cleanly when the disk is full: one error line, then the note.
    result = _run_cli(config, "--no-space-check")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"Error: {output}.partial: no space left"), result.stderr
    assert any("--resume" in line for line in lines[1:]), result.stderr
    assert "HDF5-DIAG" not in result.stderr and "Traceback" not in result.stderr
    assert not output.exists() and output.with_name("store.h5.partial").exists()
    assert not output.with_name("store.h5.lock").exists()

    # Without room, resuming stops the same way; with room, it finishes the store exactly.
    again = _run_cli(config, "--resume", "--no-space-check")
    assert again.returncode == 1 and "no space left" in again.stderr
    small_disk.resize(disk, "200m")
    resumed = _run_cli(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed)" in resumed.stdout
    assert not output.with_name("store.h5.partial").exists()
    assert_same_output(output, tmp_path / "reference.h5")
    with h5py.File(output, "r") as file:
        assert yaml.safe_load(file.attrs["config"])["output"]["path"] == str(output)
