"""Datasets in standard layouts (BIDS, nnU-Net raw, Decathlon) as the subjects of a run.

Each test builds a small dataset of real NIfTI files, every file with random content of
its own, and checks that the patches are crops of the very files the layout names, that
a frozen manifest gives the same run, and that a bad dataset fails on one line before
anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.config import load_config
from patchcli.errors import PatchcliWarning
from patchcli.extract import extract
from patchcli.io.reader import read_patch_output
from patchcli.plan import plan_extraction
from patchcli.subjects import config_manifest

from .helpers import assert_same_output, save_nifti, write_config

PATCH_SIZE = [6, 5, 4]

# --------------------------------------------------------------------------- datasets

#: Subject id -> (participant, session or None, spatial shape).
BIDS_SUBJECTS = {
    "sub-01_ses-post": ("01", "post", (16, 18, 20)),
    "sub-01_ses-pre": ("01", "pre", (20, 16, 18)),
    "sub-02": ("02", None, (18, 20, 16)),
    "sub-03_ses-pre": ("03", "pre", (22, 17, 19)),
}
BIDS_IMAGES = {
    "t1": {"type": "intensity", "bids": {"suffix": "T1w"}},
    "seg": {
        "type": "label",
        "bids": {"suffix": "dseg", "desc": "tissue", "scope": "derivatives"},
    },
}
PLAIN_IMAGES = {"t1": "intensity", "seg": "label"}


def _intensity(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.normal(100.0, 30.0, size=shape).astype(np.float32)


def _labels(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 4, size=shape).astype(np.uint8)


def _description(folder: Path, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    content = {"Name": folder.name, "BIDSVersion": "1.9.0", **extra}
    (folder / "dataset_description.json").write_text(json.dumps(content))


def _bids_dataset(root: Path, seed: int = 0) -> dict[str, dict[str, Path]]:
    """A raw dataset with a segmentation pipeline under derivatives/seg.

    sub-01 has two sessions, sub-02 none, sub-03 one. Beside the files the config's
    images name, each subject has files they must not take: a T1w sidecar, a derived
    T1w (desc-preproc) and another segmentation (desc-lesion).

    Returns subject id -> image name -> the file the layout must name, in id order.
    """
    rng = np.random.default_rng(seed)
    _description(root)
    _description(root / "derivatives" / "seg", DatasetType="derivative")
    files = {}
    for subject, (sub, ses, shape) in BIDS_SUBJECTS.items():
        prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        folder = Path(f"sub-{sub}", *([f"ses-{ses}"] if ses else []), "anat")
        raw, derived = root / folder, root / "derivatives" / "seg" / folder
        raw.mkdir(parents=True, exist_ok=True)
        derived.mkdir(parents=True, exist_ok=True)
        t1 = save_nifti(raw / f"{prefix}_T1w.nii.gz", _intensity(rng, shape))
        (raw / f"{prefix}_T1w.json").write_text("{}")
        seg = save_nifti(derived / f"{prefix}_desc-tissue_dseg.nii.gz", _labels(rng, shape))
        save_nifti(derived / f"{prefix}_desc-lesion_dseg.nii.gz", _labels(rng, shape))
        save_nifti(derived / f"{prefix}_desc-preproc_T1w.nii.gz", _intensity(rng, shape))
        files[subject] = {"t1": t1, "seg": seg}
    return files


NNUNET_CASES = {"case_001": (16, 18, 17), "case_002": (19, 16, 18), "case_003": (17, 20, 16)}
NNUNET_TEST_CASES = {"case_101": (18, 17, 16), "case_102": (16, 16, 19)}


def _nnunet_dataset(root: Path, seed: int = 1):
    """An nnU-Net v2 raw dataset with channels T1 and FLAIR.

    Returns (training files, test files): case -> image name -> file, by case.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    description = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "tissue": 1, "lesion": 2, "edge": 3},
        "numTraining": len(NNUNET_CASES),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir()
    train, test = {}, {}
    # Written in reverse order: the subjects must come out sorted whatever the listing.
    for case, shape in reversed(NNUNET_CASES.items()):
        train[case] = {
            "T1": save_nifti(root / f"imagesTr/{case}_0000.nii.gz", _intensity(rng, shape)),
            "FLAIR": save_nifti(root / f"imagesTr/{case}_0001.nii.gz", _intensity(rng, shape)),
            "label": save_nifti(root / f"labelsTr/{case}.nii.gz", _labels(rng, shape)),
        }
    for case, shape in NNUNET_TEST_CASES.items():
        test[case] = {
            "T1": save_nifti(root / f"imagesTs/{case}_0000.nii.gz", _intensity(rng, shape)),
            "FLAIR": save_nifti(root / f"imagesTs/{case}_0001.nii.gz", _intensity(rng, shape)),
        }
    return dict(sorted(train.items())), test


