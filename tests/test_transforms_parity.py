"""patchcli.transforms against TorchIO's own transforms, on the same subjects.

Each case preprocesses one subject twice: with patchcli (the ``preprocess`` list a user
writes) and with ``tio.Compose`` of the TorchIO transforms it names, built from copies of
the same arrays. Labels and sampling maps must be equal, dtype included; intensities
equal too, except after a transform that takes statistics in a different precision
(ZNormalization), where they agree to float32 rounding; affines agree to 1e-9 mm.
The differences chosen on purpose (docs/preprocessing.md) are tested as differences,
with the equivalence each one keeps.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from nibabel.orientations import aff2axcodes

from patchcli.errors import DataError

from .transforms_helpers import (
    GRIDS,
    SUBJECT_ID,
    path_of,
    run,
    subject_spec,
    two_grid_spec,
)

# ZNormalization's mean and standard deviation: patchcli's in float64, TorchIO's in
# float32, so the normalised values (|x| < 10) differ by a few float32 ulps of the
# statistics (relative 1e-7 each): 1e-5 leaves a margin of about 100. A real slip, such as
# dropping Bessel's correction, changes each value by |x| / (2 N) with N <= 13 440 voxels
# here, i.e. by more than this tolerance wherever |x| > 0.4: in most voxels.
NORMALISED = {"rtol": 1e-5, "atol": 1e-5}
AFFINE_MM = 1e-9


# --- Running both -----------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # These tensors are tiny: torch's thread pool costs more than it saves, several times
    # over on a busy machine. Restored after this module.
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchio_subject(tio, torch, spec):
    """TorchIO's subject of ``spec``: ScalarImage, LabelMap, sampling-map Image."""
    images = {}
    for name, (kind, data, affine) in spec.items():
        tensor = torch.from_numpy(data.copy())
        if kind == "intensity":
            images[name] = tio.ScalarImage(tensor=tensor, affine=affine.copy())
        elif kind == "label":
            images[name] = tio.LabelMap(tensor=tensor, affine=affine.copy())
        else:
            images[name] = tio.Image(tensor=tensor, affine=affine.copy(), type=tio.SAMPLING_MAP)
    return tio.Subject(images)


def run_torchio(tio, torch, transforms, spec):
    with warnings.catch_warnings():
        # TorchIO's notes (a mask expanded over channels, a padding value truncated to
        # an integer dtype) are not what these tests compare.
        warnings.simplefilter("ignore", RuntimeWarning)
        return tio.Compose(transforms)(torchio_subject(tio, torch, spec))


def assert_same_subject(ours, theirs, spec, intensity_tolerance=None):
    """Every image of ``spec``: shape, dtype, affine, and voxels (labels and sampling maps
    exactly; intensities exactly, or to ``intensity_tolerance``)."""
    for name, (kind, _, _) in spec.items():
        mine, expected = ours[name], theirs[name]
        values = expected.numpy()
        assert mine.data.shape == values.shape, name
        assert mine.data.dtype == values.dtype, name
        np.testing.assert_allclose(
            mine.affine, expected.affine, rtol=0, atol=AFFINE_MM, err_msg=name
        )
        if kind == "intensity" and intensity_tolerance is not None:
            np.testing.assert_allclose(mine.data, values, err_msg=name, **intensity_tolerance)
        else:
            np.testing.assert_array_equal(mine.data, values, err_msg=name)


def check_parity(tio, torch, spec, config, transforms, intensity_tolerance=None):
    ours = run(config, spec)
    theirs = run_torchio(tio, torch, transforms, spec)
    assert_same_subject(ours, theirs, spec, intensity_tolerance)
    return ours, theirs


# --- Each transform on RAS, LPS and oblique grids ---------------------------------

