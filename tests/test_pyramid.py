"""Pyramid levels: 2×2 means, round half up, edges average what is there, tiles agree with the whole; the
area means thumbnails are made with."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from phos_dask.pyramid import area_shrink, area_taps, downsample2


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


@pytest.mark.parametrize("n_in, n_out", [(1224, 256), (816, 171), (512, 256), (257, 256), (9000, 9), (7, 3), (5, 5)])
def test_area_taps_weigh_each_sample_by_its_overlap(n_in, n_out):
    """Output i averages the input over [i·n_in/n_out, (i+1)·n_in/n_out): weights sum to 1, each sample's
    weights over all outputs sum to n_out/n_in (every sample counted once), and a span reads inside the
    input."""
    first, weights = area_taps(n_in, n_out)
    assert weights.shape[0] == n_out and (first >= 0).all() and (first + weights.shape[1] <= n_in).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-6)
    per_sample = np.zeros(n_in)
    for i in range(n_out):
        per_sample[first[i] : first[i] + weights.shape[1]] += weights[i]
    np.testing.assert_allclose(per_sample, n_out / n_in, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape, size", [((816, 1224, 3), (256, 171)), ((408, 612), (256, 171)),
                                         ((600, 400, 3), (100, 150)), ((33, 1000, 1), (256, 8)),
                                         ((64, 64, 3), (64, 64)), ((5, 7, 4), (2, 1))])
def test_area_shrink_is_opencvs_area_average_within_a_code(dtype, shape, size):
    """Noise (the hardest case for rounding) and whole or fractional ratios: every sample within a code of
    OpenCV's INTER_AREA, the mean error well under a code, same dtype and channels."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    got = area_shrink(image, size)
    want = cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(got.shape)
    assert got.dtype == dtype and got.shape == (size[1], size[0], *shape[2:])
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and diff.mean() < 0.05


def test_area_shrink_keeps_a_flat_image_flat_and_reads_a_view_as_its_pixels():
    flat = np.full((300, 500, 3), 200, np.uint8)
    assert (area_shrink(flat, (256, 154)) == 200).all()
    big = np.random.default_rng(0).integers(0, 255, (400, 600, 3), dtype=np.uint8)
    view = big[::-1, 50:550]  # not contiguous
    np.testing.assert_array_equal(area_shrink(view, (100, 80)), area_shrink(view.copy(), (100, 80)))