DECATHLON_CASES = {"BRATS_003": (18, 16, 17), "BRATS_001": (16, 19, 18), "BRATS_002": (17, 17, 20)}


def _decathlon_dataset(root: Path, seed: int = 2) -> dict[str, dict[str, Path]]:
    """A Decathlon task whose images hold two modalities (4D files)."""
    rng = np.random.default_rng(seed)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    files, training = {}, []
    for case, shape in DECATHLON_CASES.items():
        image = save_nifti(root / f"imagesTr/{case}.nii.gz", _intensity(rng, (2, *shape)))
        label = save_nifti(root / f"labelsTr/{case}.nii.gz", _labels(rng, shape))
        files[case] = {"image": image, "label": label}
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
    # Not listed in dataset.json: never a subject.
    (root / "imagesTr/._BRATS_001.nii.gz").write_bytes(b"\0" * 64)
    save_nifti(root / "imagesTr/BRATS_099.nii.gz", _intensity(rng, (2, 16, 16, 16)))
    save_nifti(root / "imagesTs/BRATS_201.nii.gz", _intensity(rng, (2, 16, 17, 16)))
    description = {
        "name": "BrainTumour",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour", "3": "enhancing"},
        "numTraining": len(training),
        "training": training,
        "test": ["./imagesTs/BRATS_201.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return dict(sorted(files.items()))


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids") / "ds"
    return root, _bids_dataset(root)


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet") / "Dataset001_Test"
    return (root, *_nnunet_dataset(root))


# --------------------------------------------------------------------------- helpers


def _write(path: Path, subjects, images=None, output="out.h5", **keys) -> Path:
    """A config at ``path`` (paths in it relative to its folder, as a user writes them)."""
    content: dict = {"subjects": subjects}
    if images is not None:
        content["images"] = images
    content.update(
        patch_size=PATCH_SIZE,
        num_patches=5,
        seed=7,
        workers=0,
        output={"path": output, "compression": "none"},
    )
    content.update(keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_config(path, **content)


def _channels_first(path: Path) -> np.ndarray:
    """A NIfTI file's voxels as (C, X, Y, Z), read with nibabel."""
    array = np.asanyarray(nib.load(path).dataobj)
    return np.moveaxis(array, -1, 0) if array.ndim == 4 else array[np.newaxis]


def _check_patches(path: Path, files: dict[str, dict[str, Path]]) -> None:
    """Every stored patch of every image is the crop, at its stored location, of the file
    ``files`` names for its subject; the subjects table lists those files."""
    output = read_patch_output(path)
    assert [s.id for s in output.subjects] == list(files)
    assert output.images == list(next(iter(files.values())))
    with h5py.File(path, "r") as file:
        for number, subject in enumerate(output.subjects):
            expected = files[subject.id]
            assert subject.source == {name: str(p) for name, p in expected.items()}
            rows = np.flatnonzero(output.subject_index == number)
            assert len(rows) == subject.patch_count > 0
            for name, source in expected.items():
                volume = _channels_first(source)
                assert tuple(subject.shape) == volume.shape[1:], (subject.id, name)
                stored = file[f"patches/{name}"]
                assert stored.shape[1] == volume.shape[0]
                for row in rows:
                    i0, j0, k0, i1, j1, k1 = output.locations[row]
                    np.testing.assert_array_equal(
                        stored[row], volume[:, i0:i1, j0:j1, k0:k1], err_msg=f"{subject.id} {name}"
                    )


def _invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# --------------------------------------------------------------------------- BIDS


def test_bids_sessions_and_derivatives_give_the_patches_of_the_named_files(tmp_path, bids):
    root, files = bids
    config = load_config(_write(tmp_path / "config.yaml", {"bids": str(root)}, BIDS_IMAGES))
    assert list(BIDS_SUBJECTS) == sorted(BIDS_SUBJECTS)
    summary = extract(config, "label")
    assert summary.subjects == 4 and summary.patches == 20
    _check_patches(summary.path, files)
    with h5py.File(summary.path, "r") as file:
        ids = [value.decode() for value in file["subjects/id"][()]]
        assert ids == ["sub-01_ses-post", "sub-01_ses-pre", "sub-02", "sub-03_ses-pre"]
        assert list(file.attrs["image_types"]) == ["intensity", "label"]
        # The label sampler centres its patches on the segmentation's labelled voxels.
        locations, index = file["locations"][()], file["subject_index"][()]
    for location, subject in zip(locations, index):
        centre = tuple(location[:3] + np.array(PATCH_SIZE) // 2)
        seg = _channels_first(files[ids[subject]]["seg"])[0]
        assert seg[centre] > 0


def test_bids_dataset_relative_to_the_config_file(tmp_path, bids, monkeypatch):
    root, files = bids
    config_path = tmp_path / "configs" / "run.yaml"
    relative = os.path.relpath(root, config_path.parent)
    assert relative.startswith("..")
    _write(config_path, {"bids": relative}, BIDS_IMAGES)
    monkeypatch.chdir(root / "sub-02")  # a working directory the path is not relative to
    manifest = config_manifest(load_config(config_path))
    assert manifest.layout.root == root
    assert [(s.id, dict(s.paths)) for s in manifest.subjects] == list(files.items())


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            {"participant_label": ["01", "sub-03"]},
            ["sub-01_ses-post", "sub-01_ses-pre", "sub-03_ses-pre"],
        ),
        ({"participant_label": "02"}, ["sub-02"]),
        ({"session_label": ["pre"]}, ["sub-01_ses-pre", "sub-03_ses-pre"]),
        ({"participant_label": ["01"], "session_label": "ses-post"}, ["sub-01_ses-post"]),
    ],
)
def test_bids_participant_and_session_labels_select_subjects(tmp_path, bids, options, expected):
    root, files = bids
    config = load_config(_write(tmp_path / "c.yaml", {"bids": str(root), **options}, BIDS_IMAGES))
    manifest = config_manifest(config)
    assert [s.id for s in manifest.subjects] == expected
    for spec in manifest.subjects:
        assert dict(spec.paths) == files[spec.id]
    assert [s.index for s in manifest.subjects] == list(range(len(expected)))
    assert manifest.incomplete == []


def test_bids_selected_subjects_are_the_only_ones_extracted(tmp_path, bids):
    root, files = bids
    subjects = {"bids": str(root), "participant_label": ["01", "sub-03"], "session_label": "pre"}
    summary = extract(load_config(_write(tmp_path / "c.yaml", subjects, BIDS_IMAGES)), "uniform")
    _check_patches(summary.path, {key: files[key] for key in ("sub-01_ses-pre", "sub-03_ses-pre")})


# --------------------------------------------------------------------------- nnU-Net


def test_nnunet_images_come_from_dataset_json(tmp_path, nnunet, monkeypatch):
    root, train, _ = nnunet
    config_path = tmp_path / "configs" / "nnunet.yaml"
    _write(config_path, {"nnunet": os.path.relpath(root, config_path.parent)})
    monkeypatch.chdir(tmp_path)  # a working directory the path is not relative to
    config = load_config(config_path)
    assert config.image_types == {"T1": "intensity", "FLAIR": "intensity", "label": "label"}
    summary = extract(config, "label")
    with h5py.File(summary.path, "r") as file:
        assert list(file.attrs["images"]) == ["T1", "FLAIR", "label"]
        assert list(file.attrs["image_types"]) == [
            "intensity",
            "intensity",
            "label",
        ]
        assert file["patches/T1"].dtype == np.float32 and file["patches/label"].dtype == np.uint8
    _check_patches(summary.path, train)


def test_nnunet_types_can_be_changed_in_images(tmp_path, nnunet):
    root, _, _ = nnunet
    images = {"FLAIR": {"type": "sampling_map"}}
    config = load_config(_write(tmp_path / "c.yaml", {"nnunet": str(root)}, images))
    assert config.image_types == {"T1": "intensity", "FLAIR": "sampling_map", "label": "label"}


def test_nnunet_test_split_has_no_label(tmp_path, nnunet):
    root, _, test = nnunet
    config = _write(tmp_path / "c.yaml", {"nnunet": str(root), "split": "test"})
    result = _invoke("subjects", config)
    assert result.exit_code == 0, result.output
    assert _csv_rows(result.stdout) == [
        ["subject", "T1", "FLAIR"],
        *[[case, str(paths["T1"]), str(paths["FLAIR"])] for case, paths in test.items()],
    ]
    assert result.stderr == (f"subjects: nnunet dataset {root}: 2 subjects; files: T1 2, FLAIR 2\n")
    summary = extract(load_config(config), "uniform")
    _check_patches(summary.path, test)


# --------------------------------------------------------------------------- Decathlon


def test_decathlon_4d_images_become_channels(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    files = _decathlon_dataset(root)
    config = load_config(_write(tmp_path / "c.yaml", {"decathlon": root.name}))
    assert config.image_types == {"image": "intensity", "label": "label"}
    summary = extract(config, "label")
    assert summary.subjects == 3
    with h5py.File(summary.path, "r") as file:
        assert file["patches/image"].shape == (15, 2, *PATCH_SIZE)
        assert file["patches/label"].shape == (15, 1, *PATCH_SIZE)
        # The two channels hold different modalities, not one repeated.
        image = file["patches/image"][()]
        assert not np.array_equal(image[:, 0], image[:, 1])
    _check_patches(summary.path, files)
    test = _invoke(
        "subjects", _write(tmp_path / "t.yaml", {"decathlon": str(root), "split": "test"})
    )
    assert test.exit_code == 0, test.output
    assert _csv_rows(test.stdout) == [
        ["subject", "image"],
        ["BRATS_201", str(root / "imagesTs/BRATS_201.nii.gz")],
    ]


# --------------------------------------------------------------------------- frozen manifest


def test_a_frozen_manifest_gives_the_same_run(tmp_path, bids):
    root, files = bids
    layout_path = _write(tmp_path / "layout.yaml", {"bids": str(root)}, BIDS_IMAGES, "a.h5")
    printed = _invoke("subjects", layout_path)
    assert printed.exit_code == 0, printed.output
    expected = [
        ["subject", "t1", "seg"],
        *[[subject, str(paths["t1"]), str(paths["seg"])] for subject, paths in files.items()],
    ]
    assert _csv_rows(printed.stdout) == expected
    assert printed.stderr == f"subjects: bids dataset {root}: 4 subjects; files: t1 4, seg 4\n"

    manifest = tmp_path / "manifest.csv"
    written = _invoke("subjects", layout_path, "-o", manifest)
    assert written.exit_code == 0, written.output
    assert written.stdout == "" and written.stderr == printed.stderr
    assert _csv_rows(manifest.read_text()) == expected
    assert not manifest.with_name("manifest.csv.partial").exists()

    frozen_path = _write(tmp_path / "frozen.yaml", "manifest.csv", PLAIN_IMAGES, "b.h5")
    layout, frozen = load_config(layout_path), load_config(frozen_path)
    assert frozen.subjects == manifest
    first, second = plan_extraction(layout, "label"), plan_extraction(frozen, "label")
    assert first.fingerprint == second.fingerprint
    assert [(s.id, dict(s.paths)) for s in first.subjects] == [
        (s.id, dict(s.paths)) for s in second.subjects
    ]
    a, b = extract(layout, "label"), extract(frozen, "label")
    with h5py.File(a.path, "r") as one, h5py.File(b.path, "r") as two:
        assert one.attrs["config_fingerprint"] == two.attrs["config_fingerprint"]
        for key in ("locations", "subject_index", "patches/t1", "patches/seg"):
            assert one[key][()].tobytes() == two[key][()].tobytes(), key
    assert_same_output(a.path, b.path)


# --------------------------------------------------------------------------- bad input


def _no_description(tmp_path):
    root = tmp_path / "ds"
    _bids_dataset(root)
    (root / "dataset_description.json").unlink()
    config = _write(tmp_path / "c.yaml", {"bids": "ds"}, BIDS_IMAGES)
    return config, [f"{root}/dataset_description.json: not found"]


def _no_dataset_json(tmp_path):
    root = tmp_path / "Dataset001_Test"
    _nnunet_dataset(root)
    (root / "dataset.json").unlink()
    return _write(tmp_path / "c.yaml", {"nnunet": root.name}), [f"{root}/dataset.json: not found"]


def _missing_channel(tmp_path):
    root = tmp_path / "Dataset001_Test"
    _nnunet_dataset(root)
    missing = root / "imagesTr/case_002_0001.nii.gz"
    missing.unlink()
    return _write(tmp_path / "c.yaml", {"nnunet": root.name}), [
        f"subject 'case_002': no file for image 'FLAIR' (expected {missing})"
    ]


def _two_runs(tmp_path):
    root = tmp_path / "ds"
    files = _bids_dataset(root)
    anat = files["sub-02"]["t1"].parent
    first = files["sub-02"]["t1"].rename(anat / "sub-02_run-1_T1w.nii.gz")
    second = save_nifti(anat / "sub-02_run-2_T1w.nii.gz", np.ones((18, 20, 16), np.float32))
    config = _write(tmp_path / "c.yaml", {"bids": "ds"}, BIDS_IMAGES)
    return config, [
        f"sub-02: image 't1' matches 2 files ({first}, {second})",
        "add 'run' to its bids entities",
    ]


def _unknown_participant(tmp_path):
    root = tmp_path / "ds"
    _bids_dataset(root)
    subjects = {"bids": "ds", "participant_label": ["01", "09"]}
    config = _write(tmp_path / "c.yaml", subjects, BIDS_IMAGES)
    return config, [f"{root}: participant '09' not found (no sub-09 folder)"]


def _image_without_entities(tmp_path):
    _bids_dataset(tmp_path / "ds")
    images = {"t1": BIDS_IMAGES["t1"], "seg": {"type": "label"}}
    config = _write(tmp_path / "c.yaml", {"bids": "ds"}, images)
    return config, [f"{config}: ", "images: image 'seg' needs its BIDS entities"]


def _entities_without_bids(tmp_path):
    files = _bids_dataset(tmp_path / "ds")
    with open(tmp_path / "subjects.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", "t1", "seg"])
        writer.writerows([s, p["t1"], p["seg"]] for s, p in files.items())
    config = _write(tmp_path / "c.yaml", "subjects.csv", BIDS_IMAGES)
    return config, [
        f"{config}: ",
        "images: image 't1' has bids entities, but subjects is not a BIDS dataset",
    ]


def _layout_typo(tmp_path):
    _bids_dataset(tmp_path / "ds")
    config = _write(tmp_path / "c.yaml", {"bidz": "ds"}, BIDS_IMAGES)
    return config, [f"{config}: ", "a dataset in one layout: {bids: DIR}"]


def _unknown_option(tmp_path):
    _nnunet_dataset(tmp_path / "Dataset001_Test")
    subjects = {"nnunet": "Dataset001_Test", "participant_label": [1]}
    config = _write(tmp_path / "c.yaml", subjects)
    return config, [f"{config}: ", "the nnunet layout takes no option 'participant_label'"]


BAD_INPUTS = {
    "bids without dataset_description.json": _no_description,
    "nnunet without dataset.json": _no_dataset_json,
    "a channel file missing": _missing_channel,
    "two runs for one image": _two_runs,
    "unknown participant": _unknown_participant,
    "bids image without entities": _image_without_entities,
    "entities without a bids dataset": _entities_without_bids,
    "layout key typo": _layout_typo,
    "unknown layout option": _unknown_option,
}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=list(BAD_INPUTS))
def test_bad_inputs_fail_on_one_line_and_write_nothing(tmp_path, make):
    config, parts = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for args in (
        ("label", config, "-q"),
        ("label", config, "--dry-run"),
        ("subjects", config, "-o", tmp_path / "manifest.csv"),
        ("subjects", config),
    ):
        result = _invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("Error: "), lines
        for part in parts:
            assert part in lines[0], (args, lines[0])
        assert result.stdout == "", args
        assert sorted(tmp_path.rglob("*")) == before, args


