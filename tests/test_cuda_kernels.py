"""The fused GPU kernels (`phos_dask.film._cuda`) compute what the CPU kernels (`_cpu`) compute.

Without a CUDA GPU the kernels run under numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1, which runs every
GPU thread as Python on the CPU, slowly, so the images are tiny); on a machine with a GPU and CuPy the same
tests run the real kernels. The simulator is chosen when numba.cuda is first imported: this module sets the
variable for that import only, and restores the environment at once (the CPU kernels and the other test
modules never look at it). If some earlier module already imported numba.cuda without the simulator, the
tests run in a fresh interpreter instead (`test_in_a_fresh_interpreter`).

The stock simulator runs each GPU thread in its own Python thread and polls them, about 0.2 ms a thread;
these kernels never synchronise within a block (no syncthreads, no shared memory: each thread writes its
own outputs), so the module runs each block's threads one after another on the calling thread instead
(`_sequential_blocks`, checked against the stock simulator first, and left alone when the simulator's
internals are not the ones expected), about 15 times quicker. A kernel that did synchronise would fail
loudly there (the calling thread has no syncthreads), not pass wrongly.

Tolerances (issue 17): on a GPU, floats within 2e-5 and codes within ±1 of the CPU kernel (its compiler
fuses multiplies and adds, which changes low bits); under the simulator, which does not, equal bits, so a
change to one side's order of operations fails here too. Everywhere: the grain hash bit for bit, and a GPU
render of a window bit-identical to the same pixels of a GPU render of the whole image.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install -e '.[test]')")


def _real_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


REAL_GPU = _real_gpu()
_PRELOADED = "numba.cuda" in sys.modules and not REAL_GPU
if _PRELOADED:
    from numba.cuda.core import config as _cuda_config

    _PRELOADED = not _cuda_config.ENABLE_CUDASIM
if not REAL_GPU and not _PRELOADED:
    _saved = os.environ.get("NUMBA_ENABLE_CUDASIM")
    import numba.core.config as _numba_config

    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    try:
        _numba_config.reload_config()  # numba read its environment when it was first imported, maybe before this
        from numba import cuda  # noqa: F401  (the simulator is fixed at this import)

        # and so is the kernels' module's view of it (numba re-reads its environment whenever it compiles a
        # CPU kernel, which other test modules do before these tests run)
        from phos_dask.film import _cuda as _fixed  # noqa: F401
    finally:
        if _saved is None:
            del os.environ["NUMBA_ENABLE_CUDASIM"]
        else:
            os.environ["NUMBA_ENABLE_CUDASIM"] = _saved
        _numba_config.reload_config()

from phos_dask import Settings, make_plan, render, render_window  # noqa: E402
from phos_dask.film import _cpu, colour, grain, ops, tone  # noqa: E402
from phos_dask.film.coarse import reflect_index  # noqa: E402
from phos_dask.film.pipeline import grain_constants  # noqa: E402

needs_kernels = pytest.mark.skipif(_PRELOADED, reason="numba.cuda was imported without the simulator: "
                                   "see test_in_a_fresh_interpreter")
# the simulator evaluates the 64-bit hash on NumPy scalars, which warn when a product wraps (as it must)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

#: Largest |GPU − CPU| allowed for floats and codes: FMA contraction on a GPU; none under the simulator.
FLOAT_TOL, CODE_TOL = (2e-5, 1) if REAL_GPU else (0.0, 0)
H, W = 48, 64
FILMS = ("Portra400", "HP5Plus400", "Cinestill800T")


def _cuda():
    from phos_dask.film import _cuda

    assert _cuda.SIMULATOR is not REAL_GPU
    return _cuda


def _run_block_sequentially(self, grid_point, *args):
    """numba's simulator BlockManager.run, one thread after another on the calling thread (which stands in
    for each GPU thread in turn: the simulator's cuda.grid & co. read threadIdx/blockIdx off it)."""
    import threading

    from numba.cuda.simulator.kernelapi import Dim3

    me = threading.current_thread()
    saved = {a: getattr(me, a) for a in ("blockIdx", "threadIdx") if hasattr(me, a)}
    me.blockIdx = Dim3(*grid_point)
    try:
        for point in np.ndindex(*self._block_dim):
            me.threadIdx = Dim3(*point)
            self._f(*args)
    finally:
        for a in ("blockIdx", "threadIdx"):
            if a in saved:
                setattr(me, a, saved[a])
            elif hasattr(me, a):
                delattr(me, a)


