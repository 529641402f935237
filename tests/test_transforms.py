"""patchcli.transforms without TorchIO: plans from headers against the volumes, config
errors, and the per-subject errors of normalisations.

``plan_transforms`` says from the headers alone what shape, affine and dtype each image
will have; wherever it says (not None), ``apply_transforms`` must give exactly that.
"""

from __future__ import annotations

import re
import time
import tracemalloc

import numpy as np
import pytest

from patchcli.errors import ConfigError, DataError
from patchcli.transforms import (
    ImageGeometry,
    apply_transforms,
    describe_transforms,
    parse_transforms,
    plan_transforms,
    resample_to_grid,
)

from .transforms_helpers import (
    GRIDS,
    SUBJECT_ID,
    geometries,
    image_types,
    path_of,
    run,
    subject_spec,
    to_patchcli,
    two_grid_spec,
)

TYPES = {"t1": "intensity", "dwi": "intensity", "brain": "label", "seg": "label"}
TYPES_WITH_MAP = {**TYPES, "prob": "sampling_map"}

# What the plan must know after each config: the grid ("all"), the shape only ("shape":
# a crop around a mask with a target shape), or neither ("none": a crop to a mask's box).
PLAN_CASES = {
    "ToCanonical": (["ToCanonical"], "all"),
    "ToOrientation-LPS": ([{"ToOrientation": "LPS"}], "all"),
    "ToOrientation-IPL": ([{"ToOrientation": "IPL"}], "all"),
    "Resample-1.5": ([{"Resample": 1.5}], "all"),
    "Resample-anisotropic-bspline": (
        [{"Resample": {"target": [1.1, 2.0, 0.7], "image_interpolation": "bspline"}}],
        "all",
    ),
    "Resample-nearest": ([{"Resample": {"target": 2, "image_interpolation": "nearest"}}], "all"),
    "Resample-include": ([{"Resample": {"target": 1.3, "include": ["t1", "prob"]}}], "all"),
    "CropOrPad-centre": ([{"CropOrPad": [19, 33, 21]}], "all"),
    "CropOrPad-None-axes": ([{"CropOrPad": {"target_shape": [None, 17, None]}}], "all"),
    "CropOrPad-mm": ([{"CropOrPad": {"target_shape": [20.0, 30.0, None], "units": "mm"}}], "all"),
    "CropOrPad-cm": ([{"CropOrPad": {"target_shape": [2.5, 2.9, 6], "units": "cm"}}], "all"),
    "CropOrPad-only-crop": (
        [{"CropOrPad": {"target_shape": [19, 33, 21], "only_crop": True}}],
        "all",
    ),
    "CropOrPad-only-pad": (
        [{"CropOrPad": {"target_shape": [19, 33, 21], "only_pad": True}}],
        "all",
    ),
    "CropOrPad-exclude": (
        [{"CropOrPad": {"target_shape": [20, 31, 18], "exclude": ["dwi"]}}],
        "all",
    ),
    "CropOrPad-mask": (
        [{"CropOrPad": {"target_shape": [15, 14, 13], "mask_name": "seg"}}],
        "shape",
    ),
    "CropOrPad-mask-labels": (
        [{"CropOrPad": {"target_shape": [9, 30, 6], "mask_name": "seg", "labels": [3]}}],
        "shape",
    ),
    "CropOrPad-mask-box": ([{"CropOrPad": {"mask_name": "seg"}}], "none"),
    "Crop-1": ([{"Crop": 2}], "all"),
    "Crop-3": ([{"Crop": [1, 0, 4]}], "all"),
    "Crop-6": ([{"Crop": [0, 3, 5, 1, 2, 7]}], "all"),
    "Pad-number": ([{"Pad": {"padding": 2, "padding_mode": 1.5}}], "all"),
    "Pad-edge": ([{"Pad": {"padding": [3, 0, 1, 2, 0, 4], "padding_mode": "edge"}}], "all"),
    "Pad-reflect": ([{"Pad": {"padding": [2, 1, 3], "padding_mode": "reflect"}}], "all"),
    "Pad-mean": ([{"Pad": {"padding": 1, "padding_mode": "mean"}}], "all"),
    "Pad-minimum": ([{"Pad": {"padding": [0, 2, 1, 0, 3, 3], "padding_mode": "minimum"}}], "all"),
    "EnsureShapeMultiple-pad": ([{"EnsureShapeMultiple": 8}], "all"),
    "EnsureShapeMultiple-crop": (
        [{"EnsureShapeMultiple": {"target_multiple": [5, 6, 7], "method": "crop"}}],
        "all",
    ),
    "ZNormalization": (["ZNormalization"], "all"),
    "ZNormalization-mask": ([{"ZNormalization": {"masking_method": "brain"}}], "all"),
    "RescaleIntensity": (
        [{"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}}],
        "all",
    ),
    "RescaleIntensity-include": ([{"RescaleIntensity": {"include": ["dwi"]}}], "all"),
    "Clamp-integer": ([{"Clamp": {"out_min": 60, "out_max": 140}}], "all"),
    "Clamp-float": ([{"Clamp": {"out_min": 60.0}}], "all"),
    "Mask": ([{"Mask": {"masking_method": "seg", "labels": [1, 2], "outside_value": 5}}], "all"),
    "RemapLabels": (
        [{"RemapLabels": {"remapping": {1: 2, 2: 3}, "masking_method": "brain"}}],
        "all",
    ),
    # Combinations.
    "canonical-resample-znormalization-rescale": (
        [
            "ToCanonical",
            {"Resample": 1.5},
            {"ZNormalization": {"masking_method": "brain"}},
            {"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}},
        ],
        "all",
    ),
    "crop-or-pad-then-ensure-shape-multiple": (
        [{"CropOrPad": [21, None, 17]}, {"EnsureShapeMultiple": [4, 8, 6]}],
        "all",
    ),
    "crop-or-pad-mask-then-ensure-shape-multiple": (
        [{"CropOrPad": {"mask_name": "seg"}}, {"EnsureShapeMultiple": 4}],
        "none",
    ),
    "ct-window": (
        [
            {"Resample": [0.8, 0.8, 2.5]},
            {"Clamp": {"out_min": -300, "out_max": 700}},
            {"RescaleIntensity": {"out_min_max": [-1, 1], "in_min_max": [-300, 700]}},
        ],
        "all",
    ),
    "canonical-pad-crop-orientation": (
        ["ToCanonical", {"Pad": [2, 0, 1]}, {"Crop": [1, 3, 0, 2, 4, 0]}, {"ToOrientation": "LPI"}],
        "all",
    ),
}


def assert_plan_holds(planned, subject, knowledge="all"):
    """Every known shape, affine and dtype of ``planned`` is ``subject``'s; ``knowledge``
    says what must be known (so that a plan of None everywhere cannot pass)."""
    assert set(planned) == set(subject.images)
    for name, geometry in planned.items():
        image = subject[name]
        assert geometry.name == name and geometry.type == image.type
        assert geometry.channels == image.data.shape[0], name
        assert geometry.dtype == image.data.dtype, name
        if geometry.shape is not None:
            assert geometry.shape == image.spatial_shape, name
        if geometry.affine is not None:
            # Both are float64 sums of the same few terms: 1e-6 mm is far below a voxel.
            np.testing.assert_allclose(geometry.affine, image.affine, rtol=0, atol=1e-6)
        if knowledge == "all":
            assert geometry.shape is not None and geometry.affine is not None, name
        elif knowledge == "shape":
            assert geometry.shape is not None, name


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan_from_headers_gives_the_preprocessed_grid_and_dtype(case, grid):
    config, knowledge = PLAN_CASES[case]
    spec = subject_spec(grid)
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    assert_plan_holds(planned, run(config, spec), knowledge)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize(
    "config, t1_dtype",
    [
        ([{"Resample": 1.5}], np.float32),  # interpolated integers become float32
        ([{"Resample": {"target": 1.5, "image_interpolation": "cubic"}}], np.float32),
        ([{"Resample": {"target": 1.5, "image_interpolation": "nearest"}}], None),
        (["ToCanonical", {"Pad": {"padding": 2, "padding_mode": "mean"}}], None),
        ([{"Clamp": {"out_min": 10, "out_max": 100}}], None),
        ([{"Clamp": {"out_min": 10.0, "out_max": 100}}], np.float32),
        ([{"Clamp": {"out_max": 100.5}}], np.float32),
        (["ZNormalization"], np.float32),
        ([{"RescaleIntensity": {"masking_method": "seg"}}], np.float32),
        ([{"Mask": {"masking_method": "brain", "outside_value": 1}}], None),
    ],
)
def test_plan_gives_the_dtype_of_integer_intensities(config, t1_dtype, dtype):
    spec = subject_spec("oblique", t1_dtype=dtype)
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    subject = run(config, spec)
    assert_plan_holds(planned, subject)
    assert subject["t1"].data.dtype == (dtype if t1_dtype is None else t1_dtype)
    # Labels and sampling maps keep theirs.
    assert subject["seg"].data.dtype == np.uint8 and subject["prob"].data.dtype == np.float32


@pytest.mark.parametrize(
    "config",
    [
        [{"Resample": {"target": "t1"}}],
        ["ToCanonical", {"Resample": 1.25}, {"Resample": {"target": "t1"}}],
        [{"Resample": {"target": "flair"}}, {"CropOrPad": [20, 18, 16]}],
        [{"Resample": {"target": "t1"}}, {"EnsureShapeMultiple": 8}, "ZNormalization"],
    ],
)
@pytest.mark.parametrize("grid", ["lps", "oblique"])
def test_plan_of_resampling_to_an_image_name(config, grid):
    # A FLAIR (int16) at 2 mm beside a T1 at 1 mm.
    spec = two_grid_spec(grid, flair_dtype=np.int16)
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    subject = run(config, spec)
    assert_plan_holds(planned, subject)
    assert planned["flair"].shape == planned["t1"].shape
    # Resampled to t1, the int16 FLAIR becomes float32; as the target it is left as it is.
    resampled = {"Resample": {"target": "flair"}} not in config
    assert planned["flair"].dtype == (np.float32 if resampled else np.int16)


def test_plan_of_a_crop_to_a_mask_box_knows_the_dtype_but_not_the_grid():
    spec = subject_spec("ras")
    config = [{"CropOrPad": {"mask_name": "seg"}}, {"Resample": 2}, "ZNormalization"]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    assert all(g.shape is None and g.affine is None for g in planned.values())
    assert planned["t1"].dtype == np.float32 and planned["seg"].dtype == np.uint8
    assert_plan_holds(planned, run(config, spec), "none")


@pytest.mark.parametrize(
    "arguments",
    [
        {"target_shape": [12, 8, 8], "only_crop": True},
        {"target_shape": [30, 8, 26], "only_pad": True},
    ],
)
def test_plan_of_crop_or_pad_around_a_mask_at_the_border_with_only_crop_or_pad(arguments):
    spec = subject_spec("ras")
    seg = np.zeros_like(spec["seg"][1])
    seg[0, 1:4, 10:14, 8:11] = 2
    spec["seg"] = ("label", seg, spec["seg"][2])
    config = [{"CropOrPad": {"mask_name": "seg", **arguments}}]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    assert_plan_holds(planned, run(config, spec), "none")


@pytest.mark.parametrize(
    "arguments",
    [
        {"target_shape": [6, 5, 4], "only_crop": True},
        {"target_shape": [40, 44, 36], "only_pad": True},
    ],
)
def test_plan_of_crop_or_pad_around_a_mask_inside_the_volume_with_only_crop_or_pad(arguments):
    # The same options where the mask's window crops (or pads) on both sides: around a
    # mask, padding and cropping may both act on one axis, so the plan leaves the shape to
    # the voxels rather than guess it.
    spec = subject_spec("ras")
    config = [{"CropOrPad": {"mask_name": "seg", **arguments}}]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    assert_plan_holds(planned, run(config, spec), "none")


def test_plan_leaves_unknown_grids_unknown_and_does_not_invent_them():
    # A geometry already unknown stays unknown through every spatial transform.
    spec = subject_spec("ras")
    headers = {
        name: g.with_grid(None, None) if name == "t1" else g for name, g in geometries(spec).items()
    }
    config = [
        "ToCanonical",
        {"Resample": 2},
        {"Crop": 1},
        {"Pad": 1},
        {"CropOrPad": 20},
    ]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), headers)
    assert planned["t1"].shape is None and planned["t1"].affine is None
    assert planned["seg"].shape == run(config, spec)["seg"].spatial_shape


def test_resample_one_number_is_resample_target():
    short = parse_transforms([{"Resample": 1}], TYPES)
    long = parse_transforms([{"Resample": {"target": [1, 1, 1]}}], TYPES)
    assert describe_transforms(short) == describe_transforms(long)
    assert describe_transforms(short)[0]["Resample"]["target"] == [1.0, 1.0, 1.0]


# --- Config errors -------------------------------------------------------------------

CONFIG_ERRORS = {
    "unknown transform": (
        ["ToCanonical", "ZNormalisation"],
        "preprocess[1]: unknown transform 'ZNormalisation'; did you mean 'ZNormalization'?",
    ),
    "unknown argument": (
        [{"ZNormalization": {"masking_metod": "seg"}}],
        "preprocess[0]: ZNormalization has no argument 'masking_metod'; "
        "did you mean 'masking_method'?",
    ),
    "random transform": (
        ["ToCanonical", {"Resample": 1}, "RandomAffine"],
        "preprocess[2]: RandomAffine is a random transform: put it under augment",
    ),
    "mask is an intensity image": (
        [{"ZNormalization": {"masking_method": "t1"}}],
        ("preprocess[0]: ZNormalization: masking_method 't1' is ", "intensity", "label image"),
    ),
    "mask is a sampling map": (
        [{"CropOrPad": {"target_shape": 10, "mask_name": "prob"}}],
        ("preprocess[0]: CropOrPad: mask_name 'prob' is ", "sampling_map", "label image"),
    ),
    "mask is not an image": (
        [{"Mask": {"masking_method": "brian"}}],
        "Mask: masking_method 'brian' is not an image",
    ),
    "include unknown image": (
        [{"Resample": {"target": 1, "include": ["t1", "t2"]}}],
        "preprocess[0]: Resample: include names 't2', which is not an image",
    ),
    "exclude unknown image": (
        [{"ZNormalization": {"exclude": "flair"}}],
        "ZNormalization: exclude names 'flair', which is not an image",
    ),
    "include and exclude": (
        [{"Crop": {"cropping": 1, "include": ["t1"], "exclude": ["seg"]}}],
        "preprocess[0]: Crop: give include or exclude, not both",
    ),
    "bad interpolation": (
        [{"Resample": {"target": 1, "image_interpolation": "trilinear"}}],
        "Resample: image_interpolation 'trilinear' is not an interpolation; use one of nearest",
    ),
    "bad label interpolation": (
        [{"Resample": {"label_interpolation": 3}}],
        "Resample: label_interpolation 3 is not an interpolation",
    ),
    "negative spacing": (
        [{"Resample": -1.5}],
        "preprocess[0]: Resample: target spacing must be positive, not -1.5",
    ),
    "negative spacing on one axis": (
        [{"Resample": {"target": [1, -2, 1]}}],
        "Resample: target spacing must be positive, not [1, -2, 1]",
    ),
    "zero spacing": ([{"Resample": 0}], "Resample: target spacing must be positive, not 0"),
    "resample to an unknown image": (
        [{"Resample": "t2"}],
        "Resample: target 't2' is neither a voxel size nor an image",
    ),
    "random location": (
        [{"CropOrPad": {"target_shape": 16, "location": "random"}}],
        "CropOrPad: location 'random': only center is deterministic",
    ),
    "crop or pad without a shape or a mask": (
        [{"CropOrPad": {"padding_mode": "edge"}}],
        "CropOrPad: give target_shape, mask_name or both",
    ),
    "only crop and only pad": (
        [{"CropOrPad": {"target_shape": 8, "only_crop": True, "only_pad": True}}],
        "CropOrPad: only_crop and only_pad cannot both be true",
    ),
    "fractional voxels": (
        [{"CropOrPad": {"target_shape": [8.5, 8, 8]}}],
        "CropOrPad: target_shape must be whole voxels",
    ),
    "bad padding mode": (
        [{"Pad": {"padding": 1, "padding_mode": "average"}}],
        "Pad: padding_mode must be a number or one of",
    ),
    "negative crop": ([{"Crop": [1, -1, 1]}], "Crop: cropping must be one, three or six"),
    "five bounds": ([{"Pad": [1, 1, 1, 1, 1]}], "Pad: padding must be one, three or six"),
    "bad orientation": ([{"ToOrientation": "RAR"}], "ToOrientation: orientation must be three"),
    "clamp bounds reversed": (
        [{"Clamp": {"out_min": 10, "out_max": 1}}],
        "Clamp: out_min 10 is above out_max 1",
    ),
    "percentiles beyond 100": (
        [{"RescaleIntensity": {"percentiles": [1, 101]}}],
        "RescaleIntensity: percentiles must lie in [0, 100]",
    ),
    "mask without a mask": (
        [{"Mask": {"outside_value": 0}}],
        "preprocess[0]: Mask: Mask.__init__() missing 1 required positional argument: "
        "'masking_method'",
    ),
    "not a transform": ([["Resample", 1]], "preprocess[0]: each transform is a name or"),
    "two transforms in one entry": (
        [{"ToCanonical": None, "Resample": 1}],
        "preprocess[0]: each transform is a name or",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_parse_transforms_refuses_with_a_message(case):
    config, message = CONFIG_ERRORS[case]
    with pytest.raises(ConfigError) as error:
        parse_transforms(config, TYPES_WITH_MAP)
    for fragment in (message,) if isinstance(message, str) else message:
        assert fragment in str(error.value)


@pytest.mark.parametrize("entry", [{"ToCanonical": "LPS"}, {"ToCanonical": {"orientation": "LPS"}}])
def test_to_canonical_refuses_an_orientation_as_an_unknown_argument(entry):
    with pytest.raises(ConfigError, match=r"ToCanonical (takes no argument|has no argument)"):
        parse_transforms([entry], TYPES)


def test_preprocess_must_be_a_list():
    with pytest.raises(ConfigError, match="preprocess must be a list of transforms"):
        parse_transforms("ToCanonical", TYPES)
    with pytest.raises(ConfigError, match="preprocess must be a list of transforms"):
        parse_transforms({"Resample": 1}, TYPES)
    assert parse_transforms(None, TYPES) == []


def test_unknown_transform_lists_the_transforms():
    with pytest.raises(ConfigError) as error:
        parse_transforms(["Normalize"], TYPES)
    for name in ("ToCanonical", "Resample", "CropOrPad", "RemapLabels"):
        assert name in str(error.value)


def test_absurd_resample_is_refused_by_the_plan_quickly_without_allocating():
    # 0.001 mm on a 200^3 image at 1 mm: 200 000 voxels an axis.
    headers = {
        name: ImageGeometry(name, kind, (200, 200, 200), np.eye(4), 1, dtype, path_of(name))
        for name, kind, dtype in (("t1", "intensity", np.int16), ("seg", "label", np.uint8))
    }
    transforms = parse_transforms([{"Resample": 0.001}], {"t1": "intensity", "seg": "label"})
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as error:
            plan_transforms(transforms, headers)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(error.value)
    assert path_of("t1") in message and "'t1'" in message
    assert "(200000, 200000, 200000)" in message
    # Computed from the headers: a generous second, and a megabyte where the volume would
    # be 16 000 TB.
    assert elapsed < 1.0
    assert peak < 1_000_000


@pytest.mark.parametrize(
    "config",
    [
        [{"CropOrPad": 3_000_000}],
        [{"Pad": 2_000_000}],
        ["ToCanonical", {"Resample": [0.01, 0.01, 0.01]}],
    ],
)
def test_too_large_a_result_is_refused_by_the_plan(config):
    spec = subject_spec("oblique")
    with pytest.raises(ConfigError, match=r"t1\.nii\.gz: .* would make image 't1'"):
        plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))


# --- Per-subject data errors -----------------------------------------------------


def data_error(config, spec, subject_id="sub-42"):
    with pytest.raises(DataError) as error:
        run(config, spec, subject_id)
    return str(error.value)


def test_znormalization_of_a_constant_image_names_its_file_and_subject():
    spec = subject_spec("ras")
    spec["t1"] = ("intensity", np.full_like(spec["t1"][1], 17.5), spec["t1"][2])
    message = data_error(["ZNormalization"], spec)
    assert message.startswith(f"{path_of('t1', 'sub-42')}: subject 'sub-42': ZNormalization")
    assert "17.5" in message and "standard deviation 0" in message


def test_znormalization_of_an_image_constant_inside_its_mask_is_an_error():
    spec = subject_spec("ras")
    t1 = spec["t1"][1].copy()
    t1[spec["brain"][1] > 0] = 90.0
    spec["t1"] = ("intensity", t1, spec["t1"][2])
    message = data_error([{"ZNormalization": {"masking_method": "brain"}}], spec)
    assert message.startswith(f"{path_of('t1', 'sub-42')}: subject 'sub-42'")
    assert "inside mask 'brain'" in message and "standard deviation 0" in message


def test_znormalization_with_an_empty_mask_names_the_file_subject_and_mask():
    spec = subject_spec("ras")
    spec["seg"] = ("label", np.zeros_like(spec["seg"][1]), spec["seg"][2])
    message = data_error([{"ZNormalization": {"masking_method": "seg"}}], spec)
    assert message.startswith(f"{path_of('t1', 'sub-42')}: subject 'sub-42': ZNormalization")
    assert "the mask 'seg' is empty" in message


def test_rescale_intensity_of_a_constant_image_names_its_file_and_subject():
    spec = subject_spec("ras", t1_dtype=np.int16)
    spec["dwi"] = ("intensity", np.full_like(spec["dwi"][1], -4.0), spec["dwi"][2])
    message = data_error([{"RescaleIntensity": {"out_min_max": [-1, 1]}}], spec)
    assert message.startswith(f"{path_of('dwi', 'sub-42')}: subject 'sub-42': RescaleIntensity")
    assert "every value is -4.0" in message


def test_rescale_intensity_with_an_empty_mask_names_the_file_and_subject():
    spec = subject_spec("ras")
    spec["brain"] = ("label", np.zeros_like(spec["brain"][1]), spec["brain"][2])
    message = data_error([{"RescaleIntensity": {"masking_method": "brain"}}], spec)
    assert message.startswith(f"{path_of('t1', 'sub-42')}: subject 'sub-42'")
    assert "the mask 'brain' is empty" in message


def test_crop_or_pad_of_images_on_different_grids_names_the_file_and_the_fix():
    spec = two_grid_spec("ras")
    message = data_error([{"CropOrPad": 16}], spec)
    assert message.startswith(f"{path_of('flair', 'sub-42')}: subject 'sub-42': CropOrPad")
    assert "Resample: {target: t1}" in message


def test_a_mask_on_another_grid_is_an_error_naming_it():
    spec = two_grid_spec("ras")
    spec["seg"] = ("label", (spec["flair"][1] > 150).astype(np.uint8), spec["flair"][2])
    message = data_error([{"ZNormalization": {"masking_method": "seg", "include": "t1"}}], spec)
    assert message.startswith(f"{path_of('seg', 'sub-42')}: subject 'sub-42'")
    assert "not on the grid of 't1'" in message


def test_a_crop_leaving_no_voxels_is_an_error():
    spec = subject_spec("ras")
    message = data_error([{"Crop": [0, 0, 14, 14, 0, 0]}], spec)
    assert message.startswith(f"{path_of('t1', 'sub-42')}: subject 'sub-42': Crop")
    with pytest.raises(DataError, match="leaves no voxels"):
        plan_transforms(
            parse_transforms([{"Crop": [0, 0, 14, 14, 0, 0]}], image_types(spec)),
            geometries(spec),
        )


def test_clamp_of_uint8_to_a_window_above_its_range_is_a_data_error():
    spec = subject_spec("ras", t1_dtype=np.uint8)
    with pytest.raises(DataError, match=re.escape(path_of("t1"))):
        run([{"Clamp": {"out_min": 300, "out_max": 400}}], spec)


def test_clamp_of_uint8_with_a_bound_beyond_its_range_changes_nothing_there():
    spec = subject_spec("ras", t1_dtype=np.uint8)
    subject = run([{"Clamp": {"out_min": -5, "out_max": 100}}], spec)
    assert subject["t1"].data.dtype == np.uint8
    np.testing.assert_array_equal(subject["t1"].data, np.minimum(spec["t1"][1], 100))


def test_crop_or_pad_around_an_empty_mask_warns_naming_the_subject():
    spec = subject_spec("ras")
    spec["seg"] = ("label", np.zeros_like(spec["seg"][1]), spec["seg"][2])
    with pytest.warns(UserWarning, match=f"subject '{SUBJECT_ID}'.*mask 'seg' is empty"):
        subject = run([{"CropOrPad": {"target_shape": [20, 30, 18], "mask_name": "seg"}}], spec)
    # Centred on the volume instead: 2 voxels cropped at each end of x, 1 padded before y.
    np.testing.assert_array_equal(subject["t1"].data[:, :, 1:-1], spec["t1"][1][:, 2:22, :, 1:19])


# --- Values that need no reference ------------------------------------------------


def test_transforms_change_the_subject_in_place_and_leave_the_unselected_alone():
    spec = subject_spec("lps")
    subject = run([{"ZNormalization": {"include": ["dwi"]}}, {"Clamp": {"out_max": 0}}], spec)
    assert subject["dwi"].data.max() == 0
    assert subject["t1"].data.max() == 0  # Clamp acts on every intensity image
    for name in ("brain", "seg", "prob"):
        np.testing.assert_array_equal(subject[name].data, spec[name][1])
        np.testing.assert_array_equal(subject[name].affine, spec[name][2])


def homogeneous(indices: np.ndarray) -> np.ndarray:
    return np.vstack([indices.T, np.ones((1, len(indices)))])


def test_to_canonical_keeps_every_voxel_at_its_world_position():
    spec = subject_spec("oblique")
    subject = run(["ToCanonical"], spec)
    before, after = spec["seg"], subject["seg"]
    # The world position of each label's voxels is unchanged (a permutation of voxels).
    for label in (1, 2, 3):
        old = before[2] @ homogeneous(np.argwhere(before[1][0] == label))
        new = after.affine @ homogeneous(np.argwhere(after.data[0] == label))
        old = old[:3].T[np.lexsort(np.round(old[:3], 6))]
        new = new[:3].T[np.lexsort(np.round(new[:3], 6))]
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-9)


