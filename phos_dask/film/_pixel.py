"""Per-pixel float32 math written once for both kernel families: `_cpu` compiles these functions with
`numba.njit(inline="always")`, `_cuda` with `numba.cuda.jit(device=True)` (and the CUDA simulator runs them
as plain Python on NumPy scalars). One source, so the CPU and GPU kernels cannot drift apart.

Rules that keep the three targets computing the same float32 values:

* leaf functions only: none calls another (each target wraps them itself; a call here would reach the
  plain Python function, which neither numba target can call);
* every constant is a NumPy scalar of the intended type (np.float32, np.uint64), and callers pass float32
  scalars as np.float32, so numba and NumPy (the simulator) type every operation alike;
* square roots go through `math.sqrt` rounded to float32: numba types math.sqrt(float32) as float32 on both
  targets (correctly rounded, no fastmath), and the simulator's float64 square root rounded to float32 is
  the same value (a correctly rounded double square root rounds to the correctly rounded float one);
  numba-cuda has no np.sqrt in device code;
* no fastmath anywhere. The GPU's compiler may still contract a multiply and an add into one FMA, which
  changes low bits against the CPU (tests allow 2e-5), never between a tile and the whole image: every
  pixel runs the same instruction sequence whatever the extent.

Units: pixel values are linear exposures or linear output values (dimensionless, [0, 1] nominal); codes are
integer output codes.
"""

from __future__ import annotations

import math

import numpy as np

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FM1 = np.float32(-1.0)
_HALF = np.float32(0.5)
_TEN = np.float32(10.0)
_E0 = np.float32(1000.0)  # grain.E0: photons per unit exposure
_FRAC = np.float32(2.0**-24)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # grain.GOLDEN, MIX1, MIX2 (SplitMix64)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S24 = np.uint64(24)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S48 = np.uint64(48)  # 64 - grain.TABLE_BITS: the top 16 bits pick the table cell
_LOW24 = np.uint64(0xFFFFFF)
_ABS = np.uint32(0x7FFFFFFF)  # all bits of a float32 but its sign


def exposure(v0, v1, v2, m0, m1, m2, fac, use_factors):
    """S1–S3 of one pixel and layer: m·(linear r, g, b), then ×fac clipped to [0, 1] when use_factors
    (reciprocity); float32 in, float32 out."""
    v = m0 * v0 + m1 * v1 + m2 * v2
    if use_factors:
        v = min(max(v * fac, _F0), _F1)
    return v


def excess(v, thr):
    """The part of exposure v above the threshold thr, (v − thr)₊ (what bloom and halation scatter)."""
    return max(v - thr, _F0)


def kept(s, thr, eta):
    """s − eta·(s − thr)₊: the exposure left in place after a share eta of its excess is scattered."""
    return s - eta * max(s - thr, _F0)


def lerp2(w0, a, w1, b):
    """w0·a + w1·b: one step of the bilinear upsampling of a reduced-resolution blur."""
    return w0 * a + w1 * b


def clip01(v):
    """v clipped to [0, 1]."""
    return min(max(v, _F0), _F1)


def grain_u(gy, gx, key, T, dT):
    """u(plane, gy, gx): the standard normal deviate of global pixel (gy, gx) in the stream `key`
    (np.uint64): SplitMix64 of the counter gy·2³² + gx, top 16 bits pick the cell of the inverse-normal
    table T (float32, with differences dT), the next 24 bits the position in it (`grain.hash_normal`)."""
    z = key + ((np.uint64(gy) << _S32) | np.uint64(gx)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    t = np.int64(z >> _S48)
    frac = np.float32((z >> _S24) & _LOW24) * _FRAC
    return T[t] + frac * dT[t]


def grain_pos(gy, gx):
    """The counter term of `grain_u`'s hash, (gy·2³² + gx)·GOLDEN (np.uint64, wrapping): the same for every
    plane of a pixel, so the CPU's row loops compute it once for all of them."""
    return ((np.uint64(gy) << _S32) | np.uint64(gx)) * _GOLDEN


def grain_cell(z):
    """`grain_u` in steps for the CPU's vector loops: from z = key + `grain_pos` (np.uint64), the hash's table
    cell (np.int32: 16 bits, for 8-wide gathers) and position in it (float32); `grain_lookup` turns them into
    u."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return np.int32(z >> _S48), np.float32((z >> _S24) & _LOW24) * _FRAC


def grain_lookup(TT, t, frac):
    """u from `grain_cell`'s (cell, position): T[t] + frac·dT[t] as `grain_u` computes it, from the table's
    pairs TT[t] = (T[t], dT[t]) (`grain.normal_pairs`: both in one cache line)."""
    return TT[t, 0] + frac * TT[t, 1]


def signal_gain(x):
    """a(X) = 1/sqrt(max(E0·X, 1)) (`grain.signal_gain`), float32."""
    return _F1 / np.float32(math.sqrt(max(_E0 * x, _F1)))


def clipped_noise(v, k):
    """One grain plane's value n = clip(ρ_b·k, −1, 1) (k: the plane's nscale)."""
    return min(max(v * k, _FM1), _F1)


def mixed_base(a, yp, b, x):
    """S6 without grain: wd·Y' + ws·X (a = wd, b = ws of the channel)."""
    return a * yp + b * x


