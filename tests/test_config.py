"""The config schema: overrides, relative paths, one-line errors, safe YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from patchcli.config import load_config
from patchcli.errors import ConfigError

from .helpers import write_config


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_paths_in_the_file_are_relative_to_the_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    config = load_config(
        _write(folder / "c.yaml", "subjects: ../data/s.csv\noutput: {path: out/p.h5}\n")
    )
    assert config.subjects == tmp_path / "data" / "s.csv"
    assert config.output.path == folder / "out" / "p.h5"


def test_option_overrides_win_and_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "c.yaml", "seed: 1\npatch_size: 8\noutput: a.h5\n")
    config = load_config(path, {"seed": 5, "output.path": "b.h5", "patch_size": None})
    assert config.seed == 5
    assert config.patch_size == 8  # None means "option not given"
    assert config.output.path == tmp_path / "b.h5"


def test_image_shorthand_and_geometry(tmp_path):
    path = _write(
        tmp_path / "c.yaml",
        "images:\n  t1: intensity\n  seg: {type: label, shape: [10, 11, 12], dtype: uint8}\n",
    )
    config = load_config(path)
    assert config.images["t1"].type == "intensity"
    assert config.images["seg"].shape == (10, 11, 12)
    assert config.images["seg"].dtype == "uint8"


@pytest.mark.parametrize(
    "text, message",
    [
        ("patch_size: [1, 2]\n", "patch_size: invalid value"),
        ("patch_size: 0\n", "patch_size: patch_size values must be at least 1"),
        ("patch_size: 1.5\n", "patch_size"),
        ("patch_overlap: [2, 2, -2]\n", "patch_overlap"),
        ("unknown_key: 1\n", "unknown_key: unknown key"),
        ("images: {t1: pet}\n", "images.t1.type"),
        ("output: {format: png}\n", "output.format"),
        ("output: {dtype: str}\n", "output.dtype: dtype must be numeric"),
        ("padding_mode: banana\n", "padding_mode"),
        ("seed: -1\n", "seed"),
        ("num_patches: 0\n", "num_patches"),
        ("[1, 2]\n", "the config must be a mapping"),
        ("a: [\n", "invalid YAML at line"),
    ],
)
def test_errors_are_one_line_and_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(str(path))
    assert message in text
    assert "\n" not in text


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    # A python tag would run code under yaml.load; safe_load refuses it.
    path = _write(tmp_path / "evil.yaml", "seed: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    path = _write(
        tmp_path / "c.yaml",
        "patch_size: [4, 5, 6]\nlabel_probabilities: {0: 1, 3: 2.5}\noutput: o.h5\n",
    )
    config = load_config(path)
    again = load_config(_write(tmp_path / "again.yaml", config.to_yaml()))
    assert again == config


@pytest.mark.parametrize("value", [".nan", ".inf", "-1"])
def test_label_probabilities_must_be_finite_and_non_negative(tmp_path, value):
    path = _write(tmp_path / "c.yaml", f"label_probabilities: {{1: {value}, 2: 1}}\n")
    with pytest.raises(ConfigError, match="label_probabilities.1"):
        load_config(path)


@pytest.mark.parametrize(
    "name", ["../../evil", "a/b", ".hidden", "", "location", "subject", "num_samples", "t 1"]
)
def test_image_names_must_be_plain(tmp_path, name):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"images": {name: "intensity"}}))
    with pytest.raises(ConfigError, match="image name"):
        load_config(path)


def test_plain_image_names_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    images = {"T1w": "intensity", "seg-aseg.v2": "label", "flair_2": "intensity"}
    path.write_text(yaml.safe_dump({"images": images}, sort_keys=False))
    assert list(load_config(path).images) == ["T1w", "seg-aseg.v2", "flair_2"]


@pytest.mark.parametrize(
    "output, message",
    [
        ({"compression": "gzip", "compression_level": 15}, "less than or equal to 9"),
        ({"compression": "zstd", "compression_level": 12}, "less than or equal to 9"),
        ({"compression": "none", "compression_level": 3}, "needs a compression"),
    ],
)
def test_compression_levels_are_checked(tmp_path, output, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output": output}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_reset_sets_a_key_to_null(tmp_path):
    from patchcli.config import RESET

    path = _write(tmp_path / "c.yaml", "padding_mode: edge\noutput: {dtype: float32}\n")
    config = load_config(path, {"padding_mode": RESET, "output.dtype": RESET})
    assert config.padding_mode is None and config.output.dtype is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("patch_size: 8\npatch_overlap: 3\n", "patch_overlap must be even"),
        ("patch_size: [8, 8, 4]\npatch_overlap: 4\n", "must be smaller than patch_size"),
    ],
)
def test_grid_overlap_errors_name_the_config(tmp_path, text, message):
    path = _write(tmp_path / "grid.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: patch_overlap") and message in str(caught.value)


def test_a_misspelt_key_is_named_with_the_closest_known_one(tmp_path):
    path = write_config(tmp_path / "typo.yaml", num_patch=3)
    with pytest.raises(ConfigError, match=r"typo\.yaml: num_patch: unknown key; did you mean"):
        load_config(path)
    path = write_config(tmp_path / "nested.yaml", output={"pth": "a.h5"})
    with pytest.raises(ConfigError, match=r"output\.pth: unknown key; did you mean 'path'\?"):
        load_config(path)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("patch_size: 8\nnum_patches: 4\nnum_patches: 5\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: invalid YAML at line 3: duplicate key"):
        load_config(path)


def test_an_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for previous, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    lines.append("subjects: *h")  # 9^8 = 43 million strings if expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: "):
        load_config(path)


def test_a_config_that_is_not_utf8_text_is_refused(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x80\x81 binary")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a text file in UTF-8"):
        load_config(path)
