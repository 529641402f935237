"""A bounded fuzz run over the config parser and the readers of images and patch files.

Whatever the input, the only failure allowed is the project's own clear error
(:class:`patchcli.errors.PatchcliError`, one line naming the file). Cases
come from fixed seeds (``derandomize``): every run tries the same inputs.
"""

from __future__ import annotations

import gzip
import string

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchcli.config import Config, load_config
from patchcli.errors import PatchcliError
from patchcli.io.reader import read_patch_output
from patchcli.io.volumes import read_header, read_volume

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEYS = sorted(Config.model_fields) + ["output.path", "output.format", "unknown_key"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable + "éü中", max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(string.ascii_letters, max_size=8), children, max_size=4),
    ),
    max_leaves=10,
)


def _one_line_naming(error: Exception, name: str) -> None:
    message = str(error)
    assert "\n" not in message.strip(), message
    assert name in message, message


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8))
def test_configs_of_any_shape_fail_only_with_clear_errors(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz-config")
    path = folder / "config.yaml"
    nested: dict = {}
    for key, value in data.items():
        if "." in key:
            outer, inner = key.split(".")
            if not isinstance(nested.get(outer), dict):
                nested[outer] = {}
            nested[outer][inner] = value
        else:
            nested[key] = value
    path.write_text(yaml.safe_dump(nested, allow_unicode=True))
    try:
        load_config(path)
    except PatchcliError as error:
        _one_line_naming(error, "config.yaml")


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_as_a_config_fail_only_with_clear_errors(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz-yaml") / "config.yaml"
    path.write_bytes(content)
    try:
        load_config(path)
    except PatchcliError as error:
        _one_line_naming(error, "config.yaml")


@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz-nifti") / "valid.nii"
    array = np.random.default_rng(0).integers(0, 100, (6, 5, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path.read_bytes()


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_damaged_nifti_files_fail_only_with_clear_errors(
    tmp_path_factory, nifti_bytes, data, compressed
):
    content = bytearray(nifti_bytes)
    # Damage: cut it short, or overwrite some bytes (header and voxels alike).
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    for _ in range(data.draw(st.integers(1, 8))):
        if content:
            position = data.draw(st.integers(0, len(content) - 1))
            content[position] = data.draw(st.integers(0, 255))
    folder = tmp_path_factory.mktemp("fuzz-image")
    path = folder / ("image.nii.gz" if compressed else "image.nii")
    path.write_bytes(gzip.compress(bytes(content)) if compressed else bytes(content))
    for read in (read_header, read_volume):
        try:
            read(path)
        except PatchcliError as error:
            _one_line_naming(error, "image.nii")


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(["patches.h5", "volume.nii.gz", "scan.nrrd"]))
def test_any_bytes_as_an_input_file_fail_only_with_clear_errors(tmp_path_factory, content, name):
    path = tmp_path_factory.mktemp("fuzz-bytes") / name
    path.write_bytes(content)
    readers = [read_patch_output] if name.endswith(".h5") else [read_header, read_volume]
    for read in readers:
        try:
            read(path)
        except PatchcliError as error:
            _one_line_naming(error, name)
