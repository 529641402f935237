"""The training reader: items equal the crops of the source volumes, on every path.

Fixture files are written with h5py following the layout of docs/format.md
(``helpers.write_patch_file``), so that the reader is checked against the
format itself; one test also goes through ``patchcli uniform``.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from patchcli.errors import DataError

from .helpers import PATCH_SIZE, make_patch_subjects, write_patch_file


# ----------------------------------------------------------------- fixtures
def expected_items(subjects: list[dict], padding=(0, 0, 0), images=("t1", "seg", "prob")):
    """The items a reader must give, computed from the volumes."""
    items = []
    for subject in subjects:
        for location in subject["locations"]:
            i0, j0, k0, i1, j1, k1 = location
            start = np.array([i0, j0, k0]) - padding
            affine = subject["affine"].copy()
            affine[:3, 3] = subject["affine"][:3, :3] @ start + subject["affine"][:3, 3]
            item = {"location": location, "subject": subject["id"], "affine": affine}
            for name in images:
                padded = np.pad(
                    subject["volumes"][name], [(0, 0)] + [(p, p) for p in padding], mode="edge"
                )
                item[name] = padded[:, i0:i1, j0:j1, k0:k1]
            items.append(item)
    return items


def assert_item_equal(item: dict, expected: dict, images=("t1", "seg", "prob")) -> None:
    assert item["subject"] == expected["subject"]
    assert item["location"].dtype.is_floating_point is False
    np.testing.assert_array_equal(item["location"].numpy(), expected["location"])
    assert set(item) == {*images, "location", "subject"}
    for name in images:
        data = item[name]["data"].numpy()
        assert data.dtype == expected[name].dtype
        np.testing.assert_array_equal(data, expected[name])
        np.testing.assert_allclose(item[name]["affine"].numpy(), expected["affine"], atol=1e-12)
        assert item[name]["affine"].numpy().dtype == np.float64


def item_key(item: dict) -> tuple:
    """A hashable summary of an item, to compare sets of items."""
    return (
        item["subject"],
        tuple(item["location"].tolist()),
        item["t1"]["data"].numpy().tobytes(),
        item["seg"]["data"].numpy().tobytes(),
    )


def unbatch(batch: dict) -> list[dict]:
    """Split a collated batch into items."""
    images = [key for key in batch if key not in ("location", "subject")]
    return [
        {
            **{
                name: {"data": batch[name]["data"][b], "affine": batch[name]["affine"][b]}
                for name in images
            },
            "location": batch["location"][b],
            "subject": batch["subject"][b],
        }
        for b in range(len(batch["subject"]))
    ]


# --------------------------------------------------------------------- items
def test_items_equal_crops_of_the_volumes(dataset_class, patch_file, subjects):
    expected = expected_items(subjects)
    with dataset_class(patch_file) as dataset:
        assert len(dataset) == len(expected) == 12
        for index, want in enumerate(expected):
            assert_item_equal(dataset[index], want)
        # Negative indices count from the end, as for lists.
        assert_item_equal(dataset[-1], expected[-1])
        assert_item_equal(dataset[np.int64(2)], expected[2])


def test_padded_grid_items_and_affines_remove_the_padding(dataset_class, tmp_path, subjects):
    padding = np.array([1, 2, 1])
    for subject in subjects:
        subject["locations"][:, :3] -= 1  # now in padded coordinates, some start at 0
        subject["locations"][:, 3:] -= 1
        subject["locations"][:, :3] = np.maximum(subject["locations"][:, :3], 0)
        subject["locations"][:, 3:] = subject["locations"][:, :3] + PATCH_SIZE
    path = write_patch_file(tmp_path / "grid.h5", subjects, padding=tuple(padding))
    expected = expected_items(subjects, padding=padding)
    dataset = dataset_class(path)
    for index, want in enumerate(expected):
        assert_item_equal(dataset[index], want)
    # Spot check against the hand-computed origin: start (0, 0, 0) padded -> (-1, -2, -1).
    first = dataset[0]
    start = first["location"].numpy()[:3] - padding
    affine = subjects[0]["affine"]
    np.testing.assert_allclose(
        first["t1"]["affine"].numpy()[:3, 3], affine[:3, :3] @ start + affine[:3, 3]
    )


def test_compressed_file_reads_the_same(dataset_class, tmp_path, subjects):
    import hdf5plugin

    lz4 = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    path = write_patch_file(tmp_path / "lz4.h5", subjects, compression=lz4)
    with h5py.File(path, "r") as file:
        assert 32001 in file["patches/t1"].filter_ids  # Blosc
    dataset = dataset_class(path)
    for index, want in enumerate(expected_items(subjects)):
        assert_item_equal(dataset[index], want)


def test_transform_is_applied_to_items_and_batches(dataset_class, patch_file, subjects):
    def add_one(item):
        item["t1"]["data"] = item["t1"]["data"] + 1
        item["flag"] = 1
        return item

    dataset = dataset_class(patch_file, transform=add_one)
    expected = expected_items(subjects)
    item = dataset[3]
    np.testing.assert_array_equal(item["t1"]["data"].numpy(), expected[3]["t1"] + 1)
    assert item["flag"] == 1
    batch = dataset[[3, 0]]
    np.testing.assert_array_equal(
        batch["t1"]["data"].numpy(), np.stack([expected[3]["t1"], expected[0]["t1"]]) + 1
    )
    assert batch["flag"].tolist() == [1, 1]


# ---------------------------------------------------------------- selection
def test_images_selection_reads_only_those(dataset_class, patch_file, subjects, monkeypatch):
    from patchcli.io import handles

    opened: list[str] = []
    original = handles._OpenFile.dataset

    def recording(self, name):
        opened.append(name.removeprefix("patches/"))
        return original(self, name)

    monkeypatch.setattr(handles._OpenFile, "dataset", recording)
    dataset = dataset_class(patch_file, images=["seg"])
    assert dataset.images == ["seg"]
    expected = expected_items(subjects, images=("seg",))
    for index in (0, 5, 11):
        assert_item_equal(dataset[index], expected[index], images=("seg",))
    batch = dataset[[1, 2]]
    assert set(batch) == {"seg", "location", "subject"}
    assert set(opened) == {"seg"}

    # A single name works too; the file order is kept whatever the order asked.
    assert dataset_class(patch_file, images="prob").images == ["prob"]
    assert dataset_class(patch_file, images=["prob", "t1"]).images == ["t1", "prob"]


# ------------------------------------------------------------ batched path
def test_batch_equals_items_in_requested_order(dataset_class, patch_file, torch):
    dataset = dataset_class(patch_file)
    # Unsorted, with a repeat and a run of consecutive rows, across subjects.
    indices = [7, 2, 3, 4, 2, 11, 0]
    batch = dataset[indices]
    assert batch["t1"]["data"].shape == (7, 2, *PATCH_SIZE)
    assert batch["t1"]["data"].dtype == torch.int16
    assert batch["seg"]["affine"].shape == (7, 4, 4)
    assert batch["location"].shape == (7, 6) and batch["location"].dtype == torch.int64
    reference = torch.utils.data.default_collate([dataset[i] for i in indices])
    assert batch["subject"] == reference["subject"]
    for name in ("t1", "seg", "prob"):
        for key in ("data", "affine"):
            assert torch.equal(batch[name][key], reference[name][key])
    assert torch.equal(batch["location"], reference["location"])
    # __getitems__ gives the same items; other index forms give the same batch.
    for item, index in zip(dataset.__getitems__(indices), indices, strict=True):
        assert item_key(item) == item_key(dataset[index])
    assert torch.equal(dataset[np.array(indices)]["t1"]["data"], batch["t1"]["data"])
    assert torch.equal(dataset[torch.tensor(indices)]["seg"]["data"], batch["seg"]["data"])
    assert dataset[2:5]["location"].tolist() == dataset[[2, 3, 4]]["location"].tolist()
    assert dataset[[]]["t1"]["data"].shape == (0, 2, *PATCH_SIZE)


def test_batches_iterator_covers_every_patch(dataset_class, patch_file):
    dataset = dataset_class(patch_file)
    keys = [item_key(i) for b in dataset.batches(5, shuffle=True, seed=3) for i in unbatch(b)]
    assert sorted(keys) == sorted(item_key(dataset[i]) for i in range(len(dataset)))
    sizes = [len(b["subject"]) for b in dataset.batches(5, drop_last=True)]
    assert sizes == [5, 5]


# ---------------------------------------------------------------- workers
def test_dataloader_workers_give_the_same_items(dataset_class, patch_file, torch):
    from patchcli.dataset import PatchBatchSampler

    dataset = dataset_class(patch_file, images=["t1", "seg"])
    # Handles open in the parent before the workers fork: they must open their own.
    reference = sorted(item_key(dataset[i]) for i in range(len(dataset)))
    assert len(dataset._handles)
    DataLoader = torch.utils.data.DataLoader
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=5, shuffle=True, num_workers=workers)
        keys = [item_key(item) for batch in loader for item in unbatch(batch)]
        assert sorted(keys) == reference, f"num_workers={workers}"
        sampler = PatchBatchSampler(dataset, 5, shuffle=True, seed=1)
        loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers)
        batches = list(loader)
        assert [len(b["subject"]) for b in batches] == [5, 5, 2]
        keys = [item_key(item) for batch in batches for item in unbatch(batch)]
        assert sorted(keys) == reference, f"batch sampler, num_workers={workers}"


def test_forked_process_opens_its_own_handles(dataset_class, patch_file, monkeypatch):
    from patchcli.io import handles

    dataset = dataset_class(patch_file, images="t1")
    expected = dataset[0]["t1"]["data"].numpy().copy()
    parent_handle = dataset._handles._files[patch_file]
    # As seen from a child after fork: another pid.
    monkeypatch.setattr(handles.os, "getpid", lambda: -12345)
    np.testing.assert_array_equal(dataset[0]["t1"]["data"].numpy(), expected)
    assert dataset._handles._files[patch_file] is not parent_handle
    assert parent_handle in handles._INHERITED_HANDLES
    assert parent_handle.file.id.valid  # never closed by the child
    dataset.close()
    assert not len(dataset._handles)


def test_pickling_drops_handles_and_close_reopens(dataset_class, patch_file):
    dataset = dataset_class(patch_file)
    first = item_key(dataset[4])
    assert len(dataset._handles)
    copy = pickle.loads(pickle.dumps(dataset))
    assert not len(copy._handles)
    assert item_key(copy[4]) == first
    handle = dataset._handles._files[patch_file]
    dataset.close()
    assert not handle.file.id.valid and not len(dataset._handles)
    assert item_key(dataset[4]) == first  # reading again reopens


def test_plain_h5py_opens_a_file_the_dataset_has_open(dataset_class, patch_file, monkeypatch):
    """HDF5 refuses a second open of a file in one process with other locking flags:
    the reader uses best-effort locking, h5py's default, so both coexist."""
    dataset = dataset_class(patch_file)
    expected = dataset[0]["t1"]["data"].numpy()
    with h5py.File(patch_file, "r") as plain:
        np.testing.assert_array_equal(plain["patches/t1"][0], expected)
        np.testing.assert_array_equal(dataset[1]["t1"]["data"].numpy(), plain["patches/t1"][1])
    dataset.close()
    # And the other way round: the file already open with h5py's defaults.
    with h5py.File(patch_file, "r") as plain:
        np.testing.assert_array_equal(dataset_class(patch_file)[0]["t1"]["data"].numpy(), expected)

    # Where the file system refuses locks, the reader opens without them.
    from patchcli.io import hdf5

    calls = []
    original = h5py.File

    def refusing(*args, **kwargs):
        calls.append(kwargs.get("locking"))
        if kwargs.get("locking") == "best-effort":
            raise OSError("Unable to synchronously open file (unable to lock file, errno = 37)")
        return original(*args, **kwargs)

    monkeypatch.setattr(hdf5.h5py, "File", refusing)
    np.testing.assert_array_equal(dataset_class(patch_file)[0]["t1"]["data"].numpy(), expected)
    assert calls[:2] == ["best-effort", False]


