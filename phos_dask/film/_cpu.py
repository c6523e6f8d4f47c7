"""Fused CPU kernels (numba) for the array ops of `ops.py`.

Every output element is computed by the same sequence of float32 operations whatever the array's extent
(loops vectorise across pixels, never across a reduction; no fastmath, so no reassociation or FMA
contraction), which is what makes a tile bit-identical to the same pixels of the whole image.
Rows are split across threads with prange. The per-pixel math lives in `_pixel`, which the GPU kernels
(`_cuda`) compile too.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
import types
from collections.abc import Callable, Iterator

import numba
import numpy as np
from numba import njit, prange

from phos_dask.film import _pixel

_f32 = np.float32


class Kernel:
    """A CPU kernel compiled two ways from one function: rows split across numba's threads (prange), and
    serial (prange runs as range) for a caller limited to one thread, e.g. a Dask worker's task
    (phos_dask.tasks.limit_kernel_threads), where splitting gains nothing. The serial build compiles in about
    half the time and loads from the cache about 3× faster, which is most of a worker's first-task cost; both
    compute every element with the same float32 operations, so their outputs are the same bits."""

    def __init__(self, fn: Callable) -> None:
        self.parallel = njit(parallel=True, cache=True, nogil=True)(fn)
        serial = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_serial", fn.__defaults__,
                                    fn.__closure__)
        serial.__qualname__ = f"{fn.__qualname__}_serial"  # its own cache files
        self.serial = njit(cache=True, nogil=True)(serial)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        dispatcher = self.serial if numba.get_num_threads() == 1 else self.parallel
        types_ = tuple(numba.typeof(a) for a in args)
        if types_ not in dispatcher.overloads:  # compile (or load from the cache) once per machine at a time
            with compile_lock(dispatcher.py_func.__qualname__):
                dispatcher.compile(types_)
        return dispatcher(*args)


@contextlib.contextmanager
def compile_lock(kernel: str = "") -> Iterator[None]:
    """An exclusive lock across this machine's processes that share numba's kernel cache, held while one of
    them compiles `kernel` (one lock per kernel build): the others wait and then load it from the cache, so a
    machine's workers compile each kernel once between them instead of all at once, and different kernels
    can compile at the same time (phos_dask.warmup starts those compiles early)."""
    where = numba.config.CACHE_DIR or os.path.dirname(os.path.abspath(__file__))
    name = hashlib.sha256(f"{where}\0{kernel}".encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"phos_dask-compile-{os.getuid()}-{name}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # no lock to be had: compile without one
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def kernel(fn: Callable) -> Kernel:
    return Kernel(fn)


def _inline(fn):
    """One of `_pixel`'s shared per-pixel functions as an inlined CPU function."""
    return njit(cache=True, inline="always")(fn)


_exposure = _inline(_pixel.exposure)
_excess = _inline(_pixel.excess)
_kept = _inline(_pixel.kept)
_lerp2 = _inline(_pixel.lerp2)
_clip01 = _inline(_pixel.clip01)
_grain_u = _inline(_pixel.grain_u)
_signal_gain = _inline(_pixel.signal_gain)
_clip_noise = _inline(_pixel.clipped_noise)
_mixed_base = _inline(_pixel.mixed_base)
_grain_term = _inline(_pixel.grain_term)
_filmic_coeffs = _inline(_pixel.filmic_coeffs)
_filmic = _inline(_pixel.filmic)
_blend = _inline(_pixel.blend)
_srgb_code = _inline(_pixel.srgb_code)
_code = _inline(_pixel.table_code)


@kernel
def front_lut(img, table, matrix, factors, use_factors):
    h, w = img.shape[0], img.shape[1]
    C = matrix.shape[0]
    out = np.empty((C, h, w), dtype=np.float32)
    for y in prange(h):
        for c in range(C):
            m0, m1, m2 = matrix[c, 0], matrix[c, 1], matrix[c, 2]
            fac = factors[c]
            for x in range(w):
                out[c, y, x] = _exposure(table[img[y, x, 0]], table[img[y, x, 1]], table[img[y, x, 2]],
                                         m0, m1, m2, fac, use_factors)
    return out


@kernel
def front_linear(lin, matrix, factors, use_factors):
    h, w = lin.shape[0], lin.shape[1]
    C = matrix.shape[0]
    out = np.empty((C, h, w), dtype=np.float32)
    for y in prange(h):
        for c in range(C):
            m0, m1, m2 = matrix[c, 0], matrix[c, 1], matrix[c, 2]
            fac = factors[c]
            for x in range(w):
                out[c, y, x] = _exposure(lin[y, x, 0], lin[y, x, 1], lin[y, x, 2], m0, m1, m2, fac, use_factors)
    return out


