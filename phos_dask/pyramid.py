"""Pyramid levels: each level is the 2×2 mean of the one above (odd edges average what is there).
Integer codes round half up; the result depends only on the block's pixels, so a tile and the whole image
give the same level."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from phos_dask.film._cpu import kernel


@kernel
def _halve_int(block, out):
    """2×2 means of integer codes, rounded half up: (s + n/2) // n over the n ≤ 4 pixels of each block; the
    full 2×2 blocks in loops over row slices that vectorise, then an odd last column or row."""
    C, h, w = block.shape
    H2, W2 = out.shape[1], out.shape[2]
    wf = w // 2  # output columns with two input columns
    for c in range(C):
        for i in prange(H2):
            y0 = 2 * i
            r0 = block[c, y0]
            o = out[c, i]
            if y0 + 1 < h:
                r1 = block[c, y0 + 1]
                for j in range(wf):
                    s = np.int64(r0[2 * j]) + np.int64(r0[2 * j + 1]) + np.int64(r1[2 * j]) + np.int64(r1[2 * j + 1])
                    o[j] = (s + 2) >> 2
                if wf < W2:
                    o[wf] = (np.int64(r0[w - 1]) + np.int64(r1[w - 1]) + 1) >> 1
            else:
                for j in range(wf):
                    o[j] = (np.int64(r0[2 * j]) + np.int64(r0[2 * j + 1]) + 1) >> 1
                if wf < W2:
                    o[wf] = r0[w - 1]


def downsample2(block: np.ndarray) -> np.ndarray:
    """(C, h, w) → (C, ceil(h/2), ceil(w/2))."""
    C, h, w = block.shape
    H2, W2 = math.ceil(h / 2), math.ceil(w / 2)
    if block.dtype.kind in "ui":
        out = np.empty((C, H2, W2), block.dtype)
        _halve_int(block, out)
        return out
    acc = np.zeros((C, H2, W2), np.float64)
    cnt = np.zeros((1, H2, W2), np.int64)
    for dy in (0, 1):
        for dx in (0, 1):
            part = block[:, dy::2, dx::2]
            acc[:, : part.shape[1], : part.shape[2]] += part
            cnt[:, : part.shape[1], : part.shape[2]] += 1
    return (acc / cnt).astype(block.dtype)