def test_remap_labels_reads_the_original_values():
    spec = subject_spec("ras")
    subject = run([{"RemapLabels": {"remapping": {1: 2, 2: 3, 3: 1}}}], spec)
    seg = spec["seg"][1]
    expected = seg.copy()
    expected[seg == 1], expected[seg == 2], expected[seg == 3] = 2, 3, 1
    np.testing.assert_array_equal(subject["seg"].data, expected)
    assert subject["seg"].data.dtype == np.uint8


def test_resample_scalars_only_leaves_labels_and_maps_alone_in_plan_and_result():
    spec = subject_spec("lps")
    config = [{"Resample": {"target": 2.0, "scalars_only": True}}]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    subject = run(config, spec)
    for name in ("seg", "prob"):
        assert planned[name].shape == spec[name][1].shape[1:]
        np.testing.assert_array_equal(subject[name].data, spec[name][1])
    assert subject["t1"].data.shape != spec["t1"][1].shape
    assert_plan_holds(planned, subject, "shape")


def test_resample_antialias_smooths_only_intensities_and_keeps_the_plan():
    spec = subject_spec("lps")
    plain = run([{"Resample": 3.0}], spec)
    smooth = run([{"Resample": {"target": 3.0, "antialias": True}}], spec)
    # Downsampling threefold with a Gaussian first: less variance than without it.
    assert smooth["t1"].data.std() < plain["t1"].data.std()
    np.testing.assert_array_equal(smooth["seg"].data, plain["seg"].data)
    config = [{"Resample": {"target": 3.0, "antialias": True}}]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    assert_plan_holds(planned, smooth, "shape")


