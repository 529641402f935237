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


FUZZ_HDF5_SCRIPT = r"""
import sys
from pathlib import Path

import numpy as np

from patchcli.errors import PatchcliError
from patchcli.io.reader import HandleCache, read_patch_output

for path in sys.argv[1:]:
    print("case", path, flush=True)
    try:
        output = read_patch_output(path)
        handles = HandleCache()
        for name in output.images:
            out = np.empty((output.num_patches, output.channels[name], *output.patch_size),
                           output.dtypes[name])
            output.read_rows(name, 0, output.num_patches, out, handles)
        handles.close()
        print("read", flush=True)
    except PatchcliError as error:
        message = str(error)
        assert "\n" not in message.strip() and Path(path).name in message, message
        print("clear error", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_damaged_patch_files_fail_only_with_clear_errors(tmp_path, compression):
    """Bytes of a valid patch file overwritten at random: read, or a clear error; never
    another exception or a crash (run in a subprocess: a crash in HDF5 would end pytest)."""
    import subprocess
    import sys

    from patchcli.config import load_config
    from patchcli.extract import extract

    from .helpers import make_subjects, write_config

    manifest, _ = make_subjects(tmp_path / "data", [(12, 10, 8)] * 2)
    config = write_config(
        tmp_path / "config.yaml",
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=4,
        num_patches=5,
        output={"path": str(tmp_path / "valid.h5"), "compression": compression},
    )
    valid = extract(load_config(config), "uniform").path.read_bytes()
    rng = np.random.default_rng(0)  # fixed cases on every run
    cases = []
    for number in range(60):
        content = bytearray(valid)
        for position in rng.integers(0, len(content), size=int(rng.integers(1, 6))):
            content[position] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged-{number:02d}.h5"
        path.write_bytes(bytes(content))
        cases.append(str(path))
    result = subprocess.run(
        [sys.executable, "-c", FUZZ_HDF5_SCRIPT, *cases], capture_output=True, text=True
    )
    last = [line for line in result.stdout.splitlines() if line.startswith("case")][-1:]
    assert result.returncode == 0, f"{last} crashed or raised: {result.stderr[-2000:]}"
    outcomes = [line for line in result.stdout.splitlines() if not line.startswith("case")]
    assert len(outcomes) == 60
