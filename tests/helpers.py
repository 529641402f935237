"""Test data made on the fly.

Small volumes, NIfTI files, manifests, configs, patch files and queue traces.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import yaml

from patchcli.queue import QueueTrace, simulate_queue


def affine_for(shape, spacing=(1.0, 1.5, 2.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save (X, Y, Z) or (C, X, Y, Z) (stored as X, Y, Z, C) as NIfTI."""
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1) if array.shape[0] > 1 else array[0]
    affine = affine_for(array.shape[:3]) if affine is None else affine
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def make_subjects(folder: Path, shapes, seed: int = 0, with_prob: bool = True):
    """Write subjects with t1 (int16), seg (uint8 labels 0..2) and prob (float32).

    Returns (manifest path, {subject id: {image: array (X, Y, Z)}}).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, arrays = [], {}
    for index, shape in enumerate(shapes):
        subject = f"s{index}"
        t1 = rng.integers(-100, 1000, size=shape).astype(np.int16)
        seg = np.zeros(shape, np.uint8)
        centre = tuple(n // 2 for n in shape)
        seg[tuple(slice(max(c - 3, 0), c + 3) for c in centre)] = 1
        seg[tuple(slice(c, c + 2) for c in centre)] = 2
        images = {"t1": t1, "seg": seg}
        if with_prob:
            images["prob"] = (seg > 0).astype(np.float32) + 0.01
        row = {"subject": subject}
        for name, array in images.items():
            save_nifti(folder / f"{subject}_{name}.nii.gz", array)
            row[name] = f"{subject}_{name}.nii.gz"
        rows.append(row)
        arrays[subject] = images
    manifest = folder / "subjects.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, arrays


def write_config(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


#: What a merge adds to the content of an unsharded run: its bookkeeping, its shards, and
#: its fingerprint (made of theirs).
MERGE_RECORDS = {
    "attributes": ("merge", "shard_count", "config_fingerprint"),
    "groups": ("shards",),
}


def assert_same_hdf5(
    first: Path, second: Path, ignore_attributes=(), ignore_groups=(), compare_storage=True
) -> None:
    """Two HDF5 files hold the same groups, datasets (values, dtypes, shapes) and attributes.

    Virtual datasets are compared by the values they read. ``ignore_attributes``
    names root attributes allowed to differ (e.g. ``config``, which records the
    output path), ``ignore_groups`` top-level groups present in one file only.
    """
    import h5py
    import hdf5plugin  # noqa: F401

    def names(file) -> list[str]:
        found: list[str] = []
        file.visit(found.append)
        return [n for n in found if n.split("/")[0] not in ignore_groups]

    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        names_a, names_b = names(a), names(b)
        assert sorted(names_a) == sorted(names_b), (first, second)
        for name in names_a:
            if isinstance(a[name], h5py.Dataset):
                assert a[name].dtype == b[name].dtype, name
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
                stored = _storage(a[name]), _storage(b[name])
                if compare_storage and None not in stored:
                    assert stored[0] == stored[1], f"{name} is stored differently"
            assert _attributes(a[name]) == _attributes(b[name]), name
        root_a, root_b = _attributes(a), _attributes(b)
        for key in ignore_attributes:
            root_a.pop(key, None), root_b.pop(key, None)
        assert root_a == root_b


def _storage(dataset):
    """How a chunked dataset's chunks are stored: (chunk, filters skipped, bytes), in order.

    Equal values are not enough: HDF5 silently skips a filter whose plugin is not
    loaded, storing the same values uncompressed. A virtual dataset has no chunks of
    its own (None), and is compared by its values only.
    """
    if dataset.is_virtual or dataset.chunks is None:
        return None
    chunks = []
    dataset.id.chunk_iter(
        lambda info: chunks.append((info.chunk_offset, info.filter_mask, info.size))
    )
    return sorted(chunks)


def _attributes(node) -> dict:
    return {
        key: np.asarray(value).tolist() if isinstance(value, np.ndarray) else value
        for key, value in node.attrs.items()
    }


def assert_same_nifti_folder(first: Path, second: Path, ignore=("config",)) -> None:
    """Two NIfTI outputs hold the same table, metadata and patches (data and affines)."""
    assert (first / "patches.csv").read_text() == (second / "patches.csv").read_text()
    meta_a = yaml.safe_load((first / "patchcli.yaml").read_text())
    meta_b = yaml.safe_load((second / "patchcli.yaml").read_text())
    for key in ignore:
        meta_a.pop(key, None), meta_b.pop(key, None)
    assert meta_a == meta_b
    files_a = sorted(p.relative_to(first) for p in first.rglob("*.nii.gz"))
    files_b = sorted(p.relative_to(second) for p in second.rglob("*.nii.gz"))
    assert files_a == files_b
    for relative in files_a:
        image_a, image_b = nib.load(first / relative), nib.load(second / relative)
        np.testing.assert_array_equal(
            np.asanyarray(image_a.dataobj), np.asanyarray(image_b.dataobj)
        )
        assert image_a.get_data_dtype() == image_b.get_data_dtype()
        np.testing.assert_array_equal(image_a.affine, image_b.affine)


def assert_same_output(first: Path, second: Path, merged: bool = False) -> None:
    """Two patch outputs (HDF5 files or NIfTI folders) hold the same content, but their config.

    With ``merged``, ``first`` is a merge and its merge records are not compared.
    """
    extra = MERGE_RECORDS["attributes"] if merged else ()
    if Path(first).is_dir():
        assert_same_nifti_folder(Path(first), Path(second), ignore=("config", *extra))
    else:
        groups = MERGE_RECORDS["groups"] if merged else ()
        assert_same_hdf5(first, second, ("config", *extra), groups)


def ordered_trace(num_samples, max_length, **kwargs) -> QueueTrace:
    """A simulated queue with both shuffles off, whose pops follow TorchIO's order exactly."""
    return simulate_queue(
        num_samples, max_length, shuffle_subjects=False, shuffle_patches=False, **kwargs
    )


