"""Fused CPU kernels (numba) for the array ops of `ops.py`.

Every output element is computed by the same sequence of float32 operations whatever the array's extent
(loops vectorise across pixels, never across a reduction; no fastmath, so no reassociation or FMA
contraction), which is what makes a tile bit-identical to the same pixels of the whole image.
Kernels compile with error_model="numpy": a float division by zero gives inf/nan as in NumPy instead of
raising, which is what lets LLVM vectorise loops that divide (the model never divides by zero). Inner loops
read shifted rows through slices rather than x ± k indexing, which LLVM would not vectorise.
Rows are split across threads with prange. The per-pixel math lives in `_pixel`, which the GPU kernels
(`_cuda`) compile too.
Kernels copy and clear arrays in loops and read float bits with `_bits`: numba compiles a shape-mismatch
error formatter for each slice assignment (1.5 s of the fused kernel's first compile), and routines for array
views and np.zeros fills, which a first run after install would wait for. Row helpers that several kernels
call (`_upsampled_rows`, `_compose_row`, `_add_excess_row`, `_cell_means`) are compiled once as functions of
their own rather than inlined at every call: their loops vectorise just the same, and the fused kernel
compiles in 2.6-2.8 s instead of 5.2-5.7 (all kernels of a photograph: 5.8-6.2 s instead of 9.5).
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
from llvmlite import ir
from numba import njit, prange
from numba import types as nt
from numba.core.caching import FunctionCache
from numba.core.runtime import rtsys
from numba.extending import intrinsic

from phos_dask.film import _pixel

_f32 = np.float32


class Kernel:
    """A CPU kernel compiled two ways from one function: rows split across numba's threads (prange), and
    serial (prange runs as range) for a caller limited to one thread, e.g. a Dask worker's task
    (phos_dask.tasks.limit_kernel_threads), where splitting gains nothing. The serial build compiles in about
    half the time and loads from the cache about 3× faster, which is most of a worker's first-task cost; both
    compute every element with the same float32 operations, so their outputs are the same bits.
    `threaded=False`: the serial build only, for a kernel too small for threads to pay for their compile (its
    `parallel` is then its `serial`)."""

    def __init__(self, fn: Callable, threaded: bool = True) -> None:
        serial = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_serial", fn.__defaults__,
                                    fn.__closure__)
        serial.__qualname__ = f"{fn.__qualname__}_serial"  # its own cache files
        self.serial = quick_load(njit(cache=True, nogil=True, error_model="numpy", no_cfunc_wrapper=True)(serial))
        self.parallel = quick_load(njit(parallel=True, cache=True, nogil=True, error_model="numpy",
                                        no_cfunc_wrapper=True)(fn)) if threaded else self.serial
        self.built: set[tuple] = set()  # `_kind`s of the arguments the dispatchers have a build for
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        dispatcher = self.serial if kernel_threads() == 1 else self.parallel
        kinds = (dispatcher is self.serial, *map(_kind, args))
        if kinds not in self.built:  # numba.typeof takes ~14 µs an argument: only until the build is there
            types_ = tuple(numba.typeof(a) for a in args)
            if types_ not in dispatcher.overloads:  # compile (or load from the cache) once per machine at a time
                with compile_lock(dispatcher.py_func.__qualname__):
                    dispatcher.compile(types_)
            self.built.add(kinds)
        return dispatcher(*args)


#: Whether kernels run serially whatever numba's thread count (`serial_only`).
_serial_only = False


@contextlib.contextmanager
def serial_only() -> Iterator[None]:
    """Kernels called meanwhile run (and load) their serial builds without asking numba for its thread
    count, which starts numba's thread pool: a process that forks workers (phos_dask.worker_boot) must not
    have one, as a pool's threads do not survive a fork. Not for use while other threads render."""
    global _serial_only
    _serial_only = True
    try:
        yield
    finally:
        _serial_only = False


def kernel_threads() -> int:
    """The threads a kernel called now runs on: numba's thread count, or 1 under `serial_only`."""
    return 1 if _serial_only else numba.get_num_threads()