# --- Cases found in review ----------------------------------------------------------


def test_a_two_channel_label_map_masks_a_one_channel_image_by_any_channel():
    spec = subject_spec("ras", with_dwi=False)
    seg = spec["seg"][1]
    two = np.concatenate([seg == 1, seg == 2]).astype(np.uint8)  # one-hot of labels 1, 2
    spec["seg"] = ("label", two, spec["seg"][2])
    subject = run([{"ZNormalization": {"masking_method": "seg"}}], spec)
    t1 = spec["t1"][1].astype(np.float64)
    inside = t1[(seg == 1) | (seg == 2)]
    expected = (t1 - inside.mean()) / inside.std(ddof=1)
    np.testing.assert_allclose(subject["t1"].data, expected, rtol=1e-5, atol=1e-5)


def test_to_canonical_after_a_crop_around_a_mask_leaves_the_shape_to_the_voxels():
    spec = subject_spec("oblique", with_dwi=False)
    config = [{"CropOrPad": {"mask_name": "seg", "target_shape": [8, 12, 16]}}, "ToCanonical"]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    subject = run(config, spec)
    assert all(g.shape is None for g in planned.values())
    assert subject["t1"].spatial_shape != (8, 12, 16)  # the oblique axes turned
    assert_plan_holds(planned, subject, "none")


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64])
def test_resample_with_antialias_plans_and_gives_float32(dtype):
    spec = subject_spec("lps", t1_dtype=dtype, with_dwi=False)
    config = [{"Resample": {"target": 2.0, "antialias": True, "image_interpolation": "nearest"}}]
    planned = plan_transforms(parse_transforms(config, image_types(spec)), geometries(spec))
    subject = run(config, spec)
    assert planned["t1"].dtype == subject["t1"].data.dtype == np.float32
    assert subject["seg"].data.dtype == np.uint8


