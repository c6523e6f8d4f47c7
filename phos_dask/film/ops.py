"""The array ops the pipeline is built from, dispatched on the array type.

NumPy arrays go to the fused numba kernels in `_cpu`; CuPy arrays go to the fused numba-cuda kernels in
`_cuda` when numba-cuda imports (else, and for any other array namespace, the reference implementation
written here against `xp`, which is also the oracle the fused kernels are tested against).
"""

from __future__ import annotations

import os
import warnings
from functools import cache

import numpy as np

from phos_dask.film import colour


def namespace(a):
    """The array API namespace of `a`: numpy for NumPy arrays, array_api_compat's wrapper of cupy for CuPy
    arrays (the model never imports cupy itself), else the array's own (array_api_strict in the tests,
    which keep the reference path free of NumPy-only calls)."""
    if isinstance(a, np.ndarray):
        return np
    import array_api_compat

    return array_api_compat.array_namespace(a)


def _rows_cols(xp, src, rmap, cmap):
    """src[rmap][:, cmap] for integer index arrays (NumPy, host side)."""
    rows = xp.take(src, xp.asarray(np.asarray(rmap, np.int64)), axis=0)
    return xp.take(rows, xp.asarray(np.asarray(cmap, np.int64)), axis=1)


def _expand(xp, v, axis: int):
    return xp.expand_dims(xp.asarray(v), axis=axis)


#: Route NumPy arrays through the reference implementations too (tests compare the two paths).
FORCE_REFERENCE = False


#: Route NumPy arrays through the GPU kernels of `_cuda` (tests: under numba-cuda's simulator they run on
#: the CPU; on a GPU numba copies them to the device and back).
FORCE_CUDA = False
#: Whether CuPy arrays use the fused GPU kernels (when numba-cuda imports); PHOS_CUDA_KERNELS=0 keeps them
#: on the reference ops (one CuPy call per array operation), e.g. to compare the two on a GPU.
CUDA_KERNELS = os.environ.get("PHOS_CUDA_KERNELS", "1") != "0"


def _is_cpu(a) -> bool:
    return isinstance(a, np.ndarray) and not FORCE_REFERENCE and not FORCE_CUDA


@cache
def _load_cuda():
    try:
        from phos_dask.film import _cuda
    except Exception as e:  # numba-cuda missing, or no usable CUDA driver for it
        warnings.warn(f"fused GPU kernels unavailable, using the reference GPU ops: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=3)
        return None
    return _cuda


def _gpu(a):
    """The `_cuda` module when a's op runs on the fused GPU kernels, else None."""
    if FORCE_REFERENCE:
        return None
    if isinstance(a, np.ndarray):
        return _load_cuda() if FORCE_CUDA else None
    if CUDA_KERNELS and type(a).__module__.split(".")[0] == "cupy":
        return _load_cuda()
    return None


def _dev(k, v, like, dtype=None, key=None):
    """Host value v (array or list) as a contiguous array of `dtype` where `like` lives (`_cuda.to_device`)."""
    return k.to_device(np.ascontiguousarray(np.asarray(v, dtype)), like, key)


def _contiguous(a):
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a)
    import cupy

    return cupy.ascontiguousarray(a)


def _f32(v) -> np.float32:
    return np.float32(v)


