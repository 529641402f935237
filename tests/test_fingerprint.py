"""The fingerprint of a run: what decides the patches, and nothing else."""

from __future__ import annotations

import shutil

import pytest

from patchcli.config import Config, OutputSpec, load_config
from patchcli.fingerprint import FINGERPRINT_KEYS, NOT_FINGERPRINTED, config_fingerprint
from patchcli.subjects import read_manifest

from .helpers import make_subjects, write_config


def test_every_config_key_is_classified():
    keys = [name for name in Config.model_fields if name != "output"]
    keys += [f"output.{name}" for name in OutputSpec.model_fields]
    listed = [*FINGERPRINT_KEYS, *NOT_FINGERPRINTED, "images"]
    assert sorted(keys) == sorted(listed), "a config key must be in exactly one list"
    assert len(set(listed)) == len(listed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fingerprint")
    manifest, _ = make_subjects(folder, [(10, 10, 10), (11, 10, 9)])
    base = dict(
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label", "prob": "sampling_map"},
        patch_size=8,
        num_patches=3,
        seed=1,
        output={"path": str(folder / "out.h5")},
    )
    return folder, manifest, base


def _fingerprint(folder, base, sampler="uniform", manifest=None, **changes):
    keys = {**base, **changes}
    config = load_config(write_config(folder / "f.yaml", **keys))
    specs = read_manifest(manifest or config.subjects, list(config.images))
    return config_fingerprint(config, sampler, specs)


def test_what_does_not_decide_the_patches_leaves_it_unchanged(setup):
    folder, manifest, base = setup
    reference = _fingerprint(folder, base)
    copy = folder / "copy" / "subjects.csv"
    copy.parent.mkdir(exist_ok=True)
    # The copy names the images by absolute path, as the original resolves them.
    lines = manifest.read_text().splitlines()
    header, rows = lines[0], [line.split(",") for line in lines[1:]]
    copy.write_text(
        "\n".join(
            [header] + [",".join([r[0]] + [str(manifest.parent / p) for p in r[1:]]) for r in rows]
        )
    )
    same = [
        dict(workers=3),
        dict(workers="auto"),
        dict(block_size="1MiB"),
        dict(output={"path": str(folder / "elsewhere.h5")}),
        dict(shard="1/2"),
        dict(max_length=10, batch_size=4, num_workers=2),
        dict(patch_size=[8, 8, 8]),
        dict(subjects=str(copy)),
    ]
    for change in same:
        assert _fingerprint(folder, base, **change) == reference, change


def test_what_decides_the_patches_changes_it(setup):
    folder, manifest, base = setup
    reference = _fingerprint(folder, base)
    changed = [
        dict(seed=2),
        dict(patch_size=6),
        dict(num_patches=4),
        dict(images={"t1": "intensity", "seg": "intensity", "prob": "sampling_map"}),
        dict(output={"path": base["output"]["path"], "compression": "gzip"}),
        dict(output={"path": base["output"]["path"], "dtype": "float32"}),
        dict(label_probabilities={0: 1, 1: 2}),
    ]
    for change in changed:
        assert _fingerprint(folder, base, **change) != reference, change
    assert _fingerprint(folder, base, sampler="grid") != reference

    # The manifest's content: an id, a path, num_samples, the order.
    text = manifest.read_text()
    variants = {
        "id": text.replace("s1,", "t1x,"),
        "path": text.replace("s0_t1.nii.gz", "moved/s0_t1.nii.gz"),
        "num_samples": text.replace(
            "subject,t1,seg,prob", "subject,t1,seg,prob,num_samples"
        ).replace(".nii.gz\n", ".nii.gz,2\n"),
        "order": "\n".join([text.splitlines()[0], *reversed(text.splitlines()[1:])]) + "\n",
    }
    for what, variant in variants.items():
        other = folder / f"{what}.csv"
        other.write_text(variant)
        shutil.copy(manifest, folder / "unused.csv")
        assert _fingerprint(folder, base, subjects=str(other)) != reference, what
