"""Datasets in standard layouts resolve to sorted subjects, one file per image.

Each test builds a small dataset of empty files (only names are read) and valid JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from patchcli.config import check_image_name
from patchcli.errors import ConfigError, DataError
from patchcli.layouts import (
    LAYOUTS,
    LayoutSubject,
    ResolvedLayout,
    parse_bids_name,
    resolve_bids,
    resolve_decathlon,
    resolve_layout,
    resolve_nnunet,
)
from patchcli.layouts.resolved import RESERVED_IMAGE_NAMES, make_image_name


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _bids(root: Path, *names: str, description: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(
            json.dumps({"Name": "test", "BIDSVersion": "1.9.0"})
        )
    _touch(root, *names)
    return root


T1 = {"t1": {"type": "intensity", "bids": {"suffix": "T1w"}}}
T1_FLAIR = {**T1, "flair": {"type": "intensity", "bids": {"suffix": "FLAIR"}}}


# --- BIDS ----------------------------------------------------------------------------


def test_parse_bids_name():
    assert parse_bids_name("sub-01_ses-a_run-02_T1w.nii.gz") == (
        {"sub": "01", "ses": "a", "run": "02"},
        "T1w",
        ".nii.gz",
    )
    assert parse_bids_name("sub-01_T1w.nii") == ({"sub": "01"}, "T1w", ".nii")
    for name in ("sub-01_T1w", "sub-01.nii.gz", "sub-01_acq_T1w.nii.gz", "T1w.nii.gz"):
        assert parse_bids_name(name) is None, name
    assert parse_bids_name("sub-01_acq-a_acq-b_T1w.nii.gz") is None


def test_bids_raw_images_of_each_participant(tmp_path):
    root = _bids(
        tmp_path / "ds",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.json",
        "sub-02/anat/sub-02_FLAIR.nii",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_FLAIR.nii.gz",
        "sub-01/anat/.sub-01_T2w.nii.gz",
        "sub-01/anat/notbids.nii.gz",
        "sourcedata/sub-03/anat/sub-03_T1w.nii.gz",
        "code/sub-04/anat/sub-04_T1w.nii.gz",
    )
    resolved = resolve_bids(root, T1_FLAIR)
    assert resolved.layout == "bids"
    assert resolved.root == root
    assert [s.id for s in resolved.subjects] == ["sub-01", "sub-02"]
    assert resolved.subjects[0].paths == {
        "t1": root / "sub-01/anat/sub-01_T1w.nii.gz",
        "flair": root / "sub-01/anat/sub-01_FLAIR.nii.gz",
    }
    assert resolved.subjects[1].paths["flair"] == root / "sub-02/anat/sub-02_FLAIR.nii"
    assert all(p.is_absolute() for s in resolved.subjects for p in s.paths.values())
    assert resolved.image_types == {"t1": "intensity", "flair": "intensity"}
    assert resolved.counts() == {"t1": 2, "flair": 2}
    assert resolved.incomplete == []


def test_bids_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    _bids(tmp_path / "ds", "sub-01/anat/sub-01_T1w.nii.gz")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_bids("ds", T1)
    assert resolved.subjects[0].paths["t1"] == tmp_path / "ds/sub-01/anat/sub-01_T1w.nii.gz"


def _with_sessions_and_derivatives(root: Path) -> Path:
    return _bids(
        root,
        "sub-01/ses-pre/anat/sub-01_ses-pre_T1w.nii.gz",
        "sub-01/ses-post/anat/sub-01_ses-post_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        # A pipeline mirroring the tree, and a subject-level output of a participant
        # with sessions (which belongs to no subject).
        "derivatives/seg/sub-01/ses-pre/anat/sub-01_ses-pre_desc-brain_mask.nii.gz",
        "derivatives/seg/sub-01/ses-post/anat/sub-01_ses-post_desc-brain_mask.nii.gz",
        "derivatives/seg/sub-01/anat/sub-01_desc-brain_mask.nii.gz",
        "derivatives/seg/sub-02/anat/sub-02_desc-brain_mask.nii.gz",
        "derivatives/seg/sub-02/anat/sub-02_desc-brain_probseg.nii.gz",
        # A nested pipeline and one that does not mirror the tree.
        "derivatives/seg/derivatives/lesions/sub-02/anat/sub-02_label-lesion_dseg.nii.gz",
        "derivatives/freesurfer/sub-01/mri/aseg.mgz",
    )


def test_bids_sessions_and_a_named_pipeline(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    images = {**T1, "mask": {"bids": {"suffix": "mask", "scope": "seg", "datatype": "anat"}}}
    resolved = resolve_bids(root, images)
    assert [s.id for s in resolved.subjects] == ["sub-01_ses-post", "sub-01_ses-pre", "sub-02"]
    pre = resolved.subjects[1]
    assert pre.paths["t1"] == root / "sub-01/ses-pre/anat/sub-01_ses-pre_T1w.nii.gz"
    assert pre.paths["mask"] == (
        root / "derivatives/seg/sub-01/ses-pre/anat/sub-01_ses-pre_desc-brain_mask.nii.gz"
    )
    # The type defaults by suffix.
    assert resolved.image_types == {"t1": "intensity", "mask": "label"}


def test_bids_scope_derivatives_reaches_nested_pipelines(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    images = {
        **T1,
        "lesion": {"bids": {"suffix": "dseg", "scope": "derivatives", "label": "lesion"}},
        "prob": {"bids": {"suffix": "probseg", "scope": "derivatives"}},
    }
    resolved = resolve_bids(root, images, participant_label=["02"])
    (subject,) = resolved.subjects
    assert subject.paths["lesion"] == (
        root / "derivatives/seg/derivatives/lesions/sub-02/anat/sub-02_label-lesion_dseg.nii.gz"
    )
    assert resolved.image_types["lesion"] == "label"
    assert resolved.image_types["prob"] == "sampling_map"
    # Named by the nested pipeline's folder, the same file.
    nested = {**T1, "lesion": {"bids": {"suffix": "dseg", "scope": "lesions"}}}
    again = resolve_bids(root, nested, participant_label="02").subjects[0]
    assert again.paths["lesion"] == subject.paths["lesion"]


def test_bids_raw_scope_ignores_derivatives(tmp_path):
    root = _bids(
        tmp_path / "ds",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "derivatives/prep/sub-01/anat/sub-01_T1w.nii.gz",
    )
    resolved = resolve_bids(root, T1)
    assert resolved.subjects[0].paths["t1"] == root / "sub-01/anat/sub-01_T1w.nii.gz"
    prep = resolve_bids(root, {"t1": {"bids": {"suffix": "T1w", "scope": "prep"}}})
    assert prep.subjects[0].paths["t1"] == root / "derivatives/prep/sub-01/anat/sub-01_T1w.nii.gz"


def test_bids_unknown_pipeline_names_the_ones_found(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    with pytest.raises(DataError, match=r"derivatives: no pipeline folder for scope 'fmriprep'.*"
                       r"freesurfer, lesions, seg"):  # fmt: skip
        resolve_bids(root, {"x": {"bids": {"suffix": "T1w", "scope": "fmriprep"}}})


def test_bids_participant_label_with_and_without_prefix(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    with_prefix = resolve_bids(root, T1, participant_label=["sub-01"])
    without = resolve_bids(root, T1, participant_label=["01"])
    assert [s.id for s in with_prefix.subjects] == ["sub-01_ses-post", "sub-01_ses-pre"]
    assert with_prefix == without
    both = resolve_bids(root, T1, participant_label=["sub-02", "01"])
    assert len(both.subjects) == 3


def test_bids_unknown_participant_label(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    with pytest.raises(DataError, match=rf"^{re.escape(str(root))}: participant '07' not found"):
        resolve_bids(root, T1, participant_label=["01", "sub-07"])
    with pytest.raises(ConfigError, match="participant_label"):
        resolve_bids(root, T1, participant_label=["sub-0/1"])


def test_bids_session_label(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    resolved = resolve_bids(root, T1, session_label=["ses-pre"])
    # sub-02 has no sessions: a session filter leaves it out.
    assert [s.id for s in resolved.subjects] == ["sub-01_ses-pre"]
    assert resolve_bids(root, T1, session_label="post").subjects[0].id == "sub-01_ses-post"
    with pytest.raises(DataError, match=r"session 'followup' not found"):
        resolve_bids(root, T1, session_label=["followup"])


def test_bids_two_files_for_one_image_name_both_and_the_entity(tmp_path):
    root = _bids(
        tmp_path / "ds",
        "sub-01/anat/sub-01_acq-a_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-b_T1w.nii.gz",
    )
    with pytest.raises(DataError) as error:
        resolve_bids(root, T1)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("sub-01: image 't1' matches 2 files (")
    assert str(root / "sub-01/anat/sub-01_acq-a_T1w.nii.gz") in message
    assert str(root / "sub-01/anat/sub-01_acq-b_T1w.nii.gz") in message
    assert message.endswith("add 'acq' to its bids entities to choose")
    chosen = resolve_bids(root, {"t1": {"bids": {"suffix": "T1w", "acq": "b"}}})
    assert chosen.subjects[0].paths["t1"].name == "sub-01_acq-b_T1w.nii.gz"


def test_bids_entity_matching(tmp_path):
    root = _bids(
        tmp_path / "ds",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-fast_T1w.nii.gz",
        "sub-01/func/sub-01_task-rest_run-01_bold.nii.gz",
        "sub-01/func/sub-01_task-rest_run-02_bold.nii.gz",
    )
    with pytest.raises(DataError, match=r"add 'acq'.* \(null for the file without it\)"):
        resolve_bids(root, T1)
    plain = resolve_bids(root, {"t1": {"bids": {"suffix": "T1w", "acquisition": None}}})
    assert plain.subjects[0].paths["t1"].name == "sub-01_T1w.nii.gz"
    with pytest.raises(DataError, match="add 'run'"):
        resolve_bids(root, {"bold": {"bids": {"suffix": "bold"}}})
    # run: 2 matches run-02 (an index).
    run = resolve_bids(root, {"bold": {"bids": {"suffix": "bold", "run": 2, "task": "rest"}}})
    assert run.subjects[0].paths["bold"].name == "sub-01_task-rest_run-02_bold.nii.gz"
    with pytest.raises(DataError, match="no file for image 'bold'"):
        resolve_bids(root, {"bold": {"bids": {"suffix": "bold", "datatype": "anat"}}})


def test_bids_extension(tmp_path):
    root = _bids(tmp_path / "ds", "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii")
    with pytest.raises(DataError, match="add 'extension'"):
        resolve_bids(root, T1)
    resolved = resolve_bids(root, {"t1": {"bids": {"suffix": "T1w", "extension": "nii"}}})
    assert resolved.subjects[0].paths["t1"].name == "sub-01_T1w.nii"
    with pytest.raises(ConfigError, match="extension"):
        resolve_bids(root, {"t1": {"bids": {"suffix": "T1w", "extension": ".json"}}})


def test_bids_missing_dataset_description(tmp_path):
    root = _bids(tmp_path / "ds", "sub-01/anat/sub-01_T1w.nii.gz", description=False)
    with pytest.raises(DataError, match=r"dataset_description\.json: not found") as error:
        resolve_bids(root, T1)
    assert str(root / "dataset_description.json") in str(error.value)


def test_bids_incomplete_subject(tmp_path):
    root = _bids(
        tmp_path / "ds",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_FLAIR.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz",
        "sub-03/anat/sub-03_FLAIR.nii.gz",
    )
    with pytest.raises(DataError) as error:
        resolve_bids(root, T1_FLAIR)
    message = str(error.value)
    assert message.startswith("subject 'sub-02': no file for image 'flair' (expected ")
    assert f"{root}/sub-02/*/sub-02*_FLAIR.nii[.gz]" in message
    resolved = resolve_bids(root, T1_FLAIR, fail_incomplete=False)
    assert [s.id for s in resolved.subjects] == ["sub-01", "sub-03"]
    assert [sid for sid, _ in resolved.incomplete] == ["sub-02"]
    assert "image 'flair'" in resolved.incomplete[0][1]
    assert resolved.counts() == {"t1": 3, "flair": 2}


def test_bids_missing_derivative_names_the_pipeline_folder(tmp_path):
    root = _with_sessions_and_derivatives(tmp_path / "ds")
    images = {**T1, "prob": {"bids": {"suffix": "probseg", "scope": "seg", "desc": "brain"}}}
    with pytest.raises(DataError) as error:
        resolve_bids(root, images)
    assert (
        f"{root}/derivatives/seg/sub-01/ses-post/*/sub-01_ses-post*_desc-brain*_probseg.nii[.gz]"
        in str(error.value)
    )


def test_bids_empty_selection(tmp_path):
    root = _bids(tmp_path / "ds", "README")
    with pytest.raises(DataError, match=rf"^{re.escape(str(root))}: no participant folder"):
        resolve_bids(root, T1)
    # Every subject incomplete: nothing to resolve either.
    _touch(root, "sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(DataError, match=rf"^{re.escape(str(root))}: no complete subject"):
        resolve_bids(root, T1_FLAIR, fail_incomplete=False)


def test_bids_ids_are_sorted_and_deterministic(tmp_path):
    labels = ["10", "2", "b", "A", "01", "1"]
    root = _bids(tmp_path / "ds", *(f"sub-{x}/anat/sub-{x}_T1w.nii.gz" for x in labels))
    ids = [s.id for s in resolve_bids(root, T1).subjects]
    assert ids == sorted(f"sub-{x}" for x in labels)
    assert ids == [s.id for s in resolve_bids(root, T1).subjects]


def test_bids_mixed_sessions_and_mismatched_names(tmp_path):
    root = _bids(
        tmp_path / "ds",
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        # Named for another subject, or without its session: not this folder's files.
        "sub-03/anat/sub-04_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz",
        "sub-01/ses-1/anat/sub-01_T1w.nii.gz",
    )
    resolved = resolve_bids(root, T1)
    assert [s.id for s in resolved.subjects] == ["sub-01_ses-1", "sub-02", "sub-03"]
    assert resolved.subjects[2].paths["t1"].name == "sub-03_T1w.nii.gz"


def test_bids_invalid_image_entries(tmp_path):
    root = _bids(tmp_path / "ds", "sub-01/anat/sub-01_T1w.nii.gz")
    for images, match in [
        ({}, "at least one image"),
        ({"t1": {"bids": {}}}, "suffix"),
        ({"t1": {"bids": {"suffix": "T1w"}, "typo": 1}}, "must be"),
        ({"t1": {"type": "mask", "bids": {"suffix": "T1w"}}}, "type must be one of"),
        ({"t1": {"bids": {"suffix": "T1w", "sub": "01"}}}, "participant_label"),
        ({"t1": {"bids": {"suffix": "T1w", "acq": "a-b"}}}, "letters and digits"),
        ({"id": {"bids": {"suffix": "T1w"}}}, "image name"),
    ]:
        with pytest.raises(ConfigError, match=match):
            resolve_bids(root, images)


# --- nnU-Net -------------------------------------------------------------------------


def _nnunet(root: Path, channels=None, ending=".nii.gz", cases=("a", "b"), labels=True) -> Path:
    channels = channels or {"0": "T1", "1": "FLAIR"}
    root.mkdir(parents=True, exist_ok=True)
    description = {
        "channel_names": channels,
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(cases),
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(description))
    for case in cases:
        _touch(root, *(f"imagesTr/{case}_{int(index):04d}{ending}" for index in channels))
        if labels:
            _touch(root, f"labelsTr/{case}{ending}")
    _touch(root, "imagesTr/._a_0000.nii.gz", "imagesTr/.DS_Store", "imagesTr/notes.txt")
    return root


def test_nnunet_train_split(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_X", cases=("case_010", "case_002"))
    resolved = resolve_nnunet(root)
    assert resolved.layout == "nnunet"
    assert [s.id for s in resolved.subjects] == ["case_002", "case_010"]
    assert resolved.subjects[0].paths == {
        "T1": root / "imagesTr/case_002_0000.nii.gz",
        "FLAIR": root / "imagesTr/case_002_0001.nii.gz",
        "label": root / "labelsTr/case_002.nii.gz",
    }
    assert resolved.image_types == {"T1": "intensity", "FLAIR": "intensity", "label": "label"}
    assert resolved.counts() == {"T1": 2, "FLAIR": 2, "label": 2}


def test_nnunet_test_split_has_no_label(tmp_path):
    root = _nnunet(tmp_path / "ds", ending=".nii")
    _touch(root, "imagesTs/z_0000.nii", "imagesTs/z_0001.nii", "imagesTs/y_0000.nii")
    _touch(root, "imagesTs/y_0001.nii")
    resolved = resolve_nnunet(root, split="test")
    assert [s.id for s in resolved.subjects] == ["y", "z"]
    assert resolved.image_types == {"T1": "intensity", "FLAIR": "intensity"}
    assert resolved.subjects[1].paths["FLAIR"] == root / "imagesTs/z_0001.nii"
    with pytest.raises(ConfigError, match="split"):
        resolve_nnunet(root, split="val")


def test_nnunet_missing_channel_file(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=("a", "b", "c"))
    (root / "imagesTr/b_0001.nii.gz").unlink()
    expected = root / "imagesTr/b_0001.nii.gz"
    with pytest.raises(DataError) as error:
        resolve_nnunet(root)
    assert str(error.value) == f"subject 'b': no file for image 'FLAIR' (expected {expected})"
    resolved = resolve_nnunet(root, fail_incomplete=False)
    assert [s.id for s in resolved.subjects] == ["a", "c"]
    assert resolved.incomplete == [("b", f"no file for image 'FLAIR' (expected {expected})")]
    assert resolved.counts() == {"T1": 3, "FLAIR": 2, "label": 3}


def test_nnunet_missing_label_file(tmp_path):
    root = _nnunet(tmp_path / "ds")
    (root / "labelsTr/b.nii.gz").unlink()
    with pytest.raises(DataError, match=re.escape(f"(expected {root}/labelsTr/b.nii.gz)")):
        resolve_nnunet(root)
    assert resolve_nnunet(root, split="train", fail_incomplete=False).incomplete[0][0] == "b"
    # Test images need no label.
    _touch(root, "imagesTs/t_0000.nii.gz", "imagesTs/t_0001.nii.gz")
    assert [s.id for s in resolve_nnunet(root, split="test").subjects] == ["t"]


def test_nnunet_missing_or_invalid_dataset_json(tmp_path):
    root = tmp_path / "ds"
    _touch(root, "imagesTr/a_0000.nii.gz")
    with pytest.raises(DataError, match=r"dataset\.json: not found"):
        resolve_nnunet(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset\.json: not valid JSON"):
        resolve_nnunet(root)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    with pytest.raises(DataError, match="file_ending"):
        resolve_nnunet(root)
    (root / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    with pytest.raises(DataError, match="channel_names"):
        resolve_nnunet(root)


def test_nnunet_misnamed_files_and_unknown_channels(tmp_path):
    root = _nnunet(tmp_path / "ds")
    _touch(root, "imagesTr/c_0002.nii.gz")
    with pytest.raises(DataError, match=r"c_0002\.nii\.gz: channel 2 is not in channel_names"):
        resolve_nnunet(root)
    (root / "imagesTr/c_0002.nii.gz").unlink()
    _touch(root, "imagesTr/c.nii.gz")
    with pytest.raises(DataError, match=r"c\.nii\.gz: not named <case>_<XXXX>"):
        resolve_nnunet(root)


def test_nnunet_channel_names_become_valid_unique_image_names(tmp_path):
    channels = {"0": "CT", "1": "CT", "2": "T2 FLAIR", "3": "label", "4": "id", "5": "---"}
    root = _nnunet(tmp_path / "ds", channels=channels, cases=("a",))
    resolved = resolve_nnunet(root)
    assert resolved.image_names == [
        "CT", "CT_0001", "T2_FLAIR", "label_0003", "id_0004", "channel_0005", "label",
    ]  # fmt: skip
    for name in resolved.image_names:
        assert check_image_name(name) == name
    assert resolved.subjects[0].paths["label_0003"] == root / "imagesTr/a_0003.nii.gz"
    assert resolved.subjects[0].paths["label"] == root / "labelsTr/a.nii.gz"


def test_make_image_name_always_passes_the_config_check():
    taken: set[str] = set()
    texts = ["", " ", "a b", "+x", "T1", "T1", "T1_0006", "ü", "..", *RESERVED_IMAGE_NAMES]
    names = [make_image_name(text, index, taken, frozenset({"label"})) for index, text in
             enumerate(texts)]  # fmt: skip
    assert len(set(names)) == len(names)
    for name in names:
        check_image_name(name)


def test_nnunet_type_overrides(tmp_path):
    root = _nnunet(tmp_path / "ds")
    resolved = resolve_nnunet(root, images={"FLAIR": {"type": "sampling_map"}})
    assert resolved.image_types["FLAIR"] == "sampling_map"
    with pytest.raises(ConfigError, match="'T2' is not in this nnunet dataset"):
        resolve_nnunet(root, images={"T2": {"type": "intensity"}})
    with pytest.raises(ConfigError, match="type must be one of"):
        resolve_nnunet(root, images={"label": {"type": "mask"}})


def test_nnunet_empty_selection(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=())
    (root / "labelsTr").mkdir()
    with pytest.raises(DataError, match=rf"^{re.escape(str(root))}: no case in imagesTr"):
        resolve_nnunet(root)
    with pytest.raises(DataError, match=r"imagesTs: not found"):
        resolve_nnunet(root, split="test")


# --- Medical Segmentation Decathlon ---------------------------------------------------


def _decathlon(root: Path, training, test=(), files=()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    description = {
        "name": "BrainTumour",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema"},
        "numTraining": len(training),
        "training": list(training),
        "test": list(test),
    }
    (root / "dataset.json").write_text(json.dumps(description))
    _touch(root, *files)
    return root


def _case(name: str) -> dict[str, str]:
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def test_decathlon_training_and_test(tmp_path):
    files = ["imagesTr/la_010.nii.gz", "labelsTr/la_010.nii.gz", "imagesTr/la_003.nii.gz"]
    files += ["labelsTr/la_003.nii.gz", "imagesTr/._la_003.nii.gz", "imagesTs/la_001.nii"]
    root = _decathlon(
        tmp_path / "Task02_Heart",
        [_case("la_010"), _case("la_003")],
        test=["./imagesTs/la_001.nii"],
        files=files,
    )
    resolved = resolve_decathlon(root)
    assert resolved.layout == "decathlon"
    assert [s.id for s in resolved.subjects] == ["la_003", "la_010"]
    assert resolved.subjects[0].paths == {
        "image": root / "imagesTr/la_003.nii.gz",
        "label": root / "labelsTr/la_003.nii.gz",
    }
    assert resolved.image_types == {"image": "intensity", "label": "label"}
    test = resolve_decathlon(root, split="test")
    assert [s.id for s in test.subjects] == ["la_001"]
    assert test.subjects[0].paths == {"image": root / "imagesTs/la_001.nii"}
    assert test.image_types == {"image": "intensity"}


def test_decathlon_path_escaping_the_root_is_refused(tmp_path):
    _touch(tmp_path, "outside/x.nii.gz")
    for path in ["../outside/x.nii.gz", "./imagesTr/../../outside/x.nii.gz", "/etc/passwd"]:
        root = _decathlon(tmp_path / "ds", [{"image": path, "label": "./labelsTr/x.nii.gz"}])
        with pytest.raises(DataError, match=r"training\[0\]\.image: .* not a file inside"):
            resolve_decathlon(root)


def test_decathlon_missing_file(tmp_path):
    files = ["imagesTr/a.nii.gz", "labelsTr/a.nii.gz", "imagesTr/b.nii.gz"]
    root = _decathlon(tmp_path / "ds", [_case("b"), _case("a")], files=files)
    with pytest.raises(DataError) as error:
        resolve_decathlon(root)
    assert str(error.value).startswith(
        f"subject 'b': no file for image 'label' (expected {root}/labelsTr/b.nii.gz"
    )
    resolved = resolve_decathlon(root, fail_incomplete=False)
    assert [s.id for s in resolved.subjects] == ["a"]
    assert [sid for sid, _ in resolved.incomplete] == ["b"]
    assert resolved.counts() == {"image": 2, "label": 1}


def test_decathlon_invalid_dataset_json(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(DataError, match=r"dataset\.json: not found"):
        resolve_decathlon(root)
    (root / "dataset.json").write_text("[]")
    with pytest.raises(DataError, match="must hold a JSON object"):
        resolve_decathlon(root)
    _decathlon(root, [])
    with pytest.raises(DataError, match=r"the 'training' list of dataset\.json is empty"):
        resolve_decathlon(root)
    _decathlon(root, [_case("a"), _case("a")], files=["imagesTr/a.nii.gz", "labelsTr/a.nii.gz"])
    with pytest.raises(DataError, match=r"training\[1\]: a second case named 'a'"):
        resolve_decathlon(root)


# --- the dispatcher and the result ----------------------------------------------------


def test_resolve_layout_dispatches(tmp_path):
    assert LAYOUTS == ("bids", "nnunet", "decathlon")
    root = _nnunet(tmp_path / "ds")
    assert resolve_layout("nnunet", root, split="train") == resolve_nnunet(root)
    with pytest.raises(ConfigError, match="layout must be one of bids, nnunet, decathlon"):
        resolve_layout("medicaldecathlon", root)
    with pytest.raises(ConfigError, match="takes no option 'participant_label'"):
        resolve_layout("nnunet", root, participant_label=["01"])


def test_manifest_rows_and_counts_without_file_counts(tmp_path):
    subject = LayoutSubject("a", {"t1": tmp_path / "a.nii.gz"})
    layout = ResolvedLayout("bids", tmp_path, [subject], {"t1": "intensity", "seg": "label"})
    assert layout.counts() == {"t1": 1, "seg": 0}
    assert layout.manifest() == [{"id": "a", "t1": str(tmp_path / "a.nii.gz")}]
