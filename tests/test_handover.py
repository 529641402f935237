"""The hand-over: writers' targets, and chunks compressed as HDF5 stores them."""

from __future__ import annotations

import h5py
import hdf5plugin  # noqa: F401  (the Blosc filters)
import numpy as np
import pytest

from patchcli.handover import Chunks, InPlace, compress_chunks
from patchcli.io.hdf5 import Hdf5PatchWriter, compression_options, filter_pipeline


@pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip"])
def test_worker_chunks_are_the_chunks_hdf5_writes(tmp_path, compression):
    rng = np.random.default_rng(0)
    # Smooth values with noise: compressible, but not trivially.
    block = (np.add.accumulate(rng.integers(0, 3, (5, 2, 12, 10, 8)), axis=2) % 200).astype(
        np.int16
    )
    with h5py.File(tmp_path / "reference.h5", "w") as file:
        dataset = file.create_dataset(
            "patches",
            block.shape,
            block.dtype,
            chunks=(1, *block.shape[1:]),
            **compression_options(compression),
        )
        dataset[...] = block
        expected = [dataset.id.read_direct_chunk((row, 0, 0, 0, 0)) for row in range(5)]
        filters = filter_pipeline(dataset)
    assert filters and all(len(step) == 3 for step in filters)
    made = compress_chunks(block, filters)
    assert made == expected
    assert sum(len(data) for _, data in made) < block.nbytes


def test_writer_targets(tmp_path):
    images = {"t1": (1, np.dtype(np.int16), "intensity"), "seg": (2, np.dtype(np.uint8), "label")}
    plain = Hdf5PatchWriter(tmp_path / "plain.h5", images, (4, 4, 4), 10, 1, {}, "none")
    target = plain.target()
    assert isinstance(target, InPlace)
    assert target.row_bytes == {"t1": 128, "seg": 128}
    # The file is as long as its allocation (a run killed early must still reopen).
    assert (tmp_path / "plain.h5").stat().st_size >= max(target.offsets.values()) + 10 * 128
    plain.abort()
    packed = Hdf5PatchWriter(tmp_path / "lz4.h5", images, (4, 4, 4), 10, 1, {}, "lz4")
    target = packed.target()
    assert isinstance(target, Chunks) and target.filters["t1"][0][0] == 32001  # Blosc
    packed.abort()