def test_a_volume_too_large_after_a_crop_around_a_mask_is_a_data_error_naming_the_subject():
    spec = subject_spec("ras", with_dwi=False)
    config = [{"CropOrPad": {"mask_name": "seg"}}, {"Resample": 0.001}]
    with pytest.raises(DataError, match=rf"subject '{SUBJECT_ID}': Resample would make image"):
        run(config, spec)
    config = [{"CropOrPad": {"mask_name": "seg"}}, {"Pad": 2_000_000}]
    with pytest.raises(DataError, match=rf"subject '{SUBJECT_ID}': Pad would make image"):
        run(config, spec)


def test_grids_within_the_affine_tolerance_are_one_grid():
    spec = subject_spec("ras", with_dwi=False)
    shifted = spec["seg"][2].copy()
    shifted[0, 3] += 5e-4
    spec["seg"] = ("label", spec["seg"][1], shifted)
    subject = to_patchcli(spec)
    transforms = parse_transforms(
        [{"ZNormalization": {"masking_method": "seg"}}], image_types(spec)
    )
    with pytest.raises(DataError, match="not on the grid"):
        apply_transforms(transforms, subject)
    subject = to_patchcli(spec)
    subject.tolerance = 1e-3
    apply_transforms(transforms, subject)
    assert subject["t1"].data.dtype == np.float32


