"""``on_error: skip``: bad subjects left out and listed; the rest exactly as without them."""

from __future__ import annotations

import shutil
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from patchcli import subject_work
from patchcli.cli import main
from patchcli.config import load_config
from patchcli.dataset import PatchDataset
from patchcli.errors import DataError, PatchcliWarning
from patchcli.extract import extract
from patchcli.io.partial import PartialOutput
from patchcli.io.reader import HandleCache, read_patch_output
from patchcli.merge import merge
from patchcli.signals import Interrupted

from .helpers import assert_same_output, make_subjects, write_config

SHAPES = [(12, 10, 8), (14, 10, 8), (12, 10, 8), (12, 11, 8), (12, 10, 9)]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Five good subjects (s1 alone is 14 voxels wide)."""
    return make_subjects(tmp_path_factory.mktemp("good"), SHAPES)[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, good):
    """The same subjects, s1 missing its seg (found before any work) and s3's t1 cut
    short (its header reads, its voxels do not: found by the worker)."""
    folder = tmp_path_factory.mktemp("bad")
    for path in good.parent.iterdir():
        shutil.copy(path, folder / path.name)
    (folder / "s1_seg.nii.gz").unlink()
    data = (folder / "s3_t1.nii.gz").read_bytes()
    (folder / "s3_t1.nii.gz").write_bytes(data[: len(data) // 2])
    return folder / "subjects.csv"


def _config(folder, subjects, name, fmt="hdf5", compression="none", workers=2, **keys):
    output = {"path": str(folder / name), "format": fmt, "compression": compression}
    base = dict(
        subjects=str(subjects),
        images={"t1": "intensity", "seg": "label"},
        patch_size=4,
        num_patches=6,
        seed=5,
        workers=workers,
        block_size="1KiB",  # 5 patches a block: several blocks per subject
        output=output,
    )
    base.update(keys)
    return load_config(write_config(folder / f"{name}.yaml", **base))


def _by_subject(path) -> dict:
    """Each subject's locations and t1 patches, checking the rows are consistent."""
    output = read_patch_output(path)
    output.complete_image_info()
    handles, found, start = HandleCache(), {}, 0
    for number, subject in enumerate(output.subjects):
        rows = np.flatnonzero(output.subject_index == number)
        assert subject.patch_start == start  # consecutive, no holes
        assert rows.tolist() == list(range(start, start + subject.patch_count))
        patches = np.empty((subject.patch_count, 1, 4, 4, 4), output.dtypes["t1"])
        output.read_rows("t1", start, subject.patch_count, patches, handles)
        found[subject.id] = (output.locations[rows], patches)
        start += subject.patch_count
    assert start == output.num_patches
    handles.close()
    return found


def _skip(config):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatchcliWarning)
        summary = extract(config, "uniform")
    return summary, [str(w.message) for w in caught if w.category is PatchcliWarning]


def _stopped(monkeypatch, config, after=lambda record: True) -> Interrupted:
    """Run ``config`` (skipping), stopped as by SIGTERM right after the first checkpoint
    whose journal record satisfies ``after``; the error it stopped with."""
    checkpoint = PartialOutput.checkpoint

    def stop(self, record):
        checkpoint(self, record)
        if after(record):
            raise Interrupted(15)

    with monkeypatch.context() as patched:
        patched.setattr(PartialOutput, "checkpoint", stop)
        with pytest.raises(Interrupted) as caught:
            _skip(config)
    return caught.value


def _skip_record(record) -> bool:
    return "skipped" in record


