"""S6 grain: a pure function of (image seed, plane, global row, global column), tile-invariant.

u(plane, y, x): the SplitMix64 output for counter (y·2³² + x) in a stream keyed by (seed, plane), turned
into a standard normal deviate by a 65 536-cell piecewise-linear inverse normal CDF (top 16 bits pick the
cell, the next 24 bits the position in it). All integer work is exact, so NumPy and CuPy agree bit for bit
on the hash; the table and its interpolation are the same float32 operations on both.
"""

from __future__ import annotations

from functools import cache
from statistics import NormalDist

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
TABLE_BITS = 16
E0 = 1000.0
PLANE_R, PLANE_G, PLANE_B, PLANE_P = 0, 1, 2, 3


def splitmix64(z: int) -> int:
    """The SplitMix64 finaliser on a Python int (mod 2⁶⁴)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def plane_key(image_seed: int, plane: int) -> int:
    """The stream key of one noise plane of one image."""
    return splitmix64((image_seed + (plane + 1) * GOLDEN) & MASK64)


@cache
def normal_table() -> tuple[np.ndarray, np.ndarray]:
    """(T, dT): T[i] = Φ⁻¹ at the cell edges i/2¹⁶ (the outer edges at 1/2¹⁸ from 0 and 1), scaled so the
    piecewise-linear distribution has variance exactly 1; dT[i] = T[i+1] - T[i]. float32."""
    n = 1 << TABLE_BITS
    p = np.arange(n + 1, dtype=np.float64) / n
    p[0], p[-1] = 0.25 / n, 1 - 0.25 / n
    inv = NormalDist().inv_cdf
    T = np.array([inv(float(v)) for v in p])
    var = np.sum(T[:-1] ** 2 + T[:-1] * T[1:] + T[1:] ** 2) / (3 * n)
    T = (T / np.sqrt(var)).astype(np.float32)
    return T, (T[1:] - T[:-1]).astype(np.float32)


def hash_normal(xp, key: int, rows, cols):
    """u for the outer product of global row indices `rows` and column indices `cols` (int arrays)."""
    from phos_dask.film.colour import lookup

    T, dT = (xp.asarray(t) for t in normal_table())

    def u64(v: int):
        return xp.asarray(v, dtype=xp.uint64)

    r = xp.expand_dims(xp.astype(xp.asarray(np.asarray(rows, np.int64)), xp.uint64), axis=1)
    c = xp.expand_dims(xp.astype(xp.asarray(np.asarray(cols, np.int64)), xp.uint64), axis=0)
    z = u64(key) + ((r << u64(32)) | c) * u64(GOLDEN)
    z = (z ^ (z >> u64(30))) * u64(MIX1)
    z = (z ^ (z >> u64(27))) * u64(MIX2)
    z = z ^ (z >> u64(31))
    i = z >> u64(64 - TABLE_BITS)
    frac = xp.astype((z >> u64(64 - TABLE_BITS - 24)) & u64(0xFFFFFF), xp.float32) * 2.0**-24
    return lookup(xp, T, i) + frac * lookup(xp, dT, i)


def signal_gain(xp, X):
    """a(X) = sqrt(E0·0.18 / max(E0·X, 1)): relative noise of a Poisson-like exposure, 1 at mid-grey."""
    return xp.sqrt(float(np.float32(E0 * 0.18)) / xp.maximum(float(np.float32(E0)) * X, 1.0))


def grain_norm(taps: np.ndarray) -> float:
    """Standard deviation of unit white noise blurred by the 2D kernel taps⊗taps: sqrt(Σ G²) = Σ g²."""
    return float(np.sum(taps.astype(np.float64) ** 2))
