"""Pyramid levels: 2×2 means, round half up, edges average what is there, tiles agree with the whole."""

from __future__ import annotations

import numpy as np
import pytest

from phos_dask.pyramid import downsample2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4, 4), (3, 1, 1), (1, 2, 9)])
def test_integer_levels_are_rounded_2x2_means(dtype, shape):
    rng = np.random.default_rng(0)
    block = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    got = downsample2(block)
    C, h, w = shape
    for c in range(C):
        for i in range((h + 1) // 2):
            for j in range((w + 1) // 2):
                cell = block[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(np.int64)
                assert got[c, i, j] == (cell.sum() + cell.size // 2) // cell.size


def test_halves_round_up():
    assert downsample2(np.array([[[1, 2], [1, 2]]], np.uint8))[0, 0, 0] == 2  # 1.5 → 2
    assert downsample2(np.array([[[0, 1], [0, 0]]], np.uint16))[0, 0, 0] == 0  # 0.25 → 0


def test_float_levels_are_means():
    block = np.arange(2 * 3 * 5, dtype=np.float16).reshape(2, 3, 5)
    got = downsample2(block)
    assert got.dtype == np.float16 and got.shape == (2, 2, 3)
    assert got[0, 0, 0] == np.float16((0 + 1 + 5 + 6) / 4) and got[1, 1, 2] == block[1, 2, 4]


def test_even_aligned_tiles_give_the_whole_level():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 65535, (3, 301, 257), dtype=np.uint16)
    whole = downsample2(img)
    parts = np.concatenate([downsample2(img[:, :, :128]), downsample2(img[:, :, 128:])], axis=2)
    np.testing.assert_array_equal(parts, whole)
