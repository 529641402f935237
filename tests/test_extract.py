"""The extraction pipeline end to end: HDF5 and NIfTI outputs, determinism, errors."""

from __future__ import annotations

import csv
import warnings
from dataclasses import replace

import h5py
import nibabel as nib
import numpy as np
import pytest

from patchcli.config import load_config
from patchcli.errors import ConfigError, DataError, PatchcliWarning
from patchcli.extract import extract, plan_extraction
from patchcli.sampling import grid_locations, pad_volume
from patchcli.subject_work import cast_volume

from .helpers import affine_for, make_subjects, write_config

SHAPES = [(20, 22, 18), (24, 20, 21), (19, 19, 19)]
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    manifest, arrays = make_subjects(folder, SHAPES)
    return manifest, arrays


def _config(tmp_path, manifest, name="out.h5", **keys):
    base = dict(subjects=str(manifest), images=IMAGES, patch_size=[8, 6, 5], num_patches=7, seed=1)
    base.update(keys)
    base["output"] = {"path": str(tmp_path / name), **base.get("output", {})}
    return load_config(write_config(tmp_path / "config.yaml", **base))


def _crop(array, location):
    i0, j0, k0, i1, j1, k1 = location
    return array[i0:i1, j0:j1, k0:k1]


@pytest.mark.parametrize("sampler", ["uniform", "weighted", "label", "grid"])
def test_hdf5_patches_equal_crops_of_the_sources(tmp_path, dataset, sampler):
    manifest, arrays = dataset
    config = _config(tmp_path, manifest, patch_overlap=2)
    summary = extract(config, sampler)
    assert summary.subjects == 3 and summary.bytes_written > 0
    with h5py.File(summary.path, "r") as file:
        assert file.attrs["format"] == "patchcli-patches"
        assert file.attrs["sampler"] == sampler
        assert list(file.attrs["images"]) == list(IMAGES)
        locations = file["locations"][:]
        subject_index = file["subject_index"][:]
        ids = [value.decode() for value in file["subjects/id"][:]]
        assert ids == ["s0", "s1", "s2"]
        assert locations.dtype == np.int64 and locations.shape == (summary.patches, 6)
        starts, counts = file["subjects/patch_start"][:], file["subjects/patch_count"][:]
        assert counts.sum() == summary.patches
        assert (np.diff(subject_index) >= 0).all()
        for name in IMAGES:
            dataset_ = file[f"patches/{name}"]
            assert dataset_.chunks == (1, 1, 8, 6, 5)
            assert dataset_.dtype == arrays["s0"][name].dtype
            assert dataset_.attrs["type"] == IMAGES[name]
        for row in range(summary.patches):
            subject = ids[subject_index[row]]
            assert (
                starts[subject_index[row]]
                <= row
                < starts[subject_index[row]] + counts[subject_index[row]]
            )
            for name in IMAGES:
                expected = _crop(arrays[subject][name], locations[row])
                np.testing.assert_array_equal(file[f"patches/{name}"][row, 0], expected)
        np.testing.assert_array_equal(file["subjects/shape"][:], np.array(SHAPES))
        np.testing.assert_allclose(file["subjects/affine"][0], affine_for(None))
        if sampler == "grid":
            np.testing.assert_array_equal(file.attrs["patch_overlap"], [2, 2, 2])
            assert file.attrs["padding_mode"] == ""
        else:
            assert (counts == 7).all()


