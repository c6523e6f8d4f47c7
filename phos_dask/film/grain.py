"""S6 grain: a pure function of (image seed, plane, global row, global column) and one per-image constant
per plane (K_c, spec §4), tile-invariant.

u(plane, y, x): the SplitMix64 output for counter (y·2³² + x) in a stream keyed by (seed, plane), turned
into a standard normal deviate by a 65 536-cell piecewise-linear inverse normal CDF (top 16 bits pick the
cell, the next 24 bits the position in it). All integer work is exact, so NumPy and CuPy agree bit for bit
on the hash; the table and its interpolation are the same float32 operations on both.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
TABLE_BITS = 16
E0 = 1000.0
#: K_c is the mean of 1/max(E0·X_c, 1) over the pixels with global y ≡ 0 and x ≡ 0 (mod K_STEP) (spec §4).
K_STEP = 4
#: Each term of K_c is rounded to a multiple of 2⁻³² and summed as an integer, so sums over any blocks add up
#: exactly, in any order, to the whole image's sum.
K_FRAC_BITS = 32
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


#: Wichura's algorithm AS 241 (PPND16, Applied Statistics 37, 1988), the rational approximations of Φ⁻¹ that
#: Python's statistics.NormalDist.inv_cdf evaluates: (numerator, denominator) coefficients, highest power
#: first, for the centre |p − ½| ≤ 0.425 (in r = 0.180625 − (p − ½)²) and for the tails with
#: r = sqrt(−ln min(p, 1 − p)) ≤ 5 (in r − 1.6).
_AS241_CENTRE = (
    (2.5090809287301226727e3, 3.3430575583588128105e4, 6.7265770927008700853e4, 4.5921953931549871457e4,
     1.3731693765509461125e4, 1.9715909503065514427e3, 1.3314166789178437745e2, 3.3871328727963666080e0),
    (5.2264952788528545610e3, 2.8729085735721942674e4, 3.9307895800092710610e4, 2.1213794301586595867e4,
     5.3941960214247511077e3, 6.8718700749205790830e2, 4.2313330701600911252e1, 1.0),
)
_AS241_TAIL = (
    (7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1, 1.27045825245236838258e0,
     3.64784832476320460504e0, 5.76949722146069140550e0, 4.63033784615654529590e0, 1.42343711074968357734e0),
    (1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2, 1.48103976427480074590e-1,
     6.89767334985100004550e-1, 1.67638483018380384940e0, 2.05319162663775882187e0, 1.0),
)


def _horner(coefficients: tuple[float, ...], r: np.ndarray) -> np.ndarray:
    acc = np.full_like(r, coefficients[0])
    for c in coefficients[1:]:
        acc = acc * r + c
    return acc


def inverse_normal(p: np.ndarray) -> np.ndarray:
    """Φ⁻¹(p), float64, for p in (0, 1) with min(p, 1 − p) ≥ e⁻²⁵: AS 241 in the operations and order
    Python's NormalDist().inv_cdf uses, one array at a time (the same float64 values on a machine whose C
    library and Python do not fuse multiply-adds; the logarithms are the C library's, through math.log)."""
    p = np.asarray(p, dtype=np.float64)
    q = p - 0.5
    centre = np.abs(q) <= 0.425
    x = np.empty_like(p)
    qc = q[centre]
    rc = 0.180625 - qc * qc
    x[centre] = _horner(_AS241_CENTRE[0], rc) * qc / _horner(_AS241_CENTRE[1], rc)
    pt, qt = p[~centre], q[~centre]
    tail = np.where(qt <= 0.0, pt, 1.0 - pt)
    rt = np.sqrt(-np.fromiter(map(math.log, tail.tolist()), dtype=np.float64, count=tail.size))
    if np.any(rt > 5.0):
        raise ValueError("inverse_normal: p within e^-25 of 0 or 1")
    rt = rt - 1.6
    xt = _horner(_AS241_TAIL[0], rt) / _horner(_AS241_TAIL[1], rt)
    x[~centre] = np.where(qt < 0.0, -xt, xt)
    return x


