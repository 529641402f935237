"""Bad and unusual input from docs/reliability.md: what each case gives, one test each."""

from __future__ import annotations

import os
import shutil
import warnings

import h5py
import numpy as np
import pytest

from patchcli.config import load_config
from patchcli.errors import DataError
from patchcli.extract import extract
from patchcli.io.reader import read_patch_output

from .helpers import make_subjects, save_nifti, write_config


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_subjects(tmp_path_factory.mktemp("catalogue"), [(12, 10, 8)] * 2)[0]


def _config(folder, subjects, name, **keys):
    base = dict(
        subjects=str(subjects),
        images={"t1": "intensity", "seg": "label"},
        patch_size=4,
        num_patches=3,
        output={"path": str(folder / name)},
    )
    base.update(keys)
    return load_config(write_config(folder / f"{name}.yaml", **base))


def _one_subject(folder, t1, seg):
    save_nifti(folder / "t1.nii.gz", t1)
    save_nifti(folder / "seg.nii.gz", seg)
    (folder / "subjects.csv").write_text("subject,t1,seg\ns0,t1.nii.gz,seg.nii.gz\n")
    return folder / "subjects.csv"


# -- manifests -------------------------------------------------------------------------


def test_duplicate_subject_ids_are_refused_with_their_row(tmp_path, manifest):
    header, first, *_ = manifest.read_text().splitlines()
    twice = manifest.parent / "twice.csv"
    twice.write_text(f"{header}\n{first}\n{first}\n")
    with pytest.raises(DataError, match=r"twice\.csv: row 3: duplicate subject id 's0'"):
        extract(_config(tmp_path, twice, "out.h5"), "uniform")


def test_an_empty_manifest_is_refused(tmp_path, manifest):
    empty = manifest.parent / "empty.csv"
    empty.write_text(manifest.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"empty\.csv: no subjects"):
        extract(_config(tmp_path, empty, "out.h5"), "uniform")
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith("out.h5") and p.suffix != ".yaml"
    ]


def test_symlinked_inputs_are_read_through(tmp_path, manifest):
    header, *rows = manifest.read_text().splitlines()
    lines = [header]
    for row in rows:
        subject, *files = row.split(",")
        for name in files:
            (tmp_path / name).symlink_to(manifest.parent / name)
        lines.append(",".join([subject, *(str(tmp_path / name) for name in files)]))
    linked = tmp_path / "linked.csv"
    linked.write_text("\n".join(lines) + "\n")
    through_links = extract(_config(tmp_path, linked, "linked.h5"), "uniform").path
    direct = extract(_config(tmp_path, manifest, "direct.h5"), "uniform").path
    with h5py.File(through_links) as first, h5py.File(direct) as second:
        np.testing.assert_array_equal(first["patches/t1"][:], second["patches/t1"][:])


# -- images ----------------------------------------------------------------------------


def test_float64_intensities_and_one_voxel_thick_volumes(tmp_path):
    rng = np.random.default_rng(0)
    t1 = rng.random((10, 9, 1))
    seg = (rng.random((10, 9, 1)) > 0.5).astype(np.uint8)
    subjects = _one_subject(tmp_path, t1, seg)
    path = extract(_config(tmp_path, subjects, "thin.h5", patch_size=[4, 4, 1]), "uniform").path
    with h5py.File(path) as file:
        assert file["patches/t1"].dtype == np.float64 and file["patches/t1"].shape[2:] == (4, 4, 1)
        for patch, (i0, j0, k0, i1, j1, k1) in zip(file["patches/t1"][:], file["locations"][:]):
            np.testing.assert_array_equal(patch[0], t1[i0:i1, j0:j1, k0:k1])


def test_nan_and_infinite_intensities_are_kept(tmp_path):
    t1 = np.ones((8, 8, 8), np.float32)
    t1[1, 2, 3], t1[5, 5, 5] = np.nan, np.inf
    subjects = _one_subject(tmp_path, t1, np.ones((8, 8, 8), np.uint8))
    # A grid covers every voxel: both values must be in the patches.
    path = extract(_config(tmp_path, subjects, "nan.h5", patch_size=4), "grid").path
    with h5py.File(path) as file:
        patches = file["patches/t1"][:]
    assert np.isnan(patches).sum() == 1 and np.isposinf(patches).sum() == 1


