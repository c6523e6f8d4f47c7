"""Colour stages: sRGB transfer functions (IEC 61966-2-1), linearisation (S1), emulsion matrix (S2) and
reciprocity failure (S3). Pure functions over an array namespace `xp` (numpy or cupy)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from phos_dask.film.stocks import Stock


def srgb_decode(xp, v):
    """sRGB-encoded values in [0, 1] → linear light (same dtype as v)."""
    v = xp.asarray(v)
    return xp.astype(xp.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4), v.dtype, copy=False)


def srgb_encode(xp, x):
    """Linear light → sRGB-encoded in [0, 1]; x is clipped to [0, 1] first."""
    x = xp.clip(xp.asarray(x), 0, 1)
    return xp.astype(xp.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055), x.dtype, copy=False)


@cache
def decode_table(bits: int) -> np.ndarray:
    """Exact linearisation table for `bits`-bit sRGB codes (256 or 65536 float32 entries)."""
    vmax = (1 << bits) - 1
    return srgb_decode(np, np.arange(vmax + 1, dtype=np.float64) / vmax).astype(np.float32)


@cache
def linear_table(bits: int) -> np.ndarray:
    """Codes of linear-light integer data → linear float32 (v / vmax)."""
    vmax = (1 << bits) - 1
    return (np.arange(vmax + 1, dtype=np.float64) / vmax).astype(np.float32)


def input_table(dtype, linear: bool) -> np.ndarray:
    """The S1 table for integer input: sRGB decoding, or a plain scale when the data are linear light."""
    bits = 8 if np.dtype(dtype) == np.uint8 else 16
    return linear_table(bits) if linear else decode_table(bits)


def linearise(xp, img, linear: bool = False):
    """S1: integer codes (uint8/uint16) or float values in [0, 1] → linear float32, same shape; sRGB-encoded
    unless `linear` says the data already are linear light."""
    img = xp.asarray(img)
    if img.dtype == xp.uint8 or img.dtype == xp.uint16:
        table = xp.asarray(input_table(np.uint8 if img.dtype == xp.uint8 else np.uint16, linear))
        return lookup(xp, table, img)
    if linear:
        return xp.astype(img, xp.float32)
    return srgb_decode(xp, xp.clip(xp.astype(img, xp.float32), 0, 1))


def lookup(xp, table, index):
    """table[index] for an integer array `index` of any shape (array API: take along a flattened index)."""
    flat = xp.reshape(xp.astype(index, xp.int64), (-1,))
    return xp.reshape(xp.take(table, flat), index.shape)


def emulsion_matrix(stock: Stock) -> np.ndarray:
    """S2: the (C, 3) matrix from linear (r, g, b) to layer exposures: rows R, G, B or the pan row."""
    return np.array([layer.weights for layer in stock.layers], dtype=np.float32)


def reciprocity_factors(stock: Stock, exposure_time: float | None) -> np.ndarray | None:
    """S3: per-channel factor t^(p-1) applied to X (then clipped to [0, 1]); None when t is absent or 1."""
    if exposure_time is None or exposure_time == 1.0:
        return None
    rec = stock.reciprocity
    t = float(exposure_time)
    if stock.is_color:
        p0s = [rec.p_mono if rec.p_mono is not None else p for p in rec.p]
    else:
        p0s = [rec.p_mono if rec.p_mono is not None else rec.p[1]]
    out = []
    for p0 in p0s:
        if t < rec.t_low:
            p = p0 - 0.05 * rec.failure_strength
        elif t > rec.t_high:
            p = p0 - rec.k * math.log10(t / rec.t_high) * rec.failure_strength
        else:
            p = p0
        p = min(max(p, 0.75), 1.0)
        out.append(t ** (p - 1.0))
    return np.array(out, dtype=np.float32)


def emulsion_response(xp, lin, matrix, factors=None):
    """S2 + S3: linear (h, w, 3) → planar layer exposures (C, h, w) float32."""
    r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
    planes = [float(matrix[c, 0]) * r + float(matrix[c, 1]) * g + float(matrix[c, 2]) * b
              for c in range(matrix.shape[0])]
    X = xp.astype(xp.stack(planes), xp.float32)
    if factors is not None:
        X = xp.clip(X * xp.reshape(xp.asarray(factors), (-1, 1, 1)), 0, 1)
    return X
