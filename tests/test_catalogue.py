"""Bad and unusual input from docs/reliability.md: what each case gives, one test each."""

from __future__ import annotations

import os
import re
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


# -- configs (through the command line) --------------------------------------------------


def _cli(*args):
    from click.testing import CliRunner

    from patchcli.cli import main

    return CliRunner().invoke(main, [str(arg) for arg in args])


def _one_error_line(result) -> str:
    """The run stopped with exit 1 and one line ``Error: ...``, no traceback."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _nothing_written(folder, name):
    return not [p for p in folder.iterdir() if p.name.startswith(name) and p.suffix != ".yaml"]


def test_an_empty_config_file_is_a_one_line_error_naming_it(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    line = _one_error_line(_cli("uniform", empty, "--output", tmp_path / "out.h5"))
    assert line == f"Error: {empty}: the config file is empty"
    assert _nothing_written(tmp_path, "out.h5")


def test_a_yaml_list_as_config_is_a_one_line_error_naming_it(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- patch_size: 4\n- num_patches: 3\n")
    line = _one_error_line(_cli("uniform", listed, "--output", tmp_path / "out.h5"))
    assert line == f"Error: {listed}: the config must be a mapping of keys to values"
    assert _nothing_written(tmp_path, "out.h5")


@pytest.mark.parametrize(
    "keys, options",
    [
        ({"num_patches": 10**40}, []),
        ({"num_patches": 10**40}, ["--no-space-check"]),
        ({"patch_size": 99999999999999999999}, []),
        ({"seed": 10**40}, []),
        ({"workers": 10**6}, []),
    ],
    ids=["num_patches", "num_patches-no-space-check", "patch_size", "seed", "workers"],
)
def test_huge_integers_in_a_config_are_one_line_errors(tmp_path, manifest, keys, options):
    base = dict(
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=4,
        num_patches=3,
    )
    config = write_config(tmp_path / "huge.yaml", **{**base, **keys})
    assert f": {next(iter(keys.values()))}\n" in config.read_text()  # written out as digits
    output = tmp_path / "out.h5"
    line = _one_error_line(_cli("uniform", config, "--output", output, "-q", *options))
    key = next(iter(keys))
    if key == "patch_size":  # a valid size, larger than the images: named with the image
        assert str(manifest.parent) in line and "patch size" in line
    else:
        assert line.startswith(f"Error: {config}: {key}:"), line
    assert _nothing_written(tmp_path, "out.h5")


def test_non_ascii_subject_ids_and_paths_run_end_to_end(tmp_path):
    folder = tmp_path / "Müller études"
    folder.mkdir()
    rng = np.random.default_rng(0)
    t1 = rng.integers(-100, 1000, (12, 10, 8)).astype(np.int16)
    save_nifti(folder / "t1 ü.nii.gz", t1)
    save_nifti(folder / "ségmentation.nii.gz", (t1 > 400).astype(np.uint8))
    subjects = folder / "sujets.csv"
    subjects.write_text(
        "subject,t1,seg\nsüjet-ø,t1 ü.nii.gz,ségmentation.nii.gz\n"
        "日本,t1 ü.nii.gz,ségmentation.nii.gz\n",
        encoding="utf-8",
    )
    ids = ["süjet-ø", "日本"]
    path = extract(_config(folder, subjects, "sortie.h5"), "uniform").path
    output = read_patch_output(path)
    assert [subject.id for subject in output.subjects] == ids
    assert output.subjects[0].source["t1"] == str(folder / "t1 ü.nii.gz")
    np.testing.assert_array_equal(_read_all(output, "t1"), _crops(t1, output.locations))

    nifti = {"path": str(folder / "sortie"), "format": "nifti"}
    folder_path = extract(_config(folder, subjects, "sortie", output=nifti), "uniform").path
    output = read_patch_output(folder_path)
    assert [subject.id for subject in output.subjects] == ids
    for subject_id in ids:
        assert len(list((folder_path / subject_id).glob("t1_*.nii.gz"))) == 3
    np.testing.assert_array_equal(_read_all(output, "t1"), _crops(t1, output.locations))


# -- images (whole extractions) ---------------------------------------------------------


def _read_all(output, name):
    """Every patch of an image of a PatchOutput, ``(N, C, X, Y, Z)``."""
    from patchcli.io.reader import HandleCache

    patches = np.empty(
        (output.num_patches, output.channels[name], *output.patch_size), output.dtypes[name]
    )
    handles = HandleCache()
    try:
        output.read_rows(name, 0, output.num_patches, patches, handles)
    finally:
        handles.close()
    return patches


def _nib_shape(path):
    import nibabel as nib

    return nib.load(path).shape


def _crops(volume, locations):
    """The source crops at stored locations; ``volume`` is (X, Y, Z) or (C, X, Y, Z)."""
    volume = volume[None] if volume.ndim == 3 else volume
    return np.stack([volume[:, i0:i1, j0:j1, k0:k1] for i0, j0, k0, i1, j1, k1 in locations])


@pytest.mark.parametrize(
    "name, content",
    [
        ("t1.nii.gz", b"subject,t1\nnot an image at all\n"),
        ("t1.nii", b"\x89PNG\r\n\x1a\n" + bytes(200)),
        ("t1.nii", np.random.default_rng(0).bytes(600)),
    ],
    ids=["text-as-nii.gz", "png-as-nii", "random-bytes-as-nii"],
)
def test_a_non_image_with_an_image_extension_is_refused_before_any_work(tmp_path, name, content):
    subjects = _one_subject(tmp_path, np.zeros((12, 10, 8), np.int16), np.zeros((12, 10, 8)))
    (tmp_path / name).write_bytes(content)
    subjects.write_text(f"subject,t1,seg\ns0,{name},seg.nii.gz\n")
    expected = rf"{re.escape(name)}: cannot read image"
    with pytest.raises(DataError, match=expected) as caught:
        extract(_config(tmp_path, subjects, "out.h5"), "uniform")
    assert str(tmp_path / name) in str(caught.value) and "\n" not in str(caught.value)
    assert _nothing_written(tmp_path, "out.h5")


def test_a_four_dimensional_image_gives_patches_with_its_channels(tmp_path):
    rng = np.random.default_rng(0)
    t1 = rng.integers(-100, 1000, (2, 12, 10, 8)).astype(np.int16)  # saved as (X, Y, Z, 2)
    seg = (t1[0] > 400).astype(np.uint8)
    subjects = _one_subject(tmp_path, t1, seg)
    assert _nib_shape(tmp_path / "t1.nii.gz") == (12, 10, 8, 2)
    path = extract(_config(tmp_path, subjects, "channels.h5"), "uniform").path
    with h5py.File(path) as file:
        assert file["patches/t1"].shape == (3, 2, 4, 4, 4)
        assert file["patches/seg"].shape == (3, 1, 4, 4, 4)
        locations = file["locations"][:]
        np.testing.assert_array_equal(file["patches/t1"][:], _crops(t1, locations))
        np.testing.assert_array_equal(file["patches/seg"][:], _crops(seg, locations))


def test_a_two_dimensional_image_is_extracted_as_one_voxel_thick(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    t1 = rng.integers(-100, 1000, (12, 10)).astype(np.int16)
    seg = (t1 > 400).astype(np.uint8)
    nib.save(nib.Nifti1Image(t1, np.eye(4)), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(seg, np.eye(4)), tmp_path / "seg.nii.gz")
    assert _nib_shape(tmp_path / "t1.nii.gz") == (12, 10)
    (tmp_path / "subjects.csv").write_text("subject,t1,seg\ns0,t1.nii.gz,seg.nii.gz\n")
    config = _config(tmp_path, tmp_path / "subjects.csv", "flat.h5", patch_size=[4, 4, 1])
    path = extract(config, "uniform").path
    output = read_patch_output(path)
    assert output.subjects[0].shape == (12, 10, 1)
    with h5py.File(path) as file:
        assert file["patches/t1"].shape == (3, 1, 4, 4, 1)
        locations = file["locations"][:]
        np.testing.assert_array_equal(file["patches/t1"][:], _crops(t1[..., None], locations))
        np.testing.assert_array_equal(file["patches/seg"][:], _crops(seg[..., None], locations))


def test_int16_intensities_and_binary_label_maps_keep_their_dtypes(tmp_path):
    import nibabel as nib

    # nibabel cannot save bool ("data dtype bool not supported"): a binary map is uint8 0/1.
    with pytest.raises(nib.spatialimages.HeaderDataError, match="bool"):
        nib.Nifti1Image(np.zeros((2, 2, 2), bool), np.eye(4))
    rng = np.random.default_rng(0)
    t1 = rng.integers(-32768, 32768, (12, 10, 8)).astype(np.int16)
    t1[0, 0, 0], t1[-1, -1, -1] = -32768, 32767
    seg = (rng.random((12, 10, 8)) > 0.5).astype(np.uint8)
    subjects = _one_subject(tmp_path, t1, seg)
    path = extract(_config(tmp_path, subjects, "types.h5", patch_size=4), "grid").path
    with h5py.File(path) as file:
        assert file["patches/t1"].dtype == np.int16
        assert file["patches/seg"].dtype == np.uint8
        locations = file["locations"][:]
        np.testing.assert_array_equal(file["patches/t1"][:], _crops(t1, locations))
        np.testing.assert_array_equal(file["patches/seg"][:], _crops(seg, locations))
        assert set(np.unique(file["patches/seg"][:])) == {0, 1}
        assert file["patches/t1"][:].min() == -32768 and file["patches/t1"][:].max() == 32767


# -- patch files: sources outside the file's folder -------------------------------------


def _copy_but_t1(source, target):
    """Copy a patch file to ``target`` without /patches/t1; return t1's shape and dtype."""
    with h5py.File(source) as old, h5py.File(target, "w") as new:
        new.attrs.update(old.attrs)
        for name in old:
            if name != "patches":
                old.copy(old[name], new, name)
        group = new.create_group("patches")
        group.attrs.update(old["patches"].attrs)
        for name in old["patches"]:
            if name != "t1":
                old.copy(old["patches"][name], group, name)
        return old["patches/t1"].shape, old["patches/t1"].dtype