def test_nan_in_a_probability_map_is_an_error_naming_it(tmp_path):
    probability = np.ones((8, 8, 8), np.float32)
    probability[4, 4, 4] = np.nan
    subjects = _one_subject(tmp_path, np.ones((8, 8, 8), np.int16), probability)
    config = _config(
        tmp_path,
        subjects,
        "weighted.h5",
        images={"t1": "intensity", "seg": "sampling_map"},
        probability_map="seg",
    )
    with pytest.raises(DataError, match=r"seg\.nii\.gz: subject 's0': .*NaN or infinite"):
        extract(config, "weighted")


def test_float_label_maps_centre_patches_on_positive_voxels(tmp_path):
    seg = np.zeros((12, 12, 12), np.float32)
    seg[6, 5, 4] = 0.5  # fractional, as resampled label maps often are
    subjects = _one_subject(tmp_path, np.ones((12, 12, 12), np.int16), seg)
    config = _config(tmp_path, subjects, "label.h5", patch_size=3, label_name="seg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = extract(config, "label").path
    with h5py.File(path) as file:
        assert (file["locations"][:, :3] + 1 == [6, 5, 4]).all()


# -- patch files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def patch_file(manifest, tmp_path_factory):
    folder = tmp_path_factory.mktemp("patch-file")
    return extract(_config(folder, manifest, "good.h5"), "uniform").path


def test_a_newer_format_version_is_refused_naming_the_file(tmp_path, patch_file):
    newer = tmp_path / "newer.h5"
    shutil.copy(patch_file, newer)
    with h5py.File(newer, "r+") as file:
        file.attrs["format_version"] = 99
    with pytest.raises(DataError, match=r"newer\.h5: format_version 99 cannot be read"):
        read_patch_output(newer)


def test_a_truncated_patch_file_is_refused_naming_it(tmp_path, patch_file):
    truncated = tmp_path / "truncated.h5"
    content = patch_file.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"truncated\.h5: not an HDF5 file \(.*truncated"):
        read_patch_output(truncated)


def test_a_nifti_output_missing_a_patch_file_is_refused_naming_it(tmp_path, manifest, torch):
    from patchcli.dataset import PatchDataset

    output = {"path": str(tmp_path / "folder"), "format": "nifti"}
    config = _config(tmp_path, manifest, "folder", output=output)
    folder = extract(config, "uniform").path
    missing = sorted(folder.rglob("*.nii.gz"))[0]
    os.unlink(missing)
    dataset = PatchDataset(folder)
    with pytest.raises(DataError, match=rf"{missing.name}: patch file missing"):
        for index in range(len(dataset)):
            dataset[index]


def test_every_missing_input_is_named_at_once_before_any_work(tmp_path, manifest):
    header, *rows = manifest.read_text().splitlines()
    lines = [header]
    for row in rows:
        subject, *files = row.split(",")
        lines.append(",".join([subject, *(str(manifest.parent / name) for name in files)]))
    lines.append(f"s9,{tmp_path / 'gone_t1.nii.gz'},{tmp_path / 'gone_seg.nii.gz'}")
    listed = tmp_path / "listed.csv"
    listed.write_text("\n".join(lines) + "\n")
    expected = r"listed\.csv: 2 input files not found: .*gone_t1.*gone_seg"
    with pytest.raises(DataError, match=expected):
        extract(_config(tmp_path, listed, "out.h5"), "uniform")
    assert not (tmp_path / "out.h5").exists()


def test_an_oblique_affine_is_kept_and_moved_to_each_patch(tmp_path, torch):
    from patchcli.dataset import PatchDataset

    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.0])
    affine[:3, 3] = [-20.0, 35.0, 7.5]
    t1 = np.arange(12 * 10 * 8, dtype=np.int16).reshape(12, 10, 8)
    save_nifti(tmp_path / "t1.nii.gz", t1, affine)
    save_nifti(tmp_path / "seg.nii.gz", (t1 % 3).astype(np.uint8), affine)
    (tmp_path / "subjects.csv").write_text("subject,t1,seg\ns0,t1.nii.gz,seg.nii.gz\n")
    path = extract(_config(tmp_path, tmp_path / "subjects.csv", "oblique.h5"), "uniform").path
    dataset = PatchDataset(path)
    for index in range(len(dataset)):
        item = dataset[index]
        start = item["location"][:3].numpy()
        expected = affine.copy()
        expected[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        np.testing.assert_allclose(item["t1"]["affine"].numpy(), expected, atol=1e-5)
        i0, j0, k0, i1, j1, k1 = item["location"].tolist()
        np.testing.assert_array_equal(item["t1"]["data"][0].numpy(), t1[i0:i1, j0:j1, k0:k1])