# ------------------------------------------------------------ distributed
def test_distributed_sampler_covers_every_index_once(dataset_class, patch_file, torch):
    dataset = dataset_class(patch_file)
    from torch.utils.data.distributed import DistributedSampler

    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler)
        seen += [tuple(b["location"].tolist()) for b in loader for b in unbatch(b)]
        # The batched path: BatchSampler over DistributedSampler, batch_size=None.
        batches = torch.utils.data.BatchSampler(sampler, 4, drop_last=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=batches)
        assert sum(len(b["subject"]) for b in loader) == 6
    assert len(seen) == len(dataset)
    assert sorted(seen) == sorted(tuple(dataset[i]["location"].tolist()) for i in range(12))


def test_split_by_subject_gives_whole_subjects_to_one_rank(dataset_class, tmp_path, torch):
    subjects = make_patch_subjects(np.random.default_rng(3), count=5)
    for number, subject in enumerate(subjects):  # unequal patch counts: 4, 3, 2, 1, 4
        subject["locations"] = subject["locations"][: 4 - number % 4]
    dataset = dataset_class(write_patch_file(tmp_path / "p.h5", subjects))
    parts = [dataset.split_by_subject(2, rank) for rank in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(dataset)))
    owners = [set(dataset.subject_index[part].tolist()) for part in parts]
    assert not owners[0] & owners[1]
    assert abs(len(parts[0]) - len(parts[1])) <= 1  # 14 patches split 7 / 7
    subset = torch.utils.data.Subset(dataset, parts[1])
    assert {subset[i]["subject"] for i in range(len(subset))} == {
        dataset.subjects[s].id for s in owners[1]
    }
    np.testing.assert_array_equal(dataset.indices_of_subjects(["s1", 3]), [4, 5, 6, 9])
    with pytest.raises(DataError, match="no subject 'nope'"):
        dataset.indices_of_subjects(["nope"])