def front(img, matrix: np.ndarray, factors: np.ndarray | None, linear_input: bool = False, out=None):
    """S1–S3: (h, w, 3) sRGB codes or floats → (C, h, w) float32 layer exposures X (into `out` if given, on
    the CPU)."""
    xp = namespace(img)
    use = factors is not None
    fac = np.ones(matrix.shape[0], np.float32) if factors is None else factors.astype(np.float32)
    if _is_cpu(img):
        from phos_dask.film import _cpu

        if out is None:
            out = np.empty((matrix.shape[0], img.shape[0], img.shape[1]), np.float32)
        if img.dtype in (np.uint8, np.uint16):
            _cpu.front_lut(img, colour.input_table(img.dtype, linear_input), matrix, fac, use, out)
        else:
            lin = colour.linearise(np, img, linear_input)
            _cpu.front_linear(np.ascontiguousarray(lin, dtype=np.float32), matrix, fac, use, out)
        return out
    k = _gpu(img)
    if k is not None:
        out = k.empty_like_kind(img, (matrix.shape[0], img.shape[0], img.shape[1]))
        m, f = _dev(k, matrix, img, np.float32), _dev(k, fac, img, np.float32)
        if img.dtype in (np.uint8, np.uint16):
            table = colour.input_table(img.dtype, linear_input)
            t = k.to_device(table, img, ("input", np.dtype(img.dtype).str, bool(linear_input)))
            return k.front_lut(_contiguous(img), t, m, f, use, out)
        lin = colour.linearise(xp, img, linear_input)
        return k.front_linear(_contiguous(xp.astype(lin, xp.float32)), m, f, use, out)
    lin = colour.linearise(xp, img, linear_input)
    return colour.emulsion_response(xp, lin, matrix, fac if use else None)


