"""The fused CPU pass (`ops.finish`: last blur stage, grain and encode in one pass over rows) and the other
speed paths compute exactly what the separate kernels compute: the same codes, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phos_dask import Settings, render
from phos_dask.film import _pixel, pipeline, tone
from phos_dask.film.pipeline import grain_constants, make_plan, render_region, source_box


def _image(h: int, w: int, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1.0)
    img = (rng.random((h, w, 3)) ** 0.7 * top).astype(dtype)
    img[h // 4 : h // 4 + 30, w // 3 : w // 3 + 40] = top  # highlights that bloom and halate
    img[:8, -10:] = top  # one on a corner: reflected columns and rows
    img[-h // 3 :, : w // 2] //= 12  # deep shadow
    return img


def _both(monkeypatch, fn):
    monkeypatch.setattr(pipeline, "FUSED_CPU", True)
    fused = fn()
    monkeypatch.setattr(pipeline, "FUSED_CPU", False)
    separate = fn()
    return fused, separate


CASES = [
    # film, dtype, grain, hd_curve, (h, w), input: colour and B&W, filmic and H&D-table codes, s < 1 (blend
    # after the curve) and s ≥ 1, grain on and off; 8- and 16-bit codes and float sRGB or linear input
    ("Portra400", "uint8", "default", False, (300, 420), np.uint8),
    ("Cinestill800T", "uint16", "coarse", False, (260, 300), np.uint8),
    ("HP5Plus400", "uint8", "default", True, (3000, 3100), np.uint8),
    ("HP5Plus400", "uint16", "none", True, (250, 330), np.uint8),
    ("Velvia50", "uint16", "soft", True, (3050, 3000), np.uint8),
    ("TriX400", "uint8", "none", False, (200, 260), np.uint8),
    ("Portra400", "uint16", "default", False, (280, 310), np.uint16),
    ("Ektar100", "uint16", "coarse", False, (3000, 3050), np.uint16),
    ("Cinestill800T", "uint8", "default", False, (240, 290), np.float32),
    ("HP5Plus400", "uint16", "default", False, (230, 250), "linear"),
]


@pytest.mark.parametrize(("film", "dtype", "grain", "hd", "shape", "source"), CASES)
def test_the_fused_pass_gives_the_separate_kernels_codes(monkeypatch, film, dtype, grain, hd, shape, source):
    linear = source == "linear"
    st = Settings(film=film, dtype=dtype, grain=grain, hd_curve=hd, seed=3, image_key="fused", linear_input=linear)
    h, w = shape
    source = np.float32 if linear else source
    if h * w > 1_000_000:  # a region of a large image: s ≥ 1, rendered from its window
        img = _image(h, w, 1, source)
        plan = make_plan(st, shape, grain_k=grain_constants(img, st))
        box = (h - 150, h, w // 2, w // 2 + 170)
        y0, y1, x0, x1 = source_box(plan, box, shape)
        window = img[y0:y1, x0:x1]
        assert pipeline._fused(window, plan)
        fused, separate = _both(monkeypatch, lambda: render_region(window, (y0, x0), shape, box, plan))
    else:
        img = _image(h, w, 2, source)
        assert pipeline._fused(img, make_plan(st, shape)) == (not hd or grain == "none")
        fused, separate = _both(monkeypatch, lambda: render(img, st))
    assert fused.dtype == separate.dtype and fused.shape == separate.shape
    np.testing.assert_array_equal(fused, separate)


@pytest.mark.parametrize(("film", "dtype", "grain", "hd"), [
    ("Portra400", "uint16", "default", False),  # colour, filmic codes (fused)
    ("HP5Plus400", "uint8", "default", True),  # B&W, H&D tables, s < 1: the separate kernels
    ("Cinestill800T", "float16", "soft", False),  # float output: the separate kernels
])
@pytest.mark.parametrize("fused", [True, False])
def test_a_planar_render_holds_the_same_values_channel_first(monkeypatch, film, dtype, grain, hd, fused):
    """`render_region(planar=True)` (what a job's tasks write into the (C, h, w) Zarr arrays) is the usual
    (h, w, C) or (h, w) output moved channel first, bit for bit, on both the fused and the separate path;
    the fused pass writes it C-contiguous."""
    monkeypatch.setattr(pipeline, "FUSED_CPU", fused)
    st = Settings(film=film, dtype=dtype, grain=grain, hd_curve=hd, seed=7, image_key="planar")
    img = _image(210, 333, 5)
    shape = img.shape[:2]
    plan = make_plan(st, shape, grain_k=grain_constants(img, st))
    box = (37, 190, 61, 300)
    y0, y1, x0, x1 = source_box(plan, box, shape)
    usual = render_region(img[y0:y1, x0:x1], (y0, x0), shape, box, plan)
    planar = render_region(img[y0:y1, x0:x1], (y0, x0), shape, box, plan, planar=True)
    C = 1 if usual.ndim == 2 else 3
    assert planar.shape == (C, 153, 239) and planar.dtype == usual.dtype
    np.testing.assert_array_equal(planar, usual[None] if C == 1 else np.moveaxis(usual, -1, 0))
    if fused and pipeline._fused(img, plan):
        assert planar.flags.c_contiguous


def test_the_fused_pass_is_the_same_on_one_thread_and_on_two(monkeypatch):
    import numba

    img = _image(333, 517, 4)
    st = Settings(film="Portra400", seed=1, image_key="threads")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = render(img, st)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = render(img, st)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("vmax", [255, 65535])
def test_codes_guessed_from_the_bit_pattern_are_the_exact_srgb_codes(vmax):
    """Every float32 F in [0, 1] near each code's step, the edges of the guess buckets, and a dense sweep of
    bit patterns get the code the square-root guess settles on (itself checked against the float64
    definition in test_model_spec). (Every float32 in [0, 1] was checked once, outside the suite.)"""
    guess, steps = tone.code_tables(vmax)
    G, base, shift = tone.code_guesses(vmax)
    one = int(np.float32(1.0).view(np.int32))
    finite = steps[1 : vmax + 1].view(np.int32).astype(np.int64)
    near = (finite[:, None] + np.arange(-2, 3)[None, :]).ravel()
    edges = ((np.arange(base, (one >> shift) + 2) << shift)[:, None] + np.array([-1, 0, 1])[None, :]).ravel()
    sweep = np.arange(0, one + 1, 997, dtype=np.int64)
    bits = np.concatenate([near, edges, sweep, [0, 1, one]])
    F = bits[(bits >= 0) & (bits <= one)].astype(np.int32).view(np.float32)
    F = np.concatenate([F, np.float32([-0.0])])
    cells = np.int64(guess.shape[0] - 1)
    scale = np.float32(2.0**-shift)
    want = np.array([_pixel.srgb_code(f, guess, steps, cells) for f in F[:5000]], np.int64)
    got_py = np.array([_bits_code(f, G, base, shift, scale, steps) for f in F[:5000]], np.int64)
    np.testing.assert_array_equal(got_py, want)
    got, expect = _bits_and_guess(F, G, base, shift, scale, guess, steps)
    np.testing.assert_array_equal(got, expect)
    assert got.min() == 0 and got.max() == vmax


def _bits_code(f, G, base, shift, scale, steps):
    """The code `_cpu.finish` computes for f in its three loops, as plain Python on NumPy scalars."""
    b, t = _pixel.code_bucket(f.view(np.uint32), np.int32(base), np.uint32(shift), scale, np.int32(G.shape[0] - 2))
    return _pixel.settled_code(f, _pixel.guessed_code(G, b, t), steps)


def _bits_and_guess(F, G, base, shift, scale, guess, steps):
    from numba import njit

    bucket, guessed, settled = (njit(fn) for fn in (_pixel.code_bucket, _pixel.guessed_code, _pixel.settled_code))
    srgb = njit(_pixel.srgb_code)

    @njit
    def both(F, G, base, shift, scale, guess, steps):
        Fb = F.view(np.uint32)
        cells = np.int64(guess.shape[0] - 1)
        last = np.int32(G.shape[0] - 2)
        a = np.empty(F.shape[0], np.int64)
        b = np.empty(F.shape[0], np.int64)
        for i in range(F.shape[0]):
            cell, t = bucket(Fb[i], base, shift, scale, last)
            a[i] = settled(F[i], guessed(G, cell, t), steps)
            b[i] = srgb(F[i], guess, steps, cells)
        return a, b

    return both(F, G, np.int32(base), np.uint32(shift), scale, guess, steps)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_grain_constant_sums_match_the_float64_definition(dtype):
    """K_c's integer sums from the compiled loop equal the NumPy float64 evaluation of spec §4's formula."""
    from phos_dask.film import colour, grain

    img = _image(401, 523, 7, dtype)
    for st in (Settings(film="Portra400"), Settings(film="Velvia50", exposure_time=30.0), Settings(film="TriX400")):
        for origin in ((0, 0), (1, 3), (6, 2)):
            got = pipeline.grain_sums(img, origin, st)
            sub = img[(-origin[0]) % 4 :: 4, (-origin[1]) % 4 :: 4]
            lin = colour.input_table(sub.dtype, False)[sub].astype(np.float64)
            m = colour.emulsion_matrix(st.stock).astype(np.float64)
            fac = colour.reciprocity_factors(st.stock, st.exposure_time)
            want = []
            for c in range(m.shape[0]):
                X = m[c, 0] * lin[..., 0] + m[c, 1] * lin[..., 1] + m[c, 2] * lin[..., 2]
                if fac is not None:
                    X = np.clip(X * float(fac[c]), 0.0, 1.0)
                want.append(grain.k_sums(X))
            assert got == tuple(want)


def test_the_cpu_compose_and_the_reference_upsample_the_blurred_cells_alike(monkeypatch):
    """Bloom and halation read their blurred cells through a bilinear upsampling, across first and then down,
    in float32: the CPU kernel (which interpolates each cell row across once per run of output rows and keeps
    the two in use) and the NumPy reference (what CuPy runs) give the same bits, for output rows in order, in
    reverse (a reflected edge) and shuffled, over several runs of rows."""
    from phos_dask.film import _cpu, ops

    rng = np.random.default_rng(5)
    cells = rng.random((13, 17), dtype=np.float32) * np.float32(0.1)
    h, w, sy, sx = 75, 83, 2, 3
    src = np.float32(0.05) + rng.random((h + sy + 4, w + sx + 5), dtype=np.float32) * np.float32(0.9)

    def interpolation(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n) + 0.5) * (m - 1) / n
        j = np.minimum(pos.astype(np.int64), m - 2)
        w1 = (pos - j).astype(np.float32)
        return j, (np.float32(1) - w1).astype(np.float32), w1

    cols = interpolation(w, cells.shape[1])
    for order in (np.arange(h), np.arange(h)[::-1], rng.permutation(h)):
        rows = tuple(np.ascontiguousarray(a[order]) for a in interpolation(h, cells.shape[0]))
        cpu = np.empty((h, w), np.float32)
        _cpu.compose(src, sy, sx, cells, True, *rows, *cols, np.float32(0.6), np.float32(0.3), cpu)
        monkeypatch.setattr(ops, "FORCE_REFERENCE", True)
        reference = ops.compose(src, sy, sx, cells, rows, cols, 0.6, 0.3, np.empty((h, w), np.float32))
        monkeypatch.setattr(ops, "FORCE_REFERENCE", False)
        np.testing.assert_array_equal(cpu.view(np.uint32), np.asarray(reference, np.float32).view(np.uint32))
        assert cpu.min() > 0 and cpu.max() < 1  # neither clip decided it


def test_the_cells_tell_when_nothing_exceeds_the_threshold():
    """On the CPU the bloom stage skips its blur when no cell holds excess light: the result is the source
    itself (nothing taken, nothing received), as with the scan it replaced."""
    X = np.full((3, 90, 120), 0.4, np.float32)
    plan = make_plan(Settings(film="Portra400", grain="none"), (90, 120))
    blurred, _, _ = pipeline._blurred(X[0], (0, 0), (0, 90, 0, 120), (90, 120), plan.bloom, 0.8, 0.2)
    assert blurred is None
    X[0, 40, 60] = 0.95
    blurred, _, _ = pipeline._blurred(X[0], (0, 0), (0, 90, 0, 120), (90, 120), plan.bloom, 0.8, 0.2)
    assert blurred is not None and blurred.max() > 0


def test_renders_that_reuse_a_threads_scratch_give_the_same_bits_as_fresh_ones():
    """A thread keeps its scratch arrays (bounded) from one render to the next; a larger image grows them, a
    smaller one uses a part; results do not depend on what ran before, nor on other threads' renders."""
    from concurrent.futures import ThreadPoolExecutor

    from phos_dask.film import scratch

    st = Settings(film="Cinestill800T", seed=5, image_key="scratch")
    images = [_image(210, 330, 11), _image(420, 380, 12), _image(150, 170, 13)]
    scratch.release()
    fresh = []
    for img in images:
        fresh.append(render(img, st))
        scratch.release()
    assert scratch.kept_bytes() == 0
    for img, want in zip(images + images[::-1], fresh + fresh[::-1], strict=True):
        np.testing.assert_array_equal(render(img, st), want)
    assert 0 < scratch.kept_bytes() <= scratch.KEEP_BYTES
    with ThreadPoolExecutor(3) as pool:
        for got, want in zip(pool.map(lambda i: render(images[i % 3], st), range(12)), fresh * 4, strict=True):
            np.testing.assert_array_equal(got, want)
    scratch.release()
    assert scratch.kept_bytes() == 0


def test_scratch_past_the_keep_limit_is_not_kept(monkeypatch):
    from phos_dask.film import scratch

    scratch.release()
    monkeypatch.setattr(scratch, "KEEP_BYTES", 1000)
    a = scratch.array("X", (10, 20))  # 800 bytes: kept
    assert scratch.kept_bytes() == 800
    b = scratch.array("Y", (10, 20))  # 800 more would pass the limit: used once, not kept
    assert scratch.kept_bytes() == 800 and not np.shares_memory(a, b)
    assert np.shares_memory(scratch.array("X", (5, 5)), a)  # a smaller request reuses the kept buffer
    scratch.release()


@pytest.mark.parametrize(("film", "working_size"), [("Portra400", None), ("Cinestill800T", 200)])
def test_memory_prepared_before_a_render_is_the_scratch_the_render_uses(film, working_size, monkeypatch):
    """`engine.prepare_memory` (what `preview` does while its kernels load) touches exactly the scratch array
    the render of that image then keeps its exposures in: the render finds it, grows nothing, and gives the
    same bits as a render on fresh memory. Past the keep limit it touches nothing."""
    from phos_dask.engine import output_shape, prepare_memory
    from phos_dask.film import scratch

    st = Settings(film=film, seed=3, image_key="touch", working_size=working_size)
    img = _image(210, 330, 21)
    scratch.release()
    want = render(img, st)
    scratch.release()
    assert prepare_memory(img.shape[:2], st)
    touched = scratch._local.kept["X"]
    assert touched.nbytes == 3 * math.prod(output_shape(img.shape[:2], st)) * 4
    np.testing.assert_array_equal(render(img, st), want)
    assert scratch._local.kept["X"] is touched and scratch.kept_bytes() == touched.nbytes
    scratch.release()
    monkeypatch.setattr(scratch, "KEEP_BYTES", touched.nbytes - 1)
    assert not prepare_memory(img.shape[:2], st) and scratch.kept_bytes() == 0


def test_no_memory_is_prepared_for_a_render_that_keeps_no_scratch():
    """A render that does not take the fused pass (here a B&W stock's H&D curve on a small image) keeps no
    exposures in scratch: prepare_memory touches nothing."""
    from phos_dask.engine import prepare_memory
    from phos_dask.film import scratch

    st = Settings(film="HP5Plus400", seed=3, image_key="touch")
    assert not pipeline._fuses(make_plan(st, (210, 330)))
    scratch.release()
    assert not prepare_memory((210, 330), st) and scratch.kept_bytes() == 0