# ------------------------------------------------------------- many files
def test_several_files_are_concatenated(dataset_class, tmp_path, subjects):
    first = write_patch_file(tmp_path / "a.h5", subjects[:2])
    second = write_patch_file(tmp_path / "b.h5", subjects[2:])
    dataset = dataset_class([first, second])
    expected = expected_items(subjects)
    assert len(dataset) == 12
    for index, want in enumerate(expected):
        assert_item_equal(dataset[index], want)
    assert [s.id for s in dataset.subjects] == ["s0", "s1", "s2"]
    assert [s.patch_start for s in dataset.subjects] == [0, 4, 8]
    assert [s.file for s in dataset.subjects] == [first, first, second]
    assert dataset.subject_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # A batch across the two files, and a small cap on open files.
    dataset.close()
    dataset.max_open_files = 1
    batch = dataset[[9, 2, 8, 3]]
    assert batch["subject"] == ["s2", "s0", "s2", "s0"]
    np.testing.assert_array_equal(batch["t1"]["data"][0].numpy(), expected[9]["t1"])
    assert len(dataset._handles) == 1
    assert "files=[" in repr(dataset) and "patches=12" in repr(dataset)


def test_subjects_table(dataset_class, patch_file, subjects):
    dataset = dataset_class(patch_file)
    table = dataset.subjects
    assert [s.id for s in table] == ["s0", "s1", "s2"]
    assert table[1].shape == subjects[1]["volumes"]["t1"].shape[1:]
    np.testing.assert_array_equal(table[2].affine, subjects[2]["affine"])
    assert table[0].source["seg"] == "/data/s0_seg.nii.gz"
    assert (table[2].patch_start, table[2].patch_count) == (8, 4)
    assert dataset.locations.shape == (12, 6) and not dataset.locations.flags.writeable