def cells(src, rmap, cmap, f: int, thr: float, eta: float):
    """Means over f×f cells of eta·max(src - thr, 0), reading rows rmap and columns cmap of src."""
    if _is_cpu(src):
        from phos_dask.film import _cpu

        i, w = np.zeros(1, np.int64), np.zeros(1, np.float32)  # no composing: unused interpolation
        return _cpu.cells(src, rmap, cmap, f, _f32(thr), _f32(eta), False, 0, 0, np.zeros((1, 1), np.float32), False,
                          i, w, w, i, w, w, _f32(0.0), _f32(0.0))
    k = _gpu(src)
    if k is not None:
        out = k.empty_like_kind(src, (len(rmap) // f, len(cmap) // f))
        return k.cells(src, _dev(k, rmap, src, np.int64), _dev(k, cmap, src, np.int64), f, _f32(thr), _f32(eta), out)
    xp = namespace(src)
    v = xp.maximum(_rows_cols(xp, src, rmap, cmap) - float(_f32(thr)), 0.0)
    nr, nc = len(rmap) // f, len(cmap) // f
    v = xp.sum(xp.reshape(v, (nr, f, nc * f)), axis=1, dtype=xp.float32)
    v = xp.sum(xp.reshape(v, (nr, nc, f)), axis=2, dtype=xp.float32)
    return v * float(_f32(eta / (f * f)))


def cells_composed(X, xy: int, xx: int, bloom, interp_rows, interp_cols, bthr: float, beta: float, rmap, cmap,
                   f: int, thr: float, eta: float):
    """NumPy only: `cells` of S = compose(X, xy, xx, bloom, interp_rows, interp_cols, bthr, beta) (the bloom
    stage's output, bloom None for zeros) at rows rmap and columns cmap of S, without S stored: the same
    values as `cells` on the composed array."""
    from phos_dask.film import _cpu

    rj, rw0, rw1 = interp_rows
    cj, cw0, cw1 = interp_cols
    has = bloom is not None
    b = bloom if has else np.zeros((1, 1), np.float32)
    return _cpu.cells(X, rmap, cmap, f, _f32(thr), _f32(eta), True, xy, xx, b, has, rj, rw0, rw1, cj, cw0, cw1,
                      _f32(bthr), _f32(beta))


def blur_valid(src, taps_v: np.ndarray, taps_h: np.ndarray, radii: np.ndarray, out=None):
    """Σ_i (taps_v[i] vertically, then taps_h[i] horizontally), 'valid' part: (h-2r, w-2r)."""
    r = (taps_v.shape[1] - 1) // 2
    h, w = src.shape[0] - 2 * r, src.shape[1] - 2 * r
    if _is_cpu(src):
        from phos_dask.film import _cpu

        out = np.empty((h, w), np.float32) if out is None else out
        _cpu.blur_valid(src, taps_v, taps_h, radii, out)
        return out
    k = _gpu(src)
    if k is not None:
        out = k.empty_like_kind(src, (h, w)) if out is None else out
        return k.blur_valid(src, _dev(k, taps_v, src, np.float32), _dev(k, taps_h, src, np.float32),
                            _dev(k, radii, src, np.int64), out)
    xp = namespace(src)
    out = xp.zeros((h, w), dtype=xp.float32)
    for i in range(taps_v.shape[0]):
        tmp = xp.zeros((h, src.shape[1]), dtype=xp.float32)
        for k in range(r - int(radii[i]), r + int(radii[i]) + 1):
            tmp += float(taps_v[i, k]) * src[k : k + h, :]
        acc = xp.zeros((h, w), dtype=xp.float32)
        for k in range(r - int(radii[i]), r + int(radii[i]) + 1):
            acc += float(taps_h[i, k]) * tmp[:, k : k + w]
        out += acc
    return out


def compose(src, sy: int, sx: int, blurred, interp_rows, interp_cols, thr: float, eta: float, out):
    """out = clip01(s - eta·max(s - thr, 0) + up(blurred)) for s = src[sy:sy+h, sx:sx+w] where (h, w) is
    out's shape; blurred None stands for zeros. up is bilinear, across first: each cell row is interpolated
    to the output's columns (cw0·b[j, cj] + cw1·b[j, cj + 1]), then the two rows around an output row to it
    (rw0·row(rj) + rw1·row(rj + 1)), in float32 (so that a run of output rows shares its cell rows' upsampled
    values). Returns out (a new array on the reference path)."""
    rj, rw0, rw1 = interp_rows
    cj, cw0, cw1 = interp_cols
    h, w = out.shape
    if _is_cpu(src):
        from phos_dask.film import _cpu

        has = blurred is not None
        b = blurred if has else np.zeros((1, 1), np.float32)
        _cpu.compose(src, sy, sx, b, has, rj, rw0, rw1, cj, cw0, cw1, _f32(thr), _f32(eta), out)
        return out
    k = _gpu(src)
    if k is not None:
        has = blurred is not None
        b = blurred if has else k.empty_like_kind(src, (2, 2))
        i64 = [_dev(k, v, src, np.int64) for v in (rj, cj)]
        f32 = [_dev(k, v, src, np.float32) for v in (rw0, rw1, cw0, cw1)]
        return k.compose(src, sy, sx, b, has, i64[0], f32[0], f32[1], i64[1], f32[2], f32[3], _f32(thr), _f32(eta),
                         out)
    xp = namespace(src)
    s = src[sy : sy + h, sx : sx + w]
    v = s - float(_f32(eta)) * xp.maximum(s - float(_f32(thr)), 0.0)
    if blurred is not None:
        rj_, cj_ = xp.asarray(np.asarray(rj, np.int64)), xp.asarray(np.asarray(cj, np.int64))
        across = (_expand(xp, cw0, 0) * xp.take(blurred, cj_, axis=1)
                  + _expand(xp, cw1, 0) * xp.take(blurred, cj_ + 1, axis=1))  # each cell row upsampled across
        up = (_expand(xp, rw0, 1) * xp.take(across, rj_, axis=0)
              + _expand(xp, rw1, 1) * xp.take(across, rj_ + 1, axis=0))
        v = v + up
    out[...] = xp.clip(v, 0, 1)
    return out


def any_above(src, box: tuple[int, int, int, int], thr: float) -> bool:
    """Whether any pixel of src[y0:y1, x0:x1] exceeds thr (the CPU render needs no scan: its cells tell,
    `pipeline._blurred`)."""
    y0, y1, x0, x1 = box
    if _gpu(src) is not None:
        return True  # no device-to-host read: the blur of all-zero cells adds exactly zero
    return bool(namespace(src).any(src[y0:y1, x0:x1] > thr))


def grain_noise(X, rmap, cmap, y0: int, x0: int, key: int, taps: np.ndarray, out):
    """taps ⊛ (a(X)·u) on the valid part of X[rmap][:, cmap] (len(taps) = 2r+1) into out (h, w)."""
    from phos_dask.film import grain

    if _is_cpu(X):
        from phos_dask.film import _cpu

        _cpu.grain_noise(X, rmap, cmap, y0, x0, np.uint64(key), grain.normal_pairs(), taps, out)
        return out
    k = _gpu(X)
    if k is not None:
        T, dT = grain.normal_table()
        return k.grain_noise(X, _dev(k, rmap, X, np.int64), _dev(k, cmap, X, np.int64), y0, x0, key,
                             k.to_device(T, X, ("T",)), k.to_device(dT, X, ("dT",)),
                             _dev(k, np.reshape(taps, (1, -1)), X, np.float32), out)
    xp = namespace(X)
    u = grain.hash_normal(xp, key, np.asarray(rmap) + y0, np.asarray(cmap) + x0)
    rho = grain.signal_gain(xp, _rows_cols(xp, X, rmap, cmap)) * u
    r = (len(taps) - 1) // 2
    out[...] = blur_valid(rho, taps[None, :], taps[None, :], np.array([r], np.int64))
    return out


def _scales(nscale) -> np.ndarray:
    return np.ascontiguousarray(nscale, dtype=np.float32).reshape(-1)


def mix(Yp, X, xy: int, xx: int, noise, coef: np.ndarray, nscale: np.ndarray, wd, ws):
    """S6: Z_c = wd_c·Y'_c + ws_c·X_c + Σ_p coef[c,p]·clip(noise_p·nscale_p, -1, 1) (nscale: one float32
    per noise plane)."""
    nscale = _scales(nscale)
    if _is_cpu(Yp):
        from phos_dask.film import _cpu

        return _cpu.mix(Yp, X, xy, xx, noise, coef, nscale, wd, ws)
    k = _gpu(Yp)
    if k is not None:
        out = k.empty_like_kind(Yp, Yp.shape)
        return k.mix(Yp, X, xy, xx, noise, *_mix_consts(k, Yp, coef, nscale, wd, ws), out)
    xp = namespace(Yp)
    C, h, w = Yp.shape
    n = [xp.clip(noise[p, ...] * float(nscale[p]), -1.0, 1.0) for p in range(noise.shape[0])]
    out = []
    for c in range(C):
        g = xp.zeros((h, w), dtype=xp.float32)
        for p in range(noise.shape[0]):
            g = g + float(coef[c, p]) * n[p]
        out.append(float(wd[c]) * Yp[c, ...] + float(ws[c]) * X[c, xy : xy + h, xx : xx + w] + g)
    return xp.stack(out)


def _mix_consts(k, like, coef, nscale, wd, ws) -> list:
    """coef, nscale, wd, ws as float32 arrays where `like` lives."""
    return [_dev(k, v, like, np.float32) for v in (coef, nscale, wd, ws)]


def blend(F0, F, r: float):
    """F0 + r·(F − F0), clipped to [0, 1] (float32; r is rounded to float32): the grain's effect on the
    tone-mapped value F scaled by r(s) (spec §4, resolution consistency), F0 the grain-free value."""
    r32 = float(_f32(r))
    if isinstance(F, np.ndarray):
        return np.clip(F0 + np.float32(r32) * (F - F0), np.float32(0.0), np.float32(1.0))
    xp = namespace(F)
    return xp.clip(F0 + r32 * (F - F0), 0.0, 1.0)


def _tone_consts(tone_) -> np.ndarray:
    """The filmic constants A..F of each channel's stocks.Tone, (C, 6) float32, as the kernels take them."""
    return np.array([[t.A, t.B, t.C, t.D, t.E, t.F] for t in tone_], np.float32)


def _table_arrays(tables) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's tone.QuantTable stacked: (thresholds (C, n) float32, bucket starts (C, m) int32)."""
    return np.stack([t.thresholds for t in tables]), np.stack([t.start for t in tables])


def mix_filmic_encode(Yp, X, xy: int, xx: int, noise, coef: np.ndarray, nscale: np.ndarray, wd, ws, tone_,
                      vmax: int, r: float = 1.0):
    """`mix`, then filmic (no H&D curve) and sRGB codes: (C, h, w) → (h, w, C) uint8/uint16.
    tone_: one stocks.Tone per channel. r < 1 (grain's resolution factor r(s)): the code of
    `blend(F(Z without grain), F(Z), r)` instead of F(Z)'s; r = 1 evaluates the curve once."""
    from phos_dask.film import tone

    dtype = np.uint8 if vmax == 255 else np.uint16
    C, h, w = Yp.shape
    after = r < 1.0
    if _is_cpu(Yp):
        from phos_dask.film import _cpu

        consts = _tone_consts(tone_)
        guess, steps = tone.code_tables(vmax)
        out = np.empty((h, w, C), dtype)
        if after:
            _cpu.mix_filmic_blend_encode(Yp, X, xy, xx, noise, coef, _scales(nscale), wd, ws, consts, _f32(r),
                                         guess, steps, out)
        else:
            _cpu.mix_filmic_encode(Yp, X, xy, xx, noise, coef, _scales(nscale), wd, ws, consts, guess, steps, out)
        return out
    k = _gpu(Yp)
    if k is not None:
        consts = _tone_consts(tone_)
        guess, steps = tone.code_tables(vmax)
        g, st = k.to_device(guess, Yp, ("guess", vmax)), k.to_device(steps, Yp, ("steps", vmax))
        out = k.empty_like_kind(Yp, (h, w, C), dtype)
        args = (Yp, X, xy, xx, noise, *_mix_consts(k, Yp, coef, _scales(nscale), wd, ws), _dev(k, consts, Yp))
        if after:
            return k.mix_filmic_blend_encode(*args, _f32(r), g, st, out)
        return k.mix_filmic_encode(*args, g, st, out)
    xp = namespace(Yp)
    Z = mix(Yp, X, xy, xx, noise, coef, nscale, wd, ws)
    F = [tone.filmic(xp, Z[c, ...], tone_[c]) for c in range(C)]
    if after:
        Z0 = mix(Yp, X, xy, xx, noise[:0, ...], coef[:, :0], _scales(nscale)[:0], wd, ws)
        F = [blend(tone.filmic(xp, Z0[c, ...], tone_[c]), F[c], r) for c in range(C)]
    codes = [tone.quantise(xp, F[c], vmax) for c in range(C)]
    return xp.stack(codes, axis=-1)


def mix_encode(Yp, X, xy: int, xx: int, noise, coef: np.ndarray, nscale: np.ndarray, wd, ws, tables, vmax: int):
    """`mix` then each channel's QuantTable: (C, h, w) → (h, w, C) uint8/uint16 codes."""
    dtype = np.uint8 if vmax == 255 else np.uint16
    thresholds, starts = _table_arrays(tables)
    C, h, w = Yp.shape
    if _is_cpu(Yp):
        from phos_dask.film import _cpu
        from phos_dask.film.tone import BUCKET_BASE, BUCKET_SHIFT

        out = np.empty((h, w, C), dtype)
        _cpu.mix_encode(Yp, X, xy, xx, noise, coef, _scales(nscale), wd, ws, thresholds, starts, BUCKET_BASE,
                        BUCKET_SHIFT, out)
        return out
    k = _gpu(Yp)
    if k is not None:
        from phos_dask.film.tone import BUCKET_BASE, BUCKET_SHIFT

        key = ("quant", tuple(id(t) for t in tables))  # the plan's cached tables: one upload per process
        t = k.to_device(thresholds, Yp, (*key, "thresholds"), anchor=tables)
        st = k.to_device(starts, Yp, (*key, "starts"), anchor=tables)
        out = k.empty_like_kind(Yp, (h, w, C), dtype)
        return k.mix_encode(Yp, X, xy, xx, noise, *_mix_consts(k, Yp, coef, _scales(nscale), wd, ws), t, st,
                            BUCKET_BASE, BUCKET_SHIFT, out)
    xp = namespace(Yp)
    dtype = xp.uint8 if vmax == 255 else xp.uint16
    Z = mix(Yp, X, xy, xx, noise, coef, nscale, wd, ws)
    out = []
    for c in range(C):
        t = xp.asarray(thresholds[c][1 : vmax + 1])
        codes = xp.searchsorted(t, xp.reshape(Z[c, ...], (-1,)), side="right")
        out.append(xp.astype(xp.reshape(codes, (h, w)), dtype))
    return xp.stack(out, axis=-1)


def finish(S, sy: int, sx: int, blurred: list, interp_rows, interp_cols, thr: float, etas, X, xy: int, xx: int,
           rmap, cmap, origin: tuple[int, int], keys, taps, coef, nscale, wd, ws, tone_, vmax: int, r: float,
           tables, composed: tuple | None = None, planar: bool = False):
    """NumPy only: the last blur stage's `compose` on S (one blurred field or None per channel), the grain
    planes (`grain_noise` for each key, plane p on X[p], rows rmap × columns cmap, X's global origin) and
    `mix_filmic_encode` (tables None; r < 1 blends after the curve) or `mix_encode` (tables), fused into
    one pass over bands of rows: the same codes (h, w, C), or (C, h, w) when `planar`, without full-size
    intermediates.
    `composed` = (fields, interp_rows, interp_cols, thr, etas): S is None and stands for the bloom stage's
    output `compose` makes from X with these (one blurred field or None per channel), made row by row as it
    is read; (sy, sx) is then where the output's first pixel lies in those fields' rows and columns."""

    from phos_dask.film import _cpu, grain, tone
    from phos_dask.film.tone import BUCKET_BASE, BUCKET_SHIFT

    C = X.shape[0]
    h, w = len(interp_rows[0]), len(interp_cols[0])
    rj, rw0, rw1 = interp_rows
    cj, cw0, cw1 = interp_cols
    stacked, has = _stacked(blurred, C)
    if composed is None:
        bl, has_bl = np.zeros((C, 1, 1), np.float32), np.zeros(C, np.bool_)
        b_rows, b_cols, bthr, betas = interp_rows, interp_cols, 0.0, etas
    else:
        fields, b_rows, b_cols, bthr, betas = composed
        bl, has_bl = _stacked(fields, C)
        S = X
    brj, brw0, brw1 = b_rows
    bcj, bcw0, bcw1 = b_cols
    keys, pairs = np.array(keys, np.uint64), grain.normal_pairs()
    taps = np.zeros(1, np.float32) if taps is None else np.ascontiguousarray(taps, np.float32)
    if tables is None:
        mode = 1 if r < 1.0 else 0
        tone_c = _tone_consts(tone_)
        G, gbase, gshift = tone.code_guesses(vmax)
        _, steps = tone.code_tables(vmax)
        thresholds, starts = np.zeros((C, 1), np.float32), np.zeros((C, 2), np.int32)
    else:
        mode = 2
        tone_c = np.zeros((C, 6), np.float32)
        G, gbase, gshift, steps = np.zeros(2, np.float32), 0, 0, np.zeros(2, np.float32)
        thresholds, starts = _table_arrays(tables)
    out = np.empty((C, h, w) if planar else (h, w, C), np.uint8 if vmax == 255 else np.uint16)
    _cpu.finish(S, sy, sx, stacked, has, rj, rw0, rw1, cj, cw0, cw1, _f32(thr), np.asarray(etas, np.float32),
                composed is not None, bl, has_bl, brj, brw0, brw1, bcj, bcw0, bcw1, _f32(bthr),
                np.asarray(betas, np.float32), X, xy, xx, np.asarray(rmap, np.int64), np.asarray(cmap, np.int64),
                origin[0], origin[1], keys, pairs, taps, coef, _scales(nscale), wd, ws, mode, tone_c, _f32(r), G,
                gbase, gshift, _f32(2.0**-gshift), steps, thresholds, starts, BUCKET_BASE, BUCKET_SHIFT,
                _cpu.kernel_threads(), bool(planar), out)
    return out


def _stacked(fields: list, C: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) float32 of per-channel blurred fields (zeros for None) and which channels have one."""
    has = np.array([b is not None for b in fields], np.bool_)
    shape = next((b.shape for b in fields if b is not None), (1, 1))
    stacked = np.zeros((C, *shape), np.float32)
    for c, b in enumerate(fields):
        if b is not None:
            stacked[c] = b
    return stacked, has