# (patchcli's preprocess list, TorchIO's transforms, intensity tolerance)
SPATIAL_CASES = {
    "ToCanonical": (["ToCanonical"], lambda tio: [tio.ToCanonical()], None),
    "ToOrientation-LPS": (
        [{"ToOrientation": "LPS"}],
        lambda tio: [tio.ToOrientation("LPS")],
        None,
    ),
    "ToOrientation-SLP": (
        [{"ToOrientation": {"orientation": "slp"}}],
        lambda tio: [tio.ToOrientation("SLP")],
        None,
    ),
    "Resample-1.5": ([{"Resample": 1.5}], lambda tio: [tio.Resample(1.5)], None),
    "Resample-anisotropic": (
        [{"Resample": {"target": [1.1, 2.0, 1.7]}}],
        lambda tio: [tio.Resample((1.1, 2.0, 1.7))],
        None,
    ),
    "Resample-default": (["Resample"], lambda tio: [tio.Resample()], None),
    "Resample-bspline-labels-linear": (
        [
            {
                "Resample": {
                    "target": 1.3,
                    "image_interpolation": "bspline",
                    "label_interpolation": "linear",
                }
            }
        ],
        lambda tio: [
            tio.Resample(1.3, image_interpolation="bspline", label_interpolation="linear")
        ],
        None,
    ),
    "Resample-nearest": (
        [{"Resample": {"target": 2, "image_interpolation": "nearest"}}],
        lambda tio: [tio.Resample(2, image_interpolation="nearest")],
        None,
    ),
    "CropOrPad-centre": (
        [{"CropOrPad": {"target_shape": [19, 33, 21]}}],
        lambda tio: [tio.CropOrPad((19, 33, 21))],
        None,
    ),
    "CropOrPad-one-number-edge": (
        [{"CropOrPad": {"target_shape": 25, "padding_mode": "edge"}}],
        lambda tio: [tio.CropOrPad(25, padding_mode="edge")],
        None,
    ),
    "CropOrPad-None-axes": (
        [{"CropOrPad": {"target_shape": [None, 17, None], "padding_mode": -3}}],
        lambda tio: [tio.CropOrPad((None, 17, None), padding_mode=-3)],
        None,
    ),
    "CropOrPad-mask": (
        [{"CropOrPad": {"target_shape": [15, 14, 13], "mask_name": "seg"}}],
        lambda tio: [tio.CropOrPad((15, 14, 13), mask_name="seg")],
        None,
    ),
    "CropOrPad-mask-pads": (
        [{"CropOrPad": {"target_shape": [30, 10, 24], "mask_name": "seg"}}],
        lambda tio: [tio.CropOrPad((30, 10, 24), mask_name="seg")],
        None,
    ),
    "CropOrPad-mask-labels": (
        [{"CropOrPad": {"target_shape": [9, 8, 6], "mask_name": "seg", "labels": [3]}}],
        lambda tio: [tio.CropOrPad((9, 8, 6), mask_name="seg", labels=[3])],
        None,
    ),
    "CropOrPad-mask-bounding-box": (
        [{"CropOrPad": {"mask_name": "seg"}}],
        lambda tio: [tio.CropOrPad(mask_name="seg")],
        None,
    ),
    "CropOrPad-mask-labels-bounding-box": (
        [{"CropOrPad": {"mask_name": "seg", "labels": [1, 3]}}],
        lambda tio: [tio.CropOrPad(mask_name="seg", labels=[1, 3])],
        None,
    ),
    "CropOrPad-mm": (
        [{"CropOrPad": {"target_shape": [20.0, 30.0, None], "units": "mm"}}],
        lambda tio: [tio.CropOrPad((20.0, 30.0, None), units="mm")],
        None,
    ),
    "CropOrPad-cm": (
        [{"CropOrPad": {"target_shape": [2.5, 2.9, 6], "units": "cm"}}],
        lambda tio: [tio.CropOrPad((2.5, 2.9, 6), units="cm")],
        None,
    ),
    "CropOrPad-only-crop": (
        [{"CropOrPad": {"target_shape": [19, 33, 21], "only_crop": True}}],
        lambda tio: [tio.CropOrPad((19, 33, 21), only_crop=True)],
        None,
    ),
    "CropOrPad-only-pad": (
        [{"CropOrPad": {"target_shape": [19, 33, 21], "only_pad": True}}],
        lambda tio: [tio.CropOrPad((19, 33, 21), only_pad=True)],
        None,
    ),
    "CropOrPad-mask-only-pad": (
        [{"CropOrPad": {"target_shape": [15, 30, 9], "mask_name": "seg", "only_pad": True}}],
        lambda tio: [tio.CropOrPad((15, 30, 9), mask_name="seg", only_pad=True)],
        None,
    ),
    "Crop-1": ([{"Crop": 2}], lambda tio: [tio.Crop(2)], None),
    "Crop-3": ([{"Crop": [1, 0, 4]}], lambda tio: [tio.Crop((1, 0, 4))], None),
    "Crop-6": (
        [{"Crop": {"cropping": [0, 3, 5, 1, 2, 7]}}],
        lambda tio: [tio.Crop((0, 3, 5, 1, 2, 7))],
        None,
    ),
    "Pad-number": (
        [{"Pad": {"padding": 2, "padding_mode": 7.5}}],
        lambda tio: [tio.Pad(2, 7.5)],
        None,
    ),
    "Pad-default": ([{"Pad": [1, 2, 3]}], lambda tio: [tio.Pad((1, 2, 3))], None),
    "Pad-edge": (
        [{"Pad": {"padding": [3, 0, 1, 2, 0, 4], "padding_mode": "edge"}}],
        lambda tio: [tio.Pad((3, 0, 1, 2, 0, 4), padding_mode="edge")],
        None,
    ),
    "Pad-reflect": (
        [{"Pad": {"padding": [2, 1, 3], "padding_mode": "reflect"}}],
        lambda tio: [tio.Pad((2, 1, 3), padding_mode="reflect")],
        None,
    ),
    "Pad-symmetric": (
        [{"Pad": {"padding": 2, "padding_mode": "symmetric"}}],
        lambda tio: [tio.Pad(2, padding_mode="symmetric")],
        None,
    ),
    "Pad-wrap": (
        [{"Pad": {"padding": [1, 2, 0, 0, 3, 1], "padding_mode": "wrap"}}],
        lambda tio: [tio.Pad((1, 2, 0, 0, 3, 1), padding_mode="wrap")],
        None,
    ),
    "Pad-mean": (
        [{"Pad": {"padding": 2, "padding_mode": "mean"}}],
        lambda tio: [tio.Pad(2, padding_mode="mean")],
        None,
    ),
    "Pad-median": (
        [{"Pad": {"padding": [1, 3, 2], "padding_mode": "median"}}],
        lambda tio: [tio.Pad((1, 3, 2), padding_mode="median")],
        None,
    ),
    "Pad-minimum": (
        [{"Pad": {"padding": 2, "padding_mode": "minimum"}}],
        lambda tio: [tio.Pad(2, padding_mode="minimum")],
        None,
    ),
    "Pad-maximum": (
        [{"Pad": {"padding": [0, 1, 2, 3, 4, 0], "padding_mode": "maximum"}}],
        lambda tio: [tio.Pad((0, 1, 2, 3, 4, 0), padding_mode="maximum")],
        None,
    ),
    "EnsureShapeMultiple-pad": (
        [{"EnsureShapeMultiple": 8}],
        lambda tio: [tio.EnsureShapeMultiple(8)],
        None,
    ),
    "EnsureShapeMultiple-crop": (
        [{"EnsureShapeMultiple": {"target_multiple": [5, 6, 7], "method": "crop"}}],
        lambda tio: [tio.EnsureShapeMultiple((5, 6, 7), method="crop")],
        None,
    ),
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("case", list(SPATIAL_CASES))
def test_spatial_transform_matches_torchio(torchio, torch, case, grid):
    config, transforms, tolerance = SPATIAL_CASES[case]
    spec = subject_spec(grid)
    ours, _ = check_parity(torchio, torch, spec, config, transforms(torchio), tolerance)
    if case.startswith(("ToOrientation-LPS", "ToCanonical")):
        target = "LPS" if case.startswith("ToOrientation") else "RAS"
        assert "".join(aff2axcodes(ours["t1"].affine)) == target


def test_windowed_sinc_resampling_matches_torchio(torchio, torch):
    # Slow kernels: one smaller subject, on the oblique grid.
    spec = subject_spec("oblique", shape=(12, 14, 10))
    config = [
        {
            "Resample": {
                "target": 1.4,
                "image_interpolation": "Lanczos",
                "label_interpolation": "label_gaussian",
            }
        }
    ]
    transforms = [
        torchio.Resample(1.4, image_interpolation="lanczos", label_interpolation="label_gaussian")
    ]
    check_parity(torchio, torch, spec, config, transforms)


def test_oblique_grid_is_oblique_and_anisotropic():
    # The oblique inputs above are what they claim: rotated off every axis, 0.9 x 1.2 x 2.5.
    affine = GRIDS["oblique"]
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    assert np.all(np.abs(directions).max(axis=0) < np.cos(np.deg2rad(15)))
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.9, 1.2, 2.5])
    assert np.all(affine[:3, 3] != 0)