#: The per-pixel functions' source (hashed), part of every cached build's stamp (`_QuickLoadCache`).
with open(_pixel.__file__, "rb") as _f:
    _PIXEL_SOURCE = hashlib.sha256(_f.read()).digest()


def _kind(a) -> tuple | type:
    """What numba types an argument by, cheaply: an array's dtype, dimensions, layout and writability; a
    scalar's type."""
    if isinstance(a, np.ndarray):
        f = a.flags
        return a.dtype.str, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned
    return type(a)


class _QuickLoadCache(FunctionCache):
    """numba's on-disk cache of one kernel, except that a cached build loads without numba first refreshing
    its whole CPU target: that refresh imports and registers every implementation numba has for compiling
    (about 0.1 s of CPU per process, holding the interpreter lock), while a cached build is machine code that
    needs only numba's runtime (NRT, for the arrays kernels allocate), initialised here. A build that is not
    in the cache compiles as before: numba's compiler refreshes the target itself.
    A build is also stale when `_pixel.py` changed: numba stamps a cache with its own function's file only,
    and would load a kernel built from per-pixel functions that are no longer there."""

    def __init__(self, py_func) -> None:
        super().__init__(py_func)
        index = getattr(self, "_cache_file", None)
        if index is not None and hasattr(index, "_source_stamp"):
            index._source_stamp = (index._source_stamp, _PIXEL_SOURCE)

    def load_overload(self, sig, target_context):
        try:
            guard, load = self._guard_against_spurious_io_errors, self._load_overload
        except AttributeError:  # a numba whose cache is built otherwise: its own loading
            return super().load_overload(sig, target_context)
        rtsys.initialize(target_context)
        with guard():
            return load(sig, target_context)


def quick_load(dispatcher):
    """`dispatcher` (a numba function compiled with cache=True), its cached builds loaded by `_QuickLoadCache`
    (left as it is when it has no such cache, e.g. under NUMBA_DISABLE_JIT)."""
    if isinstance(getattr(dispatcher, "_cache", None), FunctionCache):
        dispatcher._cache = _QuickLoadCache(dispatcher.py_func)
    return dispatcher


@contextlib.contextmanager
def compile_lock(kernel: str = "") -> Iterator[None]:
    """An exclusive lock across this machine's processes that share numba's kernel cache, held while one of
    them compiles `kernel` (one lock per kernel build): the others wait and then load it from the cache, so a
    machine's workers compile each kernel once between them instead of all at once, and different kernels
    can compile at the same time (phos_dask.warmup starts those compiles early). The lock file lives in that
    cache's folder and goes with it; where the folder cannot be written, in the temporary folder."""
    where = numba.config.CACHE_DIR or os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    name = hashlib.sha256(f"{where}\0{kernel}".encode()).hexdigest()[:16]
    fd = None
    for path in (os.path.join(where, f"phos_dask-compile-{name}.lock"),
                 os.path.join(tempfile.gettempdir(), f"phos_dask-compile-{os.getuid()}-{name}.lock")):
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            break
    if fd is None:  # no lock to be had: compile without one
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def kernel(fn: Callable) -> Kernel:
    return Kernel(fn)


def serial_kernel(fn: Callable) -> Kernel:
    return Kernel(fn, threaded=False)


def _helper(fn):
    """A row helper that several kernels call, compiled once as a function of its own (see above) and cached
    as the kernels are (`quick_load`)."""
    return quick_load(njit(cache=True, error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True)(fn))


def _inline(fn):
    """One of `_pixel`'s shared per-pixel functions as an inlined CPU function."""
    return njit(cache=True, inline="always", error_model="numpy")(fn)


@intrinsic
def _bits(typingctx, f):
    """The bit pattern of float32 f as a uint32 (what ndarray.view does for an array, without the compile
    cost of numba's array views)."""
    if f != nt.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return nt.uint32(nt.float32), codegen


