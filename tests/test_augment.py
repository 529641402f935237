"""``augment:`` end to end: augmented copies of every subject through TorchIO itself,
reproducible whatever the workers, shards and resumes; ``module:function`` code in
``preprocess`` and ``augment``; the copies in the outputs, the fingerprint, the
batch sampler and the reports; and the refusals."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the outputs' lz4 chunks)
import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.config import load_config
from patchcli.dryrun import dry_run
from patchcli.errors import ConfigError, DataError
from patchcli.extract import extract
from patchcli.fingerprint import config_fingerprint, fingerprint_payload
from patchcli.io.reader import read_patch_output
from patchcli.merge import merge
from patchcli.sampling import copy_rng, copy_torch_seed, count_grid_patches, grid_locations
from patchcli.sampling.random import FUNCTIONS
from patchcli.sampling.uniform import uniform_locations
from patchcli.subjects import SubjectSpec, read_manifest

from .helpers import assert_same_output, write_config

IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}
#: Three subjects of different shapes (a function below fails on one of them by its shape).
SHAPES = [(24, 22, 20), (22, 24, 20), (20, 22, 24)]
#: Labels with gaps: a label interpolated linearly would show values between them.
LABELS = (0, 2, 9)
PATCH_SIZE = (8, 8, 8)
NUM_PATCHES = 4
SEED = 3
#: Flips, a rotation and scaling, and noise: the transforms most tests augment with.
AUGMENT = {
    "copies": 2,
    "transforms": [
        {"RandomFlip": {"axes": [0, 1, 2]}},
        {"RandomAffine": {"degrees": 15, "scales": 0.1}},
        {"RandomNoise": {"std": 5}},
    ],
}
#: A cheaper augmentation, with three copies.
THREE_COPIES = {"copies": 3, "transforms": ["RandomFlip", {"RandomNoise": {"std": 2}}]}
THREE_COPIES_LINE = "  augment: 3 copies of each subject: RandomFlip, RandomNoise(std=2)"
INSTALL = "pip install 'patchcli[augment]'"
#: The module of custom code the function tests import (written by the ``functions`` fixture).
MODULE = "augment_test_functions"
FUNCTIONS_SOURCE = '''
"""Custom code for patchcli's augment tests."""

import numpy as np


def double(images):
    """Intensity images times two (arrays and affines)."""
    return {
        name: {**image, "data": image["data"] * 2} if image["type"] == "intensity" else image
        for name, image in images.items()
    }


def jitter(images, scale=1.0, rng=None):
    """Gaussian noise of ``scale`` added to intensity images, drawn from ``rng``."""
    jittered = {}
    for name, image in images.items():
        data = image["data"]
        if image["type"] == "intensity":
            noise = rng.standard_normal(data.shape, dtype=np.float32)
            data = data + np.float32(scale) * noise
        jittered[name] = {**image, "data": data}
    return jittered


def identity(images):
    return images


def fail_on_shape(images, shape):
    """Raise for the subject whose t1 has spatial ``shape``."""
    if tuple(images["t1"]["data"].shape[1:]) == tuple(shape):
        raise RuntimeError("custom code refused this volume")
    return images


def forget(images):
    """Only the first image back."""
    first = next(iter(images))
    return {first: images[first]}


def not_a_mapping(images):
    return [images]


def flat(images):
    """Every image back as a 2D array."""
    return {
        name: {"data": np.zeros((3, 3)), "affine": image["affine"]}
        for name, image in images.items()
    }


def shift_intensities(subject, amount):
    """A tio.Subject with ``amount`` added to its intensity images."""
    for image in subject.get_images(intensity_only=True):
        image.set_data(image.data + amount)
    return subject


def raise_on_subject(subject):
    raise RuntimeError("custom code refused this subject")


class Shift:
    """A class made with the entry's arguments, called on a tio.Subject."""

    def __init__(self, amount):
        self.amount = amount

    def __call__(self, subject):
        return shift_intensities(subject, self.amount)


def twice(tensor):
    return tensor * 2


