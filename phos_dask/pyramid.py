"""Pyramid levels: each level is the 2×2 mean of the one above (odd edges average what is there).
Integer codes round half up; the result depends only on the block's pixels, so a tile and the whole image
give the same level."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from phos_dask.film._cpu import kernel

#: The pyramid's downsampling method, as OME-Zarr's multiscales "type" and "metadata" record it.
DOWNSAMPLING = "mean"
DOWNSAMPLING_METADATA = {
    "description": "each level is the 2x2 box mean of the level above (ceil-halved: odd edges average the "
                   "pixels there; integer codes round half up)",
    "method": "phos_dask.pyramid.downsample2",
    "kwargs": {"factor": 2},
}


@kernel
def _halve_int(block, out):
    C, h, w = block.shape
    H2, W2 = out.shape[1], out.shape[2]
    for c in range(C):
        for i in prange(H2):
            y0 = 2 * i
            ny = 2 if y0 + 1 < h else 1
            for j in range(W2):
                x0 = 2 * j
                nx = 2 if x0 + 1 < w else 1
                s = 0
                for dy in range(ny):
                    for dx in range(nx):
                        s += np.int64(block[c, y0 + dy, x0 + dx])
                n = ny * nx
                out[c, i, j] = (s + n // 2) // n


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
