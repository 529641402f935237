"""Manifests and subject loading: ids, paths, num_samples, matching geometry."""

from __future__ import annotations

import numpy as np
import pytest

from patchcli.errors import DataError
from patchcli.subjects import load_subject, read_manifest, read_subject_headers

from .helpers import affine_for, save_nifti


def _csv(path, text):
    path.write_text(text)
    return path


def test_csv_manifest_paths_are_relative_to_the_csv(tmp_path):
    manifest = _csv(
        tmp_path / "s.csv", "subject,t1,num_samples\na,img/a.nii.gz,3\nb,/abs/b.nii.gz,\n"
    )
    specs = read_manifest(manifest, ["t1"])
    assert [s.id for s in specs] == ["a", "b"]
    assert specs[0].paths["t1"] == tmp_path / "img" / "a.nii.gz"
    assert str(specs[1].paths["t1"]) == "/abs/b.nii.gz"
    assert [s.num_samples for s in specs] == [3, None]
    assert [s.index for s in specs] == [0, 1]


def test_inline_manifest(tmp_path):
    specs = read_manifest([{"id": "x", "t1": "/a.nii", "num_samples": 2}], ["t1"])
    assert specs[0].id == "x" and specs[0].num_samples == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,t1\na,a.nii\n", "needs a 'subject' column"),
        ("subject,t2\na,a.nii\n", "no column for images \\['t1'\\]"),
        ("subject,t1\na,a.nii\na,b.nii\n", "row 3: duplicate subject id 'a'"),
        ("subject,t1\n../up,a.nii\n", "not usable as a file name"),
        ("subject,t1\na/b,a.nii\n", "not usable as a file name"),
        ("subject,t1\n..,a.nii\n", "not usable as a file name"),
        ("subject,t1\n,a.nii\n", "not usable as a file name"),
        ("subject,t1\na,\n", "has no path for image 't1'"),
        ("subject,t1,num_samples\na,a.nii,0\n", "num_samples must be a positive integer"),
        ("subject,t1,num_samples\na,a.nii,x\n", "num_samples must be a positive integer"),
        ("subject,t1\n", "no subjects"),
    ],
)
def test_manifest_errors_name_the_file(tmp_path, text, message):
    manifest = _csv(tmp_path / "s.csv", text)
    with pytest.raises(DataError, match=message) as caught:
        read_manifest(manifest, ["t1"])
    assert str(manifest) in str(caught.value)


def test_inline_manifest_refuses_unknown_keys():
    with pytest.raises(DataError, match="unknown keys"):
        read_manifest([{"id": "a", "t1": "a.nii", "t2": "b.nii"}], ["t1"])


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="subjects manifest not found"):
        read_manifest(tmp_path / "none.csv", ["t1"])


def _pair(tmp_path, shape_b=(6, 7, 8), affine_b=None):
    a = save_nifti(tmp_path / "a.nii.gz", np.zeros((6, 7, 8), np.uint8))
    b = save_nifti(tmp_path / "b.nii.gz", np.zeros(shape_b, np.uint8), affine_b)
    return read_manifest([{"id": "s1", "t1": str(a), "seg": str(b)}], ["t1", "seg"])[0]


def test_loaded_subject_shares_geometry(tmp_path):
    subject = load_subject(_pair(tmp_path))
    assert subject.spatial_shape == (6, 7, 8)
    assert set(subject.volumes) == {"t1", "seg"}
    np.testing.assert_allclose(subject.affine, affine_for(None))


def test_shape_mismatch_names_subject_images_and_shapes(tmp_path):
    spec = _pair(tmp_path, shape_b=(6, 7, 9))
    for check in (load_subject, lambda s: read_subject_headers(s, "auto", 1e-4)):
        with pytest.raises(DataError) as caught:
            check(spec)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / "b.nii.gz"))
        assert "subject 's1'" in message and "'t1'" in message and "'seg'" in message
        assert "(6, 7, 8) vs (6, 7, 9)" in message


def test_affine_mismatch_beyond_tolerance(tmp_path):
    shifted = affine_for(None)
    shifted[0, 3] += 0.5
    spec = _pair(tmp_path, affine_b=shifted)
    with pytest.raises(DataError, match="differ in affine"):
        load_subject(spec)
    # Within a looser tolerance the same subject loads.
    assert load_subject(spec, tolerance=1.0).spatial_shape == (6, 7, 8)