NOT_CALLABLE = 3
'''


# ----------------------------------------------------------------- test data
def _affine(number: int) -> np.ndarray:
    """LPS, anisotropic voxels."""
    affine = np.diag([-1.2, -1.0, 1.5, 1.0])
    affine[:3, 3] = (15.0 + number, 20.0, -25.0)
    return affine


def _volumes(shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An int16 t1 (a smooth, asymmetric pattern with noise), a uint8 seg of labels 2 and 9
    off centre, and a float32 sampling map."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    pattern = 300 + 80 * x + 50 * y * z + 30 * x * y + rng.normal(0, 15, shape)
    t1 = np.rint(pattern).astype(np.int16)
    radius = (x - 0.2) ** 2 + (y + 0.1) ** 2 + z**2
    seg = np.zeros(shape, np.uint8)
    seg[radius < 0.45] = LABELS[1]
    seg[radius < 0.12] = LABELS[2]
    prob = (seg > 0).astype(np.float32) + 0.05
    return {"t1": t1, "seg": seg, "prob": prob}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three subjects as NIfTI files and their manifest."""
    folder = tmp_path_factory.mktemp("augment-data")
    rng = np.random.default_rng(21)
    rows = []
    for number, shape in enumerate(SHAPES):
        subject = f"s{number}"
        row = {"subject": subject}
        for name, array in _volumes(shape, rng).items():
            nib.save(nib.Nifti1Image(array, _affine(number)), folder / f"{subject}_{name}.nii.gz")
            row[name] = f"{subject}_{name}.nii.gz"
        row["twin"] = row["t1"]  # the same file again, for configs that list it twice
        rows.append(row)
    manifest = folder / "subjects.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def functions(tmp_path_factory) -> Path:
    """The folder of the custom code module (put it on sys.path with ``_use_functions``)."""
    folder = tmp_path_factory.mktemp("functions")
    (folder / f"{MODULE}.py").write_text(FUNCTIONS_SOURCE)
    return folder


def _use_functions(monkeypatch, folder: Path) -> None:
    # Worker processes are forked: they inherit sys.path.
    monkeypatch.syspath_prepend(str(folder))


def _sources(manifest: Path) -> dict[str, dict]:
    """Each subject's volumes ``(1, X, Y, Z)`` as stored, and its affine, read with nibabel."""
    found = {}
    for spec in read_manifest(manifest, list(IMAGES)):
        volumes = {}
        for name, path in spec.paths.items():
            volumes[name] = np.asanyarray(nib.load(path).dataobj)[np.newaxis]
        found[spec.id] = {"volumes": volumes, "affine": nib.load(spec.paths["t1"]).affine}
    return found


def _config_file(folder: Path, manifest: Path, name: str = "out.h5", **keys) -> Path:
    base = dict(
        subjects=str(manifest),
        images=IMAGES,
        patch_size=list(PATCH_SIZE),
        num_patches=NUM_PATCHES,
        seed=SEED,
        workers=0,
        augment=AUGMENT,
    )
    base.update(keys)
    base = {key: value for key, value in base.items() if value is not None}
    base["output"] = {"path": str(folder / name), **keys.get("output", {})}
    return write_config(folder / f"{Path(name).stem}.yaml", **base)


def _config(folder: Path, manifest: Path, name: str = "out.h5", **keys):
    return load_config(_config_file(folder, manifest, name, **keys))


def _invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def _read(path: Path) -> dict:
    """An HDF5 output's tables, patches and root attributes, in memory."""
    with h5py.File(path, "r") as file:
        found = {
            "attrs": dict(file.attrs),
            "locations": file["locations"][()],
            "subject_index": file["subject_index"][()],
            "copy_index": file["copy_index"][()] if "copy_index" in file else None,
            "ids": [value.decode() for value in file["subjects/id"][()]],
            "patch_count": file["subjects/patch_count"][()],
            "patch_start": file["subjects/patch_start"][()],
        }
        for name in file["patches"]:
            found[name] = file[f"patches/{name}"][()]
    return found


def _crop(volume: np.ndarray, location) -> np.ndarray:
    i0, j0, k0, i1, j1, k1 = location
    return volume[:, i0:i1, j0:j1, k0:k1]


def _copy_rows(output: dict, subject: int, copy: int) -> np.ndarray:
    return np.flatnonzero((output["subject_index"] == subject) & (output["copy_index"] == copy))


def _refuse_reading(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a volume was read")

    monkeypatch.setattr("patchcli.subjects.read_volume", refuse)


def _torchio_copy(torch, tio, source: dict, transforms, row: int, copy: int) -> dict:
    """Copy ``copy`` of the subject in manifest row ``row``, made by TorchIO alone: the
    images as TorchIO reads files (float32), in the config's order, through
    ``tio.Compose(transforms)`` with torch seeded from ``(seed, row, copy)`` and one
    thread."""
    images = {}
    for name, kind in IMAGES.items():
        tensor = torch.from_numpy(source["volumes"][name].astype(np.float32))
        affine = source["affine"]
        if kind == "intensity":
            images[name] = tio.ScalarImage(tensor=tensor, affine=affine)
        elif kind == "label":
            images[name] = tio.LabelMap(tensor=tensor, affine=affine)
        else:
            images[name] = tio.Image(tensor=tensor, affine=affine, type=tio.SAMPLING_MAP)
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(copy_torch_seed(SEED, row, copy))
            torch.set_num_threads(1)
            result = tio.Compose(transforms)(tio.Subject(images))
    finally:
        torch.set_num_threads(threads)
    return {name: result[name].data.numpy() for name in IMAGES}


@pytest.fixture(scope="module")
def three_copies(tmp_path_factory, data, torchio) -> Path:
    """An HDF5 output of the subjects with three copies each (``THREE_COPIES``)."""
    folder = tmp_path_factory.mktemp("three-copies")
    return extract(_config(folder, data, augment=THREE_COPIES), "uniform").path


# ------------------------------------------------------------- 1. reproducible
def test_worker_processes_write_byte_identical_output(tmp_path, data, torchio):
    serial = extract(_config(tmp_path, data, "serial.h5"), "uniform")
    parallel = extract(_config(tmp_path, data, "parallel.h5", workers=2), "uniform")
    first, second = _read(serial.path), _read(parallel.path)
    assert first["copy_index"] is not None and len(first["copy_index"]) == serial.patches
    for key in ("locations", "subject_index", "copy_index", *IMAGES):
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # Values, dtypes, attributes and the bytes of every stored chunk.
    assert_same_output(serial.path, parallel.path)


def test_two_shards_merge_into_the_unsharded_run(tmp_path, data, torchio):
    whole = extract(_config(tmp_path, data, "whole.h5"), "label")
    for index in range(2):
        shard = _config(tmp_path, data, "sharded.h5", shard=f"{index}/2", workers=index * 2)
        extract(shard, "label")
    merge(tmp_path / "sharded.h5")
    merged, reference = read_patch_output(tmp_path / "sharded.h5"), read_patch_output(whole.path)
    assert [s.id for s in merged.subjects] == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(merged.copy_index, reference.copy_index)
    np.testing.assert_array_equal(merged.locations, reference.locations)
    assert_same_output(tmp_path / "sharded.h5", whole.path, merged=True)


def test_a_run_stopped_inside_a_copy_resumes_to_the_uninterrupted_output(
    tmp_path, data, torchio, monkeypatch
):
    from patchcli.io.hdf5 import Hdf5PatchWriter

    original = Hdf5PatchWriter.write_rows
    per_subject = AUGMENT["copies"] * NUM_PATCHES
    written = []

    def stop_in_the_second_copy_of_s1(self, row, locations, subject_index):
        if subject_index == 1 and row >= per_subject + NUM_PATCHES:
            raise KeyboardInterrupt
        written.append((subject_index, row))
        original(self, row, locations, subject_index)

    monkeypatch.setattr(Hdf5PatchWriter, "write_rows", stop_in_the_second_copy_of_s1)
    config = _config(tmp_path, data, "resumed.h5")
    with pytest.raises(KeyboardInterrupt):
        extract(config, "uniform")
    assert (1, per_subject) in written  # s1's first copy was written before the stop
    assert (tmp_path / "resumed.h5.partial").exists()
    monkeypatch.setattr(Hdf5PatchWriter, "write_rows", original)
    summary = extract(config, "uniform", resume=True)
    assert summary.resumed == 1 and summary.patches == 3 * per_subject
    reference = extract(_config(tmp_path, data, "reference.h5"), "uniform")
    assert_same_output(summary.path, reference.path)


# --------------------------------------------------------------- 2. the copies
def test_copies_take_a_subjects_rows_in_turn_and_differ(tmp_path, data, torchio):
    copies, n = AUGMENT["copies"], NUM_PATCHES
    summary = extract(_config(tmp_path, data), "uniform")
    output = _read(summary.path)
    assert summary.patches == len(SHAPES) * copies * n
    assert output["attrs"]["augment_copies"] == copies
    assert output["patch_count"].tolist() == [copies * n] * len(SHAPES)
    expected = np.tile(np.repeat(np.arange(copies), n), len(SHAPES))
    np.testing.assert_array_equal(output["copy_index"], expected)
    assert output["copy_index"].dtype == np.int64
    for number, shape in enumerate(SHAPES):
        rows = [_copy_rows(output, number, copy) for copy in range(copies)]
        start = output["patch_start"][number]
        for copy in range(copies):
            # Copy c holds rows [c n, (c + 1) n) of the subject's, drawn from (seed, row, c).
            np.testing.assert_array_equal(rows[copy], start + copy * n + np.arange(n))
            drawn = uniform_locations(shape, PATCH_SIZE, n, copy_rng(SEED, number, copy))
            np.testing.assert_array_equal(output["locations"][rows[copy]], drawn)
        assert not np.array_equal(output["locations"][rows[0]], output["locations"][rows[1]])
        assert not np.array_equal(output["t1"][rows[0]], output["t1"][rows[1]])


def test_another_seed_gives_other_copies(tmp_path, data, torchio):
    first = _read(extract(_config(tmp_path, data, "a.h5"), "uniform").path)
    again = _read(extract(_config(tmp_path, data, "b.h5"), "uniform").path)
    other = _read(extract(_config(tmp_path, data, "c.h5", seed=SEED + 1), "uniform").path)
    for key in ("locations", *IMAGES):
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.array_equal(first["locations"], other["locations"])
    assert not np.array_equal(first["t1"], other["t1"])
    np.testing.assert_array_equal(first["copy_index"], other["copy_index"])


def test_the_grid_covers_every_copy(tmp_path, data, torchio):
    copies = AUGMENT["copies"]
    overlap = (2, 2, 2)
    summary = extract(_config(tmp_path, data, patch_overlap=list(overlap)), "grid")
    output = _read(summary.path)
    counts = [count_grid_patches(shape, PATCH_SIZE, overlap) for shape in SHAPES]
    assert output["patch_count"].tolist() == [copies * count for count in counts]
    assert summary.patches == copies * sum(counts)
    for number, shape in enumerate(SHAPES):
        grid = grid_locations(shape, PATCH_SIZE, overlap)
        rows = [_copy_rows(output, number, copy) for copy in range(copies)]
        for copy in range(copies):
            assert len(rows[copy]) == counts[number]
            np.testing.assert_array_equal(output["locations"][rows[copy]], grid)
        # The same places, cut from other volumes.
        assert not np.array_equal(output["t1"][rows[0]], output["t1"][rows[1]])


# ------------------------------------------------------- 3. TorchIO's own volumes
def test_each_copy_equals_torchio_compose_run_with_its_seed(tmp_path, data, torchio, torch):
    tio = torchio
    summary = extract(_config(tmp_path, data), "uniform")
    output = _read(summary.path)
    assert output["t1"].dtype == np.float32  # int16 in the files
    assert output["seg"].dtype == np.uint8 and output["prob"].dtype == np.float32
    sources = _sources(data)
    made = []
    for number, subject in enumerate(output["ids"]):
        for copy in range(AUGMENT["copies"]):
            transforms = [
                tio.RandomFlip(axes=(0, 1, 2)),
                tio.RandomAffine(degrees=15, scales=0.1),
                tio.RandomNoise(std=5),
            ]
            expected = _torchio_copy(torch, tio, sources[subject], transforms, number, copy)
            made.append(expected["t1"])
            rows = _copy_rows(output, number, copy)
            assert len(rows) == NUM_PATCHES
            for row in rows:
                location = output["locations"][row]
                where = f"subject {subject}, copy {copy}, row {row}"
                crop = _crop(expected["t1"], location)
                np.testing.assert_allclose(
                    output["t1"][row], crop, rtol=0, atol=1e-6, err_msg=where
                )
                label = np.rint(_crop(expected["seg"], location)).astype(np.uint8)
                np.testing.assert_array_equal(output["seg"][row], label, err_msg=where)
                crop = _crop(expected["prob"], location)
                np.testing.assert_array_equal(output["prob"][row], crop, err_msg=where)
    # The copies TorchIO made differ from each other: the comparison is not vacuous.
    assert not np.array_equal(made[0], made[1])


def test_containers_lambda_and_the_first_argument_form_run_through_torchio(
    tmp_path, data, torchio, monkeypatch, functions
):
    """OneOf with weights, Compose, Lambda of a ``module:function`` and ``{Name: value}``,
    with transforms whose result does not depend on the draw: both flips, then t1 twice."""
    _use_functions(monkeypatch, functions)
    flip_first = {"RandomFlip": {"axes": [0], "flip_probability": 1.0}}
    augment = {
        "copies": 2,
        "transforms": [
            {"OneOf": {"transforms": [[flip_first, 0.5], [{"Flip": {"axes": [0]}}, 0.5]]}},
            {
                "Compose": {
                    "transforms": [
                        {"Flip": [1]},
                        {
                            "Lambda": {
                                "function": f"{MODULE}:twice",
                                "types_to_apply": ["intensity"],
                            }
                        },
                    ]
                }
            },
        ],
    }
    output = _read(extract(_config(tmp_path, data, augment=augment), "uniform").path)
    sources = _sources(data)
    for row, location in enumerate(output["locations"]):
        source = sources[output["ids"][output["subject_index"][row]]]["volumes"]
        for name in IMAGES:
            volume = np.flip(source[name], axis=(1, 2))
            if name == "t1":
                volume = volume.astype(np.float32) * 2
            np.testing.assert_array_equal(output[name][row], _crop(volume, location))


def test_torchio_transforms_after_a_function_are_drawn_anew(
    tmp_path, data, torchio, monkeypatch, functions
):
    """Two random flips of all three axes with a function between them: independent draws
    cancel out in about one copy in eight, not in every copy."""
    _use_functions(monkeypatch, functions)
    flip = {"RandomFlip": {"axes": [0, 1, 2]}}
    augment = {
        "copies": 4,
        "transforms": [flip, {f"{MODULE}:identity": {"input": "arrays"}}, flip],
    }
    output = _read(extract(_config(tmp_path, data, augment=augment), "uniform").path)
    sources = _sources(data)
    unchanged = []
    for number, subject in enumerate(output["ids"]):
        for copy in range(augment["copies"]):
            rows = _copy_rows(output, number, copy)
            unchanged.append(
                all(
                    np.array_equal(
                        output["t1"][row],
                        _crop(sources[subject]["volumes"]["t1"], output["locations"][row]),
                    )
                    for row in rows
                )
            )
    assert not all(unchanged), "every copy's second flip undid its first"


def test_images_enter_torchio_in_the_configs_order(tmp_path, data, torchio):
    """RandomGamma draws a gamma per image, in the subject's order: one file listed twice,
    first as t1 then as twin, and in the other order, swaps their gammas."""
    augment = {"copies": 1, "transforms": [{"RandomGamma": {"log_gamma": 0.3}}]}
    first = {"t1": "intensity", "twin": "intensity", "seg": "label"}
    second = {"twin": "intensity", "t1": "intensity", "seg": "label"}
    a = _read(
        extract(_config(tmp_path, data, "a.h5", images=first, augment=augment), "uniform").path
    )
    b = _read(
        extract(_config(tmp_path, data, "b.h5", images=second, augment=augment), "uniform").path
    )
    np.testing.assert_array_equal(a["locations"], b["locations"])
    assert not np.array_equal(a["t1"], a["twin"])  # a gamma of each image's own
    np.testing.assert_array_equal(a["t1"], b["twin"])
    np.testing.assert_array_equal(a["twin"], b["t1"])


# ------------------------------------------------------------------- 4. dtypes
def test_labels_stay_labels_and_intensities_become_float32(tmp_path, data, torchio):
    augment = {"copies": 2, "transforms": [{"RandomAffine": {"degrees": 30, "scales": 0.2}}]}
    config = _config(tmp_path, data, augment=augment, label_name="seg", num_patches=6)
    output = _read(extract(config, "label").path)
    assert output["t1"].dtype == np.float32 and output["prob"].dtype == np.float32
    assert output["seg"].dtype == np.uint8
    # Nearest neighbours: labels 2 and 9 and the background, never a value between them.
    assert set(np.unique(output["seg"]).tolist()) == set(LABELS)
    # The label sampler centred every patch on a label of the augmented copy it cut.
    centre = tuple(n // 2 for n in PATCH_SIZE)
    assert (output["seg"][(slice(None), 0, *centre)] > 0).all()
    sources = _sources(data)
    moved = [
        not np.array_equal(
            output["seg"][row],
            _crop(sources[output["ids"][output["subject_index"][row]]]["volumes"]["seg"], loc),
        )
        for row, loc in enumerate(output["locations"])
    ]
    assert sum(moved) > len(moved) // 2  # the rotation moved the labels
    # Interpolated intensities: not the integers of the int16 files.
    assert np.any(output["t1"] != np.round(output["t1"]))


def test_output_dtype_float16_stores_augmented_intensities_as_float16(tmp_path, data, torchio):
    output = _read(extract(_config(tmp_path, data, output={"dtype": "float16"}), "uniform").path)
    assert output["t1"].dtype == np.float16
    assert output["seg"].dtype == np.uint8 and output["prob"].dtype == np.float32
    reference = _read(extract(_config(tmp_path, data, "float32.h5"), "uniform").path)
    np.testing.assert_array_equal(output["locations"], reference["locations"])
    np.testing.assert_array_equal(output["t1"], reference["t1"].astype(np.float16))


# ---------------------------------------------------------------- 5. functions
def test_a_preprocess_function_on_arrays_doubles_the_intensities(
    tmp_path, data, monkeypatch, functions
):
    _use_functions(monkeypatch, functions)
    config = _config(tmp_path, data, preprocess=[f"{MODULE}:double"], augment=None)
    output = _read(extract(config, "uniform").path)
    assert output["copy_index"] is None and "augment_copies" not in output["attrs"]
    assert output["t1"].dtype == np.float32  # int16 in the files: float32 after custom code
    sources = _sources(data)
    for row, location in enumerate(output["locations"]):
        source = sources[output["ids"][output["subject_index"][row]]]["volumes"]
        expected = _crop(source["t1"], location).astype(np.float32) * 2
        np.testing.assert_array_equal(output["t1"][row], expected)
        np.testing.assert_array_equal(output["seg"][row], _crop(source["seg"], location))


def test_an_augment_function_on_arrays_draws_from_its_copys_generator(
    tmp_path, data, monkeypatch, functions
):
    _use_functions(monkeypatch, functions)
    augment = {"copies": 3, "transforms": [{f"{MODULE}:jitter": {"scale": 4, "input": "arrays"}}]}
    serial = extract(_config(tmp_path, data, "serial.h5", augment=augment), "uniform")
    parallel = extract(
        _config(tmp_path, data, "parallel.h5", augment=augment, workers=2), "uniform"
    )
    assert_same_output(serial.path, parallel.path)
    output = _read(serial.path)
    sources = _sources(data)
    for number, subject in enumerate(output["ids"]):
        t1 = sources[subject]["volumes"]["t1"]
        volumes = []
        for copy in range(augment["copies"]):
            rng = copy_rng(SEED, number, copy, FUNCTIONS)
            volume = t1 + np.float32(4) * rng.standard_normal(t1.shape, dtype=np.float32)
            volumes.append(volume)
            for row in _copy_rows(output, number, copy):
                crop = _crop(volume, output["locations"][row])
                np.testing.assert_array_equal(output["t1"][row], crop)
        assert not np.array_equal(volumes[0], volumes[1])


def test_an_augment_function_and_class_on_a_torchio_subject(
    tmp_path, data, torchio, monkeypatch, functions
):
    _use_functions(monkeypatch, functions)
    augment = {
        "copies": 2,
        "transforms": [
            {f"{MODULE}:shift_intensities": {"amount": 1.5}},
            {f"{MODULE}:Shift": {"amount": 2}},
        ],
    }
    output = _read(extract(_config(tmp_path, data, augment=augment), "uniform").path)
    sources = _sources(data)
    for row, location in enumerate(output["locations"]):
        source = sources[output["ids"][output["subject_index"][row]]]["volumes"]
        t1 = _crop(source["t1"], location).astype(np.float32)
        np.testing.assert_array_equal(output["t1"][row], (t1 + np.float32(1.5)) + np.float32(2))
        np.testing.assert_array_equal(output["seg"][row], _crop(source["seg"], location))


#: An arrays function that fails on s1 alone (by its shape).
FAILS_ON_S1 = f"{MODULE}:fail_on_shape"
FAILING_AUGMENT = {
    "copies": 2,
    "transforms": [{FAILS_ON_S1: {"shape": list(SHAPES[1]), "input": "arrays"}}],
}


@pytest.mark.parametrize(
    "augment, subject, entry",
    [
        (FAILING_AUGMENT, "s1", FAILS_ON_S1),
        ({"copies": 2, "transforms": [f"{MODULE}:raise_on_subject"]}, "s0", "augment failed"),
    ],
    ids=["arrays", "subject"],
)
def test_a_function_that_raises_is_a_data_error_naming_the_subject(
    tmp_path, data, monkeypatch, functions, request, augment, subject, entry
):
    _use_functions(monkeypatch, functions)
    if subject == "s0":  # the tio.Subject form
        request.getfixturevalue("torchio")
    with pytest.raises(DataError) as caught:
        extract(_config(tmp_path, data, augment=augment), "uniform")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{data.parent / subject}_")
    assert f"subject {subject!r}" in message and entry in message
    assert "RuntimeError: custom code refused this" in message
    assert not (tmp_path / "out.h5").exists()


def test_a_subject_whose_function_raises_is_skipped_with_on_error_skip(
    tmp_path, data, monkeypatch, functions
):
    _use_functions(monkeypatch, functions)
    config = _config_file(tmp_path, data, augment=FAILING_AUGMENT, on_error="skip")
    result = _invoke("uniform", config, "-q")
    assert result.exit_code == 0, result.output
    assert "skipped 's1' (manifest row 1)" in result.output
    output = read_patch_output(tmp_path / "out.h5")
    assert [s.id for s in output.subjects] == ["s0", "s2"]
    assert [(s.id, s.stage) for s in output.skipped] == [("s1", "run")]
    assert FAILS_ON_S1 in output.skipped[0].reason
    # The rows left are still each subject's copies in turn.
    expected = np.tile(np.repeat(np.arange(2), NUM_PATCHES), 2)
    np.testing.assert_array_equal(output.copy_index, expected)
    # s0's and s2's rows are those of a run in which no subject fails.
    passes = {"copies": 2, "transforms": [{FAILS_ON_S1: {"shape": [1, 1, 1], "input": "arrays"}}]}
    whole = read_patch_output(
        extract(_config(tmp_path, data, "all.h5", augment=passes), "uniform").path
    )
    kept = whole.subject_index != 1
    np.testing.assert_array_equal(output.locations, whole.locations[kept])
    np.testing.assert_array_equal(output.copy_index, whole.copy_index[kept])


@pytest.mark.parametrize(
    "function, fragment",
    [
        ("forget", "must return every image by name (['prob', 'seg', 't1']), not ['t1']"),
        ("not_a_mapping", "must return every image by name"),
        ("flat", "came back with data (3, 3) and affine (4, 4)"),
    ],
    ids=["an-image-missing", "not-a-mapping", "2d-data"],
)
def test_a_function_returning_the_wrong_images_is_a_data_error(
    tmp_path, data, monkeypatch, functions, function, fragment
):
    _use_functions(monkeypatch, functions)
    reference = f"{MODULE}:{function}"
    augment = {"copies": 2, "transforms": [{reference: {"input": "arrays"}}]}
    with pytest.raises(DataError) as caught:
        extract(_config(tmp_path, data, augment=augment), "uniform")
    message = str(caught.value)
    assert "\n" not in message
    assert "subject 's0'" in message and reference in message
    assert fragment in message
    assert not list(tmp_path.glob("out.h5*"))


def test_per_subject_augment_errors_name_the_subject_and_the_copy(
    tmp_path, data, torchio, monkeypatch, functions
):
    """A transform that fails, an image moved off its grid, a function that raises or
    returns the wrong images: each error names the subject and the copy."""
    _use_functions(monkeypatch, functions)
    cases = {
        "a transform that fails": [f"{MODULE}:raise_on_subject"],
        "an image moved off its grid": [{"Resample": 2}],
        "a function that raises": [
            {f"{MODULE}:fail_on_shape": {"shape": list(SHAPES[0]), "input": "arrays"}}
        ],
        "a function returning the wrong images": [{f"{MODULE}:forget": {"input": "arrays"}}],
    }
    without_copy = {}
    for case, transforms in cases.items():
        with pytest.raises(DataError) as caught:
            extract(
                _config(tmp_path, data, augment={"copies": 2, "transforms": transforms}), "uniform"
            )
        message = str(caught.value)
        assert "subject 's0'" in message, message
        if "copy 0" not in message:
            without_copy[case] = message
    assert not without_copy, f"errors that do not name the copy: {without_copy}"


@pytest.mark.parametrize("key", ["preprocess", "augment"])
@pytest.mark.parametrize(
    "reference, fragment",
    [
        ("no_such_module_for_augment:f", "cannot import 'no_such_module_for_augment'"),
        (f"{MODULE}:missing", f"module '{MODULE}' has no 'missing'"),
        (f"{MODULE}:NOT_CALLABLE", f"{MODULE}:NOT_CALLABLE is not callable"),
    ],
    ids=["unknown-module", "unknown-function", "not-callable"],
)
def test_an_unknown_module_or_function_is_a_config_error_before_any_work(
    tmp_path, data, monkeypatch, functions, key, reference, fragment
):
    _use_functions(monkeypatch, functions)
    _refuse_reading(monkeypatch)
    if key == "preprocess":
        keys = {"preprocess": [reference], "augment": None}
    else:
        keys = {"augment": {"copies": 2, "transforms": [{reference: {"input": "arrays"}}]}}
    with pytest.raises(ConfigError) as caught:
        extract(_config(tmp_path, data, **keys), "uniform")
    message = str(caught.value)
    assert "\n" not in message
    assert fragment in message
    assert not list(tmp_path.glob("out.h5*"))


# --------------------------------------------------------------- 6. bad config
@pytest.mark.parametrize(
    "augment, preprocess, fragment, needs_torchio",
    [
        (
            {"copies": 2, "transforms": ["RandomAfine"]},
            None,
            "augment.transforms[0]: unknown TorchIO transform 'RandomAfine'; "
            "did you mean 'RandomAffine'?",
            True,
        ),
        (
            {"copies": 2, "transforms": [{"RandomAffine": {"degres": 10}}]},
            None,
            "RandomAffine has no argument 'degres'; did you mean 'degrees'?",
            True,
        ),
        (
            {"copies": 2, "transforms": [{"RandomAffine": {"degrees": "ten"}}]},
            None,
            "augment.transforms[0]: RandomAffine: ValueError",
            True,
        ),
        *[
            (
                {"copies": copies, "transforms": ["RandomFlip"]},
                None,
                f"augment.copies must be a count from 1 to 10000, not {copies!r}",
                False,
            )
            for copies in (0, -1, "two")
        ],
        (
            {"copies": 2, "transforms": "RandomFlip"},
            None,
            "augment.transforms must be a non-empty list of transforms",
            False,
        ),
        (
            {"copy": 2, "transforms": ["RandomFlip"]},
            None,
            "augment has no key 'copy'; did you mean 'copies'?",
            False,
        ),
        (
            {"copies": 2, "transforms": [{"RandomNoise": {"include": ["t2"]}}]},
            None,
            "augment.transforms[0]: include names 't2', which is not an image",
            False,
        ),
        (
            None,
            ["ToCanonical", "RandomFlip"],
            "preprocess[1]: RandomFlip is a random transform: put it under augment",
            False,
        ),
        (
            {"copies": 2, "transforms": [{f"{MODULE}:identity": {"input": "foo"}}]},
            None,
            "input must be subject (a tio.Subject) or arrays, not 'foo'",
            False,
        ),
    ],
    ids=[
        "unknown-transform",
        "unknown-argument",
        "argument-torchio-refuses",
        "copies-0",
        "copies-negative",
        "copies-text",
        "transforms-not-a-list",
        "unknown-key",
        "include-not-an-image",
        "random-transform-in-preprocess",
        "unknown-function-input",
    ],
)
def test_a_bad_augment_is_refused_in_one_line_before_any_work(
    tmp_path, data, monkeypatch, request, augment, preprocess, fragment, needs_torchio
):
    if needs_torchio:
        request.getfixturevalue("torchio")
    _refuse_reading(monkeypatch)
    config = _config_file(tmp_path, data, augment=augment, preprocess=preprocess)
    result = _invoke("uniform", config)
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert message.startswith("Error: ")
    assert fragment in message
    assert not list(tmp_path.glob("out.h5*"))


def test_a_transform_that_moves_the_grid_stops_the_subject_pointing_to_preprocess(
    tmp_path, data, torchio
):
    config = _config(tmp_path, data, augment={"copies": 2, "transforms": [{"Resample": 2}]})
    with pytest.raises(DataError) as caught:
        extract(config, "uniform")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{data.parent}")
    assert "subject 's0'" in message and "off its grid" in message
    assert "in preprocess" in message
    assert not list(tmp_path.glob("out.h5*"))


# ------------------------------------------------------- 7. torch only when needed
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_without_torch_augment_names_the_install_command(tmp_path, data):
    config = _config_file(tmp_path, data)
    result = _python(
        f"""
        import sys
        sys.modules["torch"] = None  # import torch fails, as where it is not installed
        sys.modules["torchio"] = None
        from patchcli.cli import main
        main(["uniform", {str(config)!r}, "-q"])
        """
    )
    assert result.returncode == 1, result.stderr
    message = (result.stdout + result.stderr).strip()
    assert message.count("\n") == 0, message
    assert message.startswith("Error: ") and INSTALL in message
    assert not list(tmp_path.glob("out.h5*"))
    # The library says the same.
    planned = _python(
        f"""
        import sys
        sys.modules["torch"] = None
        from patchcli.config import load_config
        from patchcli.errors import ConfigError
        from patchcli.plan import plan_extraction
        try:
            plan_extraction(load_config({str(config)!r}), "uniform")
        except ConfigError as error:
            print(error)
        """
    )
    assert planned.returncode == 0, planned.stderr
    assert INSTALL in planned.stdout


def test_help_and_a_run_without_augment_never_import_torch(tmp_path, data):
    config = _config_file(tmp_path, data, augment=None)
    result = _python(
        f"""
        import sys
        from patchcli.cli import main
        for arguments in (["--help"], ["uniform", {str(config)!r}, "-q"]):
            try:
                main(arguments)
            except SystemExit as stop:
                assert stop.code in (0, None), (arguments, stop.code)
        print("torch" in sys.modules, "torchio" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False False"
    assert read_patch_output(tmp_path / "out.h5").num_patches == len(SHAPES) * NUM_PATCHES


# -------------------------------------------------------------- 8. fingerprint
def _fingerprint(folder: Path, manifest: Path, augment) -> str:
    config = _config(folder, manifest, augment=augment)
    return config_fingerprint(config, "uniform", read_manifest(manifest, list(IMAGES)))


def test_the_fingerprint_covers_augment(tmp_path, data):
    variants = [
        None,
        AUGMENT,
        {**AUGMENT, "copies": 3},
        {**AUGMENT, "transforms": AUGMENT["transforms"][:2]},
        {**AUGMENT, "transforms": [*AUGMENT["transforms"][:2], {"RandomNoise": {"std": 6}}]},
        {**AUGMENT, "transforms": list(reversed(AUGMENT["transforms"]))},
    ]
    fingerprints = [_fingerprint(tmp_path, data, augment) for augment in variants]
    assert len(set(fingerprints)) == len(variants)
    assert _fingerprint(tmp_path, data, dict(AUGMENT)) == fingerprints[1]
    config = _config(tmp_path, data)
    payload = fingerprint_payload(config, "uniform", read_manifest(data, list(IMAGES)))
    recorded = payload["augment"]
    assert recorded["copies"] == 2 and len(recorded["transforms"]) == 3
    for distribution in ("torchio", "torch"):
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = None
        assert recorded[distribution] == version


def test_a_config_without_augment_keeps_the_fingerprint_it_had_before_augment(tmp_path, data):
    config = _config(tmp_path, data, augment=None)
    payload = fingerprint_payload(config, "uniform", read_manifest(data, list(IMAGES)))
    assert "augment" not in payload and "functions" not in payload
    # A fixed config and manifest: the digest patchcli gave it before augment existed.
    fixed = load_config(
        None,
        {
            "images": {"t1": "intensity", "seg": "label"},
            "patch_size": [8, 8, 8],
            "num_patches": 4,
            "seed": 3,
        },
    )
    specs = [
        SubjectSpec(i, f"s{i}", {name: Path(f"/d/s{i}_{name}.nii.gz") for name in ("t1", "seg")})
        for i in range(3)
    ]
    assert config_fingerprint(fixed, "uniform", specs) == (
        "13ba39f7a84911bc1d398f9cc1c85a8057260d58e8fa35fe7b5dfadce7d7bbdc"
    )


def test_the_fingerprint_covers_the_source_of_custom_code(tmp_path, data, monkeypatch):
    module = "augment_test_digest"
    folder = tmp_path / "code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    source = folder / f"{module}.py"
    source.write_text("def change(images):\n    return images\n")
    augment = {"copies": 2, "transforms": [{f"{module}:change": {"input": "arrays"}}]}
    first = _fingerprint(tmp_path, data, augment)
    assert _fingerprint(tmp_path, data, augment) == first
    source.write_text("def change(images):\n    return dict(images)\n")
    assert _fingerprint(tmp_path, data, augment) != first
    preprocess = _config(tmp_path, data, augment=None, preprocess=[f"{module}:change"])
    payload = fingerprint_payload(preprocess, "uniform", read_manifest(data, list(IMAGES)))
    assert list(payload["functions"]) == [f"{module}:change"]
    # Nested in OneOf (with weights), Compose and Lambda too.
    source.write_text("def change(images):\n    return images\n\n\nkeep = change\nalso = change\n")
    nested = {
        "copies": 2,
        "transforms": [
            {"OneOf": {"transforms": [[f"{module}:change", 0.5], ["RandomFlip", 0.5]]}},
            {"Compose": {"transforms": [{"Lambda": {"function": f"{module}:keep"}}]}},
            f"{module}:also",
        ],
    }
    config = _config(tmp_path, data, augment=nested)
    payload = fingerprint_payload(config, "uniform", read_manifest(data, list(IMAGES)))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert payload["functions"] == {
        f"{module}:{name}": digest for name in ("also", "change", "keep")
    }


def test_shards_made_with_different_augment_are_not_merged(tmp_path, data, torchio):
    for index, copies in enumerate((2, 3)):
        augment = {"copies": copies, "transforms": ["RandomFlip"]}
        config = _config(tmp_path, data, "mixed.h5", augment=augment, shard=f"{index}/2")
        extract(config, "uniform")
    with pytest.raises(DataError, match=r"differs from .* in settings"):
        merge(tmp_path / "mixed.h5")
    assert not (tmp_path / "mixed.h5").exists()


# ------------------------------------------------------------ 9. batch sampler
def test_the_batch_sampler_draws_each_pass_from_one_copy_of_each_subject(
    three_copies, dataset_class
):
    from patchcli.batching import PatchBatchSampler

    dataset = dataset_class(three_copies)
    np.testing.assert_array_equal(dataset.copy_index, read_patch_output(three_copies).copy_index)
    per_subject = 3

    def passes(seed: int, count: int) -> list[list[int]]:
        sampler = PatchBatchSampler(dataset, 4, seed=seed, patches_per_subject=per_subject)
        return [[index for batch in sampler for index in batch] for _ in range(count)]

    drawn = passes(5, 6)
    used = {subject: [] for subject in range(len(dataset.subjects))}
    for indices in drawn:
        assert len(indices) == len(set(indices)) == per_subject * len(dataset.subjects)
        for subject in used:
            mine = [i for i in indices if dataset.subject_index[i] == subject]
            assert len(mine) == per_subject
            copies = {int(dataset.copy_index[i]) for i in mine}
            assert len(copies) == 1, copies
            used[subject].append(copies.pop())
    for subject, copies in used.items():
        # Every copy once in each run of three passes.
        assert sorted(copies[:3]) == [0, 1, 2] and sorted(copies[3:]) == [0, 1, 2], subject
    assert passes(5, 6) == drawn
    assert passes(6, 6) != drawn


def test_the_batch_sampler_refuses_more_patches_than_a_copy_holds(three_copies, dataset_class):
    from patchcli.batching import PatchBatchSampler

    dataset = dataset_class(three_copies)
    with pytest.raises(ValueError, match=r"subject 's0' stores 4 patches per augmented copy"):
        PatchBatchSampler(dataset, 4, seed=0, patches_per_subject=NUM_PATCHES + 1)


# ------------------------------------------------------------------ 10. NIfTI
def test_nifti_output_has_a_copy_column_like_the_hdf5_copy_index(tmp_path, data, three_copies):
    config = _config(tmp_path, data, "nifti", augment=THREE_COPIES, output={"format": "nifti"})
    folder = extract(config, "uniform").path
    reference = _read(three_copies)
    with open(folder / "patches.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
        header = list(rows[0])
    assert header[:3] == ["subject", "patch", "copy"]
    assert header[3:9] == ["i0", "j0", "k0", "i1", "j1", "k1"]
    np.testing.assert_array_equal([int(row["copy"]) for row in rows], reference["copy_index"])
    metadata = yaml.safe_load((folder / "patchcli.yaml").read_text())
    assert metadata["augment_copies"] == 3
    output = read_patch_output(folder)
    assert output.copies == 3
    np.testing.assert_array_equal(output.copy_index, reference["copy_index"])
    np.testing.assert_array_equal(output.locations, reference["locations"])
    for number, row in enumerate(rows):
        for name in IMAGES:
            patch = nib.load(folder / row[name])
            assert patch.get_data_dtype() == reference[name].dtype
            np.testing.assert_array_equal(np.asanyarray(patch.dataobj), reference[name][number, 0])


def test_info_shows_the_copies(three_copies):
    result = _invoke("info", three_copies)
    assert result.exit_code == 0, result.output
    assert THREE_COPIES_LINE in result.output.splitlines()
    described = json.loads(_invoke("info", three_copies, "--json").output)
    assert described["augment"] == THREE_COPIES
    assert described["patches"] == 3 * NUM_PATCHES * len(SHAPES)
    assert read_patch_output(three_copies).copies == 3


# ------------------------------------------------------------------ 11. dry run
def test_dry_run_shows_the_copies_and_counts_their_patches(tmp_path, data, torchio):
    config = _config_file(tmp_path, data, augment=THREE_COPIES)
    result = _invoke("uniform", config, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert THREE_COPIES_LINE in lines
    per_subject = 3 * NUM_PATCHES
    assert f"  patches: {per_subject * len(SHAPES)} ({per_subject} to {per_subject} a subject)" in (
        lines
    )
    assert not list(tmp_path.glob("out.h5*"))
    grid = dry_run(load_config(config), "grid", sample=False).plan
    counts = [count_grid_patches(shape, PATCH_SIZE, (0, 0, 0)) for shape in SHAPES]
    assert grid.counts == [3 * count for count in counts]


# ------------------------------------------------------------------ 12. preview
def test_preview_draws_the_copy_asked_for_from_the_config_and_from_the_output(
    tmp_path, data, three_copies
):
    """From an output, the copy is made again (seed, manifest row, copy): every stored patch
    of that copy is a crop of the volumes drawn, as from the config."""
    from patchcli.preview import preview_from_config, preview_from_output

    config = _config(tmp_path, data, augment=THREE_COPIES)
    output = _read(three_copies)
    drawn = {}
    for copy in (0, 2):
        rows = _copy_rows(output, 1, copy)
        for source, data_ in (
            ("config", preview_from_config(config, "uniform", "s1", copy)),
            ("output", preview_from_output(three_copies, "s1", copy)),
        ):
            assert (data_.subject, data_.copy, data_.copies) == ("s1", copy, 3)
            np.testing.assert_array_equal(data_.locations, output["locations"][rows])
            for name in IMAGES:
                volume = data_.volumes[name].astype(output[name].dtype)
                for row in rows:
                    crop = _crop(volume, output["locations"][row])
                    np.testing.assert_array_equal(crop, output[name][row], err_msg=name)
            drawn[source, copy] = data_.volumes["t1"]
    assert not np.array_equal(drawn["output", 0], drawn["output", 2])


def test_preview_of_a_copy_on_the_command_line_and_a_copy_out_of_range(tmp_path, three_copies):
    png = tmp_path / "copy.png"
    result = _invoke("preview", three_copies, "-o", png, "--copy", 2, "--subject", "s2")
    assert result.exit_code == 0, result.output
    assert f"uniform, subject 's2', copy 2 of 3, {NUM_PATCHES} patches" in result.output
    assert png.stat().st_size > 0
    beyond = _invoke("preview", three_copies, "-o", tmp_path / "x.png", "--copy", 3)
    assert beyond.exit_code == 1
    assert "no copy 3: the run makes 3 copies of each subject (0 to 2)" in beyond.output
    assert not (tmp_path / "x.png").exists()