@pytest.mark.parametrize(
    "fmt, compression, workers",
    [("hdf5", "none", 2), ("hdf5", "lz4", 2), ("hdf5", "none", 0), ("nifti", "none", 2)],
)
def test_bad_subjects_are_skipped_and_the_others_are_unchanged(
    tmp_path, good, bad, fmt, compression, workers
):
    reference = extract(_config(tmp_path, good, "ref", fmt, compression, workers), "uniform")
    summary, messages = _skip(
        _config(tmp_path, bad, "out", fmt, compression, workers, on_error="skip")
    )
    assert [(s.id, s.manifest_row) for s in summary.skipped] == [("s1", 1), ("s3", 3)]
    assert summary.skipped[0].reason == f"{bad.parent / 's1_seg.nii.gz'}: file not found"
    assert summary.skipped[1].reason.startswith(f"{bad.parent / 's3_t1.nii.gz'}: cannot read")
    assert (summary.subjects, summary.patches) == (3, 18)
    # Each is named as it is found: s1 before the run, s3 when its worker reads it.
    assert [m.split(":")[0] for m in messages] == [
        "skipped subject 's1' (manifest row 1)",
        "skipped subject 's3' (manifest row 3)",
    ]
    assert [s.stage for s in summary.skipped] == ["plan", "run"]

    output = read_patch_output(summary.path)
    assert [s.id for s in output.subjects] == ["s0", "s2", "s4"]
    assert output.skipped == list(summary.skipped)
    expected = _by_subject(reference.path)
    found = _by_subject(summary.path)
    assert list(found) == ["s0", "s2", "s4"]
    for subject, (locations, patches) in found.items():
        np.testing.assert_array_equal(locations, expected[subject][0])
        np.testing.assert_array_equal(patches, expected[subject][1])
    dataset = PatchDataset(summary.path)
    assert len(dataset) == 18
    assert [dataset[i]["subject"] for i in (0, 6, 17)] == ["s0", "s2", "s4"]
    if fmt == "nifti":
        assert not (summary.path / "s3").exists() and not (summary.path / "s1").exists()
    else:
        with h5py.File(summary.path) as file:
            assert file["patches/t1"].shape[0] == 18
            assert [s.decode() for s in file["skipped_subjects/id"][()]] == ["s1", "s3"]
            assert file["skipped_subjects/manifest_row"][()].tolist() == [1, 3]


def test_fail_is_the_default(tmp_path, bad):
    with pytest.raises(DataError, match=r"s1_seg\.nii\.gz: file not found"):
        extract(_config(tmp_path, bad, "out"), "uniform")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, compression", [("hdf5", "lz4"), ("hdf5", "none"), ("nifti", "none")])
def test_a_subject_failing_after_its_first_blocks_leaves_no_trace(
    tmp_path, good, monkeypatch, fmt, compression
):
    """A subject that fails mid-way has had blocks written (patches in place, chunks,
    NIfTI files and rows of patches.csv): none of them stays, and the rest is intact."""
    settings = dict(fmt=fmt, compression=compression, num_patches=15)
    reference = extract(_config(tmp_path, good, "ref", **settings), "uniform")
    crop = subject_work.crop_block
    blocks: dict[int, int] = {}

    def crop_or_fail(volumes, corners, buffers):
        t1 = volumes["t1"]
        if t1.shape[1] == 14:  # subject s1, on its second block
            blocks[id(t1)] = blocks.get(id(t1), 0) + 1
            if blocks[id(t1)] == 2:
                raise DataError("s1: damaged past its first block")
        crop(volumes, corners, buffers)

    # Set before the run forks its workers, which inherit it.
    monkeypatch.setattr(subject_work, "crop_block", crop_or_fail)
    summary, _ = _skip(_config(tmp_path, good, "out", on_error="skip", **settings))
    assert [(s.id, s.reason) for s in summary.skipped] == [
        ("s1", "s1: damaged past its first block")
    ]
    expected = _by_subject(reference.path)
    found = _by_subject(summary.path)
    assert list(found) == ["s0", "s2", "s3", "s4"]
    for subject, (locations, patches) in found.items():
        np.testing.assert_array_equal(locations, expected[subject][0])
        np.testing.assert_array_equal(patches, expected[subject][1])
    if fmt == "nifti":
        assert not (summary.path / "s1").exists()
        assert "s1," not in (summary.path / "patches.csv").read_text()