def test_padding_with_uninitialised_memory_is_refused():
    for config in (
        [{"Pad": {"padding": 1, "padding_mode": "empty"}}],
        [{"CropOrPad": {"target_shape": 40, "padding_mode": "empty"}}],
    ):
        with pytest.raises(ConfigError, match="padding_mode must be"):
            parse_transforms(config, TYPES)


def test_resample_to_grid_takes_half_precision_volumes():
    data = np.arange(8, dtype=np.float16).reshape(1, 2, 2, 2)
    back, _ = resample_to_grid(data, np.diag([2.0, 2, 2, 1]), (4, 4, 4), np.eye(4), "nearest")
    assert back.dtype == np.float16 and float(back[0, 2, 2, 2]) == 7.0


def test_a_padding_value_a_label_map_cannot_hold_is_refused_naming_it():
    # TorchIO pads a uint8 label map with -1000 as label 24; patchcli refuses it.
    spec = subject_spec("ras", with_dwi=False)
    with pytest.raises(DataError, match=r"padding value -1000 does not fit .* uint8"):
        run([{"CropOrPad": {"target_shape": 40, "padding_mode": -1000}}], spec)
    subject = run(
        [
            {"Pad": {"padding": 5, "padding_mode": -1000, "include": ["t1"]}},
            {"Pad": {"padding": 5, "exclude": ["t1"]}},
        ],
        spec,
    )
    assert subject["t1"].data.min() == -1000 and subject["seg"].data.max() < 24
