"""``patchcli preview``: the PNG's size and content, from a config and from an output."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.phantom import write_phantom_dataset

from .helpers import write_config


def _pixels(path):
    import matplotlib.image

    return (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)


def _count(pixels, colour) -> int:
    return int(np.all(np.abs(pixels - np.array(colour)) <= 12, axis=-1).sum())


BOX = (255, 48, 48)  # #ff3030
BAR = (76, 114, 176)  # #4c72b0


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preview")
    manifest = write_phantom_dataset(folder / "data", 2, (40, 40, 36), seed=0)
    return write_config(
        folder / "label.yaml",
        subjects=str(manifest),
        images={"t1": "intensity", "seg": "label"},
        patch_size=12,
        num_patches=20,
        label_name="seg",
        label_probabilities={0: 1, 1: 1, 2: 1},
        patch_overlap=4,
        output={"path": str(folder / "out" / "patches.h5")},
    )


def test_preview_of_a_config_draws_boxes_and_the_class_chart(tmp_path, config):
    png = tmp_path / "label.png"
    result = CliRunner().invoke(
        main, ["preview", str(config), "--sampler", "label", "-o", str(png), "--subject", "sub-002"]
    )
    assert result.exit_code == 0, result.output
    assert "subject 'sub-002', 20 patches" in result.output
    pixels = _pixels(png)
    assert pixels.shape == (800, 1600, 3)  # 2 rows (t1, seg) x 4 columns at 100 dpi
    assert _count(pixels, BOX) > 500  # patch boxes on six slices
    assert _count(pixels, BAR) > 1000  # the bars of the class chart
    assert not (config.parent / "out").exists()  # nothing of the run written


def test_preview_of_an_output_draws_its_stored_locations(tmp_path, config):
    runner = CliRunner()
    grid = tmp_path / "grid.h5"
    run = runner.invoke(main, ["grid", str(config), "--output", str(grid), "--quiet"])
    assert run.exit_code == 0, run.output
    png = tmp_path / "grid.png"
    result = runner.invoke(main, ["preview", str(grid), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert "grid, subject 'sub-001'" in result.output
    pixels = _pixels(png)
    assert pixels.shape == (800, 1200, 3)  # no class chart for a grid
    assert _count(pixels, BOX) > 500 and _count(pixels, BAR) == 0
    again = runner.invoke(main, ["preview", str(grid), "-o", str(png)])
    assert again.exit_code == 1 and "use --overwrite" in again.output


def test_preview_of_an_unknown_subject_is_an_error(tmp_path, config):
    result = CliRunner().invoke(
        main, ["preview", str(config), "-o", str(tmp_path / "x.png"), "--subject", "nobody"]
    )
    assert result.exit_code == 1
    assert "no subject 'nobody'" in result.output and not (tmp_path / "x.png").exists()


def test_a_copy_of_a_run_without_augment_is_an_error(tmp_path, config):
    png = tmp_path / "x.png"
    result = CliRunner().invoke(main, ["preview", str(config), "-o", str(png), "--copy", "1"])
    assert result.exit_code == 1
    assert "no augment, so no copies to choose from (drop --copy)" in result.output
    assert not png.exists()