def test_a_missing_label_fails_unless_skipped(tmp_path):
    root = tmp_path / "Dataset001_Test"
    _nnunet_dataset(root)
    (root / "labelsTr/case_002.nii.gz").unlink()
    config = _write(tmp_path / "c.yaml", {"nnunet": root.name})
    result = _invoke("label", config, "-q")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: subject 'case_002': no file for image 'label' "
        f"(expected {root}/labelsTr/case_002.nii.gz)\n"
    )
    assert not (tmp_path / "out.h5").exists()


# --------------------------------------------------------------------------- on_error: skip


def test_skip_leaves_out_an_incomplete_case_and_records_it(tmp_path):
    root = tmp_path / "Dataset001_Test"
    train, _ = _nnunet_dataset(root)
    missing = root / "labelsTr/case_002.nii.gz"
    missing.unlink()
    reason = f"no file for image 'label' (expected {missing})"
    config_path = _write(tmp_path / "c.yaml", {"nnunet": root.name}, on_error="skip")

    dry = _invoke("label", config_path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    found = [line.strip() for line in dry.stdout.splitlines() if line.strip().startswith("found:")]
    assert found == [
        f"found: nnunet dataset {root}: 2 subjects; files: T1 3, FLAIR 3, label 2; "
        f"1 incomplete: 'case_002' ({reason})"
    ]
    assert "1 incomplete" in found[0]
    assert f"skipped 'case_002' (manifest row None): incomplete: {reason}" in dry.stdout
    assert not (tmp_path / "out.h5").exists()

    listed = _invoke("subjects", config_path)
    assert listed.exit_code == 0, listed.output
    assert [row[0] for row in _csv_rows(listed.stdout)] == ["subject", "case_001", "case_003"]
    assert f"  left out 'case_002': {reason}" in listed.stderr.splitlines()

    with pytest.warns(PatchcliWarning, match=r"skipped subject 'case_002' \(manifest row None\)"):
        summary = extract(load_config(config_path), "label")
    assert summary.subjects == 2
    assert [(s.id, s.manifest_row, s.reason) for s in summary.skipped] == [
        ("case_002", None, f"incomplete: {reason}")
    ]
    output = read_patch_output(summary.path)
    assert len(output.skipped) == 1
    skipped = output.skipped[0]
    assert (skipped.id, skipped.manifest_row) == ("case_002", None)
    assert skipped.reason.startswith("incomplete:") and skipped.reason.endswith(reason)
    with h5py.File(summary.path, "r") as file:
        assert file["skipped_subjects/manifest_row"][()].tolist() == [-1]
        assert file["subjects/manifest_row"][()].tolist() == [0, 1]
    _check_patches(summary.path, {case: train[case] for case in ("case_001", "case_003")})


def test_on_error_option_skips_an_incomplete_subject(tmp_path):
    root = tmp_path / "ds"
    files = _bids_dataset(root)
    files["sub-02"]["seg"].unlink()
    config_path = _write(tmp_path / "c.yaml", {"bids": "ds"}, BIDS_IMAGES)
    failed = _invoke("subjects", config_path)
    assert failed.exit_code == 1 and "subject 'sub-02': no file for image 'seg'" in failed.stderr
    listed = _invoke("subjects", config_path, "--on-error", "skip")
    assert listed.exit_code == 0, listed.output
    assert [row[0] for row in _csv_rows(listed.stdout)][1:] == [
        "sub-01_ses-post",
        "sub-01_ses-pre",
        "sub-03_ses-pre",
    ]
    reason = (
        f"no file for image 'seg' (expected {root}/derivatives/*/sub-02/*/"
        "sub-02*_desc-tissue*_dseg.nii[.gz])"
    )
    assert listed.stderr.splitlines() == [
        f"subjects: bids dataset {root}: 3 subjects; files: t1 4, seg 3; "
        f"1 incomplete: 'sub-02' ({reason})",
        f"  left out 'sub-02': {reason}",
    ]
    ran = _invoke("label", config_path, "-q", "--on-error", "skip")
    assert ran.exit_code == 0, ran.output
    output = read_patch_output(tmp_path / "out.h5")
    assert [s.id for s in output.subjects] == [
        "sub-01_ses-post",
        "sub-01_ses-pre",
        "sub-03_ses-pre",
    ]
    assert [s.id for s in output.skipped] == ["sub-02"]
    assert output.skipped[0].reason == f"incomplete: {reason}"


# --------------------------------------------------------------------------- shards


def test_shards_of_a_layout_merge_into_the_whole_run(tmp_path, bids):
    root, _ = bids
    config = _write(tmp_path / "c.yaml", {"bids": str(root)}, BIDS_IMAGES, "sharded.h5")
    for index in range(2):
        result = _invoke("label", config, "-q", "--shard", f"{index}/2")
        assert result.exit_code == 0, result.output
    shard_ids = [
        [s.id for s in read_patch_output(tmp_path / f"sharded.shard-{i}-of-2.h5").subjects]
        for i in range(2)
    ]
    assert shard_ids == [["sub-01_ses-post", "sub-01_ses-pre"], ["sub-02", "sub-03_ses-pre"]]
    merged = _invoke("merge", tmp_path / "sharded.h5", "-q", "--config", config)
    assert merged.exit_code == 0, merged.output
    whole = _invoke("label", config, "-q", "--output", tmp_path / "whole.h5")
    assert whole.exit_code == 0, whole.output
    assert_same_output(tmp_path / "sharded.h5", tmp_path / "whole.h5", merged=True)


def test_shards_list_an_incomplete_subject_once(tmp_path):
    root = tmp_path / "Dataset001_Test"
    _nnunet_dataset(root)
    (root / "labelsTr/case_003.nii.gz").unlink()
    config = _write(
        tmp_path / "c.yaml", {"nnunet": root.name}, output="sharded.h5", on_error="skip"
    )
    for index in range(2):
        result = _invoke("label", config, "-q", "--shard", f"{index}/2")
        assert result.exit_code == 0, result.output
    merged = _invoke("merge", tmp_path / "sharded.h5", "-q")
    assert merged.exit_code == 0, merged.output
    whole = _invoke("label", config, "-q", "--output", tmp_path / "whole.h5")
    assert whole.exit_code == 0, whole.output
    output = read_patch_output(tmp_path / "sharded.h5")
    assert [s.id for s in output.subjects] == ["case_001", "case_002"]
    assert [(s.id, s.manifest_row) for s in output.skipped] == [("case_003", None)]
    assert_same_output(tmp_path / "sharded.h5", tmp_path / "whole.h5", merged=True)


def test_info_checks_the_shards_of_a_layout_run_against_its_dataset(tmp_path, bids):
    """Without a submit snapshot, info checks the shards against the config recorded in
    them: a dataset's `subjects` mapping must come back from it as it was written."""
    root, files = bids
    config = _write(tmp_path / "c.yaml", {"bids": str(root)}, BIDS_IMAGES, "sharded.h5")
    for index in range(2):
        assert _invoke("label", config, "-q", "--shard", f"{index}/2").exit_code == 0
    assert _invoke("merge", tmp_path / "sharded.h5", "-q").exit_code == 0
    recorded = yaml.safe_load(read_patch_output(tmp_path / "sharded.h5").attributes["config"])
    assert recorded["subjects"] == {"bids": str(root)}
    again = load_config(None, recorded)
    assert again.subjects == {"bids": str(root)}
    assert [(s.id, dict(s.paths)) for s in config_manifest(again).subjects] == list(files.items())
    info = _invoke("info", tmp_path / "sharded.h5")
    assert "cannot check the shards" not in info.output
    assert "2 current; merge current" in info.output and "up to date" in info.output
    assert info.exit_code == 0, info.output
