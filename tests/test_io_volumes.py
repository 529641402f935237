"""Reading images: nibabel and SimpleITK agree; shapes become (C, X, Y, Z)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from patchcli.errors import DataError
from patchcli.io.volumes import choose_reader, read_header, read_volume

# An oblique affine with unequal zooms and a non-zero origin: any axis or sign
# mix-up between the two readers changes it.
OBLIQUE = np.array(
    [[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -20.0], [0.0, 0.0, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
)


def _save(path, data, affine=OBLIQUE):
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_nibabel_and_sitk_agree_on_nifti(tmp_path, dtype):
    data = np.random.default_rng(0).integers(0, 120, (7, 8, 9)).astype(dtype)
    path = _save(tmp_path / "a.nii.gz", data)
    via_nibabel = read_volume(path, "nibabel")
    via_sitk = read_volume(path, "sitk")
    assert via_nibabel.array.shape == via_sitk.array.shape == (1, 7, 8, 9)
    assert via_nibabel.array.dtype == via_sitk.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(via_nibabel.array, via_sitk.array)
    np.testing.assert_array_equal(via_nibabel.array[0], data)
    np.testing.assert_allclose(via_nibabel.affine, OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(via_sitk.affine, OBLIQUE, atol=1e-5)


def test_sitk_formats_round_trip_through_nifti(tmp_path):
    data = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    source = _save(tmp_path / "a.nii", data)
    expected = read_volume(source)
    for suffix in (".nrrd", ".mha"):
        target = tmp_path / f"a{suffix}"
        sitk.WriteImage(sitk.ReadImage(str(source)), str(target))
        assert choose_reader(target) == "sitk"
        volume = read_volume(target)
        np.testing.assert_array_equal(volume.array, expected.array)
        np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-5)


def test_multichannel_nifti_puts_channels_first(tmp_path):
    data = np.random.default_rng(2).random((4, 5, 6, 3)).astype(np.float32)
    path = _save(tmp_path / "c.nii.gz", data)
    for reader in ("nibabel", "sitk"):
        volume = read_volume(path, reader)
        assert volume.array.shape == (3, 4, 5, 6)
        np.testing.assert_array_equal(volume.array[2], data[..., 2])
    header = read_header(path)
    assert (header.channels, header.spatial_shape) == (3, (4, 5, 6))


def test_2d_image_gets_a_last_axis_of_one(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = _save(tmp_path / "flat.nii.gz", data)
    volume = read_volume(path)
    assert volume.array.shape == (1, 3, 4, 1)
    np.testing.assert_array_equal(volume.array[0, :, :, 0], data)


def test_header_matches_volume_for_both_readers(tmp_path):
    path = _save(tmp_path / "h.nii.gz", np.zeros((6, 7, 8), np.int16))
    for reader in ("nibabel", "sitk"):
        header = read_header(path, reader)
        volume = read_volume(path, reader)
        assert header.spatial_shape == volume.spatial_shape
        assert header.dtype == volume.array.dtype
        assert header.channels == volume.array.shape[0]
        np.testing.assert_allclose(header.affine, volume.affine, atol=1e-5)


def test_scaled_nifti_header_reports_the_scaled_dtype(tmp_path):
    image = nib.Nifti1Image(np.ones((3, 3, 3), np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / "scaled.nii"
    nib.save(image, path)
    assert read_header(path).dtype == read_volume(path).array.dtype
    assert read_volume(path).array.dtype.kind == "f"


def test_header_does_not_read_voxels(tmp_path, monkeypatch):
    path = _save(tmp_path / "lazy.nii.gz", np.zeros((6, 7, 8), np.uint8))

    def refuse(*args, **kwargs):
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", refuse)
    assert read_header(path, "nibabel").spatial_shape == (6, 7, 8)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.nii\.gz: cannot read image") as caught:
        read_volume(bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match=r"bad\.nii\.gz"):
        read_header(bad)


def test_unknown_reader_is_refused(tmp_path):
    path = _save(tmp_path / "a.nii", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match="unknown reader"):
        read_volume(path, "itk")


def _write_dicom_series(folder, data, spacing=(0.8, 0.9, 2.5), origin=(-30.0, 12.0, 40.0)):
    """Write a (X, Y, Z) int16 volume as one DICOM file per slice."""
    folder.mkdir()
    volume = sitk.GetImageFromArray(data.T)  # sitk arrays are (z, y, x)
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(data.shape[2]):
        image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "MR",
            "0020|000d": series + ".0",
            "0020|000e": series + ".1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0008|0018": f"{series}.2.{k + 1}",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_folder(tmp_path):
    data = np.random.default_rng(3).integers(0, 1000, (6, 5, 4)).astype(np.int16)
    folder = tmp_path / "series"
    _write_dicom_series(folder, data)
    assert choose_reader(folder) == "sitk"
    volume = read_volume(folder)
    assert volume.array.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(volume.array[0], data)
    # LPS origin (-30, 12, 40) is RAS (30, -12, 40); zooms on the diagonal, with flips.
    np.testing.assert_allclose(volume.affine[:3, 3], [30.0, -12.0, 40.0], atol=1e-4)
    np.testing.assert_allclose(np.diag(volume.affine)[:3], [-0.8, -0.9, 2.5], atol=1e-4)
    header = read_header(folder)
    assert header.spatial_shape == (6, 5, 4) and header.dtype == np.int16
    # The header's geometry is the whole series' (slice spacing 2.5), not one slice's.
    np.testing.assert_allclose(header.affine, volume.affine, atol=1e-4)


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        read_volume(tmp_path / "empty")


def test_a_dicom_series_missing_a_slice_is_refused(tmp_path):
    data = np.random.default_rng(4).integers(0, 1000, (6, 5, 7)).astype(np.int16)
    folder = tmp_path / "gap"
    _write_dicom_series(folder, data)
    (folder / "slice003.dcm").unlink()
    with pytest.raises(DataError, match=r"gap: DICOM slices are not evenly spaced \(5 mm after"):
        read_header(folder)