@pytest.mark.parametrize("compression", ["lz4", "none"])
@pytest.mark.parametrize("kind", ["external-link", "virtual-dataset"])
def test_sources_outside_the_folder_are_refused_unless_allowed(
    tmp_path, manifest, kind, compression
):
    (tmp_path / "real").mkdir()
    (tmp_path / "other").mkdir()
    output = {"path": str(tmp_path / "real" / "good.h5"), "compression": compression}
    real = extract(_config(tmp_path / "real", manifest, "good.h5", output=output), "uniform").path
    pointing = tmp_path / "other" / "pointing.h5"
    shape, dtype = _copy_but_t1(real, pointing)
    with h5py.File(pointing, "a") as file:
        if kind == "external-link":
            file["patches/t1"] = h5py.ExternalLink("../real/good.h5", "patches/t1")
        else:
            layout = h5py.VirtualLayout(shape, dtype)
            layout[:] = h5py.VirtualSource(str(real), "patches/t1", shape=shape)
            file["patches"].create_virtual_dataset("t1", layout)
    with pytest.raises(DataError) as caught:
        read_patch_output(pointing)
    message = str(caught.value)
    assert message.startswith(f"{pointing}: /patches/t1 ") and "\n" not in message
    assert "outside the file's folder (refused unless allowed: allow_external=True" in message

    allowed = read_patch_output(pointing, allow_external=True)
    expected = read_patch_output(real)
    np.testing.assert_array_equal(allowed.locations, expected.locations)
    np.testing.assert_array_equal(_read_all(allowed, "t1"), _read_all(expected, "t1"))

    # The user's two ways to allow them: PatchDataset(allow_external=True), info --allow-external.
    from patchcli.dataset import PatchDataset

    with pytest.raises(DataError, match="outside the file's folder"):
        PatchDataset(pointing)
    dataset = PatchDataset(pointing, allow_external=True)
    for index in range(len(dataset)):
        np.testing.assert_array_equal(
            dataset[index]["t1"]["data"].numpy(), PatchDataset(real)[index]["t1"]["data"].numpy()
        )
    assert "outside the file's folder" in _one_error_line(_cli("info", pointing))
    assert _cli("info", pointing, "--allow-external").exit_code == 0