def test_weighted_centres_avoid_zero_probability(tmp_path, dataset):
    manifest, arrays = dataset
    summary = extract(_config(tmp_path, manifest, num_patches=50), "weighted")
    with h5py.File(summary.path, "r") as file:
        locations = file["locations"][:]
        index = file["subject_index"][:]
    for row, location in enumerate(locations):
        centre = location[:3] + np.array([8, 6, 5]) // 2
        # prob is 0.01 outside the labels: allowed but rare; never zero-probability voxels.
        assert arrays[f"s{index[row]}"]["prob"][tuple(centre)] > 0


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path, dataset):
    manifest, _ = dataset
    first = extract(_config(tmp_path, manifest, "a.h5", seed=4), "uniform")
    again = extract(_config(tmp_path, manifest, "b.h5", seed=4), "uniform")
    other = extract(_config(tmp_path, manifest, "c.h5", seed=5), "uniform")
    with h5py.File(first.path) as a, h5py.File(again.path) as b, h5py.File(other.path) as c:
        for key in ("locations", "patches/t1", "patches/seg"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
        assert not np.array_equal(a["locations"][:], c["locations"][:])


def test_worker_processes_do_not_change_the_result(tmp_path, dataset):
    manifest, _ = dataset
    serial = extract(_config(tmp_path, manifest, "serial.h5"), "label")
    parallel = extract(_config(tmp_path, manifest, "parallel.h5", workers=2), "label")
    with h5py.File(serial.path) as a, h5py.File(parallel.path) as b:
        for key in ("locations", "subject_index", "patches/t1", "patches/prob"):
            np.testing.assert_array_equal(a[key][:], b[key][:])


def test_a_subjects_patches_do_not_depend_on_other_subjects(tmp_path, dataset):
    manifest, _ = dataset
    base = extract(_config(tmp_path, manifest, "base.h5"), "uniform")
    # Same subjects, other counts: each subject's stream is seeded by (seed, index).
    config = _config(tmp_path, manifest, "changed.h5")
    specs = plan_extraction(config, "uniform").subjects
    specs = [replace(spec, num_samples=n) for spec, n in zip(specs, (3, 20, None))]
    changed_summary = extract(config, "uniform", plan=plan_extraction(config, "uniform", specs))
    with h5py.File(base.path) as a, h5py.File(changed_summary.path) as b:
        assert list(b["subjects/patch_count"][:]) == [3, 20, 7]
        a_locations, b_locations = a["locations"][:], b["locations"][:]
        # Subject 2 keeps all 7 of its locations; subject 0's 3 are a prefix of its 7.
        np.testing.assert_array_equal(a_locations[14:21], b_locations[23:30])
        np.testing.assert_array_equal(a_locations[0:3], b_locations[0:3])


def test_block_size_does_not_change_the_result(tmp_path, dataset):
    manifest, _ = dataset
    big = extract(_config(tmp_path, manifest, "big.h5"), "uniform")
    small = extract(_config(tmp_path, manifest, "small.h5", block_size="1KiB"), "uniform")
    with h5py.File(big.path) as a, h5py.File(small.path) as b:
        np.testing.assert_array_equal(a["patches/t1"][:], b["patches/t1"][:])


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "zstd"])
def test_compressions_store_the_same_patches(tmp_path, dataset, compression):
    import hdf5plugin  # noqa: F401  (registers the Blosc filter for reading)

    manifest, arrays = dataset
    summary = extract(_config(tmp_path, manifest, output={"compression": compression}), "uniform")
    with h5py.File(summary.path) as file:
        location = file["locations"][0]
        np.testing.assert_array_equal(file["patches/t1"][0, 0], _crop(arrays["s0"]["t1"], location))
        assert file.attrs["compression"] == compression


def test_output_dtype_casts_intensity_images_only(tmp_path, dataset):
    manifest, arrays = dataset
    summary = extract(_config(tmp_path, manifest, output={"dtype": "float32"}), "uniform")
    with h5py.File(summary.path) as file:
        assert file["patches/t1"].dtype == np.float32
        assert file["patches/seg"].dtype == np.uint8
        location = file["locations"][0]
        np.testing.assert_array_equal(
            file["patches/t1"][0, 0], _crop(arrays["s0"]["t1"], location).astype(np.float32)
        )