def test_repr_tells_file_count_images_and_patch_size(dataset_class, patch_file):
    text = repr(dataset_class(patch_file, images=["t1", "seg"]))
    assert text == (
        f"PatchDataset(file='{patch_file}', patches=12, subjects=3, "
        "images=['t1', 'seg'], patch_size=(4, 5, 3))"
    )


# --------------------------------------------------------- through the CLI
def _write_config(tmp_path: Path, rng: np.random.Generator, output: str, fmt: str) -> Path:
    volumes = {}
    lines = []
    for subject in ("a", "b"):
        affine = np.diag([2.0, 3.0, 4.0, 1.0])
        affine[:3, 3] = (5, 6, 7)
        t1 = rng.integers(0, 255, (12, 10, 9)).astype(np.uint8)
        seg = (t1 > 128).astype(np.uint8)
        nib.save(nib.Nifti1Image(t1, affine), tmp_path / f"{subject}_t1.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), tmp_path / f"{subject}_seg.nii.gz")
        volumes[subject] = {"t1": t1, "seg": seg, "affine": affine}
        lines.append(f"{{id: {subject}, t1: {subject}_t1.nii.gz, seg: {subject}_seg.nii.gz}}")
    config = tmp_path / f"{fmt}.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            subjects: [{", ".join(lines)}]
            images: {{t1: intensity, seg: label}}
            patch_size: [4, 5, 3]
            num_patches: 3
            seed: 0
            output: {{path: {output}, format: {fmt}}}
            """
        )
    )
    return config, volumes


def test_cli_outputs_read_back_as_crops(dataset_class, tmp_path, torch):
    from patchcli.cli import main

    config, volumes = _write_config(tmp_path, np.random.default_rng(0), "out.h5", "hdf5")
    result = CliRunner().invoke(main, ["uniform", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    hdf5 = dataset_class(tmp_path / "out.h5")
    assert len(hdf5) == 6
    for index in range(len(hdf5)):
        item = hdf5[index]
        source = volumes[item["subject"]]
        i0, j0, k0, i1, j1, k1 = item["location"].tolist()
        for name in ("t1", "seg"):
            np.testing.assert_array_equal(
                item[name]["data"].numpy()[0], source[name][i0:i1, j0:j1, k0:k1]
            )
        np.testing.assert_allclose(
            item["t1"]["affine"].numpy()[:3, 3],
            source["affine"][:3, :3] @ [i0, j0, k0] + source["affine"][:3, 3],
        )

    # The same run written as NIfTI reads back item for item (same seed).
    arguments = ["uniform", str(config), "--quiet", "--format", "nifti"]
    result = CliRunner().invoke(main, [*arguments, "--output", str(tmp_path / "nii")])
    assert result.exit_code == 0, result.output
    folder = dataset_class(tmp_path / "nii")
    assert len(folder) == len(hdf5)
    assert [s.id for s in folder.subjects] == ["a", "b"]
    assert [s.patch_start for s in folder.subjects] == [0, 3]
    for index in range(len(hdf5)):
        assert item_key(folder[index]) == item_key(hdf5[index])
        assert torch.allclose(folder[index]["seg"]["affine"], hdf5[index]["seg"]["affine"])
    batch = folder[[5, 0]]
    assert torch.equal(batch["t1"]["data"], hdf5[[5, 0]]["t1"]["data"])
    assert "file=" in repr(folder) and "patches=6" in repr(folder)


def test_nifti_folder_with_channels_and_padding(dataset_class, tmp_path, subjects):
    """A NIfTI folder written by the library's writer: 4D multi-channel patches, padded grid."""
    from patchcli.io.nifti import NiftiPatchWriter

    padding = (1, 1, 1)
    images = {"t1": (2, np.dtype(np.int16), "intensity"), "seg": (1, np.dtype(np.uint8), "label")}
    folder = tmp_path / "nii"
    folder.mkdir()
    attributes = {"sampler": "grid", "seed": 0, "padding": np.array(padding), "config": ""}
    writer = NiftiPatchWriter(folder, images, PATCH_SIZE, attributes, padding=padding)
    row = 0
    for number, subject in enumerate(subjects):
        locations = subject["locations"]
        writer.begin_subject(
            subject["id"],
            subject["affine"],
            subject["volumes"]["t1"].shape[1:],
            {"t1": "t1.nii.gz", "seg": "seg.nii.gz"},
            row,
            len(locations),
        )
        arrays = {}
        for name in images:
            padded = np.pad(subject["volumes"][name], [(0, 0)] + [(1, 1)] * 3, mode="edge")
            arrays[name] = np.stack([padded[:, a:d, b:e, c:f] for a, b, c, d, e, f in locations])
        writer.write_block(row, arrays, locations, number)
        row += len(locations)
    writer.close()
    dataset = dataset_class(folder)
    expected = expected_items(subjects, padding=np.array(padding), images=("t1", "seg"))
    for index, want in enumerate(expected):
        assert_item_equal(dataset[index], want, images=("t1", "seg"))
    batch = dataset[[4, 1]]
    assert batch["t1"]["data"].shape == (2, 2, *PATCH_SIZE)
    np.testing.assert_array_equal(batch["t1"]["data"][0].numpy(), expected[4]["t1"])


# ------------------------------------------------------------------ errors
def test_errors_are_one_line_data_errors(dataset_class, tmp_path, patch_file, subjects):
    def message(*args, **kwargs) -> str:
        with pytest.raises(DataError) as caught:
            dataset_class(*args, **kwargs)
        text = str(caught.value)
        assert "\n" not in text
        return text

    assert message(tmp_path / "missing.h5") == f"{tmp_path / 'missing.h5'}: no such file or folder"
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    assert "not an HDF5 file" in message(text_file)
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["x"] = np.zeros(3)
    assert "not a patchcli patch file" in message(tmp_path / "other.h5")
    (tmp_path / "folder").mkdir()
    assert "no patchcli.yaml" in message(tmp_path / "folder")
    assert message(patch_file, images=["t1", "flair"]) == (
        f"{patch_file}: no image 'flair'; available: t1, seg, prob"
    )
    assert "no patch file" in message([])

    fewer = write_patch_file(tmp_path / "fewer.h5", subjects, images=("t1", "seg"))
    assert "images ['t1', 'seg'] differ" in message([patch_file, fewer])
    smaller = [dict(s, locations=s["locations"] - np.r_[0, 0, 0, 0, 0, 1]) for s in subjects]
    other_size = write_patch_file(tmp_path / "size.h5", smaller, patch_size=(4, 5, 2))
    assert "patch size (4, 5, 2) differs" in message([patch_file, other_size])


def test_index_out_of_range_is_an_index_error(dataset_class, patch_file):
    dataset = dataset_class(patch_file)
    with pytest.raises(IndexError, match="patch index 12 out of range for 12 patches"):
        dataset[12]
    with pytest.raises(IndexError, match="out of range"):
        dataset[-13]
    with pytest.raises(IndexError, match="patch index 40"):
        dataset[[0, 40]]
    with pytest.raises(TypeError, match="integers"):
        dataset["0"]


# -------------------------------------------------------------- no torch
def test_patchcli_and_cli_do_not_import_torch():
    code = (
        "import sys, patchcli, patchcli.cli, patchcli.extract; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "from patchcli.cli import main; "
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_lazy_export(torch):
    import patchcli
    from patchcli.dataset import PatchDataset

    assert patchcli.PatchDataset is PatchDataset


# ------------------------------------------------------------------ augmentation
def test_torchio_transforms_apply_to_items(dataset_class, patch_file, torchio, torch):
    from patchcli.augment import TorchioTransform

    plain = dataset_class(patch_file)
    flipped = dataset_class(patch_file)
    flipped.transform = TorchioTransform(
        torchio.RandomFlip(axes=(0,), flip_probability=1.0), flipped.image_types
    )
    for index in (0, 5):
        original, item = plain[index], flipped[index]
        for name in ("t1", "seg"):
            expected = torch.flip(original[name]["data"], dims=(1,))
            assert torch.equal(item[name]["data"], expected)
        assert torch.equal(item["location"], original["location"])
        assert item["subject"] == original["subject"]
    # A spatial transform keeps label maps' values (nearest neighbour), also in batches.
    rotated = dataset_class(patch_file)
    rotated.transform = TorchioTransform(torchio.RandomAffine(degrees=30), rotated.image_types)
    torch.manual_seed(0)
    batch = rotated.read_batch([0, 1, 2, 3])
    labels = set(np.unique(np.asarray(plain.read_batch([0, 1, 2, 3])["seg"]["data"])).tolist())
    assert set(np.unique(batch["seg"]["data"].numpy()).tolist()) <= labels | {0}
    assert batch["t1"]["data"].shape[0] == 4


def test_monai_dictionary_transforms_apply_to_items(dataset_class, patch_file, torch):
    from monai.transforms import RandFlipd

    from patchcli.augment import MonaiTransform

    plain = dataset_class(patch_file)
    flipped = dataset_class(patch_file)
    flipped.transform = MonaiTransform(
        RandFlipd(keys=["t1", "seg"], prob=1.0, spatial_axis=0), flipped.images
    )
    for index in (0, 7):
        original, item = plain[index], flipped[index]
        for name in ("t1", "seg"):
            assert type(item[name]["data"]) is torch.Tensor  # a plain tensor, collates as usual
            assert torch.equal(item[name]["data"], torch.flip(original[name]["data"], dims=(1,)))
            assert item[name]["affine"].shape == (4, 4)
        assert item["subject"] == original["subject"]
    batch = flipped.read_batch([0, 1, 2])
    assert batch["t1"]["data"].shape[0] == 3
