"""Tests of patchcli.aggregate.files and grid_file: aggregate_file, predictions, from_file."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from patchcli.aggregate import GridAggregator, aggregate_file, output_affine
from patchcli.errors import ConfigError, DataError

from .aggregate_helpers import grid_patches, make_affine, pool

STRING = h5py.string_dtype("utf-8")


# --- Helpers: grid files written here following docs/format.md ----------------------


def write_grid_file(
    path: Path,
    subjects: list[tuple[str, dict[str, np.ndarray], np.ndarray]],
    patch_size,
    patch_overlap,
    padding_mode=None,
    sampler: str = "grid",
) -> Path:
    """A grid HDF5 file following docs/format.md (format_version 1), from (C, X, Y, Z) volumes."""
    images = list(subjects[0][1])
    per_subject = []
    for subject_id, volumes, affine in subjects:
        cropped = {}
        for name, volume in volumes.items():
            patches, locations, padding = grid_patches(
                volume, patch_size, patch_overlap, padding_mode
            )
            cropped[name] = patches
        per_subject.append((subject_id, cropped, locations, affine, volume.shape[1:]))
    with h5py.File(path, "w") as handle:
        attrs = handle.attrs
        attrs["format"] = "patchcli-patches"
        attrs["format_version"] = 1
        attrs["patchcli_version"] = "0.0.0"
        attrs["sampler"] = sampler
        attrs["config"] = ""
        attrs["seed"] = 0
        attrs["patch_size"] = np.asarray(patch_size, dtype=np.int64)
        attrs["images"] = np.array(images, dtype=STRING)
        attrs["image_types"] = np.array(["intensity"] * len(images), dtype=STRING)
        attrs["patch_overlap"] = np.asarray(patch_overlap, dtype=np.int64)
        attrs["padding_mode"] = "" if padding_mode is None else str(padding_mode)
        attrs["padding"] = np.asarray(padding, dtype=np.int64)
        for name in images:
            data = np.concatenate([cropped[name] for _, cropped, *_ in per_subject])
            dataset = handle.create_dataset(
                f"patches/{name}", data=data, chunks=(1, *data.shape[1:])
            )
            dataset.attrs["type"] = "intensity"
        handle["locations"] = np.concatenate([s[2] for s in per_subject])
        counts = [len(s[2]) for s in per_subject]
        handle["subject_index"] = np.repeat(np.arange(len(counts)), counts)
        group = handle.create_group("subjects")
        group["id"] = np.array([s[0] for s in per_subject], dtype=STRING)
        group["affine"] = np.array([s[3] for s in per_subject], dtype=np.float64)
        group["shape"] = np.array([s[4] for s in per_subject], dtype=np.int64)
        group["patch_start"] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        group["patch_count"] = np.array(counts, dtype=np.int64)
        for name in images:
            group[f"source/{name}"] = np.array(
                [f"{s[0]}_{name}.nii.gz" for s in per_subject], STRING
            )
    return path


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    data = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    return data, image.affine


# --- Files ----------------------------------------------------------------------


def two_subjects(rng, shapes=((10, 9, 7), (8, 11, 6)), channels=1, dtype=np.uint8):
    return [
        (
            f"s{number}",
            {"t1": rng.integers(0, 256, size=(channels, *shape)).astype(dtype)},
            make_affine(number),
        )
        for number, shape in enumerate(shapes)
    ]


@pytest.mark.parametrize("padding_mode", [None, "reflect"])
@pytest.mark.parametrize("channels", [1, 2])
def test_aggregate_file_crop_round_trip(tmp_path, padding_mode, channels):
    rng = np.random.default_rng(0)
    subjects = two_subjects(rng, channels=channels)
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (5, 4, 3), (2, 2, 2), padding_mode)
    written = aggregate_file(grid, "t1", tmp_path / "out")
    assert written == [tmp_path / "out" / "s0_t1.nii.gz", tmp_path / "out" / "s1_t1.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0_t1.nii.gz", "s1_t1.nii.gz"]
    for path, (_, volumes, affine) in zip(written, subjects, strict=True):
        data, saved_affine = read_nifti(path)
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(data, volumes["t1"])
        np.testing.assert_allclose(saved_affine, affine)


@pytest.mark.parametrize("mode", ["average", "hann"])
def test_aggregate_file_weighted_modes(tmp_path, mode):
    rng = np.random.default_rng(1)
    subjects = two_subjects(rng)
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (6, 4, 4), (4, 2, 2), "edge")
    written = aggregate_file(grid, "t1", tmp_path / "out", overlap_mode=mode)
    for path, (_, volumes, _) in zip(written, subjects, strict=True):
        data, _ = read_nifti(path)
        assert data.dtype == np.float32
        np.testing.assert_allclose(data, volumes["t1"], rtol=1e-6)  # float32 means of equal values


def test_aggregate_file_streams_in_blocks(tmp_path, monkeypatch):
    import patchcli.aggregate.files as module

    rng = np.random.default_rng(2)
    subjects = two_subjects(rng)
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (4, 4, 3), (2, 2, 0))
    patch_bytes = 4 * 4 * 3
    monkeypatch.setattr(module, "BLOCK_BYTES", 3 * patch_bytes)
    batch_sizes = []
    original = module.GridAggregator.add_batch

    def spy(self, patches, locations):
        batch_sizes.append(len(patches))
        return original(self, patches, locations)

    monkeypatch.setattr(module.GridAggregator, "add_batch", spy)
    written = aggregate_file(grid, "t1", tmp_path / "out")
    with h5py.File(grid, "r") as handle:
        total = len(handle["locations"])
    assert max(batch_sizes) == 3 and sum(batch_sizes) == total
    for path, (_, volumes, _) in zip(written, subjects, strict=True):
        np.testing.assert_array_equal(read_nifti(path)[0], volumes["t1"])


@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
def test_aggregate_file_memory_is_one_subject_not_its_patches(tmp_path, monkeypatch, mode):
    import tracemalloc

    import patchcli.aggregate.files as module

    # 36^3 uint8 volumes tiled by 12^3 patches overlapping by 10: 13^3 patches, 3.8 MB per
    # subject, against a 47 kB volume (0.9 MB of float64 sums, weights and output).
    rng = np.random.default_rng(12)
    subjects = two_subjects(rng, shapes=((36, 36, 36), (36, 36, 36)))
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (12, 12, 12), (10, 10, 10))
    subject_patch_bytes = 13**3 * 12**3
    monkeypatch.setattr(module, "BLOCK_BYTES", 64 * 12**3)
    aggregate_file(grid, "t1", tmp_path / "warm", overlap_mode=mode)  # first-use imports
    tracemalloc.start()
    try:
        aggregate_file(grid, "t1", tmp_path / "out", overlap_mode=mode)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy reports its buffers to tracemalloc, so the peak is deterministic; reading a
    # subject's patches at once (or weighting them all at once) would alone exceed the bound.
    assert peak < subject_patch_bytes / 2


def write_predictions(path, grid_path, name, model, with_locations=False, rows=None):
    with h5py.File(grid_path, "r") as grid, h5py.File(path, "w") as handle:
        patches = grid["patches/t1"][()]
        outputs = model(patches)
        handle[f"patches/{name}"] = outputs[:rows] if rows is not None else outputs
        if with_locations is True:
            handle["locations"] = grid["locations"][()]
        elif with_locations is not False:
            handle["locations"] = with_locations
    return path


@pytest.mark.parametrize("mode", ["crop", "average", "hann"])
@pytest.mark.parametrize("padding_mode", [None, "reflect"])
def test_aggregate_file_downsampled_predictions(tmp_path, mode, padding_mode):
    rng = np.random.default_rng(3)
    subjects = two_subjects(rng, shapes=((16, 12, 8), (8, 16, 12)))
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (8, 4, 4), (4, 0, 0), padding_mode)

    def model(patches):  # 3 logits at half resolution
        pooled = pool(patches.astype(np.float32), (2, 2, 2)).astype(np.float32)
        return np.concatenate([pooled, -pooled, pooled + 1], axis=1)

    predictions = write_predictions(tmp_path / "pred.h5", grid, "logits", model, True)
    written = aggregate_file(
        grid,
        None,
        tmp_path / "out",
        overlap_mode=mode,
        predictions_path=predictions,
        prediction_name="logits",
    )
    assert [p.name for p in written] == ["s0_logits.nii.gz", "s1_logits.nii.gz"]
    for path, (_, volumes, affine) in zip(written, subjects, strict=True):
        data, saved_affine = read_nifti(path)
        pooled = pool(volumes["t1"].astype(np.float32), (2, 2, 2))
        expected = np.concatenate([pooled, -pooled, pooled + 1]).astype(np.float32)
        assert data.shape == expected.shape
        np.testing.assert_allclose(data, expected, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(saved_affine, output_affine(affine, (2, 2, 2)))


def test_prediction_name_defaults_to_image_or_only_dataset(tmp_path):
    rng = np.random.default_rng(4)
    subjects = two_subjects(rng)
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (5, 4, 3), (2, 2, 0))
    predictions = write_predictions(tmp_path / "p.h5", grid, "seg", lambda p: p > 127)
    written = aggregate_file(grid, None, tmp_path / "out", predictions_path=predictions)
    assert [p.name for p in written] == ["s0_seg.nii.gz", "s1_seg.nii.gz"]
    data, _ = read_nifti(written[0])
    assert data.dtype == np.uint8  # bool predictions are stored as uint8
    np.testing.assert_array_equal(data, subjects[0][1]["t1"] > 127)


def test_grid_aggregator_from_file(tmp_path):
    rng = np.random.default_rng(5)
    subjects = two_subjects(rng)
    grid = write_grid_file(tmp_path / "grid.h5", subjects, (5, 4, 3), (2, 2, 2), "constant")
    by_id = GridAggregator.from_file(grid, "s1", overlap_mode="average")
    with h5py.File(grid, "r") as handle:
        by_row = GridAggregator.from_file(handle, 1)
        start, count = handle["subjects/patch_start"][1], handle["subjects/patch_count"][1]
        patches = handle["patches/t1"][start : start + count]
        locations = handle["locations"][start : start + count]
    for aggregator in (by_id, by_row):
        assert aggregator.spatial_shape == (8, 11, 6) and aggregator.padding == (1, 1, 1)
        aggregator.add_batch(patches, locations)
        np.testing.assert_allclose(aggregator.get_output(), subjects[1][1]["t1"])
    with pytest.raises(DataError, match="no subject 'nobody'"):
        GridAggregator.from_file(grid, "nobody")


# --- File errors ------------------------------------------------------------------


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message


@pytest.fixture
def grid_file(tmp_path):
    subjects = two_subjects(np.random.default_rng(6))
    return write_grid_file(tmp_path / "grid.h5", subjects, (5, 4, 3), (2, 2, 0))


def test_error_not_a_patchcli_file(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not a patchcli patch file") as error:
        aggregate_file(plain, "t1", tmp_path / "out")
    assert_one_line_naming(error, plain)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(DataError, match="not an HDF5 file") as error:
        aggregate_file(text, "t1", tmp_path / "out")
    assert_one_line_naming(error, text)
    with pytest.raises(DataError, match="not a patchcli NIfTI output folder"):
        aggregate_file(tmp_path, "t1", tmp_path / "out")
    with pytest.raises(DataError, match="no such file"):
        aggregate_file(tmp_path / "missing.h5", "t1", tmp_path / "out")


def test_error_non_grid_file(tmp_path):
    subjects = two_subjects(np.random.default_rng(7))
    path = write_grid_file(tmp_path / "u.h5", subjects, (5, 4, 3), (0, 0, 0), sampler="uniform")
    with pytest.raises(DataError, match="'uniform' patches, not 'grid'") as error:
        aggregate_file(path, "t1", tmp_path / "out")
    assert_one_line_naming(error, path)
    assert not (tmp_path / "out").exists()


def test_error_missing_image_lists_available(grid_file, tmp_path):
    with pytest.raises(DataError, match="no image 't2'; available: t1") as error:
        aggregate_file(grid_file, "t2", tmp_path / "out")
    assert_one_line_naming(error, grid_file)


def test_error_unknown_overlap_mode(grid_file, tmp_path):
    with pytest.raises(ConfigError, match="overlap_mode"):
        aggregate_file(grid_file, "t1", tmp_path / "out", overlap_mode="mean")


def test_error_mismatched_prediction_rows(grid_file, tmp_path):
    short = write_predictions(tmp_path / "short.h5", grid_file, "t1", lambda p: p, rows=-1)
    with pytest.raises(DataError, match="rows but .* grid locations") as error:
        aggregate_file(grid_file, "t1", tmp_path / "out", predictions_path=short)
    assert_one_line_naming(error, short)
    with h5py.File(grid_file, "r") as handle:
        shifted = handle["locations"][()][::-1]
    moved = write_predictions(tmp_path / "moved.h5", grid_file, "t1", lambda p: p, shifted)
    with pytest.raises(DataError, match="/locations differ"):
        aggregate_file(grid_file, "t1", tmp_path / "out", predictions_path=moved)
    odd = write_predictions(tmp_path / "odd.h5", grid_file, "t1", lambda p: p[:, :, :2, :3])
    with pytest.raises(DataError, match="not an integer downsampling factor"):
        aggregate_file(grid_file, "t1", tmp_path / "out", predictions_path=odd)
    two = write_predictions(tmp_path / "two.h5", grid_file, "a", lambda p: p)
    with h5py.File(two, "a") as handle:
        handle["patches/b"] = handle["patches/a"][()]
    with pytest.raises(DataError, match="give the predictions' name; /patches holds a, b"):
        aggregate_file(grid_file, None, tmp_path / "out", predictions_path=two)
    with pytest.raises(DataError, match="no predictions /patches/c"):
        aggregate_file(grid_file, None, tmp_path / "out", predictions_path=two, prediction_name="c")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "..", ""])
def test_error_subject_ids_escaping_output_dir(tmp_path, bad_id):
    subjects = two_subjects(np.random.default_rng(8))
    subjects[1] = (bad_id, *subjects[1][1:])
    path = write_grid_file(tmp_path / "grid.h5", subjects, (5, 4, 3), (2, 2, 0))
    with pytest.raises(DataError, match="not usable as a file name") as error:
        aggregate_file(path, "t1", tmp_path / "out" / "inner")
    assert_one_line_naming(error, path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape_t1.nii.gz").exists()


def test_existing_outputs_need_overwrite(grid_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "s1_t1.nii.gz").write_text("old")
    with pytest.raises(DataError, match="output exists") as error:
        aggregate_file(grid_file, "t1", out)
    assert_one_line_naming(error, out / "s1_t1.nii.gz")
    # Nothing was written before the check failed.
    assert sorted(p.name for p in out.iterdir()) == ["s1_t1.nii.gz"]
    written = aggregate_file(grid_file, "t1", out, overwrite=True)
    assert read_nifti(written[1])[0].shape == (1, 8, 11, 6)
    assert sorted(p.name for p in out.iterdir()) == ["s0_t1.nii.gz", "s1_t1.nii.gz"]


def test_incomplete_grid_rows_are_an_error(grid_file, tmp_path):
    with h5py.File(grid_file, "a") as handle:
        handle["subjects/patch_count"][0] -= 1
    with pytest.raises(DataError, match="subject 's0': its .* rows are not the .* grid patches"):
        aggregate_file(grid_file, "t1", tmp_path / "out")


# --- End to end with the extraction CLI ---------------------------------------------


@pytest.mark.parametrize("padding_mode", ["null", "reflect"])
def test_cli_grid_then_aggregate_gives_source(tmp_path, padding_mode):
    from click.testing import CliRunner

    from patchcli.cli import main

    rng = np.random.default_rng(9)
    volume = rng.integers(0, 1000, size=(13, 10, 9)).astype(np.int16)
    affine = make_affine(2)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "a.nii.gz")
    (tmp_path / "cfg.yaml").write_text(
        "subjects: [{id: s1, t1: a.nii.gz}]\n"
        "images: {t1: intensity}\n"
        "patch_size: [6, 5, 4]\n"
        "patch_overlap: [2, 4, 2]\n"
        f"padding_mode: {padding_mode}\n"
        "output: {path: grid.h5}\n"
    )
    result = CliRunner().invoke(main, ["grid", str(tmp_path / "cfg.yaml"), "--quiet"])
    assert result.exit_code == 0, result.output
    written = aggregate_file(tmp_path / "grid.h5", "t1", tmp_path / "out")
    data, saved_affine = read_nifti(written[0])
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data[0], volume)
    np.testing.assert_allclose(saved_affine, affine)