@pytest.mark.parametrize("padding_mode", [0, "edge", "reflect", "mean"])
def test_padded_grid_locations_are_in_padded_coordinates(tmp_path, dataset, padding_mode):
    manifest, arrays = dataset
    config = _config(tmp_path, manifest, patch_overlap=[4, 2, 2], padding_mode=padding_mode)
    summary = extract(config, "grid")
    with h5py.File(summary.path) as file:
        np.testing.assert_array_equal(file.attrs["padding"], [2, 1, 1])
        assert file.attrs["padding_mode"] == str(padding_mode if padding_mode != 0 else 0.0)
        rows = slice(0, int(file["subjects/patch_count"][0]))
        padded = pad_volume(arrays["s0"]["t1"][None], (2, 1, 1), padding_mode)[0]
        expected = grid_locations(padded.shape, (8, 6, 5), (4, 2, 2))
        np.testing.assert_array_equal(file["locations"][rows], expected)
        for row in (0, rows.stop - 1):
            np.testing.assert_array_equal(
                file["patches/t1"][row, 0], _crop(padded, file["locations"][row])
            )
        np.testing.assert_array_equal(file["subjects/shape"][0], SHAPES[0])


def test_nifti_output_layout_and_world_positions(tmp_path, dataset):
    manifest, arrays = dataset
    config = _config(tmp_path, manifest, "nifti_out", output={"format": "nifti"}, num_patches=3)
    summary = extract(config, "uniform")
    folder = summary.path
    with open(folder / "patches.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["subject", "patch", "i0", "j0", "k0", "i1", "j1", "k1", *IMAGES]
    assert len(rows) == 9 and rows[3]["subject"] == "s1" and rows[3]["patch"] == "0"
    for row in rows:
        location = [int(row[key]) for key in ("i0", "j0", "k0", "i1", "j1", "k1")]
        assert row["t1"] == f"{row['subject']}/t1_{int(row['patch']):06d}.nii.gz"
        image = nib.load(folder / row["t1"])
        np.testing.assert_array_equal(
            np.asanyarray(image.dataobj), _crop(arrays[row["subject"]]["t1"], location)
        )
        # The patch's first voxel sits where the source voxel at the start does.
        source_world = affine_for(None) @ np.array([*location[:3], 1.0])
        np.testing.assert_allclose(image.affine @ np.array([0, 0, 0, 1.0]), source_world, atol=1e-5)
    assert (folder / "patchcli.yaml").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, dataset):
    manifest, _ = dataset
    config = _config(tmp_path, manifest, "exists.h5")
    (tmp_path / "exists.h5").write_text("keep me")
    with pytest.raises(DataError, match="output exists"):
        extract(config, "uniform")
    assert (tmp_path / "exists.h5").read_text() == "keep me"
    extract(config, "uniform", overwrite=True)
    assert h5py.is_hdf5(tmp_path / "exists.h5")


def test_overwrite_never_replaces_a_foreign_folder(tmp_path, dataset):
    manifest, _ = dataset
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    config = _config(tmp_path, manifest, "mine", output={"format": "nifti"})
    with pytest.raises(DataError, match="refusing to replace a folder without a readable"):
        extract(config, "uniform", overwrite=True)
    assert (folder / "thesis.tex").read_text() == "precious"


def test_overwrite_never_replaces_a_phantom_dataset(tmp_path, dataset):
    from patchcli.phantom import write_phantom_dataset

    manifest, _ = dataset
    data = tmp_path / "phantoms"
    write_phantom_dataset(data, num_subjects=1, shape=(12, 12, 10))
    config = _config(tmp_path, manifest, "phantoms", output={"format": "nifti"})
    with pytest.raises(DataError, match="refusing to replace a patchcli-phantoms folder"):
        extract(config, "uniform", overwrite=True)
    assert (data / "sub-001_t1.nii.gz").exists()


