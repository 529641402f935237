"""``preprocess:`` end to end: patches are crops of the preprocessed volumes (patchcli's
transforms and TorchIO's), grids, reproducibility, dtypes, reports, and refusals."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import h5py
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
from patchcli.fingerprint import config_fingerprint
from patchcli.io.reader import read_patch_output
from patchcli.merge import merge
from patchcli.sampling import count_grid_patches
from patchcli.sizing import memory_from_config, subject_images
from patchcli.subjects import read_manifest
from patchcli.transforms import Image, Subject, apply_transforms, parse_transforms
from patchcli.units import format_bytes

from .helpers import assert_same_output, make_subjects, write_config

#: The preprocessing of most tests, and its line in reports.
PREPROCESS = [
    "ToCanonical",
    {"Resample": 1.5},
    {"ZNormalization": {"masking_method": "seg"}},
    {"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}},
]
PREPROCESS_LINE = (
    "  preprocess: ToCanonical, Resample(1.5), ZNormalization(masking_method=seg), "
    "RescaleIntensity(out_min_max=[-1, 1], percentiles=[0.5, 99.5])"
)
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}
PATCH_SIZE = (8, 7, 6)
SAMPLERS = ["uniform", "weighted", "label", "grid"]
#: Anisotropic voxels, stored LPS (x and y axes pointing left and posterior).
LPS_SHAPES = [(28, 32, 24), (30, 26, 25), (24, 30, 28)]
LPS_SPACING = (1.2, 1.0, 2.0)


# ----------------------------------------------------------------- test data
def _lps_affine(spacing, origin) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def _intensity(shape, rng: np.random.Generator) -> np.ndarray:
    """A smooth float32 volume with noise: a gradient, a saddle and Gaussian noise."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (300 + 80 * x + 40 * y * z + rng.normal(0, 15, shape)).astype(np.float32)