@pytest.fixture(scope="module", autouse=True)
def _sequential_blocks():
    """Under the simulator, run blocks' threads sequentially (see the module's docstring) once a small
    kernel gives the same output both ways."""
    if REAL_GPU or _PRELOADED:
        yield
        return
    k = _cuda()
    try:
        from numba.cuda.simulator import kernel as sim

        stock = sim.BlockManager.run
    except (ImportError, AttributeError):
        yield
        return
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    args = (img, colour.input_table(np.uint8, False), np.eye(3, dtype=np.float32), np.ones(3, np.float32), False)
    want = k.front_lut(*args, np.full((3, 5, 7), np.nan, np.float32))
    sim.BlockManager.run = _run_block_sequentially
    try:
        got = k.front_lut(*args, np.full((3, 5, 7), np.nan, np.float32))
        ok = np.array_equal(got, want)
    except Exception:
        ok = False
    if not ok:
        sim.BlockManager.run = stock
    try:
        yield
    finally:
        sim.BlockManager.run = stock


@pytest.fixture(scope="module")
def tiny(small_photo) -> np.ndarray:
    """The photograph at 64×48, uint8 RGB."""
    import cv2

    return np.ascontiguousarray(cv2.resize(small_photo, (W, H), interpolation=cv2.INTER_AREA))


def _plan(film: str, img: np.ndarray, **kw):
    st = Settings(film=film, seed=7, image_key="t", **kw)
    return make_plan(st, img.shape[:2], grain_k=grain_constants(img, st))


def _close(gpu: np.ndarray, cpu: np.ndarray) -> float:
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    d = float(np.abs(gpu.astype(np.float64) - cpu.astype(np.float64)).max()) if cpu.size else 0.0
    assert d <= FLOAT_TOL, d
    return d


def _codes(gpu: np.ndarray, cpu: np.ndarray) -> int:
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    d = int(np.abs(gpu.astype(np.int64) - cpu.astype(np.int64)).max())
    assert d <= CODE_TOL, d
    return d


@needs_kernels
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_front_matches_the_cpu_kernel(tiny, dtype):
    k = _cuda()
    img = tiny if dtype == np.uint8 else (tiny.astype(np.uint16) * 257 if dtype == np.uint16
                                         else tiny.astype(np.float32) / 255)
    for film, exposure_time in (("Portra400", None), ("HP5Plus400", 30.0)):
        plan = _plan(film, tiny, exposure_time=exposure_time)
        use = plan.factors is not None
        fac = plan.factors.astype(np.float32) if use else np.ones(plan.channels, np.float32)
        out = np.empty((plan.channels, H, W), np.float32)
        if dtype == np.float32:
            lin = np.ascontiguousarray(colour.linearise(np, img, False), dtype=np.float32)
            cpu = np.empty_like(out)
            _cpu.front_linear(lin, plan.matrix, fac, use, cpu)
            gpu = k.front_linear(lin, plan.matrix, fac, use, out)
        else:
            table = colour.input_table(img.dtype, False)
            cpu = np.empty_like(out)
            _cpu.front_lut(img, table, plan.matrix, fac, use, cpu)
            gpu = k.front_lut(img, table, plan.matrix, fac, use, out)
        _close(gpu, cpu)


def _blur_inputs(plan, X):
    """The bloom stage's arguments for the whole image, as `pipeline._blur_stage` builds them."""
    blur = plan.bloom
    rows = reflect_index(np.arange(*blur.source_rows(0, H)), H)
    cols = reflect_index(np.arange(*blur.source_rows(0, W)), W)
    return blur, rows, cols, blur.interpolation(0, H), blur.interpolation(0, W)