_exposure = _inline(_pixel.exposure)
_excess = _inline(_pixel.excess)
_kept = _inline(_pixel.kept)
_lerp2 = _inline(_pixel.lerp2)
_clip01 = _inline(_pixel.clip01)
_grain_pos = _inline(_pixel.grain_pos)
_grain_cell = _inline(_pixel.grain_cell)
_grain_lookup = _inline(_pixel.grain_lookup)
_signal_gain = _inline(_pixel.signal_gain)
_clip_noise = _inline(_pixel.clipped_noise)
_mixed_base = _inline(_pixel.mixed_base)
_grain_term = _inline(_pixel.grain_term)
_filmic_coeffs = _inline(_pixel.filmic_coeffs)
_filmic = _inline(_pixel.filmic)
_blend = _inline(_pixel.blend)
_srgb_code = _inline(_pixel.srgb_code)
_code = _inline(_pixel.table_code)
_code_bucket = _inline(_pixel.code_bucket)
_guessed_code = _inline(_pixel.guessed_code)
_settled_code = _inline(_pixel.settled_code)


@kernel
def front_lut(img, table, matrix, factors, use_factors, out):
    h, w = img.shape[0], img.shape[1]
    C = matrix.shape[0]
    for y in prange(h):
        lin = np.empty((3, w), dtype=np.float32)  # the row's linear r, g, b: one table read per sample
        for x in range(w):
            lin[0, x] = table[img[y, x, 0]]
            lin[1, x] = table[img[y, x, 1]]
            lin[2, x] = table[img[y, x, 2]]
        r, g, b = lin[0], lin[1], lin[2]
        for c in range(C):
            m0, m1, m2 = matrix[c, 0], matrix[c, 1], matrix[c, 2]
            fac = factors[c]
            o = out[c, y]
            for x in range(w):
                o[x] = _exposure(r[x], g[x], b[x], m0, m1, m2, fac, use_factors)


@kernel
def front_linear(lin, matrix, factors, use_factors, out):
    h, w = lin.shape[0], lin.shape[1]
    C = matrix.shape[0]
    for y in prange(h):
        for c in range(C):
            m0, m1, m2 = matrix[c, 0], matrix[c, 1], matrix[c, 2]
            fac = factors[c]
            for x in range(w):
                out[c, y, x] = _exposure(lin[y, x, 0], lin[y, x, 1], lin[y, x, 2], m0, m1, m2, fac, use_factors)


@_helper
def _add_excess_row(sr, cmap, ja, jb, thr, acc):
    """acc[x] += (sr[cmap[x]] − thr)₊ for every x; cmap[ja:jb] is one run of consecutive columns (a slice,
    so that loop vectorises)."""
    ncol = cmap.shape[0]
    for x in range(ja):
        acc[x] += _excess(sr[cmap[x]], thr)
    c0 = cmap[ja]
    mid = sr[c0 : c0 + jb - ja]
    am = acc[ja:jb]
    for x in range(jb - ja):
        am[x] += _excess(mid[x], thr)
    for x in range(jb, ncol):
        acc[x] += _excess(sr[cmap[x]], thr)


@_helper
def _cell_means(acc, f, scale, out_row):
    """out_row[i] = scale · Σ_b acc[i·f + b]: the row's f×f cell sums from its f rows' column sums."""
    for i in range(out_row.shape[0]):
        s = _f32(0.0)
        for b in range(f):
            s += acc[i * f + b]
        out_row[i] = s * scale


#: Rows (of output, or of cells in `cells`) that one task of a many-thread loop takes in turn: a run shares its
#: upsampled rows of blurred cells (`_upsampled_rows`) from one row to the next.
RUN = 32