def test_an_output_holding_a_source_image_is_refused(tmp_path, dataset):
    manifest, _ = dataset
    # The output folder is the folder of the images; --overwrite must not matter.
    config = _config(manifest.parent, manifest, ".", output={"format": "nifti"})
    with pytest.raises(DataError, match="from inside the output"):
        extract(config, "uniform", overwrite=True)
    source = manifest.parent / "s0_t1.nii.gz"
    config = _config(tmp_path, manifest, str(source))
    with pytest.raises(DataError, match=r"s0_t1\.nii\.gz: subject 's0' reads this image"):
        extract(config, "uniform", overwrite=True)
    assert nib.load(source).shape == SHAPES[0]


def test_casts_round_and_refuse_values_that_do_not_fit(tmp_path, dataset):
    manifest, arrays = dataset
    # t1 holds int16 values from -100 to 999: they do not fit uint8.
    config = _config(tmp_path, manifest, "u8.h5", output={"dtype": "uint8"})
    with pytest.raises(DataError, match=r"s0_t1\.nii\.gz: values from -\d+ to \d+ do not fit"):
        extract(config, "uniform")
    assert not (tmp_path / "u8.h5").exists()
    # prob (float32, 0.01 to 1.01) cast to int16 is rounded, not truncated.
    values = np.array([0.4, 0.6, 1.5, -2.6], np.float32)
    assert cast_volume(values, np.dtype(np.int16), manifest).tolist() == [0, 1, 2, -3]
    with pytest.raises(DataError, match="NaN"):
        cast_volume(np.array([np.nan], np.float32), np.dtype(np.uint8), manifest)
    with pytest.raises(DataError, match="overflow"):
        cast_volume(np.array([1e300]), np.dtype(np.float32), manifest)


def test_ctrl_c_during_a_write_stops_after_the_block_and_keeps_complete_subjects(
    tmp_path, dataset, monkeypatch, request
):
    """A SIGINT that arrives while h5py writes must still stop the run."""
    import os
    import signal

    from patchcli.io.hdf5 import Hdf5PatchWriter

    manifest, _ = dataset
    # Every HDF5 block ends by recording its rows (after its chunks, or after workers
    # wrote its patches in place).
    original = Hdf5PatchWriter.write_rows
    completed = []

    def interrupted_write(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered during the write
        original(self, *args, **kwargs)
        completed.append(True)

    monkeypatch.setattr(Hdf5PatchWriter, "write_rows", interrupted_write)
    # Python's own handler, even where the tests were started with SIGINT ignored (a
    # background job): patchcli leaves an ignored SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(KeyboardInterrupt) as caught:
        extract(_config(tmp_path, manifest, "stopped.h5"), "uniform")
    # The interrupt waited for the block being written (h5py would have swallowed
    # it there); that block completed subject s0, which was recorded before stopping.
    assert completed == [True]
    assert not (tmp_path / "stopped.h5").exists()
    assert (tmp_path / "stopped.h5.partial").exists()
    assert caught.value.kept_partial.done == 1 and caught.value.kept_partial.total == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    # Stopped inside the first subject (blocks of 2 patches): nothing complete, nothing kept.
    small = _config(tmp_path, manifest, "early.h5", block_size="1KiB")
    with pytest.raises(KeyboardInterrupt) as caught:
        extract(small, "uniform")
    assert not hasattr(caught.value, "kept_partial")
    assert not list(tmp_path.glob("early.h5*"))


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path, dataset, monkeypatch):
    from patchcli.io.hdf5 import Hdf5PatchWriter

    from .helpers import assert_same_hdf5

    manifest, _ = dataset
    original = Hdf5PatchWriter.write_rows

    def stop_at_second_subject(self, row, locations, subject_index):
        if subject_index == 1:
            raise KeyboardInterrupt
        original(self, row, locations, subject_index)

    monkeypatch.setattr(Hdf5PatchWriter, "write_rows", stop_at_second_subject)
    config = _config(tmp_path, manifest, "resumed.h5")
    with pytest.raises(KeyboardInterrupt):
        extract(config, "label")
    monkeypatch.setattr(Hdf5PatchWriter, "write_rows", original)
    with pytest.raises(
        DataError,
        match=r"resumed\.h5\.partial: left by an earlier run .*"
        r"1 of 3 subjects complete.*--resume.*--overwrite",
    ):
        extract(config, "label")
    summary = extract(config, "label", resume=True)
    assert summary.resumed == 1 and summary.patches == 21
    reference = extract(_config(tmp_path, manifest, "reference.h5"), "label")
    assert_same_hdf5(tmp_path / "resumed.h5", reference.path, ignore_attributes=("config",))
    assert not list(tmp_path.glob("resumed.h5.*"))  # no partial, journal or lock left
    # Resuming a complete output finds it complete and does nothing.
    again = extract(config, "label", resume=True)
    assert again.already_complete and again.patches == 21


