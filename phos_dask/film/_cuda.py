"""Fused GPU kernels (numba-cuda) for the array ops of `ops.py`: the GPU counterparts of `_cpu`.

Each op is one to three kernel launches instead of the reference path's one CuPy call per array operation,
and the per-pixel math is `_pixel`'s, the same source the CPU kernels compile, so the two paths cannot
drift. Every output element is computed by one thread with the same float32 operation sequence as the CPU
kernel uses (reductions in the same order), so a GPU tile is bit-identical to the same pixels of a GPU
whole-image render; against the CPU the only differences are the GPU compiler's fused multiply-adds (low
bits: tests allow 2e-5 on floats and ±1 on codes).

Arrays: the launch helpers take any array numba accepts for a kernel argument — CuPy arrays (through the
CUDA array interface, wrapped without a stream synchronisation: everything runs in order on CuPy's current
stream, so there is no host round trip between stages), numba device arrays, or NumPy arrays (under the
CUDA simulator, `NUMBA_ENABLE_CUDASIM=1`, which runs the same kernels on the CPU; on a real GPU numba then
copies them to the device and back, which the tests accept). Temporaries are allocated like the input
(CuPy, so an RMM pool behind CuPy serves them too). Scalars must be passed as NumPy scalars of the right
type (np.float32, np.int64, np.uint64): numba types a Python float as float64.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from phos_dask.film import _pixel


def _simulated() -> bool:
    try:
        from numba.cuda.core import config
    except ImportError:  # older numba-cuda kept the flag in numba's own config
        from numba.core import config
    return bool(getattr(config, "ENABLE_CUDASIM", 0))


#: True when numba.cuda is the CUDA simulator (kernels run as Python on the CPU, on NumPy arrays).
SIMULATOR = _simulated()
#: Threads per block (x, y). The simulator runs every thread as a Python thread: small blocks keep it quick.
BLOCK = (8, 8) if SIMULATOR else (32, 8)


def _device(fn):
    return cuda.jit(device=True)(fn)


_exposure = _device(_pixel.exposure)
_excess = _device(_pixel.excess)
_kept = _device(_pixel.kept)
_lerp2 = _device(_pixel.lerp2)
_clip01 = _device(_pixel.clip01)
_grain_u = _device(_pixel.grain_u)
_signal_gain = _device(_pixel.signal_gain)
_clip_noise = _device(_pixel.clipped_noise)
_mixed_base = _device(_pixel.mixed_base)
_grain_term = _device(_pixel.grain_term)
_filmic_coeffs = _device(_pixel.filmic_coeffs)
_filmic = _device(_pixel.filmic)
_blend = _device(_pixel.blend)
_srgb_code = _device(_pixel.srgb_code)
_code = _device(_pixel.table_code)

_F0 = np.float32(0.0)

if SIMULATOR:

    def _bits_of(v):
        """The bit pattern of float32 v as uint32."""
        return np.float32(v).view(np.uint32)

else:
    from numba.cuda import libdevice

    def _bits_of(v):
        """The bit pattern of float32 v as uint32."""
        return np.uint32(libdevice.float_as_int(v))


_float_bits = _device(_bits_of)


# --- kernels -------------------------------------------------------------------------------------------


@cuda.jit
def _front_lut_k(img, table, matrix, factors, use_factors, out):
    x, y = cuda.grid(2)
    if y < out.shape[1] and x < out.shape[2]:
        v0, v1, v2 = table[img[y, x, 0]], table[img[y, x, 1]], table[img[y, x, 2]]
        for c in range(out.shape[0]):
            out[c, y, x] = _exposure(v0, v1, v2, matrix[c, 0], matrix[c, 1], matrix[c, 2], factors[c], use_factors)


@cuda.jit
def _front_linear_k(lin, matrix, factors, use_factors, out):
    x, y = cuda.grid(2)
    if y < out.shape[1] and x < out.shape[2]:
        v0, v1, v2 = lin[y, x, 0], lin[y, x, 1], lin[y, x, 2]
        for c in range(out.shape[0]):
            out[c, y, x] = _exposure(v0, v1, v2, matrix[c, 0], matrix[c, 1], matrix[c, 2], factors[c], use_factors)


@cuda.jit
def _cells_k(src, rmap, cmap, f, thr, scale, out):
    i, j = cuda.grid(2)
    if j < out.shape[0] and i < out.shape[1]:
        s = _F0
        for b in range(f):  # column sums first, then across columns: the CPU kernel's order
            col = cmap[i * f + b]
            acc = _F0
            for a in range(f):
                acc += _excess(src[rmap[j * f + a], col], thr)
            s += acc
        out[j, i] = s * scale


@cuda.jit
def _blur_v_k(src, taps, radii, tmp):
    x, y = cuda.grid(2)
    if y < tmp.shape[1] and x < tmp.shape[2]:
        r = (taps.shape[1] - 1) // 2
        for i in range(tmp.shape[0]):
            v = taps[i, r] * src[y + r, x]
            for k in range(1, radii[i] + 1):
                v += taps[i, r + k] * (src[y + r - k, x] + src[y + r + k, x])
            tmp[i, y, x] = v


@cuda.jit
def _blur_h_k(tmp, taps, radii, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        r = (taps.shape[1] - 1) // 2
        total = _F0
        for i in range(tmp.shape[0]):
            v = taps[i, r] * tmp[i, y, x + r]
            for k in range(1, radii[i] + 1):
                v += taps[i, r + k] * (tmp[i, y, x + r - k] + tmp[i, y, x + r + k])
            total += v
        out[y, x] = total


@cuda.jit
def _compose_k(src, sy, sx, blurred, has_blur, rj, rw0, rw1, cj, cw0, cw1, thr, eta, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        v = _kept(src[sy + y, sx + x], thr, eta)
        if has_blur:
            j, i = rj[y], cj[x]
            b0, b1 = cw0[x], cw1[x]
            lo = _lerp2(b0, blurred[j, i], b1, blurred[j, i + 1])  # across first, as the CPU's compose
            hi = _lerp2(b0, blurred[j + 1, i], b1, blurred[j + 1, i + 1])
            v = v + _lerp2(rw0[y], lo, rw1[y], hi)
        out[y, x] = _clip01(v)


@cuda.jit
def _rho_k(X, rmap, cmap, y0, x0, key, T, dT, buf):
    x, y = cuda.grid(2)
    if y < buf.shape[0] and x < buf.shape[1]:
        r, c = rmap[y], cmap[x]
        buf[y, x] = _signal_gain(X[r, c]) * _grain_u(r + y0, c + x0, key, T, dT)


@cuda.jit(device=True)
def _base(Yp, X, xy, xx, y, x, c, wd, ws):
    return _mixed_base(wd[c], Yp[c, y, x], ws[c], X[c, xy + y, xx + x])


@cuda.jit(device=True)
def _with_grain(z, noise, y, x, c, coef, nscale):
    for p in range(noise.shape[0]):
        z = _grain_term(z, coef[c, p], _clip_noise(noise[p, y, x], nscale[p]))
    return z


@cuda.jit
def _mix_k(Yp, X, xy, xx, noise, coef, nscale, wd, ws, out):
    x, y = cuda.grid(2)
    if y < out.shape[1] and x < out.shape[2]:
        for c in range(out.shape[0]):
            out[c, y, x] = _with_grain(_base(Yp, X, xy, xx, y, x, c, wd, ws), noise, y, x, c, coef, nscale)


@cuda.jit
def _mix_encode_k(Yp, X, xy, xx, noise, coef, nscale, wd, ws, thresholds, starts, base, shift, last, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        for c in range(out.shape[2]):
            z = _with_grain(_base(Yp, X, xy, xx, y, x, c, wd, ws), noise, y, x, c, coef, nscale)
            out[y, x, c] = _code(z, _float_bits(z), thresholds[c], starts[c], base, shift, last)


@cuda.jit
def _mix_filmic_encode_k(Yp, X, xy, xx, noise, coef, nscale, wd, ws, tone, guess, steps, cells, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        for c in range(out.shape[2]):
            tA, tB = tone[c, 0], tone[c, 1]
            cb, de, df, ef = _filmic_coeffs(tB, tone[c, 2], tone[c, 3], tone[c, 4], tone[c, 5])
            z = _with_grain(_base(Yp, X, xy, xx, y, x, c, wd, ws), noise, y, x, c, coef, nscale)
            out[y, x, c] = _srgb_code(_filmic(z, tA, tB, cb, de, df, ef), guess, steps, cells)


@cuda.jit
def _mix_filmic_blend_encode_k(Yp, X, xy, xx, noise, coef, nscale, wd, ws, tone, r, guess, steps, cells, out):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        for c in range(out.shape[2]):
            tA, tB = tone[c, 0], tone[c, 1]
            cb, de, df, ef = _filmic_coeffs(tB, tone[c, 2], tone[c, 3], tone[c, 4], tone[c, 5])
            z0 = _base(Yp, X, xy, xx, y, x, c, wd, ws)
            z = _with_grain(z0, noise, y, x, c, coef, nscale)
            f0 = _filmic(z0, tA, tB, cb, de, df, ef)
            f = _filmic(z, tA, tB, cb, de, df, ef)
            out[y, x, c] = _srgb_code(_blend(f0, f, r), guess, steps, cells)


# --- launch helpers ------------------------------------------------------------------------------------


def _is_host(a) -> bool:
    return isinstance(a, np.ndarray)


def _arg(a):
    """A kernel argument: CuPy (any CUDA-array-interface object but numba's own) wrapped without the stream
    synchronisation numba would otherwise do on every launch; everything else as it is."""
    if _is_host(a) or hasattr(a, "copy_to_host") or not hasattr(a, "__cuda_array_interface__"):
        return a
    if a.size == 0:  # e.g. no grain planes: nothing to read, and no device pointer to wrap
        return cuda.device_array(a.shape, dtype=np.dtype(str(a.dtype)))
    return cuda.as_cuda_array(a, sync=False)


def _stream(like):
    """The stream to launch on: CuPy's current stream for CuPy arrays, numba's default stream otherwise."""
    if SIMULATOR or _is_host(like) or type(like).__module__.split(".")[0] != "cupy":
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


def empty_like_kind(like, shape: tuple[int, ...], dtype=np.float32):
    """An uninitialised array of `shape` where `like` lives: NumPy for NumPy, CuPy for CuPy, else a numba
    device array."""
    if _is_host(like):
        return np.empty(shape, dtype)
    if type(like).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.empty(shape, dtype)
    return cuda.device_array(shape, dtype)


def _grid(w: int, h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    bx, by = BLOCK
    return ((max(w, 1) + bx - 1) // bx, (max(h, 1) + by - 1) // by), BLOCK


def _launch(kernel, w: int, h: int, like, *args) -> None:
    if w <= 0 or h <= 0:
        return
    grid, block = _grid(w, h)
    kernel[grid, block, _stream(like)](*(_arg(a) for a in args))


def front_lut(img, table, matrix, factors, use_factors: bool, out):
    """S1–S3 from (h, w, 3) uint8/uint16 codes through the linearising `table` into out (C, h, w) float32."""
    _launch(_front_lut_k, out.shape[2], out.shape[1], out, img, table, matrix, factors, bool(use_factors), out)
    return out


def front_linear(lin, matrix, factors, use_factors: bool, out):
    """S1–S3 from (h, w, 3) linear float32 into out (C, h, w) float32."""
    _launch(_front_linear_k, out.shape[2], out.shape[1], out, lin, matrix, factors, bool(use_factors), out)
    return out


def cells(src, rmap, cmap, f: int, thr, eta, out):
    """Means over f×f cells of eta·(src − thr)₊ at rows rmap × columns cmap into out (len(rmap)/f,
    len(cmap)/f) float32 (the scale eta/f² rounded to float32 as the CPU kernel does)."""
    scale = np.float32(float(np.float32(eta)) / (f * f))
    _launch(_cells_k, out.shape[1], out.shape[0], out, src, rmap, cmap, np.int64(f), np.float32(thr), scale, out)
    return out


def blur_valid(src, taps_v, taps_h, radii, out):
    """Σ_i (taps_v[i] vertically, then taps_h[i] horizontally), 'valid' part, into out (h−2r, w−2r);
    taps (n, 2r+1) float32, radii (n,) int64 (component i uses its central 2·radii[i]+1 taps)."""
    h, w = out.shape
    tmp = empty_like_kind(out, (taps_v.shape[0], h, src.shape[1]))
    _launch(_blur_v_k, src.shape[1], h, out, src, taps_v, radii, tmp)
    _launch(_blur_h_k, w, h, out, tmp, taps_h, radii, out)
    return out


def compose(src, sy: int, sx: int, blurred, has_blur: bool, rj, rw0, rw1, cj, cw0, cw1, thr, eta, out):
    """out = clip01(s − eta·(s − thr)₊ + up(blurred)) for s = src[sy:, sx:] (out's shape); `blurred` is
    ignored when has_blur is False (pass any small float32 2D array)."""
    _launch(_compose_k, out.shape[1], out.shape[0], out, src, np.int64(sy), np.int64(sx), blurred, bool(has_blur),
            rj, rw0, rw1, cj, cw0, cw1, np.float32(thr), np.float32(eta), out)
    return out


def grain_noise(X, rmap, cmap, y0: int, x0: int, key: int, T, dT, taps, out):
    """taps ⊛ (a(X)·u) on the valid part of X[rmap][:, cmap] into out (h, w): the ρ buffer, then the
    separable blur (taps (1, 2r+1) float32, radii (1,) int64 = [r])."""
    buf = empty_like_kind(out, (rmap.shape[0], cmap.shape[0]))
    _launch(_rho_k, buf.shape[1], buf.shape[0], out, X, rmap, cmap, np.int64(y0), np.int64(x0), np.uint64(key), T,
            dT, buf)
    return blur_valid(buf, taps, taps, radii_of(taps, like=out), out)


def radii_of(taps, like=None):
    """The radii array of a one-component blur with `taps` (1, 2r+1), where `like` lives."""
    r = np.array([(taps.shape[1] - 1) // 2], np.int64)
    if like is None or _is_host(like):
        return r
    return to_device(r, like)


def mix(Yp, X, xy: int, xx: int, noise, coef, nscale, wd, ws, out):
    """S6 into out (C, h, w) float32."""
    _launch(_mix_k, out.shape[2], out.shape[1], out, Yp, X, np.int64(xy), np.int64(xx), noise, coef, nscale, wd, ws,
            out)
    return out


def mix_encode(Yp, X, xy: int, xx: int, noise, coef, nscale, wd, ws, thresholds, starts, base: int, shift: int,
               out):
    """S6 then each channel's threshold table (`tone.QuantTable`) into out (h, w, C) codes."""
    last = np.int64(starts.shape[1] - 2)
    _launch(_mix_encode_k, out.shape[1], out.shape[0], out, Yp, X, np.int64(xy), np.int64(xx), noise, coef, nscale,
            wd, ws, thresholds, starts, np.int64(base), np.uint32(shift), last, out)
    return out


def mix_filmic_encode(Yp, X, xy: int, xx: int, noise, coef, nscale, wd, ws, tone, guess, steps, out):
    """S6 → filmic → sRGB code into out (h, w, C) (tone (C, 6) float32 A..F; `tone.code_tables`)."""
    cells = np.int64(guess.shape[0] - 1)
    _launch(_mix_filmic_encode_k, out.shape[1], out.shape[0], out, Yp, X, np.int64(xy), np.int64(xx), noise, coef,
            nscale, wd, ws, tone, guess, steps, cells, out)
    return out


def mix_filmic_blend_encode(Yp, X, xy: int, xx: int, noise, coef, nscale, wd, ws, tone, r, guess, steps, out):
    """`mix_filmic_encode` with the grain's effect scaled by r (float32, < 1) after the curve."""
    cells = np.int64(guess.shape[0] - 1)
    _launch(_mix_filmic_blend_encode_k, out.shape[1], out.shape[0], out, Yp, X, np.int64(xy), np.int64(xx), noise,
            coef, nscale, wd, ws, tone, np.float32(r), guess, steps, cells, out)
    return out


# --- constants on the device ---------------------------------------------------------------------------

_CONSTANTS: dict[tuple, tuple[object, object]] = {}
_CONSTANTS_MAX = 512
_SMALL = 4096


def to_device(a: np.ndarray, like, key: tuple | None = None, anchor: object = None):
    """Host array `a` where `like` lives: CuPy for CuPy, else `a` itself (NumPy, simulator). Uploads are
    kept per device: arrays under 4 KiB by their bytes, larger ones only under an explicit `key` (a table
    that stays the same for the process; `anchor`, if given, is kept alive with it, for keys built from
    ids). An upload is a host-to-device copy, never a read back."""
    if _is_host(like) or type(like).__module__.split(".")[0] != "cupy":
        return a
    import cupy

    a = np.ascontiguousarray(a)
    if key is None and a.nbytes >= _SMALL:
        return cupy.asarray(a)
    full = (cupy.cuda.Device().id, a.dtype.str, a.shape, key if key is not None else a.tobytes())
    hit = _CONSTANTS.get(full)
    if hit is not None:
        return hit[1]
    if len(_CONSTANTS) >= _CONSTANTS_MAX:
        _CONSTANTS.pop(next(iter(_CONSTANTS)))
    d = cupy.asarray(a)
    _CONSTANTS[full] = (anchor, d)
    return d