# -------------------------------------------------------------- patch files
#: The patch size of the files :func:`write_patch_file` writes by default.
PATCH_SIZE = (4, 5, 3)


def make_patch_subjects(rng: np.random.Generator, count: int = 3, patches: int = 4) -> list[dict]:
    """Subjects in memory for :func:`write_patch_file`, ``patches`` locations each.

    Each has a 2-channel int16 "t1", a uint8 "seg" and a float32 "prob" volume.
    """
    subjects = []
    for number in range(count):
        shape = (9 + number, 8, 7 + 2 * number)
        affine = np.diag([1.5, 2.0, 0.5 + number, 1.0])
        affine[:3, 3] = (-10.0 * number, 3.0, 7.5)
        volumes = {
            "t1": rng.integers(-500, 500, (2, *shape)).astype(np.int16),
            "seg": rng.integers(0, 3, (1, *shape)).astype(np.uint8),
            "prob": rng.random((1, *shape)).astype(np.float32),
        }
        starts = np.stack(
            [rng.integers(0, n - p + 1, patches) for n, p in zip(shape, PATCH_SIZE, strict=True)],
            axis=1,
        )
        locations = np.concatenate([starts, starts + PATCH_SIZE], axis=1).astype(np.int64)
        subjects.append(dict(id=f"s{number}", volumes=volumes, affine=affine, locations=locations))
    return subjects


IMAGE_TYPES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


def write_patch_file(
    path: Path,
    subjects: list[dict],
    patch_size=PATCH_SIZE,
    padding=(0, 0, 0),
    compression: dict | None = None,
    images=("t1", "seg", "prob"),
) -> Path:
    """An HDF5 patch file (format_version 1) holding the crops of ``subjects``' volumes.

    ``locations`` are in padded coordinates when ``padding`` is given (a padded
    grid): the volumes are edge-padded before cropping.
    """
    strings = h5py.string_dtype("utf-8")
    total = sum(len(s["locations"]) for s in subjects)
    with h5py.File(path, "w") as file:
        file.attrs["format"] = "patchcli-patches"
        file.attrs["format_version"] = 1
        file.attrs["patchcli_version"] = "test"
        file.attrs["sampler"] = "grid" if any(padding) else "uniform"
        file.attrs["config"] = ""
        file.attrs["seed"] = 0
        file.attrs["patch_size"] = np.asarray(patch_size, dtype=np.int64)
        file.attrs["images"] = np.array(list(images), dtype=strings)
        file.attrs["image_types"] = np.array([IMAGE_TYPES[n] for n in images], dtype=strings)
        if any(padding):
            file.attrs["patch_overlap"] = 2 * np.asarray(padding, dtype=np.int64)
            file.attrs["padding_mode"] = "edge"
            file.attrs["padding"] = np.asarray(padding, dtype=np.int64)
        for name in images:
            volume = subjects[0]["volumes"][name]
            dataset = file.create_dataset(
                f"patches/{name}",
                (total, volume.shape[0], *patch_size),
                dtype=volume.dtype,
                chunks=(1, volume.shape[0], *patch_size),
                **(compression or {}),
            )
            dataset.attrs["type"] = IMAGE_TYPES[name]
            row = 0
            for subject in subjects:
                padded = np.pad(
                    subject["volumes"][name], [(0, 0)] + [(p, p) for p in padding], mode="edge"
                )
                for location in subject["locations"]:
                    i0, j0, k0, i1, j1, k1 = location
                    dataset[row] = padded[:, i0:i1, j0:j1, k0:k1]
                    row += 1
        file["locations"] = np.concatenate([s["locations"] for s in subjects]).astype(np.int64)
        file["subject_index"] = np.concatenate(
            [np.full(len(s["locations"]), n, dtype=np.int64) for n, s in enumerate(subjects)]
        )
        counts = np.array([len(s["locations"]) for s in subjects], dtype=np.int64)
        group = file.create_group("subjects")
        group["id"] = np.array([s["id"] for s in subjects], dtype=strings)
        group["affine"] = np.array([s["affine"] for s in subjects], dtype=np.float64)
        group["shape"] = np.array([s["volumes"]["t1"].shape[1:] for s in subjects], dtype=np.int64)
        group["patch_start"] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        group["patch_count"] = counts
        for name in images:
            group[f"source/{name}"] = np.array(
                [f"/data/{s['id']}_{name}.nii.gz" for s in subjects], dtype=strings
            )
    return path
