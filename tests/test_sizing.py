"""queue-sim and memory from configs: header-only reading, CLI outputs, budgets."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from patchcli.cli import main
from patchcli.config import load_config
from patchcli.errors import ConfigError
from patchcli.queue import TRACE_COLUMNS
from patchcli.sizing import memory_from_config, samples_per_subject, subject_images

from .helpers import make_subjects, write_config

GEOMETRY = {
    "t1": {"type": "intensity", "shape": [40, 50, 30], "dtype": "int16"},
    "seg": {"type": "label", "shape": [40, 50, 30], "dtype": "uint8"},
}


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture()
def manifest_config(tmp_path):
    manifest, _ = make_subjects(tmp_path / "data", [(20, 22, 18), (24, 20, 21)], with_prob=False)
    rows = list(csv.DictReader(open(manifest)))
    rows[1]["num_samples"] = "7"
    rows[0]["num_samples"] = ""
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return write_config(
        tmp_path / "c.yaml",
        subjects="data/subjects.csv",
        images={"t1": "intensity", "seg": "label"},
        patch_size=8,
        samples_per_volume=5,
        max_length=6,
        num_workers=1,
        batch_size=2,
        seed=0,
    )


def test_memory_reads_headers_only(manifest_config, monkeypatch):
    """Fails if any voxel is read, through nibabel or SimpleITK."""

    def refuse(*args, **kwargs):
        raise AssertionError("voxel data was loaded")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", refuse)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", refuse)
    monkeypatch.setattr(sitk, "ReadImage", refuse)
    monkeypatch.setattr(sitk, "GetArrayFromImage", refuse)
    result = invoke("memory", manifest_config, "--json")
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    # t1 int16 + seg uint8, 1 channel each: TorchIO counts 4 bytes x 2 channels.
    assert numbers["torchio_bytes"] == 4 * 8**3 * 2 * 6
    infos = subject_images(load_config(manifest_config))
    assert [image.spatial_shape for image in infos[1]] == [(24, 20, 21)] * 2


def test_samples_per_subject_uses_num_samples_column(manifest_config):
    assert samples_per_subject(load_config(manifest_config)) == [5, 7]


def test_memory_from_geometry_without_files(tmp_path):
    config = write_config(
        tmp_path / "m.yaml",
        images=GEOMETRY,
        num_subjects=3,
        patch_size=10,
        max_length=20,
        samples_per_volume=4,
        batch_size=4,
    )
    result = invoke("memory", config, "--json", "--num-workers", 2)
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert set(numbers) >= {"torchio_bytes", "torchio_pretty", "total_bytes", "items"}
    assert numbers["torchio_bytes"] == 4 * 1000 * 2 * 20
    assert numbers["total_bytes"] == sum(numbers["items"].values())
    # The queue never holds more than an epoch: min(max_length 20, 3 subjects x 4) patches.
    assert numbers["items"]["queue_patches"] == 12 * 1000 * (2 + 1)


def test_memory_text_output_shows_torchio_pretty_and_items(tmp_path):
    config = write_config(
        tmp_path / "m.yaml",
        images=GEOMETRY,
        patch_size=96,
        max_length=300,
        samples_per_volume=10,
        num_subjects=40,
    )
    result = invoke("memory", config)
    assert result.exit_code == 0, result.output
    # 4 bytes x 96^3 x 2 images x 300 (REFERENCE: 3 images give 3,185,049,600 = 3.0 GiB).
    assert "2123366400 bytes = 2.0 GiB" in result.output
    assert "queue_patches" in result.output and "total" in result.output


def test_memory_equals_torchio_get_max_memory(tmp_path, torchio):
    import torch

    subject = torchio.Subject(
        t1=torchio.ScalarImage(tensor=torch.zeros(2, 12, 12, 12)),
        seg=torchio.LabelMap(tensor=torch.zeros(1, 12, 12, 12, dtype=torch.uint8)),
    )
    queue = torchio.Queue(
        torchio.SubjectsDataset([subject]), 37, 4, torchio.UniformSampler(6), num_workers=0
    )
    geometry = {
        "t1": {"type": "intensity", "shape": [12, 12, 12], "channels": 2},
        "seg": {"type": "label", "shape": [12, 12, 12], "dtype": "uint8"},
    }
    config = load_config(
        write_config(
            tmp_path / "m.yaml",
            images=geometry,
            patch_size=6,
            max_length=37,
            samples_per_volume=4,
            num_subjects=1,
        )
    )
    estimate = memory_from_config(config)
    assert estimate.torchio_bytes == queue.get_max_memory(subject)
    assert estimate.torchio_pretty == queue.get_max_memory_pretty(subject)


def test_budget_inversion(tmp_path):
    config_path = write_config(
        tmp_path / "m.yaml",
        images=GEOMETRY,
        num_subjects=50,
        patch_size=16,
        samples_per_volume=10,
        batch_size=4,
        num_workers=2,
    )
    result = invoke("memory", config_path, "--budget", "20MiB", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)["max_length"]
    assert answer > 0
    config = load_config(config_path, {"max_length": answer})
    assert memory_from_config(config).total_bytes <= 20 * 2**20
    if answer < 500:  # below one whole epoch, one more patch must not fit
        config = load_config(config_path, {"max_length": answer + 1})
        assert memory_from_config(config).total_bytes > 20 * 2**20


def test_memory_errors(tmp_path):
    config = write_config(
        tmp_path / "m.yaml",
        images={"t1": "intensity"},
        patch_size=8,
        max_length=4,
        samples_per_volume=2,
        num_subjects=2,
    )
    result = invoke("memory", config)
    assert result.exit_code == 1 and "need a shape" in result.output
    assert invoke("memory", config, "--budget", "lots").exit_code == 1
    no_length = write_config(
        tmp_path / "n.yaml", images=GEOMETRY, patch_size=8, samples_per_volume=2, num_subjects=2
    )
    with pytest.raises(ConfigError, match="max_length is required"):
        memory_from_config(load_config(no_length))
    no_count = write_config(
        tmp_path / "c.yaml", images=GEOMETRY, patch_size=8, max_length=4, samples_per_volume=2
    )
    result = invoke("memory", no_count)
    assert result.exit_code == 1 and "num_subjects" in result.output


def test_queue_sim_with_shuffles_off_gives_subject_order(tmp_path):
    config = write_config(
        tmp_path / "q.yaml",
        num_subjects=3,
        samples_per_volume=4,
        max_length=5,
        batch_size=2,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    trace = tmp_path / "trace.csv"
    result = invoke("queue-sim", config, "--trace", trace)
    assert result.exit_code == 0, result.output
    with open(trace, newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader)
        rows = [list(map(int, row)) for row in reader]
    assert (
        header
        == list(TRACE_COLUMNS)
        == "epoch,iteration,batch,subject,patch,queue_length,filled".split(",")
    )
    assert [row[3] for row in rows] == [0] * 4 + [1] * 4 + [2] * 4
    assert [row[4] for row in rows] == [0, 1, 2, 3] * 3
    # Fills of 5: rows 0, 5, 10 follow a fill; queue length after each pop counts down.
    # The third fill holds subject 2's last 2 patches and, as in TorchIO, 3 patches
    # of the next pass over the subjects (popped in the next epoch).
    assert [row[6] for row in rows] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    assert [row[5] for row in rows] == [4, 3, 2, 1, 0, 4, 3, 2, 1, 0, 4, 3]
    assert "iterations per epoch      12" in result.output


def test_queue_sim_json_timing_and_plot(tmp_path):
    config = write_config(
        tmp_path / "q.yaml",
        num_subjects=6,
        samples_per_volume=4,
        max_length=8,
        batch_size=4,
        num_epochs=2,
        load_seconds=1.0,
        step_seconds=0.5,
        num_workers=2,
        images=GEOMETRY,
        patch_size=8,
    )
    plot = tmp_path / "queue.png"
    result = invoke("queue-sim", config, "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert numbers["summary"]["iterations_per_epoch"] == 24
    assert len(numbers["timing"]["wait_seconds"]) == 2
    assert numbers["memory"]["torchio_bytes"] == 4 * 8**3 * 2 * 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_queue_sim_seed_reproduces_and_options_override(tmp_path):
    config = write_config(tmp_path / "q.yaml", num_subjects=5, samples_per_volume=6, max_length=10)
    first, second, other = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    assert invoke("queue-sim", config, "--seed", 3, "--trace", first).exit_code == 0
    assert invoke("queue-sim", config, "--seed", 3, "--trace", second).exit_code == 0
    assert invoke("queue-sim", config, "--seed", 4, "--trace", other).exit_code == 0
    assert first.read_text() == second.read_text() != other.read_text()
    result = invoke("queue-sim", config, "--no-shuffle-subjects", "--no-shuffle-patches", "--json")
    assert json.loads(result.output)["summary"]["min_subjects_per_batch"] == 1


def test_queue_sim_handles_subjects_larger_than_the_queue(tmp_path):
    # TorchIO crashes here (REFERENCE.md: 4 subjects, 10 patches each, max_length 7).
    config = write_config(
        tmp_path / "q.yaml",
        num_subjects=4,
        samples_per_volume=10,
        max_length=7,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    trace = tmp_path / "t.csv"
    result = invoke("queue-sim", config, "--trace", trace)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(trace)))
    counts = np.bincount([int(row["subject"]) for row in rows])
    assert counts.tolist() == [10, 10, 10, 10]
    assert max(int(row["queue_length"]) for row in rows) < 7


def test_queue_sim_needs_subjects_and_max_length(tmp_path):
    config = write_config(tmp_path / "q.yaml", samples_per_volume=3, max_length=4)
    result = invoke("queue-sim", config)
    assert result.exit_code == 1 and "num_subjects" in result.output
    assert invoke("queue-sim", config, "--num-subjects", 2, "--max-length", 0).exit_code == 2


def test_example_configs_run(tmp_path):
    for args in (
        ["memory", "configs/memory.yaml"],
        ["memory", "configs/memory.yaml", "--budget", "8GiB"],
        ["queue-sim", "configs/queue-sim.yaml", "--json"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)


def test_queue_sim_refuses_existing_trace_and_plot_without_overwrite(tmp_path):
    config = write_config(tmp_path / "q.yaml", num_subjects=2, samples_per_volume=2, max_length=2)
    trace, plot = tmp_path / "t.csv", tmp_path / "q.png"
    plot.write_text("keep")
    result = invoke("queue-sim", config, "--trace", trace, "--plot", plot)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert not trace.exists() and plot.read_text() == "keep"
    result = invoke("queue-sim", config, "--trace", trace, "--plot", plot, "--overwrite")
    assert result.exit_code == 0, result.output
    assert trace.read_text().startswith("epoch,") and plot.read_bytes()[:4] == b"\x89PNG"
