"""TorchIO objects in (patchcli.torchio_input): ``extract_torchio`` writes exactly the output
of the equivalent config."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (Blosc)
import numpy as np
import pytest

from patchcli.config import load_config
from patchcli.errors import ConfigError
from patchcli.extract import extract
from patchcli.io.reader import read_patch_output
from patchcli.plan import plan_extraction
from patchcli.torchio_input import extract_torchio, torchio_config

from .helpers import make_subjects, write_config

SHAPES = [(20, 18, 16), (18, 20, 17), (21, 17, 18)]


@pytest.fixture
def dataset(tmp_path):
    manifest, _ = make_subjects(tmp_path / "data", SHAPES)
    rows = list(csv.DictReader(manifest.open()))
    base = manifest.parent
    return base, rows


def _subjects(tio, base: Path, rows, with_ids: bool = True, prob_type="sampling_map"):
    """tio.Subjects of the rows; ``prob`` a sampling map (TorchIO's type for them), or a
    ScalarImage with ``prob_type`` None."""
    subjects = []
    for row in rows:
        images = {
            "t1": tio.ScalarImage(base / row["t1"]),
            "seg": tio.LabelMap(base / row["seg"]),
            "prob": tio.ScalarImage(base / row["prob"])
            if prob_type is None
            else tio.Image(base / row["prob"], type=prob_type),
        }
        subjects.append(tio.Subject(**images, **({"id": row["subject"]} if with_ids else {})))
    return subjects


def _config(tmp_path: Path, base: Path, rows, name: str, **keys) -> Path:
    inline = [
        {"id": row["subject"], **{image: str(base / row[image]) for image in ("t1", "seg", "prob")}}
        for row in rows
    ]
    return write_config(
        tmp_path / f"{name}.yaml",
        subjects=inline,
        images={"t1": "intensity", "seg": "label", "prob": "sampling_map"},
        output={"path": str(tmp_path / f"{name}.h5")},
        **keys,
    )


def _same_patches(first: Path, second: Path) -> None:
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        for name in ("locations", "subject_index", "patches/t1", "patches/seg", "patches/prob"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert [s.decode() for s in a["subjects/id"][()]] == [
            s.decode() for s in b["subjects/id"][()]
        ]
        assert a.attrs["config_fingerprint"] == b.attrs["config_fingerprint"]


def test_a_label_sampler_gives_the_output_of_the_equivalent_config(tmp_path, dataset, torchio):
    tio = torchio
    base, rows = dataset
    sampler = tio.LabelSampler((8, 6, 5), "seg", {0: 1, 1: 2})
    made = extract_torchio(
        _subjects(tio, base, rows),
        sampler,
        tmp_path / "tio.h5",
        samples_per_volume=7,
        seed=3,
        workers=0,
    )
    config = _config(
        tmp_path,
        base,
        rows,
        "config",
        patch_size=[8, 6, 5],
        num_patches=7,
        seed=3,
        label_name="seg",
        label_probabilities={0: 1, 1: 2},
        workers=0,
    )
    reference = extract(load_config(config), "label")
    _same_patches(made.path, reference.path)
    assert [s.id for s in read_patch_output(made.path).subjects] == ["s0", "s1", "s2"]


@pytest.mark.parametrize("kind", ["uniform", "weighted", "grid"])
def test_each_sampler_maps_to_its_config(tmp_path, dataset, torchio, kind):
    tio = torchio
    base, rows = dataset
    subjects = _subjects(tio, base, rows)
    if kind == "uniform":
        sampler, keys, count = tio.UniformSampler(6), {"num_patches": 4}, 4
    elif kind == "weighted":
        sampler, keys, count = tio.WeightedSampler(6, "prob"), {"num_patches": 4}, 4
        keys["probability_map"] = "prob"
    else:
        sampler = tio.GridSampler(subjects[0], 8, 2, "edge")
        keys, count = {"patch_overlap": [2, 2, 2], "padding_mode": "edge"}, None
    made = extract_torchio(subjects, sampler, tmp_path / "tio.h5", samples_per_volume=count, seed=1)
    config = _config(
        tmp_path,
        base,
        rows,
        "config",
        patch_size=[8] * 3 if kind == "grid" else [6] * 3,
        seed=1,
        **keys,
    )
    reference = extract(load_config(config), kind)
    _same_patches(made.path, reference.path)
    assert read_patch_output(made.path).image_types == ["intensity", "label", "sampling_map"]


def test_a_dataset_transform_becomes_preprocess_and_augment(tmp_path, dataset, torchio):
    tio = torchio
    base, rows = dataset
    transform = tio.Compose(
        [
            tio.ToCanonical(),
            tio.ZNormalization(masking_method="seg"),
            tio.RandomFlip(axes=("LR",)),
            tio.RandomAffine(degrees=5, p=0.5),
            tio.OneOf({tio.RandomNoise(std=0.2): 0.7, tio.RandomBlur(): 0.3}),
        ]
    )
    subjects = tio.SubjectsDataset(_subjects(tio, base, rows), transform=transform)
    sampler = tio.UniformSampler(6)
    data, run = torchio_config(subjects, sampler, tmp_path / "tio.h5", 3, 2, 2, {"workers": 0})
    assert data["preprocess"] == ["ToCanonical", {"ZNormalization": {"masking_method": "seg"}}]
    augment = data["augment"]
    assert augment["copies"] == 2
    assert augment["transforms"][0] == {"RandomFlip": {"axes": ["LR"]}}
    assert augment["transforms"][1]["RandomAffine"]["p"] == 0.5
    assert augment["transforms"][2] == {
        "OneOf": {"transforms": [[{"RandomNoise": {"std": [0, 0.2]}}, 0.7], ["RandomBlur", 0.3]]}
    }
    assert run == {"sampler": "uniform"}

    made = extract_torchio(
        subjects, sampler, tmp_path / "tio.h5", samples_per_volume=3, seed=2, copies=2, workers=0
    )
    # The same lists written by hand, as a TorchIO user would paste them.
    config = _config(
        tmp_path,
        base,
        rows,
        "config",
        patch_size=6,
        num_patches=3,
        seed=2,
        workers=0,
        preprocess=["ToCanonical", {"ZNormalization": {"masking_method": "seg"}}],
        augment={
            "copies": 2,
            "transforms": [
                {"RandomFlip": {"axes": ["LR"]}},
                {"RandomAffine": {"degrees": 5, "p": 0.5}},
                {
                    "OneOf": {
                        "transforms": [[{"RandomNoise": {"std": 0.2}}, 0.7], ["RandomBlur", 0.3]]
                    }
                },
            ],
        },
    )
    reference = extract(load_config(config), "uniform")
    with h5py.File(made.path, "r") as a, h5py.File(reference.path, "r") as b:
        for name in ("locations", "copy_index", "patches/t1", "patches/seg"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_ids_come_from_positions_without_an_id(tmp_path, dataset, torchio):
    base, rows = dataset
    subjects = _subjects(torchio, base, rows, with_ids=False, prob_type=None)
    data, _ = torchio_config(subjects, torchio.UniformSampler(6), tmp_path / "o.h5", 2)
    assert [row["id"] for row in data["subjects"]] == ["0", "1", "2"]
    # A ScalarImage is an intensity image, unless a WeightedSampler samples from it.
    assert data["images"]["prob"] == {"type": "intensity"}
    weighted, _ = torchio_config(subjects, torchio.WeightedSampler(6, "prob"), "o.h5", 2)
    assert weighted["images"]["prob"] == {"type": "sampling_map"}


def test_bad_torchio_input_is_refused_naming_the_problem(tmp_path, dataset, torchio):
    tio, torch = torchio, pytest.importorskip("torch")
    base, rows = dataset
    subjects = _subjects(tio, base, rows)
    output = tmp_path / "o.h5"
    with pytest.raises(ConfigError, match="samples_per_volume is required"):
        torchio_config(subjects, tio.UniformSampler(6), output)
    in_memory = [tio.Subject(t1=tio.ScalarImage(tensor=torch.zeros(1, 8, 8, 8)), id="m")]
    with pytest.raises(ConfigError, match="'m' image 't1' is not read from a file"):
        torchio_config(in_memory, tio.UniformSampler(4), output, 2)
    lambda_dataset = tio.SubjectsDataset(subjects, transform=tio.Lambda(lambda x: x * 2))
    with pytest.raises(ConfigError, match="Lambda's function is Python code"):
        torchio_config(lambda_dataset, tio.UniformSampler(6), output, 2)
    odd = subjects[:1] + [tio.Subject(t1=tio.ScalarImage(base / rows[1]["t1"]), id="s1")]
    with pytest.raises(ConfigError, match="subject 's1' has images"):
        torchio_config(odd, tio.UniformSampler(6), output, 2)
    with pytest.raises(ConfigError, match="unknown sampler"):
        torchio_config(subjects, object(), output, 2)
    assert not output.exists()


def test_the_fingerprint_matches_a_frozen_config(tmp_path, dataset, torchio):
    # The config extract_torchio runs is an ordinary config: planned alone, it has the
    # fingerprint the output records.
    base, rows = dataset
    subjects = _subjects(torchio, base, rows)
    data, run = torchio_config(subjects, torchio.UniformSampler(6), tmp_path / "o.h5", 2, 5)
    planned = plan_extraction(load_config(None, data), run["sampler"])
    made = extract_torchio(subjects, torchio.UniformSampler(6), tmp_path / "o.h5", 2, 5)
    assert read_patch_output(made.path).fingerprint == planned.fingerprint
