"""The parallel extraction pipeline: the same bytes for every worker count and output."""

from __future__ import annotations

import h5py
import hdf5plugin  # noqa: F401  (the Blosc filters)
import nibabel as nib
import numpy as np
import pytest

from patchcli.config import load_config
from patchcli.errors import DataError
from patchcli.extract import extract

from .helpers import assert_same_output, make_subjects, write_config

SHAPES = [(30, 28, 26), (26, 30, 24), (28, 24, 30), (24, 26, 28)]
IMAGES = {"t1": "intensity", "seg": "label", "prob": "sampling_map"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_subjects(tmp_path_factory.mktemp("pipeline-data"), SHAPES)[0]


def _config(folder, manifest, name, **keys):
    base = dict(
        subjects=str(manifest),
        images=IMAGES,
        patch_size=[9, 8, 7],
        num_patches=25,
        seed=4,
        block_size="8KiB",  # several blocks per subject, so blocks stream between processes
    )
    output = keys.pop("output", {})
    base.update(keys)
    base["output"] = {"path": str(folder / name), **output}
    return load_config(write_config(folder / f"{name}.yaml", **base))


@pytest.mark.parametrize(
    ("fmt", "compression"),
    [("hdf5", "none"), ("hdf5", "lz4"), ("hdf5", "zstd"), ("hdf5", "gzip"), ("nifti", "gzip")],
)
def test_every_worker_count_writes_the_same_bytes(tmp_path, manifest, fmt, compression):
    suffix = ".h5" if fmt == "hdf5" else ""
    outputs = []
    for workers in (0, 1, 2):
        config = _config(
            tmp_path,
            manifest,
            f"w{workers}{suffix}",
            workers=workers,
            output={"format": fmt, "compression": compression},
        )
        outputs.append(extract(config, "label").path)
    for other in outputs[1:]:
        assert_same_output(outputs[0], other)  # patches, tables, chunk storage and attributes


def test_uncompressed_output_is_contiguous_and_written_in_place(tmp_path, manifest):
    config = _config(tmp_path, manifest, "plain.h5", workers=2, output={"compression": "none"})
    path = extract(config, "uniform").path
    with h5py.File(path) as file:
        for name in IMAGES:
            dataset = file["patches"][name]
            assert dataset.chunks is None and dataset.compression is None
            assert dataset.id.get_offset() is not None
        t1 = file["patches/t1"][:]
        locations = file["locations"][:]
        index = file["subject_index"][:]
    # The patches are the crops of the sources at the recorded locations.
    volumes = [
        np.asanyarray(nib.load(manifest.parent / f"s{i}_t1.nii.gz").dataobj) for i in range(4)
    ]
    for row in (0, 24, 25, 99):
        i0, j0, k0, i1, j1, k1 = locations[row]
        np.testing.assert_array_equal(t1[row, 0], volumes[index[row]][i0:i1, j0:j1, k0:k1])


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_a_worker_error_stops_the_run_naming_the_file(tmp_path, manifest, compression):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = manifest.read_text().splitlines()
    for line in lines[1:]:
        for name in line.split(",")[1:]:
            (bad / name).write_bytes((manifest.parent / name).read_bytes())
    (bad / "subjects.csv").write_text("\n".join(lines) + "\n")
    # Subject s2's t1 is cut short: its header reads, its voxels do not.
    broken = bad / "s2_t1.nii.gz"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    config = _config(
        tmp_path, bad / "subjects.csv", "out.h5", workers=2, output={"compression": compression}
    )
    with pytest.raises(DataError, match=r"s2_t1\.nii\.gz") as caught:
        extract(config, "uniform")
    assert caught.value.kept_partial.done == 2


def test_a_worker_drops_an_acknowledgement_left_by_a_failed_subject(tmp_path, manifest):
    """The last block of a subject that failed was acknowledged after its worker gave up;
    the next subject on that slot must not take that for the acknowledgement of its own
    first block, and overwrite the shared region while the writer still reads it."""
    import mmap
    import threading
    from multiprocessing import Pipe

    from patchcli import pipeline
    from patchcli.handover import Arrays, SubjectStart
    from patchcli.plan import patches_per_block, plan_extraction
    from patchcli.subject_work import SubjectTask

    plan = plan_extraction(_config(tmp_path, manifest, "unused", workers=0), "uniform")
    block = patches_per_block(plan)
    writer_end, worker_end = Pipe(duplex=True)
    region = mmap.mmap(-1, block * plan.patch_bytes + 2**20)
    pipeline._keep_slots([worker_end], [region])
    writer_end.send(True)  # the stale acknowledgement
    task = SubjectTask(plan.subjects[0], plan.counts[0], 0)
    worker = threading.Thread(
        target=pipeline._run_in_worker,
        args=(0, plan.settings, task, Arrays(), block),
        daemon=True,
    )
    worker.start()
    try:
        assert isinstance(writer_end.recv(), SubjectStart)
        first = writer_end.recv()
        assert isinstance(first.payload, pipeline._Shared)  # in the region, not yet read
        # Until this block is acknowledged, the worker must wait, not send the next one.
        assert not writer_end.poll(0.5)
        while True:  # the writer's side: acknowledge each block once read
            writer_end.send(True)
            message = writer_end.recv()
            if message is None:
                break
    finally:
        worker.join(10)
        pipeline._keep_slots([], [])
    assert not worker.is_alive()