def test_nifti_output_of_int64_and_bool_images(tmp_path):
    from .helpers import save_nifti

    labels = np.arange(6 * 5 * 4, dtype=np.int64).reshape(6, 5, 4)
    nib.save(nib.Nifti1Image(labels, affine_for(None), dtype=np.int64), tmp_path / "l.nii.gz")
    save_nifti(tmp_path / "m.nii.gz", (labels % 2).astype(np.uint8))
    config = load_config(
        write_config(
            tmp_path / "c.yaml",
            subjects=[
                {"id": "a", "lab": str(tmp_path / "l.nii.gz"), "m": str(tmp_path / "m.nii.gz")}
            ],
            images={"lab": "label", "m": "label"},
            patch_size=[3, 2, 2],
            patch_overlap=0,
            output={"path": str(tmp_path / "out"), "format": "nifti"},
        )
    )
    extract(config, "grid")
    patch = nib.load(tmp_path / "out" / "a" / "lab_000000.nii.gz")
    assert patch.get_data_dtype() == np.int64
    np.testing.assert_array_equal(np.asanyarray(patch.dataobj), labels[:3, :2, :2])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_run_keeps_its_complete_subjects_for_resume(tmp_path, dataset, workers):
    from .helpers import assert_same_output

    manifest, arrays = dataset
    # Subject s2's map is positive only on its border: the run fails at s2,
    # after s0 and s1 were written.
    empty = np.zeros(SHAPES[2], np.float32)
    empty[0] = 1
    border = tmp_path / "border.nii.gz"
    nib.save(nib.Nifti1Image(empty, affine_for(None)), border)
    rows = list(csv.DictReader(open(manifest)))
    rows[2]["prob"] = str(border)
    for row in rows[:2]:
        row["prob"] = str(manifest.parent / row["prob"])
        row["t1"], row["seg"] = (str(manifest.parent / row[k]) for k in ("t1", "seg"))
    rows[2]["t1"], rows[2]["seg"] = (str(manifest.parent / rows[2][k]) for k in ("t1", "seg"))
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for format_, name in (("hdf5", "failed.h5"), ("nifti", "failed_dir")):
        nib.save(nib.Nifti1Image(empty, affine_for(None)), border)
        config = _config(tmp_path, bad, name, output={"format": format_}, workers=workers)
        with pytest.raises(DataError, match=r"border\.nii\.gz: subject 's2'.*border") as caught:
            extract(config, "weighted")
        assert "\n" not in str(caught.value)
        assert caught.value.kept_partial.done == 2
        assert not (tmp_path / name).exists()
        assert (tmp_path / f"{name}.partial").exists()
        # Fixed in place, the input resumes from s2 to the output of a clean run.
        nib.save(nib.Nifti1Image(arrays["s2"]["prob"], affine_for(None)), border)
        assert extract(config, "weighted", resume=True).resumed == 2
        clean = _config(tmp_path, bad, f"clean-{name}", output={"format": format_})
        assert_same_output(tmp_path / name, extract(clean, "weighted").path)