def grain_term(z, k, n):
    """z + k·n: one grain plane's term of S6 (k = coef[c, p])."""
    return z + k * n


def filmic_coeffs(tB, tC, tD, tE, tF):
    """The filmic curve's derived constants (cb, de, df, ef) = (C·B, D·E, D·F, E/F), float32."""
    return tC * tB, tD * tE, tD * tF, tE / tF


def filmic(z, tA, tB, cb, de, df, ef):
    """S7: the filmic curve of one mixed value z (linear), clipped to [0, 1] (cb, de, df, ef from
    `filmic_coeffs`)."""
    v = _TEN * max(z, _F0)
    f = (v * (tA * v + cb) + de) / (v * (tA * v + tB) + df) - ef
    return min(max(f, _F0), _F1)


def blend(f0, f, r):
    """clip01(f0 + r·(f − f0)): the grain's effect on the tone-mapped value scaled by r(s) (spec §4)."""
    return min(max(f0 + r * (f - f0), _F0), _F1)


def srgb_code(f, guess, steps, cells):
    """The sRGB code of linear f: read off `guess` (interpolated in u = sqrt(f); cells = len(guess) − 1 as
    np.int64), then settled exactly against the code's thresholds `steps` (`tone.code_tables`)."""
    u = np.float32(math.sqrt(f)) * cells
    j = min(np.int64(u), cells - 1)
    g = guess[j] + (u - j) * (guess[j + 1] - guess[j])
    k = np.int64(g + _HALF)
    return k - (f < steps[k]) + (f >= steps[k + 1])


def code_bucket(fb, base, shift, scale, last):
    """The first step of coding a linear f in [0, 1] by its float32 bit pattern fb (uint32): (b, t), the
    bucket b of `tone.code_guesses`' table (np.int32: the pattern's high bits less base, clipped to
    [0, last]; base, last np.int32, shift np.uint32) and f's position t in it (float32: the low bits
    × scale = 2^-shift). `guessed_code` and `settled_code` finish the code."""
    bits = fb & _ABS
    b = min(max(np.int32(bits >> shift) - base, np.int32(0)), last)
    t = np.float32(bits & ((np.uint32(1) << shift) - np.uint32(1))) * scale
    return b, t


def guessed_code(G, b, t):
    """Where to settle the code of bucket b at position t: the guess g = G[b] + t·(G[b+1] − G[b]) (float32,
    within 0.05 of enc(F)·vmax) rounded to k, plus 1 when g ≥ k (np.int32). The exact code is then that
    index or one less: g lies within 0.05 of the code's continuous value, so from below k it is k − 1 or k,
    from k up it is k or k + 1, and one threshold tells which (`settled_code`)."""
    g = G[b] + t * (G[b + 1] - G[b])
    k = np.int32(g + _HALF)
    return k + np.int32(g >= np.float32(k))


def settled_code(f, i, steps):
    """The sRGB code of linear f from `guessed_code`'s index i: i − 1, or i when f reaches the code's
    threshold steps[i] (`tone.code_tables`: steps[0] = −inf, steps[vmax + 1] = +inf); one table read, the
    code `srgb_code` gives."""
    return i - np.int32(1) + np.int32(f >= steps[i])


def table_code(v, vb, t, start, base, shift, last):
    """The largest k with t[k] ≤ v (`tone.QuantTable`): the bucket of v's float32 bit pattern vb (uint32)
    gives the first candidate, and seven branchless steps search the ≤ 127 codes after it (thresholds are
    sorted and +inf padded); 0 for v ≤ 0."""
    b = min(max(np.int64(vb >> shift) - base, 0), last)
    k = np.int64(start[b])
    for step in (64, 32, 16, 8, 4, 2, 1):
        k += step * (v >= t[k + step])
    return k if v > 0 else 0