@kernel
def cells(src, rmap, cmap, f, thr, eta, composed, xy, xx, bloom, has_bloom, rj, rw0, rw1, cj, cw0, cw1, bthr, beta):
    """Means over f×f cells of eta·(S − thr)₊ at rows rmap and columns cmap of S: src itself, or, `composed`,
    the bloom stage's output clip01(kept(src) + up(bloom)) as `compose` makes it from src (S's [0, 0] at
    src's [xy, xx]; the bloom's blurred cells, has_bloom False for zeros, interpolated by rj, rw0, rw1 over
    S's rows and cj, cw0, cw1 over its columns; threshold bthr, share beta), without S stored: each row of
    S that the cells read is composed as it is read. The same sums as on a stored S, bit for bit. (One
    kernel for both: one compile after an install instead of two.)"""
    nr, nc = rmap.shape[0] // f, cmap.shape[0] // f
    ncol = cmap.shape[0]
    ws = cj.shape[0]
    out = np.empty((nr, nc), dtype=np.float32)
    scale = _f32(eta / (f * f))
    ja, jb = _longest_run(cmap)
    for run in prange((nr + RUN - 1) // RUN):
        acc = np.empty(ncol, dtype=np.float32)
        up = np.empty((2, ws), dtype=np.float32)
        held = np.empty(2, dtype=np.int64)
        held[0], held[1] = -1, -1
        sr = np.empty(ws, dtype=np.float32)
        for j in range(run * RUN, min(nr, (run + 1) * RUN)):
            for x in range(ncol):
                acc[x] = _f32(0.0)
            for a in range(f):
                y = rmap[j * f + a]
                if composed:
                    if has_bloom:
                        _upsampled_rows(bloom, rj[y], cj, cw0, cw1, up, held)
                    _compose_row(src[xy + y, xx : xx + ws], up, rj[y], rw0[y], rw1[y], has_bloom, bthr, beta, sr)
                    _add_excess_row(sr, cmap, ja, jb, thr, acc)
                else:
                    _add_excess_row(src[y], cmap, ja, jb, thr, acc)
            _cell_means(acc, f, scale, out[j])
    return out


@_helper
def _hpass(tmp, taps, r, ri, out):
    """out[x] = taps[r]·tmp[x+r] + Σ_{k=1..ri} taps[r+k]·(tmp[x+r−k] + tmp[x+r+k]), summed in that order (a
    horizontal pass of a symmetric kernel of radius ri padded to r). The shifted rows are slices so the loops
    vectorise (indexing tmp at x ± k directly keeps LLVM from it, about 5× slower)."""
    w = out.shape[0]
    t = taps[r]
    c = tmp[r : r + w]
    for x in range(w):
        out[x] = t * c[x]
    for k in range(1, ri + 1):
        t = taps[r + k]
        a = tmp[r - k : r - k + w]
        b = tmp[r + k : r + k + w]
        for x in range(w):
            out[x] += t * (a[x] + b[x])


@kernel
def blur_valid(src, taps_v, taps_h, radii, out):
    n = taps_v.shape[0]
    r = (taps_v.shape[1] - 1) // 2
    h, w = src.shape[0] - 2 * r, src.shape[1] - 2 * r
    # rows of src holding any non-zero value: an output row whose window has none is exactly zero
    nonzero = np.empty(src.shape[0] + 1, dtype=np.int64)
    for y in range(src.shape[0] + 1):
        nonzero[y] = 0
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
            _hpass(tmp, taps_h[i], r, ri, acc)
            for x in range(w):
                out[y, x] += acc[x]


@_helper
def _upsampled_rows(field, j, cj, cw0, cw1, up, held):
    """Cell rows j and j + 1 of a blurred field (2D) upsampled across, each into up's slot k % 2 (k = j, j + 1):
    up[k % 2][x] = cw0[x]·field[k, cj[x]] + cw1[x]·field[k, cj[x] + 1]; a row is made only when its slot does
    not hold it already (held[k % 2] == k), so a run of output rows, which lie between the same two cell
    rows about f at a time, reads each cell row once instead of once per output row."""
    for k in range(j, j + 2):
        slot = k % 2
        if held[slot] != k:
            cells_row = field[k]
            dst = up[slot]
            for x in range(dst.shape[0]):
                i = cj[x]
                dst[x] = _lerp2(cw0[x], cells_row[i], cw1[x], cells_row[i + 1])
            held[slot] = k


@_helper
def _compose_row(s, up, j, a0, a1, has_blur, thr, eta, out):
    """out = clip01(kept(s) + a0·up[j % 2] + a1·up[(j + 1) % 2]) for one row lying between cell rows j and
    j + 1 with weights (a0, a1) (`_upsampled_rows` holds those rows in up): the float32 operations of
    `compose` per element, in loops over slices."""
    w = out.shape[0]
    if has_blur:
        lo, hi = up[j % 2], up[(j + 1) % 2]
        for x in range(w):
            out[x] = _clip01(_kept(s[x], thr, eta) + _lerp2(a0, lo[x], a1, hi[x]))
    else:
        for x in range(w):
            out[x] = _clip01(_kept(s[x], thr, eta))


@kernel
def compose(src, sy, sx, blurred, has_blur, rj, rw0, rw1, cj, cw0, cw1, thr, eta, out):
    h, w = rj.shape[0], cj.shape[0]
    for run in prange((h + RUN - 1) // RUN):
        up = np.empty((2, w), dtype=np.float32)
        held = np.empty(2, dtype=np.int64)
        held[0], held[1] = -1, -1
        for y in range(run * RUN, min(h, (run + 1) * RUN)):
            if has_blur:
                _upsampled_rows(blurred, rj[y], cj, cw0, cw1, up, held)
            _compose_row(src[sy + y, sx : sx + w], up, rj[y], rw0[y], rw1[y], has_blur, thr, eta, out[y])


@_helper
def _longest_run(cmap):
    """(a, b): the longest stretch cmap[a:b] of consecutive columns (the part of a reflected index map
    inside the image)."""
    best_a, best_b, a = 0, 1, 0
    for j in range(1, cmap.shape[0] + 1):
        if j == cmap.shape[0] or cmap[j] != cmap[j - 1] + 1:
            if j - a > best_b - best_a:
                best_a, best_b = a, j
            a = j
    return best_a, best_b


@_helper
def _hash_row(row, cmap, gy0, gx0, counters):
    """counters[j] = `grain_pos` of the row's pixel at column cmap[j] (global row + gy0, column + gx0)."""
    for j in range(cmap.shape[0]):
        counters[j] = _grain_pos(row + gy0, cmap[j] + gx0)


@_helper
def _rho_row(Xp, row, cmap, ja, jb, counters, k, TT, gain, cell, frac, dst):
    """a(X)·u of one row of a grain plane (`_rho` per element) over the columns cmap into dst, in loops
    that vectorise: the gains (columns ja..jb-1 are one contiguous slice of the row), the hash (from the
    row's `_hash_row` counters and the plane's key k), the lookup in the table's pairs TT."""
    nc = cmap.shape[0]
    xr = Xp[row]
    for j in range(ja):
        gain[j] = _signal_gain(xr[cmap[j]])
    c0 = cmap[ja] - ja
    mid = xr[c0 + ja : c0 + jb]
    g = gain[ja:jb]
    for j in range(jb - ja):
        g[j] = _signal_gain(mid[j])
    for j in range(jb, nc):
        gain[j] = _signal_gain(xr[cmap[j]])
    for j in range(nc):
        cell[j], frac[j] = _grain_cell(k + counters[j])
    for j in range(nc):
        dst[j] = gain[j] * _grain_lookup(TT, cell[j], frac[j])


@_helper
def _vpass(ring, i, taps, r, tmp):
    """tmp = taps[r]·ρ(i) + Σ_{q=1..r} taps[r+q]·(ρ(i−q) + ρ(i+q)), summed in that order, where ρ(j) is row
    j of the rows in flight, kept in ring slot j mod len(ring) (2r+1 slots in `finish`; `grain_noise` holds
    all of a block's rows, so slot j is row j)."""
    m = ring.shape[0]
    t = taps[r]
    c = ring[i % m]
    for x in range(tmp.shape[0]):
        tmp[x] = t * c[x]
    for q in range(1, r + 1):
        t = taps[r + q]
        a = ring[(i - q) % m]
        b = ring[(i + q) % m]
        for x in range(tmp.shape[0]):
            tmp[x] += t * (a[x] + b[x])


@kernel
def grain_noise(X, rmap, cmap, y0, x0, key, TT, taps, out):
    """G ⊛ (a(X)·u) on the 'valid' part of the rows rmap × columns cmap, block by block of rows so the
    unblurred noise never exists as a whole plane (the row helpers of `finish`'s grain)."""
    r = (taps.shape[0] - 1) // 2
    h = rmap.shape[0] - 2 * r
    nc = cmap.shape[0]
    k = np.uint64(key)
    ja, jb = _longest_run(cmap)
    block = 64
    nblocks = (h + block - 1) // block
    for b in prange(nblocks):
        lo = b * block
        hi = min(h, lo + block)
        buf = np.empty((hi - lo + 2 * r, nc), dtype=np.float32)
        gain = np.empty(nc, dtype=np.float32)
        counters = np.empty(nc, dtype=np.uint64)
        cell = np.empty(nc, dtype=np.int32)
        frac = np.empty(nc, dtype=np.float32)
        for i in range(hi - lo + 2 * r):
            _hash_row(rmap[lo + i], cmap, y0, x0, counters)
            _rho_row(X, rmap[lo + i], cmap, ja, jb, counters, k, TT, gain, cell, frac, buf[i])
        tmp = np.empty(nc, dtype=np.float32)
        for y in range(hi - lo):
            _vpass(buf, y + r, taps, r, tmp)  # buf holds every row in flight: slot i is row i
            _hpass(tmp, taps, r, r, out[lo + y])


@njit(cache=True, inline="always", error_model="numpy")
def _clipped_noise(noise, y, nscale, n):
    """Row y of every grain plane p, scaled by nscale[p] and clipped to [-1, 1], into n (P, w)."""
    for p in range(noise.shape[0]):
        k = nscale[p]
        src, dst = noise[p, y], n[p]
        for x in range(dst.shape[0]):
            dst[x] = _clip_noise(src[x], k)


@njit(cache=True, inline="always", error_model="numpy")
def _base_row(Yp, X, xy, xx, y, c, wd, ws, z):
    """S6 without grain for row y of channel c into z: wd·Y' + ws·X."""
    a, b = wd[c], ws[c]
    for x in range(z.shape[0]):
        z[x] = _mixed_base(a, Yp[c, y, x], b, X[c, xy + y, xx + x])


@njit(cache=True, inline="always", error_model="numpy")
def _add_grain_row(c, n, coef, z):
    """z += Σ_p coef[c, p]·n_p (the grain terms of S6)."""
    for p in range(n.shape[0]):
        k = coef[c, p]
        np_ = n[p]
        for x in range(z.shape[0]):
            z[x] = _grain_term(z[x], k, np_[x])


@njit(cache=True, inline="always", error_model="numpy")
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
        _clipped_noise(noise, y, nscale, n)
        for c in range(C):
            _mixed_row(Yp, X, xy, xx, y, c, n, coef, wd, ws, z)
            t = thresholds[c]
            st = starts[c]
            for x in range(w):
                out[y, x, c] = _code(z[x], _bits(z[x]), t, st, base, sh, last)


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
            for x in range(w):
                F[x] = F0[x]
            _add_grain_row(c, n, coef, F)
            for x in range(w):
                f0 = _filmic(F0[x], tA, tB, cb, de, df, ef)
                f = _filmic(F[x], tA, tB, cb, de, df, ef)
                out[y, x, c] = _srgb_code(_blend(f0, f, r), guess, steps, cells)


@serial_kernel
def k_sums_lut(sub, table, matrix, factors, use_factors):
    """`grain.k_sums`' Σq of every plane c of X_c = matrix[c]·lin(sub) (then ×factors[c] clipped to [0, 1]
    when use_factors) for integer sRGB samples sub (h, w, 3), lin = table[sub] (float64), as int64 (C,):
    q = rint(2³²/max(E0·X, 1)), the same float64 operations as `pipeline.grain_sums`' NumPy path; exact
    integers. A `Kernel`, so that it compiles under `compile_lock` once per machine like the others (a local
    worker that met it uncompiled after an install compiled it itself, about a second of CPU each), serial
    only: a 24 MP image's subsample takes about 0.01 s on one thread, and a many-thread build took 3.3 s to
    compile against 1.2 s, which the first `preview` after an install would wait for."""
    h, w = sub.shape[0], sub.shape[1]
    C = matrix.shape[0]
    totals = np.empty(C, dtype=np.int64)
    for c in range(C):
        totals[c] = 0
    lin = np.empty((3, w), dtype=np.float64)
    for y in range(h):
        for x in range(w):
            lin[0, x] = table[sub[y, x, 0]]
            lin[1, x] = table[sub[y, x, 1]]
            lin[2, x] = table[sub[y, x, 2]]
        r, g, b = lin[0], lin[1], lin[2]
        for c in range(C):
            m0, m1, m2, fac = matrix[c, 0], matrix[c, 1], matrix[c, 2], factors[c]
            t = np.int64(0)
            for x in range(w):
                v = m0 * r[x] + m1 * g[x] + m2 * b[x]
                if use_factors:
                    v = min(max(v * fac, 0.0), 1.0)
                t += np.int64(np.rint((1.0 / max(1000.0 * v, 1.0)) * 4294967296.0))
            totals[c] += t
    return totals


@kernel
def finish(S, sy, sx, blurred, has_blur, rj, rw0, rw1, cj, cw0, cw1, thr, etas,
           composed, bl, has_bl, brj, brw0, brw1, bcj, bcw0, bcw1, bthr, betas,
           X, xy, xx, rmap, cmap, gy0, gx0, keys, TT, taps, coef, nscale, wd, ws,
           mode, tone, r, G, gbase, gshift, gscale, steps, thresholds, starts, base, shift, threads, planar, out):
    """The last blur stage's compose, the grain planes and S6–S8 fused, row by row: what `compose`
    (on S, with each channel's blurred field), `grain_noise` (one plane per key, plane p on X[p]) and then
    `mix_filmic_encode` (mode 0), `mix_filmic_blend_encode` (mode 1, r < 1) or `mix_encode` (mode 2) compute,
    the same bits, without the full-size Y' and noise planes (filmic codes by `_pixel.code_bucket`,
    `guessed_code` and `settled_code`, one loop each, so the first vectorises: G, gbase, gshift, gscale from
    `tone.code_guesses`, steps from `tone.code_tables`). out: the codes, (h, w, C), or (C, h, w) when
    `planar` (each channel's row then stored contiguously, as Zarr's chunks hold them). Each thread
    takes a run of rows and keeps only the 2r+1 rows of unblurred noise in flight per plane (r the grain
    radius), so its scratch stays in cache; `threads` sets the number of runs (4 per thread, but one for a
    single thread: each run makes its first 2r rows of noise afresh).
    `composed`: S is not stored but made row by row where it is read, as `compose` makes the bloom stage's
    output from X with the blurred cells `bl` (has_bl, interpolation brj, brw0, brw1 over S's rows and bcj,
    bcw0, bcw1 over its columns, threshold bthr, betas per channel); S itself is then not read."""
    if planar:
        C, h, w = out.shape
    else:
        h, w, C = out.shape
    P = keys.shape[0]
    rad = (taps.shape[0] - 1) // 2
    nc = cmap.shape[0]
    last = starts.shape[1] - 2
    sh = np.uint32(shift)
    gsh = np.uint32(gshift)
    gb = np.int32(gbase)
    glast = np.int32(G.shape[0] - 2)
    ja, jb = _longest_run(cmap)
    bcj_s, bcw0_s, bcw1_s = bcj[sx : sx + w], bcw0[sx : sx + w], bcw1[sx : sx + w]
    chunks = 1 if threads == 1 else min(h, 4 * threads)
    for ch in prange(chunks):
        lo = ch * h // chunks
        hi = (ch + 1) * h // chunks
        ring = np.empty((P, 2 * rad + 1, nc), dtype=np.float32)
        gain = np.empty(nc, dtype=np.float32)
        counters = np.empty(nc, dtype=np.uint64)
        cell = np.empty(nc, dtype=np.int32)
        frac = np.empty(nc, dtype=np.float32)
        tmp = np.empty(nc, dtype=np.float32)
        noise = np.empty((P, 1, w), dtype=np.float32)
        n = np.empty((P, w), dtype=np.float32)
        yp = np.empty(w, dtype=np.float32)
        up = np.empty((C, 2, w), dtype=np.float32)  # per channel, the two upsampled cell rows in use
        held = np.empty((C, 2), dtype=np.int64)
        bup = np.empty((C, 2, w), dtype=np.float32)  # the same for the bloom's cells when `composed`
        bheld = np.empty((C, 2), dtype=np.int64)
        for c in range(C):
            held[c, 0], held[c, 1], bheld[c, 0], bheld[c, 1] = -1, -1, -1, -1
        srow = np.empty(w, dtype=np.float32)
        F = np.empty(w, dtype=np.float32)
        F0 = np.empty(w, dtype=np.float32)
        bucket = np.empty(w, dtype=np.int32)
        pos = np.empty(w, dtype=np.float32)
        guessed = np.empty(w, dtype=np.int32)
        for i in range(lo, lo + 2 * rad):  # the first rows in flight: those of row lo's window but its last
            if P > 0:
                _hash_row(rmap[i], cmap, gy0, gx0, counters)
            for p in range(P):
                _rho_row(X[p], rmap[i], cmap, ja, jb, counters, keys[p], TT, gain, cell, frac,
                         ring[p, i % (2 * rad + 1)])
        for y in range(lo, hi):
            i = y + 2 * rad
            if P > 0:
                _hash_row(rmap[i], cmap, gy0, gx0, counters)
            for p in range(P):
                _rho_row(X[p], rmap[i], cmap, ja, jb, counters, keys[p], TT, gain, cell, frac,
                         ring[p, i % (2 * rad + 1)])
                _vpass(ring[p], y + rad, taps, rad, tmp)
                _hpass(tmp, taps, rad, rad, noise[p, 0])
            _clipped_noise(noise, 0, nscale, n)
            for c in range(C):
                xr = X[c, xy + y, xx : xx + w]
                if has_blur[c]:
                    _upsampled_rows(blurred[c], rj[y], cj, cw0, cw1, up[c], held[c])
                if composed:
                    by = sy + y
                    if has_bl[c]:
                        _upsampled_rows(bl[c], brj[by], bcj_s, bcw0_s, bcw1_s, bup[c], bheld[c])
                    _compose_row(xr, bup[c], brj[by], brw0[by], brw1[by], has_bl[c], bthr, betas[c], srow)
                    _compose_row(srow, up[c], rj[y], rw0[y], rw1[y], has_blur[c], thr, etas[c], yp)
                else:
                    _compose_row(S[c, sy + y, sx : sx + w], up[c], rj[y], rw0[y], rw1[y], has_blur[c], thr,
                                 etas[c], yp)
                a, bw = wd[c], ws[c]
                for x in range(w):
                    F0[x] = _mixed_base(a, yp[x], bw, xr[x])
                for x in range(w):
                    F[x] = F0[x]
                _add_grain_row(c, n, coef, F)
                if mode == 2:
                    t = thresholds[c]
                    st = starts[c]
                    if planar:
                        o = out[c, y]
                        for x in range(w):
                            o[x] = _code(F[x], _bits(F[x]), t, st, base, sh, last)
                    else:
                        for x in range(w):
                            out[y, x, c] = _code(F[x], _bits(F[x]), t, st, base, sh, last)
                else:
                    tA, tB, tC, tD, tE, tF = tone[c, 0], tone[c, 1], tone[c, 2], tone[c, 3], tone[c, 4], tone[c, 5]
                    cb, de, df, ef = _filmic_coeffs(tB, tC, tD, tE, tF)
                    if mode == 1:
                        for x in range(w):
                            f0 = _filmic(F0[x], tA, tB, cb, de, df, ef)
                            F[x] = _blend(f0, _filmic(F[x], tA, tB, cb, de, df, ef), r)
                    else:
                        for x in range(w):
                            F[x] = _filmic(F[x], tA, tB, cb, de, df, ef)
                    for x in range(w):
                        bucket[x], pos[x] = _code_bucket(_bits(F[x]), gb, gsh, gscale, glast)
                    for x in range(w):
                        guessed[x] = _guessed_code(G, bucket[x], pos[x])
                    if planar:
                        o = out[c, y]
                        for x in range(w):
                            o[x] = _settled_code(F[x], guessed[x], steps)
                    else:
                        for x in range(w):
                            out[y, x, c] = _settled_code(F[x], guessed[x], steps)
