"""Fused CPU kernels (numba) for the array ops of `ops.py`.

Every output element is computed by the same sequence of float32 operations whatever the array's extent
(loops vectorise across pixels, never across a reduction; no fastmath, so no reassociation or FMA
contraction), which is what makes a tile bit-identical to the same pixels of the whole image.
Rows are split across threads with prange.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_f32 = np.float32


@njit(parallel=True, cache=True, nogil=True)
def front_lut(img, table, matrix, factors, use_factors):
    h, w = img.shape[0], img.shape[1]
    C = matrix.shape[0]
    out = np.empty((C, h, w), dtype=np.float32)
    for y in prange(h):
        for c in range(C):
            m0, m1, m2 = matrix[c, 0], matrix[c, 1], matrix[c, 2]
            fac = factors[c]
            for x in range(w):
                v = m0 * table[img[y, x, 0]] + m1 * table[img[y, x, 1]] + m2 * table[img[y, x, 2]]
                if use_factors:
                    v = min(max(v * fac, _f32(0.0)), _f32(1.0))
                out[c, y, x] = v
    return out


@njit(parallel=True, cache=True, nogil=True)
def front_linear(lin, matrix, factors, use_factors):
    h, w = lin.shape[0], lin.shape[1]
    C = matrix.shape[0]
    out = np.empty((C, h, w), dtype=np.float32)
    for y in prange(h):
        for c in range(C):
            m0, m1, m2 = matrix[c, 0], matrix[c, 1], matrix[c, 2]
            fac = factors[c]
            for x in range(w):
                v = m0 * lin[y, x, 0] + m1 * lin[y, x, 1] + m2 * lin[y, x, 2]
                if use_factors:
                    v = min(max(v * fac, _f32(0.0)), _f32(1.0))
                out[c, y, x] = v
    return out


@njit(parallel=True, cache=True, nogil=True)
def cells(src, rmap, cmap, f, thr, eta):
    nr, nc = rmap.shape[0] // f, cmap.shape[0] // f
    out = np.empty((nr, nc), dtype=np.float32)
    scale = _f32(eta / (f * f))
    zero = _f32(0.0)
    for j in prange(nr):
        acc = np.zeros(cmap.shape[0], dtype=np.float32)
        for a in range(f):
            row = rmap[j * f + a]
            for x in range(cmap.shape[0]):
                acc[x] += max(src[row, cmap[x]] - thr, zero)
        for i in range(nc):
            s = zero
            for b in range(f):
                s += acc[i * f + b]
            out[j, i] = s * scale
    return out


@njit(parallel=True, cache=True, nogil=True)
def blur_valid(src, taps_v, taps_h, radii, out):
    n = taps_v.shape[0]
    r = (taps_v.shape[1] - 1) // 2
    h, w = src.shape[0] - 2 * r, src.shape[1] - 2 * r
    # rows of src holding any non-zero value: an output row whose window has none is exactly zero
    nonzero = np.zeros(src.shape[0] + 1, dtype=np.int64)
    for y in prange(src.shape[0]):
        for x in range(src.shape[1]):
            if src[y, x] != 0:
                nonzero[y + 1] = 1
                break
    for y in range(src.shape[0]):
        nonzero[y + 1] += nonzero[y]
    for y in prange(h):
        for x in range(w):
            out[y, x] = _f32(0.0)
        if nonzero[y + 2 * r + 1] == nonzero[y]:
            continue
        tmp = np.empty(src.shape[1], dtype=np.float32)
        acc = np.empty(w, dtype=np.float32)
        for i in range(n):
            ri = radii[i]
            t = taps_v[i, r]
            for x in range(src.shape[1]):
                tmp[x] = t * src[y + r, x]
            for k in range(1, ri + 1):
                t = taps_v[i, r + k]
                for x in range(src.shape[1]):
                    tmp[x] += t * (src[y + r - k, x] + src[y + r + k, x])
            t = taps_h[i, r]
            for x in range(w):
                acc[x] = t * tmp[x + r]
            for k in range(1, ri + 1):
                t = taps_h[i, r + k]
                for x in range(w):
                    acc[x] += t * (tmp[x + r - k] + tmp[x + r + k])
            for x in range(w):
                out[y, x] += acc[x]


@njit(parallel=True, cache=True, nogil=True)
def compose(src, sy, sx, blurred, has_blur, rj, rw0, rw1, cj, cw0, cw1, thr, eta, out):
    h, w = rj.shape[0], cj.shape[0]
    zero, one = _f32(0.0), _f32(1.0)
    for y in prange(h):
        row = np.zeros(blurred.shape[1], dtype=np.float32)
        if has_blur:
            j = rj[y]
            a0, a1 = rw0[y], rw1[y]
            for i in range(blurred.shape[1]):
                row[i] = a0 * blurred[j, i] + a1 * blurred[j + 1, i]
        for x in range(w):
            s = src[sy + y, sx + x]
            v = s - eta * max(s - thr, zero)
            if has_blur:
                i = cj[x]
                v = v + (cw0[x] * row[i] + cw1[x] * row[i + 1])
            out[y, x] = min(max(v, zero), one)


@njit(cache=True, inline="always")
def _rho(X, r, c, gy, gx, k, T, dT):
    z = k + ((np.uint64(gy) << np.uint64(32)) | np.uint64(gx)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    t = np.int64(z >> np.uint64(48))
    frac = np.float32((z >> np.uint64(24)) & np.uint64(0xFFFFFF)) * _f32(2.0**-24)
    u = T[t] + frac * dT[t]
    a = _f32(1.0) / np.sqrt(max(_f32(1000.0) * X[r, c], _f32(1.0)))
    return a * u


@njit(parallel=True, cache=True, nogil=True)
def grain_noise(X, rmap, cmap, y0, x0, key, T, dT, taps, out):
    """G ⊛ (a(X)·u) on the 'valid' part of the rows rmap × columns cmap, block by block of rows so the
    unblurred noise never exists as a whole plane."""
    r = (taps.shape[0] - 1) // 2
    h, w = rmap.shape[0] - 2 * r, cmap.shape[0] - 2 * r
    nc = cmap.shape[0]
    k = np.uint64(key)
    block = 64
    nblocks = (h + block - 1) // block
    for b in prange(nblocks):
        lo = b * block
        hi = min(h, lo + block)
        buf = np.empty((hi - lo + 2 * r, nc), dtype=np.float32)
        for i in range(hi - lo + 2 * r):
            row = rmap[lo + i]
            for j in range(nc):
                c = cmap[j]
                buf[i, j] = _rho(X, row, c, row + y0, c + x0, k, T, dT)
        tmp = np.empty(nc, dtype=np.float32)
        for y in range(hi - lo):
            t = taps[r]
            for x in range(nc):
                tmp[x] = t * buf[y + r, x]
            for q in range(1, r + 1):
                t = taps[r + q]
                for x in range(nc):
                    tmp[x] += t * (buf[y + r - q, x] + buf[y + r + q, x])
            t = taps[r]
            for x in range(w):
                out[lo + y, x] = t * tmp[x + r]
            for q in range(1, r + 1):
                t = taps[r + q]
                for x in range(w):
                    out[lo + y, x] += t * (tmp[x + r - q] + tmp[x + r + q])


@njit(cache=True, inline="always")
def _clipped_noise(noise, y, nscale, n):
    """Row y of every grain plane p, scaled by nscale[p] and clipped to [-1, 1], into n (P, w)."""
    lo, hi = _f32(-1.0), _f32(1.0)
    for p in range(noise.shape[0]):
        k = nscale[p]
        for x in range(n.shape[1]):
            n[p, x] = min(max(noise[p, y, x] * k, lo), hi)


@njit(cache=True, inline="always")
def _base_row(Yp, X, xy, xx, y, c, wd, ws, z):
    """S6 without grain for row y of channel c into z: wd·Y' + ws·X."""
    a, b = wd[c], ws[c]
    for x in range(z.shape[0]):
        z[x] = a * Yp[c, y, x] + b * X[c, xy + y, xx + x]