@needs_kernels
@pytest.mark.parametrize("film", FILMS)
def test_bloom_stage_kernels_match_the_cpu_kernels(tiny, film):
    k = _cuda()
    plan = _plan(film, tiny)
    X = ops.front(tiny, plan.matrix, plan.factors)
    blur, rows, cols, (rj, rw0, rw1), (cj, cw0, cw1) = _blur_inputs(plan, X)
    thr, eta = np.float32(plan.stock.threshold), np.float32(plan.etas[0])
    src = np.ascontiguousarray(X[0])
    c_cpu = ops.cells(src, rows, cols, blur.f, thr, eta)
    c_gpu = k.cells(src, rows, cols, blur.f, thr, eta, np.empty_like(c_cpu))
    _close(c_gpu, c_cpu)
    assert c_cpu.max() > 0  # the photograph has highlights: the blur below is not all zeros
    r = (blur.taps_v.shape[1] - 1) // 2
    b_cpu = np.empty((c_cpu.shape[0] - 2 * r, c_cpu.shape[1] - 2 * r), np.float32)
    _cpu.blur_valid(c_cpu, blur.taps_v, blur.taps_h, blur.radii, b_cpu)
    b_gpu = k.blur_valid(c_cpu, blur.taps_v, blur.taps_h, blur.radii, np.empty_like(b_cpu))
    _close(b_gpu, b_cpu)
    for has in (True, False):
        o_cpu, o_gpu = np.empty((H, W), np.float32), np.empty((H, W), np.float32)
        _cpu.compose(src, 0, 0, b_cpu if has else np.zeros((1, 1), np.float32), has, rj, rw0, rw1, cj, cw0, cw1,
                     thr, eta, o_cpu)
        k.compose(src, 0, 0, b_cpu if has else np.zeros((2, 2), np.float32), has, rj, rw0, rw1, cj, cw0, cw1, thr,
                  eta, o_gpu)
        _close(o_gpu, o_cpu)