# --- Intensity and label transforms ------------------------------------------------

INTENSITY_CASES = {
    "ZNormalization": (["ZNormalization"], lambda tio: [tio.ZNormalization()], NORMALISED),
    "ZNormalization-mask": (
        [{"ZNormalization": {"masking_method": "brain", "include": ["t1"]}}],
        lambda tio: [tio.ZNormalization(masking_method="brain", include=["t1"])],
        NORMALISED,
    ),
    "ZNormalization-exclude": (
        [{"ZNormalization": {"exclude": ["dwi"]}}],
        lambda tio: [tio.ZNormalization(exclude=["dwi"])],
        NORMALISED,
    ),
    "RescaleIntensity": (["RescaleIntensity"], lambda tio: [tio.RescaleIntensity()], None),
    "RescaleIntensity-percentiles": (
        [{"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}}],
        lambda tio: [tio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(0.5, 99.5))],
        None,
    ),
    "RescaleIntensity-one-number": (
        [{"RescaleIntensity": 2}],
        lambda tio: [tio.RescaleIntensity(2)],
        None,
    ),
    "RescaleIntensity-mask": (
        [
            {
                "RescaleIntensity": {
                    "masking_method": "seg",
                    "percentiles": [2, 98],
                    "include": "t1",
                }
            }
        ],
        lambda tio: [
            tio.RescaleIntensity(masking_method="seg", percentiles=(2, 98), include=["t1"])
        ],
        None,
    ),
    "RescaleIntensity-in-min-max": (
        [{"RescaleIntensity": {"in_min_max": [50, 150], "out_min_max": [0, 10]}}],
        lambda tio: [tio.RescaleIntensity(in_min_max=(50, 150), out_min_max=(0, 10))],
        None,
    ),
    "Clamp": (
        [{"Clamp": {"out_min": 90, "out_max": 150}}],
        lambda tio: [tio.Clamp(90, 150)],
        None,
    ),
    "Clamp-max-only": ([{"Clamp": {"out_max": 120.5}}], lambda tio: [tio.Clamp(None, 120.5)], None),
    "Mask": ([{"Mask": "brain"}], lambda tio: [tio.Mask("brain")], None),
    "Mask-labels-outside": (
        [{"Mask": {"masking_method": "seg", "labels": [1, 3], "outside_value": -7}}],
        lambda tio: [tio.Mask("seg", outside_value=-7, labels=[1, 3])],
        None,
    ),
    "RemapLabels": (
        [{"RemapLabels": {"remapping": {1: 2, 2: 3, 3: 1}}}],
        lambda tio: [tio.RemapLabels({1: 2, 2: 3, 3: 1})],
        None,
    ),
    "RemapLabels-mask": (
        [{"RemapLabels": {"remapping": {1: 5, 3: 0}, "masking_method": "brain"}}],
        lambda tio: [tio.RemapLabels({1: 5, 3: 0}, masking_method="brain")],
        None,
    ),
    "RemapLabels-include": (
        [{"RemapLabels": {"remapping": {1: 0}, "include": ["brain"]}}],
        lambda tio: [tio.RemapLabels({1: 0}, include=["brain"])],
        None,
    ),
    "RemapLabels-absent": (
        [{"RemapLabels": {"remapping": {7: 1}}}],
        lambda tio: [tio.RemapLabels({7: 1})],
        None,
    ),
}


@pytest.mark.parametrize("case", list(INTENSITY_CASES))
def test_intensity_or_label_transform_matches_torchio(torchio, torch, case):
    config, transforms, tolerance = INTENSITY_CASES[case]
    spec = subject_spec("oblique")
    ours, _ = check_parity(torchio, torch, spec, config, transforms(torchio), tolerance)
    # Each case changes something (a no-op would pass any comparison), except the one
    # whose labels are absent.
    changed = [
        name for name, (_, data, _) in spec.items() if not np.array_equal(ours[name].data, data)
    ]
    assert changed or case == "RemapLabels-absent"


# Integer intensities: uint8 and int16 t1 (dtype kept, or float32, as in TorchIO).
INTEGER_CASES = {
    "ToCanonical": (["ToCanonical"], lambda tio: [tio.ToCanonical()], None),
    "Resample-nearest": (
        [{"Resample": {"target": 1.5, "image_interpolation": "nearest"}}],
        lambda tio: [tio.Resample(1.5, image_interpolation="nearest")],
        None,
    ),
    "CropOrPad-mask": (
        [{"CropOrPad": {"target_shape": [30, 12, 16], "mask_name": "seg"}}],
        lambda tio: [tio.CropOrPad((30, 12, 16), mask_name="seg")],
        None,
    ),
    "Pad-mean": (
        [{"Pad": {"padding": 2, "padding_mode": "mean"}}],
        lambda tio: [tio.Pad(2, padding_mode="mean")],
        None,
    ),
    "Pad-minimum": (
        [{"Pad": {"padding": [1, 2, 3], "padding_mode": "minimum"}}],
        lambda tio: [tio.Pad((1, 2, 3), padding_mode="minimum")],
        None,
    ),
    "Pad-reflect": (
        [{"Pad": {"padding": 3, "padding_mode": "reflect"}}],
        lambda tio: [tio.Pad(3, padding_mode="reflect")],
        None,
    ),
    "ZNormalization": (
        [{"ZNormalization": {"include": ["t1"]}}],
        lambda tio: [tio.ZNormalization(include=["t1"])],
        NORMALISED,
    ),
    "ZNormalization-mask": (
        [{"ZNormalization": {"masking_method": "seg", "include": ["t1"]}}],
        lambda tio: [tio.ZNormalization(masking_method="seg", include=["t1"])],
        NORMALISED,
    ),
    "RescaleIntensity-percentiles": (
        [{"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}}],
        lambda tio: [tio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(0.5, 99.5))],
        None,
    ),
    "Clamp-integer-bounds": (
        [{"Clamp": {"out_min": 60, "out_max": 140}}],
        lambda tio: [tio.Clamp(60, 140)],
        None,
    ),
    "Clamp-float-bound": (
        [{"Clamp": {"out_min": 60.0, "out_max": 140}}],
        lambda tio: [tio.Clamp(60.0, 140)],
        None,
    ),
    "Mask-outside": (
        [{"Mask": {"masking_method": "brain", "outside_value": 3}}],
        lambda tio: [tio.Mask("brain", outside_value=3)],
        None,
    ),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("case", list(INTEGER_CASES))
def test_transform_of_integer_intensities_matches_torchio(torchio, torch, case, dtype):
    config, transforms, tolerance = INTEGER_CASES[case]
    spec = subject_spec("lps", t1_dtype=dtype)
    ours, _ = check_parity(torchio, torch, spec, config, transforms(torchio), tolerance)
    float_result = case.startswith(("ZNormalization", "RescaleIntensity", "Clamp-float"))
    assert ours["t1"].data.dtype == (np.float32 if float_result else dtype)


@pytest.mark.parametrize(
    "out_min, out_max, dtype",
    [
        (-1000, 1000, np.int16),  # integer bounds: int16 stays int16
        (-1000.0, 1000, np.float32),  # a float bound: float32, as torch.clamp gives
        (None, 500, np.int16),
        (-250.5, None, np.float32),
        (-1000.0, 1000.0, np.float32),
    ],
)
def test_clamp_of_int16_follows_torch_clamp_dtype(torchio, torch, out_min, out_max, dtype):
    spec = subject_spec("ras", t1_dtype=np.int16, with_dwi=False)
    config = [{"Clamp": {"out_min": out_min, "out_max": out_max}}]
    ours, _ = check_parity(torchio, torch, spec, config, [torchio.Clamp(out_min, out_max)])
    assert ours["t1"].data.dtype == dtype
    low = -np.inf if out_min is None else out_min
    high = np.inf if out_max is None else out_max
    assert low <= ours["t1"].data.min() and ours["t1"].data.max() <= high
    assert ours["t1"].data.min() == max(low, spec["t1"][1].min())


# --- Combinations ----------------------------------------------------------------


@pytest.mark.parametrize("grid", list(GRIDS))
def test_canonical_resample_znormalization_rescale_matches_torchio(torchio, torch, grid):
    spec = subject_spec(grid, with_dwi=False)
    config = [
        "ToCanonical",
        {"Resample": 1.5},
        {"ZNormalization": {"masking_method": "brain"}},
        {"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}},
    ]
    transforms = [
        torchio.ToCanonical(),
        torchio.Resample(1.5),
        torchio.ZNormalization(masking_method="brain"),
        torchio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(0.5, 99.5)),
    ]
    ours, _ = check_parity(torchio, torch, spec, config, transforms, NORMALISED)
    t1 = ours["t1"].data
    assert t1.dtype == np.float32 and t1.min() == -1 and t1.max() == 1
    np.testing.assert_allclose(np.linalg.norm(ours["seg"].affine[:3, :3], axis=0), 1.5)


def test_multichannel_and_sampling_map_through_canonical_resample_znormalization(torchio, torch):
    # Without a mask, TorchIO's ZNormalization takes one mean and deviation over both
    # channels of dwi; patchcli does the same.
    spec = subject_spec("oblique")
    config = ["ToCanonical", {"Resample": [1.5, 1.5, 2.0]}, "ZNormalization"]
    transforms = [
        torchio.ToCanonical(),
        torchio.Resample((1.5, 1.5, 2.0)),
        torchio.ZNormalization(),
    ]
    ours, _ = check_parity(torchio, torch, spec, config, transforms, NORMALISED)
    dwi = ours["dwi"].data.astype(np.float64)
    assert dwi.shape[0] == 2
    assert abs(dwi.mean()) < 1e-5 and abs(dwi.std(ddof=1) - 1) < 1e-5
    assert abs(dwi[0].mean()) > 0.5  # the channels' own means are not zero
    assert ours["prob"].data.dtype == np.float32


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("method", ["pad", "crop"])
def test_crop_or_pad_then_ensure_shape_multiple_matches_torchio(torchio, torch, grid, method):
    spec = subject_spec(grid)
    config = [
        {"CropOrPad": {"target_shape": [21, None, 17], "mask_name": "seg", "padding_mode": "mean"}},
        {"EnsureShapeMultiple": {"target_multiple": [4, 8, 6], "method": method}},
    ]
    transforms = [
        torchio.CropOrPad((21, None, 17), mask_name="seg", padding_mode="mean"),
        torchio.EnsureShapeMultiple((4, 8, 6), method=method),
    ]
    ours, _ = check_parity(torchio, torch, spec, config, transforms)
    shape = ours["t1"].spatial_shape
    assert all(n % m == 0 for n, m in zip(shape, (4, 8, 6)))


@pytest.mark.parametrize("flair_dtype", [np.float32, np.int16])
def test_resample_to_an_image_name_matches_torchio(torchio, torch, flair_dtype):
    # A FLAIR at 2 mm beside a T1 at 1 mm, slightly rotated and shifted from it.
    spec = two_grid_spec("oblique", flair_dtype=flair_dtype)
    config = [{"Resample": {"target": "t1"}}, {"ZNormalization": {"masking_method": "seg"}}]
    transforms = [torchio.Resample("t1"), torchio.ZNormalization(masking_method="seg")]
    # An int16 FLAIR is resampled to float32 (a documented difference, tested below): its
    # values are TorchIO's on the FLAIR given as float32.
    as_float = dict(spec)
    as_float["flair"] = ("intensity", spec["flair"][1].astype(np.float32), spec["flair"][2])
    ours = run(config, spec)
    theirs = run_torchio(torchio, torch, transforms, as_float)
    assert_same_subject(ours, theirs, as_float, NORMALISED)
    for name in ("flair", "seg"):
        assert ours[name].spatial_shape == ours["t1"].spatial_shape
        np.testing.assert_allclose(ours[name].affine, spec["t1"][2], rtol=0, atol=AFFINE_MM)
    assert ours["flair"].data.dtype == np.float32


def test_canonical_then_resample_to_an_image_name_matches_torchio(torchio, torch):
    spec = two_grid_spec("lps", seed=5)
    config = ["ToCanonical", {"Resample": 1.25}, {"Resample": {"target": "t1"}}]
    transforms = [torchio.ToCanonical(), torchio.Resample(1.25), torchio.Resample("t1")]
    ours, _ = check_parity(torchio, torch, spec, config, transforms)
    assert ours["flair"].spatial_shape == ours["t1"].spatial_shape


def test_ct_window_clamp_then_rescale_matches_torchio(torchio, torch):
    spec = subject_spec("oblique", t1_dtype=np.int16)
    config = [
        {"Resample": [0.8, 0.8, 2.5]},
        {"Clamp": {"out_min": -300, "out_max": 700}},
        {"RescaleIntensity": {"out_min_max": [-1, 1], "in_min_max": [-300, 700]}},
    ]
    transforms = [
        torchio.Resample((0.8, 0.8, 2.5)),
        torchio.Clamp(-300, 700),
        torchio.RescaleIntensity(out_min_max=(-1, 1), in_min_max=(-300, 700)),
    ]
    # The int16 CT is resampled to float32 (a documented difference, tested below):
    # TorchIO is given it as float32, and patchcli gives the same from int16 or float32.
    as_float = dict(spec)
    as_float["t1"] = ("intensity", spec["t1"][1].astype(np.float32), spec["t1"][2])
    ours, _ = check_parity(torchio, torch, as_float, config, transforms)
    np.testing.assert_array_equal(run(config, spec)["t1"].data, ours["t1"].data)
    assert ours["t1"].data.min() == -1 and ours["t1"].data.max() == 1


def test_ct_window_on_int16_without_resampling_matches_torchio(torchio, torch):
    spec = subject_spec("lps", t1_dtype=np.int16, with_dwi=False)
    config = [
        "ToCanonical",
        {"Clamp": {"out_min": -300, "out_max": 700}},
        {"RescaleIntensity": {"out_min_max": [-1, 1], "in_min_max": [-300, 700]}},
    ]
    transforms = [
        torchio.ToCanonical(),
        torchio.Clamp(-300, 700),
        torchio.RescaleIntensity(out_min_max=(-1, 1), in_min_max=(-300, 700)),
    ]
    ours, _ = check_parity(torchio, torch, spec, config, transforms)
    assert ours["t1"].data.dtype == np.float32


# --- include and exclude ----------------------------------------------------------

INCLUDE_CASES = {
    "Resample-include": (
        [{"Resample": {"target": 1.5, "include": ["t1", "seg"]}}],
        lambda tio: [tio.Resample(1.5, include=["t1", "seg"])],
        None,
    ),
    "Resample-exclude": (
        [{"Resample": {"target": 2, "exclude": ["prob"]}}],
        lambda tio: [tio.Resample(2, exclude=["prob"])],
        None,
    ),
    "CropOrPad-exclude": (
        # Crop only: TorchIO's CropOrPad cannot both pad and crop with exclude (its Crop
        # then finds the images on different grids and stops).
        [{"CropOrPad": {"target_shape": [20, 25, 18], "exclude": ["dwi", "brain"]}}],
        lambda tio: [tio.CropOrPad((20, 25, 18), exclude=["dwi", "brain"])],
        None,
    ),
    "CropOrPad-mask-include": (
        [{"CropOrPad": {"mask_name": "seg", "include": ["t1"]}}],
        lambda tio: [tio.CropOrPad(mask_name="seg", include=["t1"])],
        None,
    ),
    "Crop-include": (
        [{"Crop": {"cropping": 3, "include": "prob"}}],
        lambda tio: [tio.Crop(3, include=["prob"])],
        None,
    ),
    "Pad-exclude": (
        [{"Pad": {"padding": [1, 2, 3], "padding_mode": "edge", "exclude": ["seg"]}}],
        lambda tio: [tio.Pad((1, 2, 3), padding_mode="edge", exclude=["seg"])],
        None,
    ),
    "EnsureShapeMultiple-include": (
        [{"EnsureShapeMultiple": {"target_multiple": 16, "include": ["t1", "prob"]}}],
        lambda tio: [tio.EnsureShapeMultiple(16, include=["t1", "prob"])],
        None,
    ),
    "ZNormalization-include": (
        [{"ZNormalization": {"include": ["dwi"]}}],
        lambda tio: [tio.ZNormalization(include=["dwi"])],
        NORMALISED,
    ),
    "RescaleIntensity-exclude": (
        [{"RescaleIntensity": {"exclude": ["t1"]}}],
        lambda tio: [tio.RescaleIntensity(exclude=["t1"])],
        None,
    ),
    "Clamp-include-label": (
        # include names a label: Clamp acts on intensity images only, so nothing changes.
        [{"Clamp": {"out_min": 0, "out_max": 1, "include": ["seg"]}}],
        lambda tio: [tio.Clamp(0, 1, include=["seg"])],
        None,
    ),
    "Mask-exclude": (
        [{"Mask": {"masking_method": "brain", "exclude": ["dwi"]}}],
        lambda tio: [tio.Mask("brain", exclude=["dwi"])],
        None,
    ),
    "RemapLabels-exclude": (
        [{"RemapLabels": {"remapping": {1: 4}, "exclude": ["seg"]}}],
        lambda tio: [tio.RemapLabels({1: 4}, exclude=["seg"])],
        None,
    ),
}


@pytest.mark.parametrize("case", list(INCLUDE_CASES))
def test_include_and_exclude_match_torchio(torchio, torch, case):
    config, transforms, tolerance = INCLUDE_CASES[case]
    spec = subject_spec("oblique")
    ours, _ = check_parity(torchio, torch, spec, config, transforms(torchio), tolerance)
    arguments = next(iter(config[0].values()))
    named = arguments.get("include", arguments.get("exclude"))
    named = [named] if isinstance(named, str) else named
    unchanged = [
        name
        for name, (_, data, affine) in spec.items()
        if ours[name].data.shape == data.shape
        and np.array_equal(ours[name].data, data)
        and np.array_equal(ours[name].affine, affine)
    ]
    if "include" in arguments:
        assert not set(unchanged) & set(named) or case == "Clamp-include-label"
    else:
        assert set(named) <= set(unchanged)


def test_to_canonical_with_include_reorients_only_those_images_unlike_torchio(torchio, torch):
    # Documented difference: TorchIO 1.2.1's ToOrientation loops over every image,
    # whatever include and exclude say; patchcli honours them as every other transform.
    spec = subject_spec("lps")
    theirs = run_torchio(torchio, torch, [torchio.ToCanonical(include=["t1"])], spec)
    ours = run([{"ToCanonical": {"include": ["t1"]}}], spec)
    assert "".join(aff2axcodes(theirs["seg"].affine)) == "RAS"
    assert "".join(aff2axcodes(ours["seg"].affine)) == "LPS"
    np.testing.assert_array_equal(ours["seg"].data, spec["seg"][1])
    assert "".join(aff2axcodes(ours["t1"].affine)) == "RAS"
    np.testing.assert_array_equal(ours["t1"].data, theirs["t1"].numpy())


@pytest.mark.parametrize(
    "arguments",
    [
        {"target_shape": [12, 8, 8], "only_crop": True},
        {"target_shape": [30, 8, 26], "only_pad": True},
        {"target_shape": [12, 9, 31]},
    ],
)
def test_crop_or_pad_around_a_mask_at_the_border_matches_torchio(torchio, torch, arguments):
    # The window around the mask's box runs off the volume on one side: TorchIO pads
    # there and crops the other side, so with only_crop / only_pad the result is not
    # the target shape (tests/test_transforms.py checks the plan of it).
    spec = subject_spec("lps")
    seg = np.zeros_like(spec["seg"][1])
    seg[0, 1:4, 10:14, 8:11] = 2
    spec["seg"] = ("label", seg, spec["seg"][2])
    config = [{"CropOrPad": {"mask_name": "seg", **arguments}}]
    transform = torchio.CropOrPad(mask_name="seg", **arguments)
    ours, _ = check_parity(torchio, torch, spec, config, [transform])
    if "only_crop" in arguments:
        assert ours["t1"].spatial_shape == (8, 8, 8)
    elif "only_pad" in arguments:
        assert ours["t1"].spatial_shape == (37, 28, 26)
    else:
        assert ours["t1"].spatial_shape == (12, 9, 31)


# --- Empty masks -------------------------------------------------------------------


def test_crop_or_pad_around_an_empty_mask_centres_as_torchio(torchio, torch):
    spec = subject_spec("ras")
    spec["seg"] = ("label", np.zeros_like(spec["seg"][1]), spec["seg"][2])
    config = [{"CropOrPad": {"target_shape": [20, 31, 17], "mask_name": "seg"}}]
    with pytest.warns(UserWarning, match=rf"{SUBJECT_ID}.*'seg' is empty"):
        ours = run(config, spec)
    theirs = run_torchio(torchio, torch, [torchio.CropOrPad((20, 31, 17), mask_name="seg")], spec)
    assert_same_subject(ours, theirs, spec)


# --- The differences chosen on purpose -------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_resample_of_integer_intensities_is_float32_unlike_torchio(
    torchio, torch, dtype, interpolation
):
    spec = subject_spec("oblique", t1_dtype=dtype, with_dwi=False)
    config = [{"Resample": {"target": 1.5, "image_interpolation": interpolation}}]
    transforms = [torchio.Resample(1.5, image_interpolation=interpolation)]
    ours = run(config, spec)
    theirs = run_torchio(torchio, torch, transforms, spec)
    # TorchIO casts the interpolated values back to the integer type...
    assert theirs["t1"].numpy().dtype == dtype
    assert ours["t1"].data.dtype == np.float32
    assert not np.array_equal(ours["t1"].data, theirs["t1"].numpy())
    # ...patchcli gives TorchIO's values on the image converted to float32 first.
    as_float = dict(spec)
    as_float["t1"] = ("intensity", spec["t1"][1].astype(np.float32), spec["t1"][2])
    theirs_float = run_torchio(torchio, torch, transforms, as_float)
    assert_same_subject(ours, theirs_float, as_float)


def test_resample_of_integer_intensities_with_nearest_keeps_the_dtype_as_torchio(torchio, torch):
    spec = subject_spec("oblique", t1_dtype=np.int16, with_dwi=False)
    config = [{"Resample": {"target": 1.5, "image_interpolation": "nearest"}}]
    ours, theirs = check_parity(
        torchio, torch, spec, config, [torchio.Resample(1.5, image_interpolation="nearest")]
    )
    assert ours["t1"].data.dtype == np.int16


def test_znormalization_of_a_constant_image_is_an_error_unlike_torchio(torchio, torch):
    spec = subject_spec("ras", with_dwi=False)
    spec["t1"] = ("intensity", np.full_like(spec["t1"][1], 42.0), spec["t1"][2])
    with pytest.raises(DataError, match=rf"{path_of('t1')}: subject '{SUBJECT_ID}'.*42"):
        run(["ZNormalization"], spec)
    # TorchIO stops too, with a RuntimeError (standard deviation 0).
    with pytest.raises(RuntimeError, match="Standard deviation is 0"):
        run_torchio(torchio, torch, [torchio.ZNormalization()], spec)


def test_znormalization_with_an_empty_mask_is_an_error_where_torchio_gives_nan(torchio, torch):
    spec = subject_spec("ras", with_dwi=False)
    spec["brain"] = ("label", np.zeros_like(spec["brain"][1]), spec["brain"][2])
    with pytest.raises(DataError, match=rf"{path_of('t1')}: subject '{SUBJECT_ID}'.*empty"):
        run([{"ZNormalization": {"masking_method": "brain"}}], spec)
    with pytest.warns(UserWarning, match="degrees of freedom"):
        theirs = run_torchio(torchio, torch, [torchio.ZNormalization(masking_method="brain")], spec)
    assert np.isnan(theirs["t1"].numpy()).all()


@pytest.mark.parametrize("empty", ["constant", "mask"])
def test_rescale_intensity_of_nothing_to_rescale_is_an_error_where_torchio_warns(
    torchio, torch, empty
):
    spec = subject_spec("ras", t1_dtype=np.int16, with_dwi=False)
    if empty == "constant":
        spec["t1"] = ("intensity", np.full_like(spec["t1"][1], -3), spec["t1"][2])
        config, transform = ["RescaleIntensity"], torchio.RescaleIntensity()
    else:
        spec["seg"] = ("label", np.zeros_like(spec["seg"][1]), spec["seg"][2])
        config = [{"RescaleIntensity": {"masking_method": "seg"}}]
        transform = torchio.RescaleIntensity(masking_method="seg")
    with pytest.raises(DataError, match=rf"{path_of('t1')}: subject '{SUBJECT_ID}'"):
        run(config, spec)
    with pytest.warns(RuntimeWarning, match="not possible"):
        theirs = torchio.Compose([transform])(torchio_subject(torchio, torch, spec))
    # TorchIO leaves the image as it was, in its own dtype.
    assert theirs["t1"].numpy().dtype == np.int16
    np.testing.assert_array_equal(theirs["t1"].numpy(), spec["t1"][1])


@pytest.mark.parametrize("grid", ["ras", "oblique"])
def test_znormalization_matches_torchio_to_float32_rounding_only(torchio, torch, grid):
    # Statistics in float64 (patchcli) and float32 (TorchIO): equal within NORMALISED,
    # and each equal to a float64 computation within float32 rounding.
    spec = subject_spec(grid, with_dwi=False)
    config = [{"ZNormalization": {"masking_method": "brain"}}]
    ours, theirs = check_parity(
        torchio, torch, spec, config, [torchio.ZNormalization(masking_method="brain")], NORMALISED
    )
    t1 = spec["t1"][1].astype(np.float64)
    inside = t1[spec["brain"][1] > 0]
    expected = (t1 - inside.mean()) / inside.std(ddof=1)
    # float32 results of float64 arithmetic: one rounding of values below 10.
    np.testing.assert_allclose(ours["t1"].data, expected, rtol=0, atol=4e-6)
    np.testing.assert_allclose(theirs["t1"].numpy(), expected, rtol=0, atol=1e-5)


def test_znormalization_of_multichannel_with_a_mask_uses_every_channel_where_torchio_fails(
    torchio, torch
):
    spec = subject_spec("oblique")
    config = [{"ZNormalization": {"masking_method": "brain", "include": ["dwi"]}}]
    with pytest.raises(IndexError):
        run_torchio(
            torchio, torch, [torchio.ZNormalization(masking_method="brain", include=["dwi"])], spec
        )
    ours = run(config, spec)
    dwi = spec["dwi"][1].astype(np.float64)
    inside = dwi[np.broadcast_to(spec["brain"][1] > 0, dwi.shape)]
    expected = (dwi - inside.mean()) / inside.std(ddof=1)
    assert ours["dwi"].data.dtype == np.float32
    # float32 values below 10: one rounding of the float64 computation.
    np.testing.assert_allclose(ours["dwi"].data, expected, rtol=0, atol=4e-6)


def test_rescale_intensity_of_multichannel_with_a_mask_uses_every_channel_where_torchio_fails(
    torchio, torch
):
    # Not in the documented table: TorchIO fails as for ZNormalization (mask of 1 channel
    # indexing 2), patchcli takes the percentiles over every channel inside the mask.
    spec = subject_spec("ras")
    arguments = {"masking_method": "brain", "percentiles": [1, 99], "include": ["dwi"]}
    with pytest.raises(IndexError):
        run_torchio(torchio, torch, [torchio.RescaleIntensity(**arguments)], spec)
    ours = run([{"RescaleIntensity": arguments}], spec)
    dwi = spec["dwi"][1]
    low, high = np.percentile(dwi[np.broadcast_to(spec["brain"][1] > 0, dwi.shape)], [1, 99])
    clipped = np.clip(dwi, low, high).astype(np.float64)
    expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())
    # float32 arithmetic on values in [0, 1]: a few ulps.
    np.testing.assert_allclose(ours["dwi"].data, expected, rtol=0, atol=1e-6)


def test_crop_or_pad_around_a_multichannel_mask_uses_any_channel_unlike_torchio(torchio, torch):
    spec = subject_spec("ras", with_dwi=False)
    seg = spec["seg"][1]
    # Channel 0: labels 1 and 2 only; channel 1: label 3 only, far from them.
    two = np.concatenate([np.where(seg == 3, 0, seg), np.where(seg == 3, 3, 0)]).astype(np.uint8)
    spec["seg"] = ("label", two, spec["seg"][2])
    config = [{"CropOrPad": {"mask_name": "seg"}}]
    ours = run(config, spec)
    theirs = run_torchio(torchio, torch, [torchio.CropOrPad(mask_name="seg")], spec)
    assert ours["t1"].spatial_shape != theirs["t1"].spatial_shape
    # patchcli's box is TorchIO's around the one-channel union of the mask's channels.
    union = dict(spec)
    union["seg"] = ("label", two.max(axis=0, keepdims=True), spec["seg"][2])
    theirs_union = run_torchio(torchio, torch, [torchio.CropOrPad(mask_name="seg")], union)
    for name in ("t1", "brain", "prob"):
        np.testing.assert_array_equal(ours[name].data, theirs_union[name].numpy())
        np.testing.assert_allclose(
            ours[name].affine, theirs_union[name].affine, rtol=0, atol=AFFINE_MM
        )


# --- Other differences -----------------------------------------------------------


def test_mask_outside_value_out_of_the_dtype_range_is_refused_where_torchio_wraps(
    torchio, torch
):
    # Documented difference: TorchIO stores -1 in uint8 as 255; patchcli refuses it.
    spec = subject_spec("ras", t1_dtype=np.uint8, with_dwi=False)
    theirs = run_torchio(torchio, torch, [torchio.Mask("brain", outside_value=-1)], spec)
    assert 255 in theirs["t1"].numpy()[~spec["brain"][1].astype(bool)]
    with pytest.raises(DataError, match="outside_value -1 does not fit the image's dtype uint8"):
        run([{"Mask": {"masking_method": "brain", "outside_value": -1}}], spec)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_clamp_bounds_beyond_the_dtype_are_clipped_where_torch_refuses(torchio, torch, dtype):
    # Not in the documented table: torch.clamp refuses integer bounds its dtype cannot
    # hold; patchcli clamps to the bound that fits (nothing lies beyond the dtype).
    spec = subject_spec("ras", t1_dtype=dtype, with_dwi=False)
    with pytest.raises(RuntimeError, match="overflow"):
        run_torchio(torchio, torch, [torchio.Clamp(-40000, 40000)], spec)
    ours = run([{"Clamp": {"out_min": -40000, "out_max": 40000}}], spec)
    assert ours["t1"].data.dtype == dtype
    np.testing.assert_array_equal(ours["t1"].data, spec["t1"][1])


def test_pad_with_the_mean_of_an_integer_image_matches_torchio(torchio, torch):
    data = np.full((1, 28, 28, 28), 2000, dtype=np.int16)
    data[0, 3, 4, 5] = 1999
    spec = {"ct": ("intensity", data, GRIDS["ras"])}
    config = [{"Pad": {"padding": 1, "padding_mode": "mean"}}]
    check_parity(torchio, torch, spec, config, [torchio.Pad(1, padding_mode="mean")])


def test_remap_labels_to_a_value_out_of_the_dtype_is_refused_where_torchio_wraps(
    torchio, torch
):
    # Documented difference: TorchIO stores label -1 in uint8 as 255; patchcli refuses it.
    spec = subject_spec("ras", with_dwi=False)
    theirs = run_torchio(torchio, torch, [torchio.RemapLabels({1: -1})], spec)
    assert 255 in theirs["seg"].numpy()
    with pytest.raises(DataError, match="label -1 does not fit the image's dtype uint8"):
        run([{"RemapLabels": {"remapping": {1: -1}}}], spec)


# --- Resample's antialias and scalars_only ----------------------------------------


@pytest.mark.parametrize("grid", ["lps", "oblique"])
@pytest.mark.parametrize(
    "arguments",
    [
        {"target": 2.5, "antialias": True},
        {"target": [2.5, 0.8, 3.0], "antialias": True},
        {"target": 2.0, "scalars_only": True},
        {"target": "t1", "antialias": True},
    ],
)
def test_resample_with_antialias_or_scalars_only_matches_torchio(torchio, torch, grid, arguments):
    # With antialias, every intensity image is smoothed along the axes it is downsampled
    # on before resampling: the same Gaussian (SimpleITK's recursive filter, TorchIO's
    # widths) and the same resampler, so the voxels are TorchIO's exactly.
    spec = two_grid_spec(grid) if arguments["target"] == "t1" else subject_spec(grid)
    target = arguments["target"]
    target = tuple(target) if isinstance(target, list) else target
    options = {key: value for key, value in arguments.items() if key != "target"}
    config = [{"Resample": arguments}]
    check_parity(torchio, torch, spec, config, [torchio.Resample(target, **options)])