@njit(cache=True, inline="always")
def _add_grain_row(c, n, coef, z):
    """z += Σ_p coef[c, p]·n_p (the grain terms of S6)."""
    for p in range(n.shape[0]):
        k = coef[c, p]
        for x in range(z.shape[0]):
            z[x] += k * n[p, x]


@njit(cache=True, inline="always")
def _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, z):
    """S6 for row y of channel c into z: wd·Y' + ws·X + Σ_p coef[c, p]·n_p."""
    _base_row(Yp, X, xy, xx, y, c, wd, ws, z)
    _add_grain_row(c, n, coef, z)


@njit(cache=True, inline="always")
def _filmic(z, tA, tB, cb, de, df, ef):
    """The filmic curve of one mixed value, clipped to [0, 1] (cb = tC·tB, de = tD·tE, df = tD·tF,
    ef = tE/tF)."""
    v = _f32(10.0) * max(z, _f32(0.0))
    f = (v * (tA * v + cb) + de) / (v * (tA * v + tB) + df) - ef
    return min(max(f, _f32(0.0)), _f32(1.0))


@njit(cache=True, inline="always")
def _srgb_code(f, guess, steps, cells):
    """The sRGB code of F: read off `guess` (interpolated in u = sqrt(F)), then settled exactly against the
    code's thresholds `steps`."""
    u = np.sqrt(f) * cells
    j = min(np.int64(u), cells - 1)
    g = guess[j] + (u - j) * (guess[j + 1] - guess[j])
    k = np.int64(g + _f32(0.5))
    return k - (f < steps[k]) + (f >= steps[k + 1])