@cache
def normal_table() -> tuple[np.ndarray, np.ndarray]:
    """(T, dT): T[i] = Φ⁻¹ at the cell edges i/2¹⁶ (the outer edges at 1/2¹⁸ from 0 and 1), scaled so the
    piecewise-linear distribution has variance exactly 1; dT[i] = T[i+1] - T[i]. float32."""
    n = 1 << TABLE_BITS
    p = np.arange(n + 1, dtype=np.float64) / n
    p[0], p[-1] = 0.25 / n, 1 - 0.25 / n
    T = inverse_normal(p)
    var = np.sum(T[:-1] ** 2 + T[:-1] * T[1:] + T[1:] ** 2) / (3 * n)
    T = (T / np.sqrt(var)).astype(np.float32)
    return T, (T[1:] - T[:-1]).astype(np.float32)


@cache
def normal_pairs() -> np.ndarray:
    """`normal_table` as (2¹⁶, 2) float32 pairs (T[i], dT[i]) for the CPU kernels, whose lookups then touch one
    cache line instead of two."""
    T, dT = normal_table()
    pairs = np.ascontiguousarray(np.stack([T[:-1], dT], axis=1))
    pairs.flags.writeable = False
    return pairs


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
    """a(X) = 1/sqrt(max(E0·X, 1)): relative noise of a Poisson-like photon count of mean E0·X."""
    return 1.0 / xp.sqrt(xp.maximum(float(np.float32(E0)) * X, 1.0))


def grain_norm(taps: np.ndarray) -> float:
    """Standard deviation of unit white noise blurred by the 2D kernel taps⊗taps: sqrt(Σ G²) = Σ g²."""
    return float(np.sum(taps.astype(np.float64) ** 2))


def k_sums(X: np.ndarray) -> tuple[int, int]:
    """(Σ q, n) over the pixels of X (float64, any shape) with q = round(2³² / max(E0·X, 1)), an exact
    integer: the contribution of these pixels to K_c = Σq / (n·2³²). NaN counts as X = 0."""
    v = 1.0 / np.fmax(E0 * np.asarray(X, np.float64), 1.0)
    q = np.rint(np.ldexp(v, K_FRAC_BITS)).astype(np.int64)
    total = sum(int(t) for t in q.reshape(q.shape[0], -1).sum(axis=1)) if q.size else 0
    return total, int(q.size)


def k_value(total: int, count: int) -> float:
    """K_c from its integer sums (a correctly rounded float64)."""
    if count <= 0:
        raise ValueError("K_c needs at least one pixel of the subsample grid")
    return total / (count << K_FRAC_BITS)


@cache
def resolution_factor(grain_size: float, s: float) -> float:
    """r(s) (spec §4): 1 for s ≥ 1; for s < 1 the standard deviation of the reference (s = 1) unit grain
    field averaged over a (1/s)×(1/s) box whose edges lie on the reference pixel grid (for integer 1/s the
    aligned block of an area reduction; a box of b = 1/s px covers floor(b) whole pixels and a fraction
    b − floor(b) of the next, in each direction). The 2D kernel and the box are separable, so
    r = Σ_k (w ∗ g)_k² / Σ g² for the 1D reference taps g and box weights w (each summing to 1).
    The model applies it to the grain's effect after the tone curve, not to n_c (`pipeline.Plan.grain_r`)."""
    if s >= 1.0:
        return 1.0
    from phos_dask.film.psf import grain_taps

    g = grain_taps(grain_size, 1.0).astype(np.float64)
    b = 1.0 / s
    n = math.floor(b)
    w = np.ones(n + (b > n), np.float64)
    if b > n:
        w[-1] = b - n
    w /= b
    wg = np.convolve(w, g)
    return float(np.sum(wg**2) / np.sum(g**2))