@kernel
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
                acc[x] += _excess(src[row, cmap[x]], thr)
        for i in range(nc):
            s = zero
            for b in range(f):
                s += acc[i * f + b]
            out[j, i] = s * scale
    return out


@kernel
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


@kernel
def compose(src, sy, sx, blurred, has_blur, rj, rw0, rw1, cj, cw0, cw1, thr, eta, out):
    h, w = rj.shape[0], cj.shape[0]
    for y in prange(h):
        row = np.zeros(blurred.shape[1], dtype=np.float32)
        if has_blur:
            j = rj[y]
            a0, a1 = rw0[y], rw1[y]
            for i in range(blurred.shape[1]):
                row[i] = _lerp2(a0, blurred[j, i], a1, blurred[j + 1, i])
        for x in range(w):
            v = _kept(src[sy + y, sx + x], thr, eta)
            if has_blur:
                i = cj[x]
                v = v + _lerp2(cw0[x], row[i], cw1[x], row[i + 1])
            out[y, x] = _clip01(v)


@njit(cache=True, inline="always")
def _rho(X, r, c, gy, gx, k, T, dT):
    """a(X)·u of one pixel: its signal gain times its grain deviate."""
    return _signal_gain(X[r, c]) * _grain_u(gy, gx, k, T, dT)


@kernel
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
    for p in range(noise.shape[0]):
        k = nscale[p]
        for x in range(n.shape[1]):
            n[p, x] = _clip_noise(noise[p, y, x], k)


@njit(cache=True, inline="always")
def _base_row(Yp, X, xy, xx, y, c, wd, ws, z):
    """S6 without grain for row y of channel c into z: wd·Y' + ws·X."""
    a, b = wd[c], ws[c]
    for x in range(z.shape[0]):
        z[x] = _mixed_base(a, Yp[c, y, x], b, X[c, xy + y, xx + x])


@njit(cache=True, inline="always")
def _add_grain_row(c, n, coef, z):
    """z += Σ_p coef[c, p]·n_p (the grain terms of S6)."""
    for p in range(n.shape[0]):
        k = coef[c, p]
        for x in range(z.shape[0]):
            z[x] = _grain_term(z[x], k, n[p, x])


@njit(cache=True, inline="always")
def _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, z):
    """S6 for row y of channel c into z: wd·Y' + ws·X + Σ_p coef[c, p]·n_p."""
    _base_row(Yp, X, xy, xx, y, c, wd, ws, z)
    _add_grain_row(c, n, coef, z)


@kernel
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


@kernel
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


@kernel
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
            cb, de, df, ef = _filmic_coeffs(tB, tC, tD, tE, tF)
            _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, F)
            for x in range(w):
                out[y, x, c] = _srgb_code(_filmic(F[x], tA, tB, cb, de, df, ef), guess, steps, cells)


@kernel
def mix_filmic_blend_encode(Yp, X, xy, xx, noise, coef, nscale, wd, ws, tone, r, guess, steps, out):
    """`mix_filmic_encode` with the grain's effect scaled after the curve (r = r(s) < 1, spec §4): per
    channel F = clip01(F0 + r·(F − F0)), F0 the filmic value of the mix without its grain terms (the same
    float32 sum `_mixed_row` starts from), then coded as there."""
    C, h, w = Yp.shape
    P = noise.shape[0]
    cells = guess.shape[0] - 1
    for y in prange(h):
        n = np.empty((P, w), dtype=np.float32)
        F = np.empty(w, dtype=np.float32)
        F0 = np.empty(w, dtype=np.float32)
        _clipped_noise(noise, y, nscale, n)
        for c in range(C):
            tA, tB, tC, tD, tE, tF = tone[c, 0], tone[c, 1], tone[c, 2], tone[c, 3], tone[c, 4], tone[c, 5]
            cb, de, df, ef = _filmic_coeffs(tB, tC, tD, tE, tF)
            _base_row(Yp, X, xy, xx, y, c, wd, ws, F0)
            F[:] = F0
            _add_grain_row(c, n, coef, F)
            for x in range(w):
                f0 = _filmic(F0[x], tA, tB, cb, de, df, ef)
                f = _filmic(F[x], tA, tB, cb, de, df, ef)
                out[y, x, c] = _srgb_code(_blend(f0, f, r), guess, steps, cells)


@kernel
def any_above(src, y0, y1, x0, x1, thr):
    found = np.zeros(y1 - y0, dtype=np.bool_)
    for y in prange(y0, y1):
        for x in range(x0, x1):
            if src[y, x] > thr:
                found[y - y0] = True
                break
    return found.any()