def _labels(shape) -> np.ndarray:
    """Labels 1 (a ball) and 2 (its core) in the middle of the volume, uint8."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = x**2 + y**2 + z**2
    seg = np.zeros(shape, np.uint8)
    seg[radius < 0.5] = 1
    seg[radius < 0.15] = 2
    return seg


def _write_manifest(folder: Path, subjects: dict) -> Path:
    """Save ``{subject: {image: (array, affine)}}`` as NIfTI files and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for subject, images in subjects.items():
        row = {"subject": subject}
        for name, (array, affine) in images.items():
            nib.save(nib.Nifti1Image(array, affine), folder / f"{subject}_{name}.nii.gz")
            row[name] = f"{subject}_{name}.nii.gz"
        rows.append(row)
    manifest = folder / "subjects.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def lps(tmp_path_factory) -> Path:
    """Three subjects: float32 t1, uint8 seg, float32 prob, LPS with 1.2 x 1 x 2 mm voxels."""
    rng = np.random.default_rng(11)
    subjects = {}
    for number, shape in enumerate(LPS_SHAPES):
        affine = _lps_affine(LPS_SPACING, (15.0 + number, 20.0, -25.0))
        seg = _labels(shape)
        subjects[f"s{number}"] = {
            "t1": (_intensity(shape, rng), affine),
            "seg": (seg, affine),
            "prob": ((seg > 0).astype(np.float32) + 0.05, affine),
        }
    return _write_manifest(tmp_path_factory.mktemp("lps"), subjects)


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory) -> Path:
    """Two subjects: t1 and seg at 1 mm, flair at 2 mm over the same field of view (LPS)."""
    rng = np.random.default_rng(12)
    subjects = {}
    for number, shape in enumerate([(32, 30, 28), (30, 32, 26)]):
        fine = _lps_affine((1.0, 1.0, 1.0), (12.0, 18.0 + number, -14.0))
        coarse = _lps_affine((2.0, 2.0, 2.0), (0, 0, 0))
        # The centre of flair's first voxel is that of t1's first 2x2x2 voxels.
        coarse[:3, 3] = (fine @ np.array([0.5, 0.5, 0.5, 1.0]))[:3]
        subjects[f"s{number}"] = {
            "t1": (_intensity(shape, rng), fine),
            "flair": (_intensity(tuple(n // 2 for n in shape), rng), coarse),
            "seg": (_labels(shape), fine),
        }
    return _write_manifest(tmp_path_factory.mktemp("grids"), subjects)


@pytest.fixture(scope="module")
def integers(tmp_path_factory) -> Path:
    """Two subjects with an int16 t1 (values -100 to 999), uint8 seg and float32 prob."""
    return make_subjects(tmp_path_factory.mktemp("int"), [(24, 26, 25), (26, 24, 28)], seed=3)[0]


def _config_file(folder: Path, manifest: Path, name: str = "out.h5", **keys) -> Path:
    base = dict(
        subjects=str(manifest),
        images=IMAGES,
        patch_size=list(PATCH_SIZE),
        num_patches=6,
        seed=3,
        workers=0,
    )
    base.update(keys)
    base["output"] = {"path": str(folder / name), **keys.get("output", {})}
    return write_config(folder / f"{Path(name).stem}.yaml", **base)


def _config(folder: Path, manifest: Path, name: str = "out.h5", **keys):
    return load_config(_config_file(folder, manifest, name, **keys))


def _invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


# ----------------------------------------------------------------- expectations
def _preprocessed(manifest: Path, images: dict, preprocess) -> dict:
    """Each subject's volumes ``(C, X, Y, Z)`` and affine after ``preprocess``, applied with
    patchcli's transforms to a Subject read from the files with nibabel."""
    transforms = parse_transforms(preprocess, images)
    found = {}
    for spec in read_manifest(manifest, list(images)):
        loaded = {}
        for name, path in spec.paths.items():
            nifti = nib.load(path)
            data = np.asanyarray(nifti.dataobj)[np.newaxis]
            loaded[name] = Image(name, images[name], data, nifti.affine, path)
        subject = Subject(spec.id, loaded)
        apply_transforms(transforms, subject)
        first = next(iter(subject))
        found[spec.id] = {
            "affine": first.affine,
            "volumes": {image.name: image.data for image in subject},
        }
    return found


def _torchio_preprocessed(torchio, manifest: Path, images: dict, transforms) -> dict:
    """The same, by TorchIO: ``tio.Compose(transforms)`` on a ``tio.Subject`` of the files."""
    kinds = {"intensity": torchio.ScalarImage, "label": torchio.LabelMap}
    compose = torchio.Compose(transforms)
    found = {}
    for spec in read_manifest(manifest, list(images)):
        subject = torchio.Subject(
            **{name: kinds[images[name]](path) for name, path in spec.paths.items()}
        )
        subject = compose(subject)
        found[spec.id] = {
            "affine": subject[next(iter(images))].affine,
            "volumes": {name: subject[name].data.numpy() for name in images},
        }
    return found


def _assert_crops(path: Path, expected: dict, atol: dict | None = None) -> int:
    """Every stored patch equals the crop of ``expected``'s volume at its stored location
    (within ``atol[name]`` where given, else exactly), and the subjects table holds
    ``expected``'s shapes and affines. Returns the number of patches."""
    atol = atol or {}
    with h5py.File(path, "r") as file:
        ids = [value.decode() for value in file["subjects/id"][()]]
        assert ids == list(expected)
        for number, subject in enumerate(ids):
            volume = next(iter(expected[subject]["volumes"].values()))
            assert tuple(file["subjects/shape"][number]) == volume.shape[1:], subject
            # Stored as computed, in float64: the same numbers.
            np.testing.assert_array_equal(
                file["subjects/affine"][number], expected[subject]["affine"], err_msg=subject
            )
        locations, index = file["locations"][()], file["subject_index"][()]
        assert len(locations) > 0
        for name in expected[ids[0]]["volumes"]:
            patches = file[f"patches/{name}"][()]
            for row, (i0, j0, k0, i1, j1, k1) in enumerate(locations):
                crop = expected[ids[index[row]]]["volumes"][name][:, i0:i1, j0:j1, k0:k1]
                message = f"{name}, patch {row}"
                if name in atol:
                    np.testing.assert_allclose(
                        patches[row], crop, rtol=0, atol=atol[name], err_msg=message
                    )
                else:
                    np.testing.assert_array_equal(patches[row], crop, err_msg=message)
        return len(locations)


# ----------------------------------------------------------- 1. crops of patchcli's
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_patches_are_crops_of_the_preprocessed_volumes(tmp_path, lps, sampler):
    config = _config(tmp_path, lps, preprocess=PREPROCESS, patch_overlap=2)
    summary = extract(config, sampler)
    expected = _preprocessed(lps, IMAGES, PREPROCESS)
    # Resampled to 1.5 mm: no subject keeps its shape, and the affines are RAS+ 1.5 mm.
    for number, subject in enumerate(expected.values()):
        assert subject["volumes"]["t1"].shape[1:] != LPS_SHAPES[number]
        np.testing.assert_allclose(np.diag(subject["affine"])[:3], [1.5, 1.5, 1.5])
    assert _assert_crops(summary.path, expected) == summary.patches
    with h5py.File(summary.path) as file:
        assert file["patches/t1"].dtype == np.float32
        assert file["patches/seg"].dtype == np.uint8
        assert file["patches/prob"].dtype == np.float32
        # Rescaled to [-1, 1] with the extremes clipped at the percentiles.
        t1 = file["patches/t1"][()]
        assert t1.min() >= -1 and t1.max() <= 1
        assert set(np.unique(file["patches/seg"][()])) <= {0, 1, 2}


# ----------------------------------------------------------------- 2. TorchIO
@pytest.mark.parametrize("sampler", ["label", "grid"])
def test_patches_of_lps_inputs_are_crops_of_torchio_volumes(tmp_path, lps, torchio, torch, sampler):
    images = {"t1": "intensity", "seg": "label"}
    config = _config(tmp_path, lps, images=images, preprocess=PREPROCESS, patch_overlap=2)
    summary = extract(config, sampler)
    tio = torchio
    expected = _torchio_preprocessed(
        tio,
        lps,
        images,
        [
            tio.ToCanonical(),
            tio.Resample(1.5),
            tio.ZNormalization(masking_method="seg"),
            tio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(0.5, 99.5)),
        ],
    )
    assert expected["s0"]["volumes"]["t1"].dtype == np.float32
    # Both resample with SimpleITK; the mean and deviation of ZNormalization are
    # computed in float64 here and in float32 by torch, which moves normalised values
    # by a few float32 ulps (about 1e-6 for values of a few units); rescaling to [-1, 1]
    # divides a range of several units, which does not enlarge that. 1e-5 is ten such
    # ulps; a wrong voxel, interpolation or percentile differs by 1e-2 or more.
    assert _assert_crops(summary.path, expected, atol={"t1": 1e-5}) == summary.patches
    with h5py.File(summary.path) as file:
        assert file["patches/seg"].dtype == expected["s0"]["volumes"]["seg"].dtype


@pytest.mark.parametrize("sampler", ["label", "grid"])
def test_images_on_different_grids_are_crops_of_torchio_volumes(
    tmp_path, two_grids, torchio, torch, sampler
):
    images = {"t1": "intensity", "flair": "intensity", "seg": "label"}
    preprocess = [
        {"Resample": {"target": "t1"}},
        "ToCanonical",
        {"ZNormalization": {"masking_method": "seg"}},
    ]
    config = _config(tmp_path, two_grids, images=images, preprocess=preprocess, patch_overlap=2)
    summary = extract(config, sampler)
    tio = torchio
    expected = _torchio_preprocessed(
        tio,
        two_grids,
        images,
        [tio.Resample("t1"), tio.ToCanonical(), tio.ZNormalization(masking_method="seg")],
    )
    # flair was resampled onto t1's grid (twice as many voxels along each axis).
    assert expected["s0"]["volumes"]["flair"].shape[1:] == (32, 30, 28)
    # ZNormalization's mean and deviation: float64 here, float32 in torch (see above).
    # The z-scores lie within about +-5.5, where a float32 ulp is 4.8e-7; they differ by
    # a few ulps (1.4e-6 at most), and 1e-5 leaves room for other platforms' summation.
    tolerance = {"t1": 1e-5, "flair": 1e-5}
    assert _assert_crops(summary.path, expected, atol=tolerance) == summary.patches
    with h5py.File(summary.path) as file:
        assert file["patches/flair"].dtype == np.float32
        assert file["patches/seg"].dtype == np.uint8


# ------------------------------------------------------------ 3. one grid needed
def test_images_on_different_grids_without_a_resample_are_refused_before_any_work(
    tmp_path, two_grids, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("a volume was read")

    monkeypatch.setattr("patchcli.subjects.read_volume", refuse)
    images = {"t1": "intensity", "flair": "intensity", "seg": "label"}
    preprocess = ["ToCanonical", {"ZNormalization": {"masking_method": "seg"}}]
    config = _config_file(tmp_path, two_grids, images=images, preprocess=preprocess)
    result = _invoke("uniform", config, "-q")
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert message.startswith(f"Error: {two_grids.parent / 's0_flair.nii.gz'}: subject 's0': ")
    assert "after preprocessing" in message and "Resample: {target: t1}" in message
    assert not list(tmp_path.glob("out.h5*"))
    with pytest.raises(DataError, match="Resample: {target: t1}"):
        extract(load_config(config), "uniform")


def test_images_on_different_grids_without_preprocess_are_refused_as_before(tmp_path, two_grids):
    images = {"t1": "intensity", "flair": "intensity", "seg": "label"}
    with pytest.raises(DataError) as caught:
        extract(_config(tmp_path, two_grids, images=images), "uniform")
    message = str(caught.value)
    assert message.startswith(f"{two_grids.parent / 's0_flair.nii.gz'}: subject 's0': images ")
    assert "differ in spatial shape: (32, 30, 28) vs (16, 15, 14)" in message
    assert "preprocess" not in message
    assert not list(tmp_path.glob("out.h5*"))


# ------------------------------------------------------------- 4. reproducibility
def test_worker_processes_write_the_same_output(tmp_path, lps):
    serial = extract(_config(tmp_path, lps, "serial.h5", preprocess=PREPROCESS), "label")
    parallel = extract(
        _config(tmp_path, lps, "parallel.h5", preprocess=PREPROCESS, workers=2), "label"
    )
    # Values, dtypes, attributes and the bytes of every compressed chunk (only the
    # recorded config, which names the output and the workers, differs).
    assert_same_output(serial.path, parallel.path)


def test_two_shards_merge_into_the_unsharded_run(tmp_path, lps):
    whole = extract(_config(tmp_path, lps, "whole.h5", preprocess=PREPROCESS), "weighted")
    for index in range(2):
        extract(
            _config(tmp_path, lps, "sharded.h5", preprocess=PREPROCESS, shard=f"{index}/2"),
            "weighted",
        )
    merge(tmp_path / "sharded.h5")
    merged, reference = read_patch_output(tmp_path / "sharded.h5"), read_patch_output(whole.path)
    assert [s.id for s in merged.subjects] == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(merged.locations, reference.locations)
    assert_same_output(tmp_path / "sharded.h5", whole.path, merged=True)


def _fingerprint(folder: Path, manifest: Path, preprocess) -> str:
    config = _config(folder, manifest, preprocess=preprocess)
    return config_fingerprint(config, "uniform", read_manifest(manifest, list(IMAGES)))


def test_the_fingerprint_changes_with_every_transform_argument(tmp_path, lps):
    resample, znorm, rescale = PREPROCESS[1:]
    rescale_arguments = rescale["RescaleIntensity"]
    tail = [znorm, rescale]
    variants = [
        PREPROCESS,
        PREPROCESS[1:],  # no ToCanonical
        ["ToCanonical", resample, rescale, znorm],  # another order
        [{"ToOrientation": "LPS"}, *PREPROCESS[1:]],
        ["ToCanonical", {"Resample": 1.6}, znorm, rescale],
        ["ToCanonical", {"Resample": [1.5, 1.5, 2]}, znorm, rescale],
        ["ToCanonical", {"Resample": "t1"}, znorm, rescale],
        ["ToCanonical", {"Resample": {"target": 1.5, "image_interpolation": "bspline"}}, *tail],
        ["ToCanonical", {"Resample": {"target": 1.5, "label_interpolation": "linear"}}, *tail],
        [*PREPROCESS[:2], "ZNormalization", rescale],
        [
            *PREPROCESS[:2],
            {"ZNormalization": {"masking_method": "seg", "include": ["t1"]}},
            rescale,
        ],
        *[
            [*PREPROCESS[:3], {"RescaleIntensity": {**rescale_arguments, key: value}}]
            for key, value in (
                ("out_min_max", [0, 1]),
                ("percentiles", [1, 99]),
                ("masking_method", "seg"),
                ("in_min_max", [0, 500]),
            )
        ],
    ]
    fingerprints = [_fingerprint(tmp_path, lps, variant) for variant in variants]
    assert len(set(fingerprints)) == len(variants)
    assert _fingerprint(tmp_path, lps, None) not in fingerprints


def test_the_fingerprint_is_the_same_for_the_same_arguments_spelt_otherwise(tmp_path, lps):
    spellings = [
        [{"Resample": 1}],
        [{"Resample": {"target": 1}}],
        [{"Resample": [1, 1, 1.0]}],
        ["Resample"],
        [{"Resample": {"target": 1, "image_interpolation": "linear"}}],
    ]
    fingerprints = {_fingerprint(tmp_path, lps, spelling) for spelling in spellings}
    assert len(fingerprints) == 1
    assert fingerprints != {_fingerprint(tmp_path, lps, [{"Resample": 2}])}


def test_shards_made_with_different_preprocess_are_not_merged(tmp_path, lps):
    other = ["ToCanonical", {"Resample": 1.6}, *PREPROCESS[2:]]
    for index, preprocess in enumerate((PREPROCESS, other)):
        config = _config(tmp_path, lps, "mixed.h5", preprocess=preprocess, shard=f"{index}/2")
        extract(config, "uniform")
    with pytest.raises(DataError, match=r"differs from .* in settings \(sampler, preprocessing"):
        merge(tmp_path / "mixed.h5")
    assert not (tmp_path / "mixed.h5").exists()


# ---------------------------------------------------------------------- 5. dtypes
def test_znormalization_with_float16_output_stores_float16(tmp_path, integers):
    preprocess = [{"ZNormalization": {"masking_method": "seg"}}]
    config = _config(tmp_path, integers, preprocess=preprocess, output={"dtype": "float16"})
    summary = extract(config, "uniform")
    expected = _preprocessed(integers, IMAGES, preprocess)
    assert expected["s0"]["volumes"]["t1"].dtype == np.float32
    for subject in expected.values():
        subject["volumes"]["t1"] = subject["volumes"]["t1"].astype(np.float16)
    _assert_crops(summary.path, expected)
    with h5py.File(summary.path) as file:
        assert file["patches/t1"].dtype == np.float16
        assert file["patches/seg"].dtype == np.uint8
        assert file["patches/prob"].dtype == np.float32


def test_resampling_an_integer_image_gives_float32(tmp_path, integers):
    preprocess = [{"Resample": 1.25}]
    summary = extract(_config(tmp_path, integers, preprocess=preprocess), "uniform")
    _assert_crops(summary.path, _preprocessed(integers, IMAGES, preprocess))
    with h5py.File(summary.path) as file:
        t1 = file["patches/t1"][()]
        assert t1.dtype == np.float32 and file["patches/seg"].dtype == np.uint8
    # Interpolated values, not truncated back to integers.
    assert np.any(t1 != np.round(t1))


def test_resampling_with_nearest_keeps_the_integer_dtype(tmp_path, integers):
    preprocess = [{"Resample": {"target": 1.25, "image_interpolation": "nearest"}}]
    summary = extract(_config(tmp_path, integers, preprocess=preprocess), "uniform")
    _assert_crops(summary.path, _preprocessed(integers, IMAGES, preprocess))
    source = np.asanyarray(nib.load(integers.parent / "s0_t1.nii.gz").dataobj)
    with h5py.File(summary.path) as file:
        assert file["patches/t1"].dtype == np.int16
        first = file["patches/t1"][: file["subjects/patch_count"][0]]
    assert set(np.unique(first)) <= set(np.unique(source))


# ------------------------------------------------------------------- 6. reports
def test_dry_run_prints_the_preprocess_and_the_shapes_after_it(tmp_path, lps):
    config = _config_file(tmp_path, lps, preprocess=PREPROCESS)
    result = _invoke("label", config, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert PREPROCESS_LINE in lines
    shapes = [s["volumes"]["t1"].shape[1:] for s in _preprocessed(lps, IMAGES, PREPROCESS).values()]
    voxels = [int(np.prod(shape)) for shape in shapes]
    smallest, largest = shapes[int(np.argmin(voxels))], shapes[int(np.argmax(voxels))]
    expected = f"  shapes after preprocessing: {'x'.join(map(str, smallest))} to " + "x".join(
        map(str, largest)
    )
    assert expected in lines
    assert not list(tmp_path.glob("out.h5*"))


def test_dry_run_sizes_a_grid_from_the_preprocessed_shapes(tmp_path, lps):
    overlap = (2, 2, 2)
    # t1 and prob float32, seg uint8, and 56 bytes of tables a patch.
    per_patch = int(np.prod(PATCH_SIZE)) * (4 + 1 + 4) + 56
    totals = {}
    for name, preprocess in (("pre", PREPROCESS), ("raw", None)):
        config = _config_file(tmp_path, lps, f"{name}.h5", preprocess=preprocess, patch_overlap=2)
        expected = _preprocessed(lps, IMAGES, preprocess or [])
        patches = sum(
            count_grid_patches(s["volumes"]["t1"].shape[1:], PATCH_SIZE, overlap)
            for s in expected.values()
        )
        planned = dry_run(load_config(config), "grid", sample=False)
        assert planned.plan.total_patches == patches
        assert planned.bytes_uncompressed == patches * per_patch
        result = _invoke("grid", config, "--dry-run")
        assert result.exit_code == 0, result.output
        assert f"  patches: {patches} (" in result.output
        assert f"  size: up to {format_bytes(patches * per_patch)} uncompressed" in result.output
        totals[name] = patches
    assert totals["pre"] != totals["raw"]


def test_info_and_the_recorded_config_show_the_preprocess(tmp_path, lps):
    summary = extract(_config(tmp_path, lps, preprocess=PREPROCESS), "label")
    result = _invoke("info", summary.path)
    assert result.exit_code == 0, result.output
    assert PREPROCESS_LINE in result.output.splitlines()
    described = json.loads(_invoke("info", summary.path, "--json").output)
    assert described["preprocess"] == PREPROCESS
    with h5py.File(summary.path) as file:
        assert yaml.safe_load(file.attrs["config"])["preprocess"] == PREPROCESS
    plain = extract(_config(tmp_path, lps, "plain.h5"), "label")
    assert "preprocess" not in _invoke("info", plain.path).output


# ----------------------------------------------------------------- 7. bad input
@pytest.mark.parametrize(
    "entry, fragment",
    [
        ("ZNormalisation", "unknown transform 'ZNormalisation'; did you mean 'ZNormalization'?"),
        (
            {"ZNormalization": {"masking_metod": "seg"}},
            "ZNormalization has no argument 'masking_metod'; did you mean 'masking_method'?",
        ),
    ],
)
def test_an_unknown_transform_or_argument_names_the_config_file(tmp_path, lps, entry, fragment):
    config = _config_file(tmp_path, lps, preprocess=["ToCanonical", entry])
    result = _invoke("uniform", config)
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert message.startswith(f"Error: {config}: preprocess[1]: ")
    assert fragment in message
    assert not list(tmp_path.glob("out.h5*"))


def test_an_absurd_resample_is_refused_before_any_work(tmp_path, lps, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a volume was read")

    monkeypatch.setattr("patchcli.subjects.read_volume", refuse)
    config = _config(tmp_path, lps, preprocess=[{"Resample": 0.001}])
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        extract(config, "uniform")
    assert time.perf_counter() - started < 3
    affine = nib.load(lps.parent / "s0_t1.nii.gz").affine
    size = np.floor(np.array(LPS_SHAPES[0]) * np.linalg.norm(affine[:3, :3], axis=0) / 0.001)
    message = str(caught.value)
    assert message.startswith(f"{lps.parent / 's0_t1.nii.gz'}: Resample would make image 't1' ")
    assert str(tuple(int(n) for n in size)) in message
    assert not list(tmp_path.glob("out.h5*"))


@pytest.fixture(scope="module")
def constant(tmp_path_factory, lps) -> Path:
    """The lps subjects, s1's t1 replaced by a constant image."""
    folder = tmp_path_factory.mktemp("constant")
    for path in lps.parent.iterdir():
        shutil.copy(path, folder / path.name)
    t1 = nib.load(folder / "s1_t1.nii.gz")
    flat = np.full(t1.shape, 250.0, np.float32)
    nib.save(nib.Nifti1Image(flat, t1.affine), folder / "s1_t1.nii.gz")
    return folder / "subjects.csv"


ZSCORE = ["ToCanonical", {"ZNormalization": {"masking_method": "seg"}}]


def test_a_constant_image_under_znormalization_fails_naming_file_and_subject(tmp_path, constant):
    with pytest.raises(DataError) as caught:
        extract(_config(tmp_path, constant, preprocess=ZSCORE), "uniform")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{constant.parent / 's1_t1.nii.gz'}: subject 's1': ZNormalization")
    assert "standard deviation 0" in message
    assert not (tmp_path / "out.h5").exists()


def test_a_constant_image_error_shows_the_value_as_a_number(tmp_path, constant):
    with pytest.raises(DataError) as caught:
        extract(_config(tmp_path, constant, preprocess=ZSCORE), "uniform")
    assert "every value inside mask 'seg' is 250.0 (standard deviation 0)" in str(caught.value)


def test_a_constant_image_is_skipped_with_on_error_skip(tmp_path, lps, constant):
    config = _config_file(tmp_path, constant, preprocess=ZSCORE)
    result = _invoke("uniform", config, "--on-error", "skip", "-q")
    assert result.exit_code == 0, result.output
    path = constant.parent / "s1_t1.nii.gz"
    assert f"  skipped 's1' (manifest row 1): {path}: subject 's1': ZNormalization" in (
        result.output
    )
    # s0 and s2 are the files of the lps subjects, copied.
    expected = _preprocessed(lps, IMAGES, ZSCORE)
    del expected["s1"]
    assert _assert_crops(tmp_path / "out.h5", expected) == 12
    output = read_patch_output(tmp_path / "out.h5")
    assert [(s.id, s.stage) for s in output.skipped] == [("s1", "run")]


def test_a_mask_that_is_an_intensity_image_is_refused_at_config_load(tmp_path, lps):
    config = _config_file(tmp_path, lps, preprocess=[{"ZNormalization": {"masking_method": "t1"}}])
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: preprocess[0]: ZNormalization: masking_method 't1'")
    assert "a mask must be a label image" in message


def test_grid_with_a_crop_around_a_mask_needs_a_target_shape(tmp_path, lps):
    config = _config(tmp_path, lps, preprocess=[{"CropOrPad": {"mask_name": "seg"}}])
    with pytest.raises(ConfigError, match="grid needs every volume's shape before the run") as e:
        extract(config, "grid")
    assert "give that CropOrPad a target_shape alone" in str(e.value)
    assert not list(tmp_path.glob("out.h5*"))
    # The other samplers check the fit in the worker, after the crop.
    assert extract(config, "uniform").patches == 18


@pytest.mark.parametrize("sampler", ["uniform", "grid"])
def test_a_patch_larger_than_the_preprocessed_volume_is_refused(tmp_path, lps, sampler):
    # 28 x 32 x 24 cropped by 10, 10 and 8 voxels on each side: 8 x 12 x 8.
    config = _config(tmp_path, lps, preprocess=[{"Crop": [10, 10, 8]}], patch_size=10)
    with pytest.raises(DataError) as caught:
        extract(config, sampler)
    message = str(caught.value)
    assert message.startswith(f"{lps.parent / 's0_t1.nii.gz'}: subject 's0': after preprocessing")
    assert "(8, 12, 8)" in message
    assert not list(tmp_path.glob("out.h5*"))


# --------------------------------------------------------------------- 8. memory
def test_memory_counts_the_resampled_subjects(tmp_path, lps):
    keys = dict(samples_per_volume=4, max_length=8)
    without = memory_from_config(_config(tmp_path, lps, "a.h5", **keys))
    resample = [{"Resample": 0.5}]
    resampled = memory_from_config(_config(tmp_path, lps, "b.h5", preprocess=resample, **keys))
    largest = max(
        sum(volume.nbytes for volume in subject["volumes"].values())
        for subject in _preprocessed(lps, IMAGES, resample).values()
    )
    assert resampled.items["subject_being_sampled"] == largest
    assert resampled.items["subject_being_sampled"] > without.items["subject_being_sampled"]


def test_memory_from_config_geometry_resamples_the_shapes(tmp_path):
    geometry = {
        "t1": {"type": "intensity", "shape": [100, 100, 100], "spacing": 2, "dtype": "int16"},
        "seg": {"type": "label", "shape": [100, 100, 100], "spacing": 2, "dtype": "uint8"},
    }
    base = dict(images=geometry, num_subjects=3, patch_size=16, samples_per_volume=4, max_length=8)
    config = write_config(tmp_path / "c.yaml", preprocess=[{"Resample": 1}], **base)
    subjects = subject_images(load_config(config))
    assert len(subjects) == 3
    assert [(i.name, i.spatial_shape, i.dtype.name) for i in subjects[0]] == [
        ("t1", (200, 200, 200), "float32"),
        ("seg", (200, 200, 200), "uint8"),
    ]
    result = _invoke("memory", config, "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.output)["items"]
    assert items["subject_being_sampled"] == 200**3 * (4 + 1)
    coarse = write_config(tmp_path / "d.yaml", preprocess=[{"Resample": [4, 4, 8]}], **base)
    assert subject_images(load_config(coarse))[0][0].spatial_shape == (50, 50, 25)


# ------------------------------------------------------------ back to the source grid
def test_a_grid_aggregated_back_overlays_the_source(tmp_path, lps):
    """A grid of reoriented (LPS -> RAS) and resampled subjects, aggregated with
    --source-grid, is on each source image's grid again: same shape and affine, labels
    equal to the source's (nearest there and back, at a finer spacing), intensities
    within interpolation error."""
    config = _config_file(
        tmp_path,
        lps,
        "grid.h5",
        preprocess=["ToCanonical", {"Resample": 0.8}],
        patch_overlap=[2, 2, 2],
    )
    assert _invoke("grid", config, "-q").exit_code == 0
    for image in ("seg", "t1"):
        result = _invoke(
            "aggregate", tmp_path / "grid.h5", "--image", image,
            "--output-dir", tmp_path / "back", "--source-grid", image, "-q",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    for spec in read_manifest(lps, list(IMAGES)):
        for image in ("seg", "t1"):
            source = nib.load(spec.paths[image])
            back = nib.load(tmp_path / "back" / f"{spec.id}_{image}.nii.gz")
            assert back.shape == source.shape
            np.testing.assert_allclose(back.affine, source.affine, atol=1e-6)
            found, expected = np.asanyarray(back.dataobj), np.asanyarray(source.dataobj)
            if image == "seg":
                # Nearest neighbour onto a finer grid and back picks the source voxel itself
                # wherever the finer grid covers it: everywhere but a one-voxel rim.
                np.testing.assert_array_equal(found[1:-1, 1:-1, 1:-1], expected[1:-1, 1:-1, 1:-1])
            else:
                # Linear interpolation twice of a smooth volume with noise of sd 15: well
                # under the noise, far from the values' scale (300).
                error = np.abs(found - expected)[1:-1, 1:-1, 1:-1]
                assert np.median(error) < 10 and np.percentile(error, 99) < 40


def test_source_grid_needs_a_run_with_preprocess(tmp_path, lps):
    config = _config_file(tmp_path, lps, "grid.h5", preprocess=None)
    assert _invoke("grid", config, "-q").exit_code == 0
    result = _invoke(
        "aggregate", tmp_path / "grid.h5", "--image", "t1",
        "--output-dir", tmp_path / "back", "--source-grid", "t1",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "has no grid before preprocessing" in result.output
    assert not (tmp_path / "back").exists()


def test_source_grids_are_recorded_in_both_formats_and_survive_a_merge(tmp_path, lps):
    preprocess = ["ToCanonical", {"Resample": 1.5}]
    sources = {spec.id: spec for spec in read_manifest(lps, list(IMAGES))}
    outputs = [extract(_config(tmp_path, lps, "run.h5", preprocess=preprocess), "uniform").path]
    nifti = _config(tmp_path, lps, "run_nifti", preprocess=preprocess, output={"format": "nifti"})
    outputs.append(extract(nifti, "uniform").path)
    for index in range(2):
        shard = _config(tmp_path, lps, "sharded.h5", preprocess=preprocess, shard=f"{index}/2")
        extract(shard, "uniform")
    outputs.append(merge(tmp_path / "sharded.h5").path)
    for path in outputs:
        for record in read_patch_output(path).subjects:
            for image in IMAGES:
                source = nib.load(sources[record.id].paths[image])
                shape, affine = record.source_grids[image]
                assert shape == source.shape[:3]
                np.testing.assert_allclose(affine, source.affine, atol=1e-6)


def test_a_progress_journal_record_keeps_the_source_grids():
    """A resumed run rebuilds its complete subjects from the journal: their grids before
    preprocessing must come back with them (JSON there and back)."""
    from patchcli.extract import _record_from_json, _record_json
    from patchcli.io.writer import SubjectRecord

    grids = {"t1": ((28, 32, 24), _lps_affine(LPS_SPACING, (3.0, -2.0, 1.5)))}
    record = SubjectRecord("s0", np.eye(4), (10, 11, 12), {"t1": "a.nii.gz"}, 0, 5, 0, grids)
    back = _record_from_json(json.loads(json.dumps(_record_json(record, None))))
    assert back.source_grids["t1"][0] == (28, 32, 24)
    np.testing.assert_array_equal(back.source_grids["t1"][1], grids["t1"][1])
    assert _record_from_json(json.loads(json.dumps(_record_json(
        SubjectRecord("s1", np.eye(4), (1, 1, 1), {}, 0, 0), None
    )))).source_grids is None  # fmt: skip


def test_preview_draws_the_preprocessed_volumes_from_a_config_and_from_an_output(tmp_path, lps):
    """Stored locations are on the preprocessed grid: a preview, from the config or from
    the output, draws them over the preprocessed volumes, not the sources."""
    from patchcli.preview import preview_from_config, preview_from_output

    config = _config(tmp_path, lps, preprocess=PREPROCESS)
    path = extract(config, "label").path
    record = read_patch_output(path).subjects[0]
    expected = _preprocessed(lps, IMAGES, PREPROCESS)[record.id]
    for data in (preview_from_config(config, "label"), preview_from_output(path)):
        assert data.subject == record.id
        for name, volume in data.volumes.items():
            assert volume.shape[1:] == record.shape
            np.testing.assert_allclose(volume, expected["volumes"][name], rtol=1e-6, atol=1e-6)


def test_memory_after_a_crop_around_a_mask_is_an_upper_bound(tmp_path, lps):
    """A crop around a mask then an upsampling: the crop's shape comes from the voxels, so
    memory carries the uncropped grid through the Resample: never below the real size."""
    cropped = ["ToCanonical", {"CropOrPad": {"mask_name": "seg"}}, {"Resample": 0.5}]
    bound = subject_images(_config(tmp_path, lps, preprocess=cropped))
    uncropped_list = ["ToCanonical", {"Resample": 0.5}]
    resampled = subject_images(_config(tmp_path, lps, preprocess=uncropped_list))
    real = _preprocessed(lps, IMAGES, cropped)
    for subject, (estimate, uncropped) in enumerate(zip(bound, resampled)):
        assert [i.spatial_shape for i in estimate] == [i.spatial_shape for i in uncropped]
        volumes = list(real.values())[subject]["volumes"]
        for image in estimate:
            assert np.prod(image.spatial_shape) >= np.prod(volumes[image.name].shape[1:])


def test_crop_or_pad_on_images_of_different_grids_is_refused_before_any_work(tmp_path, two_grids):
    images = {"t1": "intensity", "flair": "intensity", "seg": "label"}
    config = _config(tmp_path, two_grids, images=images, preprocess=[{"CropOrPad": 16}])
    with pytest.raises(DataError, match="CropOrPad needs every image on one grid") as error:
        dry_run(config, "uniform", sample=False)
    assert "Resample: {target:" in str(error.value)