@njit(parallel=True, cache=True, nogil=True)
def mix(Yp, X, xy, xx, noise, coef, nscale, wd, ws):
    C, h, w = Yp.shape
    P = noise.shape[0]
    out = np.empty((C, h, w), dtype=np.float32)
    for y in prange(h):
        n = np.empty((P, w), dtype=np.float32)
        _clipped_noise(noise, y, nscale, n)
        for c in range(C):
            _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, out[c, y])
    return out


@njit(cache=True, inline="always")
def _code(v, vb, t, start, base, shift, last):
    """The largest k with t[k] ≤ v: the bucket of v's float32 bits gives the first candidate, and seven
    branchless steps search the ≤ 127 codes after it (thresholds are sorted, +inf-padded)."""
    b = min(max(np.int64(vb >> shift) - base, 0), last)
    k = np.int64(start[b])
    for step in (64, 32, 16, 8, 4, 2, 1):
        k += step * (v >= t[k + step])
    return k if v > 0 else 0


@njit(parallel=True, cache=True, nogil=True)
def mix_encode(Yp, X, xy, xx, noise, coef, nscale, wd, ws, thresholds, starts, base, shift, out):
    C, h, w = Yp.shape
    P = noise.shape[0]
    last = starts.shape[1] - 2
    sh = np.uint32(shift)
    for y in prange(h):
        n = np.empty((P, w), dtype=np.float32)
        z = np.empty(w, dtype=np.float32)
        zb = z.view(np.uint32)
        _clipped_noise(noise, y, nscale, n)
        for c in range(C):
            _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, z)
            t = thresholds[c]
            st = starts[c]
            for x in range(w):
                out[y, x, c] = _code(z[x], zb[x], t, st, base, sh, last)


@njit(parallel=True, cache=True, nogil=True)
def mix_filmic_encode(Yp, X, xy, xx, noise, coef, nscale, wd, ws, tone, guess, steps, out):
    """mix → filmic → sRGB code without an H&D curve: the code of F is first read off `guess` (enc(u²)·vmax
    at u = j/cells, interpolated in u = sqrt(F), within 0.02 of the exact value) and then settled exactly
    against the code's own thresholds `steps` (dec((k-0.5)/vmax), rounded up to float32)."""
    C, h, w = Yp.shape
    P = noise.shape[0]
    cells = guess.shape[0] - 1
    for y in prange(h):
        n = np.empty((P, w), dtype=np.float32)
        F = np.empty(w, dtype=np.float32)
        _clipped_noise(noise, y, nscale, n)
        for c in range(C):
            tA, tB, tC, tD, tE, tF = tone[c, 0], tone[c, 1], tone[c, 2], tone[c, 3], tone[c, 4], tone[c, 5]
            cb, de, df, ef = tC * tB, tD * tE, tD * tF, tE / tF
            _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, F)
            for x in range(w):
                out[y, x, c] = _srgb_code(_filmic(F[x], tA, tB, cb, de, df, ef), guess, steps, cells)


@njit(parallel=True, cache=True, nogil=True)
def mix_filmic_blend_encode(Yp, X, xy, xx, noise, coef, nscale, wd, ws, tone, r, guess, steps, out):
    """`mix_filmic_encode` with the grain's effect scaled after the curve (r = r(s) < 1, spec §4): per
    channel F = clip01(F0 + r·(F − F0)), F0 the filmic value of the mix without its grain terms (the same
    float32 sum `_mixed_row` starts from), then coded as there."""
    C, h, w = Yp.shape
    P = noise.shape[0]
    cells = guess.shape[0] - 1
    zero, one = _f32(0.0), _f32(1.0)
    for y in prange(h):
        n = np.empty((P, w), dtype=np.float32)
        F = np.empty(w, dtype=np.float32)
        F0 = np.empty(w, dtype=np.float32)
        _clipped_noise(noise, y, nscale, n)
        for c in range(C):
            tA, tB, tC, tD, tE, tF = tone[c, 0], tone[c, 1], tone[c, 2], tone[c, 3], tone[c, 4], tone[c, 5]
            cb, de, df, ef = tC * tB, tD * tE, tD * tF, tE / tF
            _base_row(Yp, X, xy, xx, y, c, wd, ws, F0)
            F[:] = F0
            _add_grain_row(c, n, coef, F)
            for x in range(w):
                f0 = _filmic(F0[x], tA, tB, cb, de, df, ef)
                f = _filmic(F[x], tA, tB, cb, de, df, ef)
                out[y, x, c] = _srgb_code(min(max(f0 + r * (f - f0), zero), one), guess, steps, cells)


@njit(parallel=True, cache=True, nogil=True)
def any_above(src, y0, y1, x0, x1, thr):
    found = np.zeros(y1 - y0, dtype=np.bool_)
    for y in prange(y0, y1):
        for x in range(x0, x1):
            if src[y, x] > thr:
                found[y - y0] = True
                break
    return found.any()