def test_every_subject_failing_during_the_run_is_an_error(tmp_path, good, monkeypatch):
    def fail(volumes, corners, buffers):
        raise DataError("damaged")

    monkeypatch.setattr(subject_work, "crop_block", fail)
    config = _config(tmp_path, good, "out.h5", on_error="skip")
    with pytest.raises(DataError, match=r"every subject failed \(5\), e\.g\. 's0'"):
        _skip(config)
    # Nothing is kept: neither an output nor a .partial to resume.
    assert not any(p.name.startswith("out.h5") and p.suffix != ".yaml" for p in tmp_path.iterdir())


def test_channels_are_those_of_most_subjects(tmp_path, good):
    """The first subject odd (two channels): it is the one skipped, not all the others."""
    folder = tmp_path / "inputs"
    shutil.copytree(good.parent, folder)
    t1 = nib.load(folder / "s0_t1.nii.gz")
    data = np.stack([np.asanyarray(t1.dataobj)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(data, t1.affine), folder / "s0_t1.nii.gz")
    summary, _ = _skip(_config(tmp_path, folder / "subjects.csv", "out", on_error="skip"))
    assert [s.id for s in summary.skipped] == ["s0"]
    assert "has 2 channels where other subjects have 1" in summary.skipped[0].reason
    assert summary.subjects == 4


def test_a_run_stopped_after_a_skip_resumes_to_the_same_output(tmp_path, bad, monkeypatch):
    whole, _ = _skip(_config(tmp_path, bad, "whole", on_error="skip", workers=0))
    config = _config(tmp_path, bad, "stopped", on_error="skip", workers=0)
    stopped = _stopped(monkeypatch, config, after=_skip_record)
    assert stopped.kept_partial.done == 3  # s0, s2, and s3 skipped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatchcliWarning)
        resumed = extract(config, "uniform", resume=True)
    # s1 is found missing again before the run; s3 is not tried again.
    assert [str(w.message).split(":")[0] for w in caught] == [
        "skipped subject 's1' (manifest row 1)"
    ]
    assert resumed.resumed == 2
    assert [s.id for s in resumed.skipped] == ["s1", "s3"]
    assert_same_output(whole.path, resumed.path)
    # Once complete, resuming again finds it complete, with its skipped subjects.
    again = extract(config, "uniform", resume=True)
    assert again.already_complete and [s.id for s in again.skipped] == ["s1", "s3"]


def test_resuming_after_a_skipped_input_came_back_is_refused(tmp_path, good, bad, monkeypatch):
    folder = tmp_path / "inputs"
    shutil.copytree(bad.parent, folder)
    config = _config(tmp_path, folder / "subjects.csv", "out", on_error="skip", workers=0)
    _stopped(monkeypatch, config)
    shutil.copy(good.parent / "s1_seg.nii.gz", folder / "s1_seg.nii.gz")
    with pytest.raises(DataError, match=r"its run had skipped manifest rows \[1\], this one \[\]"):
        extract(config, "uniform", resume=True)


def test_every_subject_failing_is_an_error(tmp_path, bad):
    lines = bad.read_text().splitlines()
    only_bad = bad.parent / "only_bad.csv"
    only_bad.write_text("\n".join([lines[0], lines[2]]) + "\n")  # s1 alone
    with pytest.raises(DataError, match=r"only_bad\.csv: every subject failed \(1\), e\.g\. "):
        extract(_config(tmp_path, only_bad, "out", on_error="skip"), "uniform")


@pytest.mark.parametrize("copy", [False, True])
def test_shards_with_skipped_subjects_merge_into_the_whole_run(tmp_path, bad, copy):
    whole, _ = _skip(_config(tmp_path, bad, "whole.h5", on_error="skip"))
    output = tmp_path / "sharded.h5"
    for index in range(2):
        config = _config(tmp_path, bad, "sharded.h5", on_error="skip", shard=f"{index}/2")
        _skip(config)
    summary = merge(output, copy=copy)
    assert summary.skipped == 2
    merged = read_patch_output(output)
    assert [s.id for s in merged.skipped] == ["s1", "s3"]
    assert_same_output(output, whole.path, merged=True)


def test_the_command_line_lists_what_it_skipped(tmp_path, bad):
    config = write_config(
        tmp_path / "c.yaml",
        subjects=str(bad),
        images={"t1": "intensity", "seg": "label"},
        patch_size=4,
        num_patches=2,
    )
    output = tmp_path / "out.h5"
    runner = CliRunner()
    failed = runner.invoke(main, ["uniform", str(config), "--output", str(output), "-q"])
    assert failed.exit_code == 1 and "s1_seg.nii.gz: file not found" in failed.output
    result = runner.invoke(
        main, ["uniform", str(config), "--output", str(output), "-q", "--on-error", "skip"]
    )
    assert result.exit_code == 0, result.output
    assert "6 patches from 3 subjects, 2 subjects skipped" in result.output
    assert f"  skipped 's1' (manifest row 1): {bad.parent / 's1_seg.nii.gz'}: file not found" in (
        result.output
    )
    # stderr, mixed in by CliRunner
    assert "warning: skipped subject 's3' (manifest row 3): " in result.output
    dry = runner.invoke(
        main, ["uniform", str(config), "--output", str(output), "--dry-run", "--on-error", "skip"]
    )
    # Only what headers show is known before the run: s3's voxels are not read.
    assert f"  skipped 's1' (manifest row 1): {bad.parent / 's1_seg.nii.gz'}" in dry.output
    assert "'s3'" not in dry.output
    info = runner.invoke(main, ["info", str(output)])
    assert "skipped (on_error: skip): 2 subjects" in info.output
    assert "s3" in info.output.split("skipped (on_error: skip)")[1]


def test_a_run_stopped_between_its_last_copy_and_its_rename_is_not_redone(
    tmp_path, bad, monkeypatch
):
    whole, _ = _skip(_config(tmp_path, bad, "whole", on_error="skip", workers=0))
    commit = PartialOutput.commit

    def stop_before_the_rename(self):
        raise Interrupted(15)

    monkeypatch.setattr(PartialOutput, "commit", stop_before_the_rename)
    config = _config(tmp_path, bad, "stopped", on_error="skip", workers=0)
    with pytest.raises(Interrupted):
        _skip(config)
    monkeypatch.setattr(PartialOutput, "commit", commit)
    # The .partial is the compacted, closed output: it is renamed, not made again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not "cannot be continued; starting again"
        resumed = extract(config, "uniform", resume=True)
    assert resumed.resumed == 3 and not resumed.already_complete
    assert_same_output(whole.path, resumed.path)


def test_a_run_that_skipped_subjects_resumes_only_with_skip(tmp_path, good, monkeypatch):
    folder = tmp_path / "inputs"
    shutil.copytree(good.parent, folder)
    data = (folder / "s3_t1.nii.gz").read_bytes()
    (folder / "s3_t1.nii.gz").write_bytes(data[: len(data) // 2])  # found by its worker
    manifest = folder / "subjects.csv"
    _stopped(
        monkeypatch, _config(tmp_path, manifest, "out", on_error="skip", workers=0), _skip_record
    )
    fail = _config(tmp_path, manifest, "out", workers=0)
    with pytest.raises(DataError, match=r"skipped subjects \('s3'\) with on_error: skip; resume"):
        extract(fail, "uniform", resume=True)


def test_a_system_fault_is_never_skipped(tmp_path, good, monkeypatch):
    from patchcli.errors import SystemFault
    from patchcli.io.volumes import _read_error

    assert isinstance(_read_error(good, "cannot read image", OSError(5, "I/O")), SystemFault)
    assert isinstance(_read_error(good, "cannot read image", MemoryError()), SystemFault)
    assert not isinstance(_read_error(good, "cannot read image", ValueError("bad")), SystemFault)

    def stale(volumes, corners, buffers):
        raise SystemFault("s0_t1.nii.gz: cannot read image (Stale file handle)")

    monkeypatch.setattr(subject_work, "crop_block", stale)
    with pytest.raises(SystemFault, match="Stale file handle"):
        _skip(_config(tmp_path, good, "out", on_error="skip"))
