"""The subject's work: crops into the block buffers."""

from __future__ import annotations

import numpy as np

from patchcli.subject_work import crop_block


def test_crop_block_copies_each_patch():
    volume = np.arange(2 * 6 * 5 * 4, dtype=np.int32).reshape(2, 6, 5, 4)
    buffers = {"a": np.zeros((3, 2, 2, 2, 2), np.int32)}
    corners = [[0, 0, 0, 2, 2, 2], [4, 3, 2, 6, 5, 4], [1, 1, 1, 3, 3, 3]]
    crop_block({"a": volume}, corners[:2], buffers)
    np.testing.assert_array_equal(buffers["a"][1], volume[:, 4:6, 3:5, 2:4])
    assert not buffers["a"][2].any()  # only the rows given