def test_errors_before_any_work(tmp_path, dataset):
    manifest, _ = dataset
    with pytest.raises(DataError, match=r"s0_t1\.nii\.gz: subject 's0': patch size"):
        extract(_config(tmp_path, manifest, patch_size=40), "uniform")
    with pytest.raises(ConfigError, match="num_patches is required"):
        extract(_config(tmp_path, manifest, num_patches=None), "uniform")
    with pytest.raises(ConfigError, match="probability_map 'nope' is not an image"):
        extract(_config(tmp_path, manifest, probability_map="nope"), "weighted")
    with pytest.raises(ConfigError, match="patch_overlap .* must be smaller"):
        extract(_config(tmp_path, manifest, patch_overlap=8), "grid")
    with pytest.raises(ConfigError, match="even"):
        extract(_config(tmp_path, manifest, patch_overlap=3), "grid")
    assert not list(tmp_path.glob("out.h5*"))


def test_label_warns_about_an_absent_label(tmp_path, dataset):
    manifest, _ = dataset
    config = _config(tmp_path, manifest, label_probabilities={1: 1, 7: 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extract(config, "label")
    messages = [str(w.message) for w in caught if issubclass(w.category, PatchcliWarning)]
    assert len(messages) == 3
    assert all("label 7" in message and "subject 's" in message for message in messages)


def test_peak_memory_is_one_subject_plus_one_block(tmp_path, dataset):
    """Writing streams: memory does not grow with the number of patches.

    numpy reports its allocations to tracemalloc. 3 subjects x 2000 patches of
    8x6x5 voxels of three images (2 + 1 + 4 bytes) is 5 MiB of patches; with a
    64 KiB block the peak must stay far below that. The bound (2 MiB) leaves room
    for the volumes (~60 KiB each), locations, and h5py's Python-side objects.
    """
    import tracemalloc

    manifest, _ = dataset
    config = _config(
        tmp_path, manifest, num_patches=2000, block_size="64KiB", output={"compression": "none"}
    )
    tracemalloc.start()
    try:
        summary = extract(config, "uniform")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    patch_bytes = summary.patches * 8 * 6 * 5 * (2 + 1 + 4)
    assert patch_bytes > 5 * 2**20
    assert peak < 2 * 2**20, f"peak {peak} bytes"


def test_an_output_larger_than_the_free_space_is_refused_before_any_work(tmp_path, dataset):
    from click.testing import CliRunner

    from patchcli.cli import main

    manifest, _ = dataset
    # 10^12 patches a subject: about 5 PB, far beyond any machine's disk.
    config = write_config(
        tmp_path / "absurd.yaml",
        subjects=str(manifest),
        images=IMAGES,
        patch_size=[8, 6, 5],
        num_patches=10**12,
        output={"path": str(tmp_path / "absurd.h5")},
    )
    result = CliRunner().invoke(main, ["uniform", str(config), "--quiet"])
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert "absurd.h5: the run needs up to 4.63 PiB (uncompressed)" in message
    assert "free" in message and "--no-space-check" in message
    assert not list(tmp_path.glob("absurd.h5*"))


def test_locations_are_drawn_block_by_block(tmp_path, dataset, monkeypatch):
    from patchcli.sampling.stream import LocationStream

    manifest, _ = dataset
    requested = []
    original = LocationStream.take

    def take(self, count):
        requested.append(count)
        return original(self, count)

    monkeypatch.setattr(LocationStream, "take", take)
    config = _config(tmp_path, manifest, "blocks.h5", num_patches=50, block_size="2KiB", workers=0)
    extract(config, "uniform")
    # 2 KiB blocks hold 3 patches of (8, 6, 5) voxels of three images: never more at once.
    assert max(requested) <= 3 and sum(requested) == 150