@needs_kernels
def test_the_grain_hash_gives_the_same_bits_as_the_reference():
    k = _cuda()
    T, dT = grain.normal_table()
    key = grain.plane_key(12345, grain.PLANE_G)
    rows, cols = np.arange(1000, 1012), np.arange(2**31 - 6, 2**31 + 6)  # crosses 2³¹ in x: the hash is 64-bit
    ones = np.zeros((rows.size, cols.size), np.float32)  # a(0) = 1: ρ is u itself
    buf = np.empty_like(ones)
    k._launch(k._rho_k, cols.size, rows.size, buf, ones, np.arange(rows.size), np.arange(cols.size),
              np.int64(rows[0]), np.int64(cols[0]), np.uint64(key), T, dT, buf)
    ref = grain.hash_normal(np, key, rows, cols)
    np.testing.assert_array_equal(buf.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@needs_kernels
@pytest.mark.parametrize("film", ["Portra400", "HP5Plus400"])
def test_grain_noise_matches_the_cpu_kernel(tiny, film):
    k = _cuda()
    plan = _plan(film, tiny)
    X = ops.front(tiny, plan.matrix, plan.factors)
    r = plan.grain_radius
    rows, cols = reflect_index(np.arange(-r, H + r), H), reflect_index(np.arange(-r, W + r), W)
    T, dT = grain.normal_table()
    for c, key in enumerate(plan.grain_keys):
        src = np.ascontiguousarray(X[c])
        cpu, gpu = np.empty((H, W), np.float32), np.empty((H, W), np.float32)
        _cpu.grain_noise(src, rows, cols, 0, 0, np.uint64(key), grain.normal_pairs(), plan.grain_taps, cpu)
        k.grain_noise(src, rows, cols, 0, 0, key, T, dT, plan.grain_taps.reshape(1, -1), gpu)
        _close(gpu, cpu)
        assert np.std(cpu) > 0


def _mix_args(plan, img):
    """`ops.mix`'s arguments for the whole image, from the CPU kernels."""
    X = ops.front(img, plan.matrix, plan.factors)
    from phos_dask.film.pipeline import noise_planes

    noise = noise_planes(X, (0, 0), (0, H, 0, W), (H, W), plan)
    Yp = np.ascontiguousarray(np.clip(X * np.float32(0.9), 0, 1))  # any plausible Y'
    return Yp, X, noise, plan.grain_coef, plan.grain_nscale, plan.wd, plan.ws


@needs_kernels
@pytest.mark.parametrize("film", FILMS)
@pytest.mark.parametrize("vmax", [255, 65535])
def test_mix_and_encode_kernels_match_the_cpu_kernels(tiny, film, vmax):
    k = _cuda()
    plan = _plan(film, tiny)
    Yp, X, noise, coef, nscale, wd, ws = _mix_args(plan, tiny)
    C = plan.channels
    dtype = np.uint8 if vmax == 255 else np.uint16
    _close(k.mix(Yp, X, 0, 0, noise, coef, nscale, wd, ws, np.empty_like(Yp)),
           _cpu.mix(Yp, X, 0, 0, noise, coef, nscale, wd, ws))
    consts = np.array([[t.A, t.B, t.C, t.D, t.E, t.F] for t in (plan.stock.tone,) * C], np.float32)
    guess, steps = tone.code_tables(vmax)
    cpu, gpu = np.empty((H, W, C), dtype), np.empty((H, W, C), dtype)
    _cpu.mix_filmic_encode(Yp, X, 0, 0, noise, coef, nscale, wd, ws, consts, guess, steps, cpu)
    k.mix_filmic_encode(Yp, X, 0, 0, noise, coef, nscale, wd, ws, consts, guess, steps, gpu)
    _codes(gpu, cpu)
    r = np.float32(0.6)
    _cpu.mix_filmic_blend_encode(Yp, X, 0, 0, noise, coef, nscale, wd, ws, consts, r, guess, steps, cpu)
    k.mix_filmic_blend_encode(Yp, X, 0, 0, noise, coef, nscale, wd, ws, consts, r, guess, steps, gpu)
    _codes(gpu, cpu)
    tables = [tone.quant_table(plan.stock.tone, plan.hd or plan.stock.hd_curve or _default_hd(), vmax)] * C
    if all(t is not None for t in tables):
        thresholds, starts = np.stack([t.thresholds for t in tables]), np.stack([t.start for t in tables])
        _cpu.mix_encode(Yp, X, 0, 0, noise, coef, nscale, wd, ws, thresholds, starts, tone.BUCKET_BASE,
                        tone.BUCKET_SHIFT, cpu)
        k.mix_encode(Yp, X, 0, 0, noise, coef, nscale, wd, ws, thresholds, starts, tone.BUCKET_BASE,
                     tone.BUCKET_SHIFT, gpu)
        _codes(gpu, cpu)
        assert len(np.unique(cpu)) > 10  # a real spread of codes went through the table search


def _default_hd():
    from phos_dask.film.pipeline import DEFAULT_HD

    return DEFAULT_HD


@pytest.fixture
def gpu_ops(monkeypatch):
    """Route the model's NumPy arrays through the GPU kernels (simulated here, copied to the GPU there)."""
    _cuda()
    monkeypatch.setattr(ops, "FORCE_CUDA", True)


@needs_kernels
@pytest.mark.parametrize("film,dtype,grain_", [("Portra400", "uint16", "default"), ("HP5Plus400", "float32", "coarse"),
                                               ("Cinestill800T", "uint8", "default"), ("Portra400", "uint8", "none")])
def test_the_model_on_the_gpu_kernels_matches_the_cpu(tiny, film, dtype, grain_, gpu_ops, monkeypatch):
    st = Settings(film=film, seed=3, image_key="m", dtype=dtype, grain=grain_)
    gpu = render(tiny, st)
    monkeypatch.setattr(ops, "FORCE_CUDA", False)
    cpu = render(tiny, st)
    if dtype == "float32":
        _close(gpu, cpu)
    else:
        _codes(gpu, cpu)


@needs_kernels
def test_a_gpu_window_is_bit_identical_to_the_gpu_whole(tiny, gpu_ops):
    """Two tiles of 32 columns, each rendered from its own padded window, equal the whole image's."""
    st = Settings(film="Cinestill800T", seed=1, image_key="w", dtype="uint16")
    whole = render(tiny, st)
    halo = make_plan(st, (H, W)).halo
    k = grain_constants(tiny, st)
    for x0, x1 in ((0, 32), (32, 64)):
        wx0, wx1 = max(0, x0 - halo), min(W, x1 + halo)
        assert wx1 - wx0 < W  # a true window, not the whole image
        got = render_window(tiny[:, wx0:wx1], (0, wx0), (H, W), (0, H, x0, x1), st, k)
        np.testing.assert_array_equal(got, whole[:, x0:x1])


@pytest.mark.skipif(not _PRELOADED, reason="numba.cuda was imported with the simulator here")
def test_in_a_fresh_interpreter():
    """numba.cuda was already imported without the simulator (another test module): run this file alone."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
