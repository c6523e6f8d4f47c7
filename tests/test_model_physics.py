"""Bloom, halation and grain behave as the spec defines them; the fast paths stay within its tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from phos_dask import Settings, all_stocks, get_stock, render, render_window
from phos_dask.film import ops, psf
from phos_dask.film.coarse import CoarseBlur
from phos_dask.film.pipeline import (
    HALATION_THRESHOLD,
    _blur_stage,
    coarse_factor,
    grain_constants,
    make_plan,
    noise_planes,
)


def _field(h: int, w: int, seed: int) -> np.ndarray:
    """Exposure X in [0, 1] with the hard cases for a reduced-resolution blur: saturated blocks with sharp
    edges (one on the border), one-pixel lines, isolated hot pixels."""
    rng = np.random.default_rng(seed)
    X = (rng.random((h, w)) * 0.7).astype(np.float32)
    X[100:180, 150:260] = 1.0
    X[:60, w - 90 :] = 0.98
    X[300, :] = 1.0
    X[:, 420] = 0.95
    X[rng.integers(0, h, 40), rng.integers(0, w, 40)] = 1.0
    return X


def _exact_stage(X: np.ndarray, kernel: np.ndarray, thr: float, eta: float) -> np.ndarray:
    """The spec's definition in float64: clip01(X - eta·(X-thr)₊ + K ⊛ eta·(X-thr)₊), border reflect."""
    sig = eta * np.maximum(X.astype(np.float64) - thr, 0)
    R = kernel.shape[0] // 2
    spread = fftconvolve(np.pad(sig, R, mode="symmetric"), kernel, mode="valid")
    return np.clip(X - sig + spread, 0, 1)


def _fast_stage(X: np.ndarray, comps, s: float, thr: float, eta: float) -> np.ndarray:
    blur = CoarseBlur.build(comps, coarse_factor(s))
    h, w = X.shape
    return _blur_stage(X, (0, 0), (0, h, 0, w), (h, w), blur, thr, eta, np.empty_like(X))


#: Scales covering every band of `coarse_factor` at its lowest (coarsest relative to s) edge: f = 1 (0.1),
#: f = 2 from 0.18, f = 3 from 0.27 (and a 1 MP 3:2 photo, 816/3000), f = 4 from 0.36 up to s = 1, and
#: floor(4·s) from s = 1 (1.25: f = 5).
BLUR_SCALES = [0.1, 0.18, 0.2, 0.25, 0.27, 816 / 3000, 0.36, 0.5, 0.75, 1.0, 1.25, 1.5]


@pytest.mark.parametrize("s", BLUR_SCALES)
def test_bloom_stays_within_1e_3_of_the_exact_psf(s):
    X = _field(520, 640, 0)
    eta = 0.140794 * 1.6443  # the largest η of any stock (ISO 400 red)
    fast = _fast_stage(X, psf.bloom_components(s), s, 0.8, eta)
    exact = _exact_stage(X, psf.bloom_psf(s), 0.8, eta)
    assert np.abs(fast - exact).max() < 1e-3


@pytest.mark.parametrize("s", BLUR_SCALES)
def test_cinestill_halation_stays_within_1e_3_of_the_exact_kernels(s):
    Y = _field(520, 640, 1)
    k = get_stock("Cinestill800T").halation.strength()[0]
    fast = _fast_stage(Y, psf.halation_components(150.0, s), s, HALATION_THRESHOLD, k)
    exact = _exact_stage(Y, psf.halation_kernel(150.0, s), HALATION_THRESHOLD, k)
    assert np.abs(fast - exact).max() < 1e-3


def test_blur_cells_from_s_1_up_are_floor_4s():
    """Images with s ≥ 1 keep the cells (and so the exact pixels) they had before small images got coarser
    cells."""
    assert [coarse_factor(s) for s in (1.0, 1.2499, 1.25, 4000 / 3000, 2.0, 5.0)] == [4, 4, 5, 5, 8, 20]


def test_below_s_1_a_blur_cell_spans_at_most_11_reference_px():
    """Below s = 1 the cell is the largest f ≤ 4 with f/s ≤ 1/0.09 (the error bound is set by f/s): f = 1 for
    the smallest images, and f never decreases as s grows, across s = 1 too."""
    scales = np.round(np.arange(0.01, 3.0, 0.001), 6)
    f = np.array([coarse_factor(s) for s in scales])
    assert f.min() == 1 and np.all(np.diff(f) >= 0)
    small = scales < 1
    fs, ss = f[small], scales[small]
    assert np.all(fs <= 4) and np.all((fs == 1) | (fs / ss <= 1 / 0.09 + 1e-6))  # 1 px cells: no reduction
    assert np.all((fs == 4) | ((fs + 1) / ss > 1 / 0.09))  # the largest such f
    edges = {0.05: 1, 0.1: 1, 0.1799: 1, 0.18: 2, 0.2699: 2, 0.27: 3, 816 / 3000: 3, 0.36: 4, 0.99: 4}
    assert {s: coarse_factor(s) for s in edges} == edges


def test_bloom_conserves_energy_where_nothing_clips():
    X = np.full((400, 400), 0.3, np.float32)
    X[190:210, 190:210] = 0.95  # X + spread stays below 1, so no clipping
    eta = 0.15
    Y = _fast_stage(X, psf.bloom_components(1.0), 1.0, 0.8, eta)
    removed = (eta * np.maximum(X - 0.8, 0)).sum(dtype=np.float64)
    assert removed > 0
    assert abs((Y - X).sum(dtype=np.float64)) < 0.01 * removed
    assert Y[200, 200] < X[200, 200]  # the highlight gave light away
    assert Y[200, 230] > X[200, 230]  # its neighbourhood received it


def test_pixels_below_threshold_and_out_of_reach_are_unchanged():
    X = np.full((500, 500), 0.5, np.float32)
    X[20:30, 20:30] = 1.0
    Y = _fast_stage(X, psf.bloom_components(1.0), 1.0, 0.8, 0.15)
    blur = CoarseBlur.build(psf.bloom_components(1.0), coarse_factor(1.0))
    far = 30 + blur.halo
    np.testing.assert_array_equal(Y[far:, far:], X[far:, far:])
    assert np.all(Y[X < 0.8] >= X[X < 0.8])  # below threshold nothing is taken, only received


def test_an_image_without_highlights_skips_bloom_exactly():
    img = np.full((64, 80, 3), 100, np.uint8)
    st = Settings(grain="none", film="HP5Plus400", hd_curve=False)
    out = render(img, st)
    assert np.ptp(out) == 0


# --- grain ------------------------------------------------------------------------------------------------


def _k_uniform(X_value: float) -> float:
    """K_c of an image whose every pixel has exposure X_value (spec §4): 1/max(E0·X, 1)."""
    return 1.0 / max(1000.0 * float(np.float32(X_value)), 1.0)


def _noise(st: Settings, X_value: float = 0.18, size: int = 512, k_of: float | None = None):
    """Grain planes n_p on the top-left size×size pixels of a 3000×3000 image (scale s = 1) whose K_c is
    that of a uniform image at exposure `k_of` (default: X_value itself)."""
    shape = (3000, 3000)
    k = _k_uniform(X_value if k_of is None else k_of)
    plan = make_plan(st, shape, grain_k=(k, k, k))
    r = plan.grain_radius
    X = np.full((plan.channels, size + r, size + r), X_value, np.float32)
    planes = noise_planes(X, (0, 0), (0, size, 0, size), shape, plan)
    return np.clip(planes * plan.grain_nscale[:, None, None], -1, 1), plan


def test_grain_is_a_pure_function_of_seed_and_key():
    a, _ = _noise(Settings(seed=5, image_key="a.jpg"))
    b, _ = _noise(Settings(seed=5, image_key="a.jpg"))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("other", [Settings(seed=5, image_key="b.jpg"), Settings(seed=6, image_key="a.jpg")])
def test_different_key_or_seed_gives_uncorrelated_grain(other):
    a, _ = _noise(Settings(seed=5, image_key="a.jpg"))
    b, _ = _noise(other)
    for p in range(3):
        assert abs(np.corrcoef(a[p].ravel(), b[p].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(a[0].ravel(), a[1].ravel())[0, 1]) < 0.02  # planes are independent too


@pytest.mark.parametrize("X_value", [0.05, 0.18, 0.6])
def test_grain_std_on_a_uniform_image_is_intensity_over_three(X_value):
    """On a uniform image E[a(X)²] = K_c exactly, so V_c is ρ_b's variance and n = ρ_b/(3·sqrt(V_c))·0.8
    has std 0.8/3 whatever the exposure (s = 1, so r(s) = 1; clipping at ±1 is 3.75σ away: negligible)."""
    n, _ = _noise(Settings(grain_intensity=0.8), X_value=X_value, size=1024)
    for p in range(3):
        assert abs(n[p].mean()) < 0.01
        assert n[p].std() == pytest.approx(0.8 / 3, rel=0.05)


def test_mid_grey_grain_follows_the_images_k():
    """The same mid-grey pixels in an image whose K_c is that of a uniform X = 0.02 image: std scaled by
    sqrt(K(0.18)/K(0.02)) = sqrt(20/180) = 1/3 (spec §4: a dark image gets fainter mid-tone grain)."""
    n, _ = _noise(Settings(grain_intensity=0.8), X_value=0.18, size=1024, k_of=0.02)
    expected = 0.8 / 3 * np.sqrt(_k_uniform(0.18) / _k_uniform(0.02))
    for p in range(3):
        assert n[p].std() == pytest.approx(expected, rel=0.05)


def test_grain_is_stronger_in_the_shadows():
    """Within one image (one K_c) the relative noise a(X) = 1/sqrt(1000·X): 3× at X = 0.02 vs 0.18 (at an
    intensity low enough that the ±1 clip stays 3.3σ away in the shadows)."""
    st = Settings(grain_intensity=0.3)
    dark, _ = _noise(st, X_value=0.02, k_of=0.18)
    mid, _ = _noise(st, X_value=0.18)
    assert dark.std() == pytest.approx(3 * mid.std(), rel=0.05)


def _correlation(n: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(n[:, :-lag].ravel(), n[:, lag:].ravel())[0, 1])


def test_correlation_length_grows_with_grain_size():
    fine, _ = _noise(Settings(grain_size=0.8))
    coarse, _ = _noise(Settings(grain_size=3.0))
    assert _correlation(coarse[0], 3) > _correlation(fine[0], 3) + 0.2
    assert _correlation(fine[0], 1) > 0.1  # correlated at all


def test_grain_styles_scale_the_grain():
    img = np.full((96, 96, 3), 118, np.uint8)
    spread = {
        g: render(img, Settings(grain=g, dtype="float32")).std(axis=(0, 1)).max()
        for g in ("none", "soft", "default", "coarse")
    }
    assert spread["none"] == 0
    assert spread["soft"] < spread["default"] < spread["coarse"]


# --- all stocks, real photograph -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(all_stocks()))
def test_every_stock_renders_a_real_photograph_sanely(name, small_photo):
    out = render(small_photo, Settings(film=name, seed=1, image_key="coffee"))
    stock = get_stock(name)
    assert out.dtype == np.uint8
    assert out.shape == ((300, 450, 3) if stock.is_color else (300, 450))
    # the photograph's range survives (the B&W stocks' H&D toe lifts the blacks: their grain-free renders of
    # this photo start at 19-54; a bound of 30 used to hold for them only because shadow grain clipped 1 % of
    # the pixels to black at this small size, before r(s) scaled the grain's effect after the tone curve)
    assert out.min() <= 60 and out.max() >= 180
    f = render(small_photo, Settings(film=name, dtype="float32"))
    assert np.isfinite(f).all() and f.min() >= 0 and f.max() <= 1


def test_outputs_agree_across_dtypes(small_photo):
    st = Settings(film="Velvia50", grain="none")
    u8 = render(small_photo, st).astype(np.int64)
    u16 = render(small_photo, st.replace(dtype="uint16")).astype(np.int64)
    f32 = render(small_photo, st.replace(dtype="float32"))
    assert np.abs(u16 / 257 - u8).max() <= 1
    enc = np.where(f32 <= 0.0031308, 12.92 * f32, 1.055 * f32 ** (1 / 2.4) - 0.055)
    assert np.abs(np.floor(enc * 255 + 0.5) - u8).max() <= 1


def test_renders_are_deterministic(small_photo):
    st = Settings(film="Superia400", seed=99, image_key="x")
    np.testing.assert_array_equal(render(small_photo, st), render(small_photo, st))
    assert not np.array_equal(render(small_photo, st), render(small_photo, st.replace(seed=100)))


def test_16_bit_and_float_inputs_give_the_8_bit_result(small_photo):
    st = Settings(grain="none", dtype="float32")
    ref = render(small_photo, st)
    as16 = render(small_photo.astype(np.uint16) * 257, st)
    asf = render(small_photo.astype(np.float32) / 255, st)
    assert np.abs(as16 - ref).max() < 1e-5
    assert np.abs(asf - ref).max() < 1e-5


def test_grey_and_alpha_inputs(small_photo):
    grey = small_photo[..., 1]
    st = Settings(grain="none")
    np.testing.assert_array_equal(render(grey, st), render(np.stack([grey] * 3, -1), st))
    rgba = np.concatenate([small_photo, np.zeros_like(small_photo[..., :1])], axis=-1)
    np.testing.assert_array_equal(render(rgba, st), render(small_photo, st))


def test_reference_ops_agree_with_the_fused_cpu_kernels(small_photo):
    """The xp reference path (what CuPy runs) and the numba kernels compute the same model."""
    st = Settings(film="Cinestill800T", seed=4, image_key="k", dtype="float32")
    fused = render(small_photo, st)
    try:
        ops.FORCE_REFERENCE = True
        reference = render(small_photo, st)
        ref_codes = {dt: render(small_photo, st.replace(dtype=dt)) for dt in ("uint8", "uint16")}
        ref_bw = render(small_photo, st.replace(film="TriX400", dtype="uint16"))
    finally:
        ops.FORCE_REFERENCE = False
    assert np.abs(fused - reference).max() < 2e-5
    for dt, ref in ref_codes.items():
        diff = np.abs(ref.astype(int) - render(small_photo, st.replace(dtype=dt)))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    bw = render(small_photo, st.replace(film="TriX400", dtype="uint16"))
    assert np.abs(ref_bw.astype(int) - bw).max() <= 1


def test_exposure_time_darkens_a_long_exposure(small_photo):
    st = Settings(grain="none", dtype="float32")
    assert render(small_photo, st.replace(exposure_time=60.0)).mean() < render(small_photo, st).mean()
    np.testing.assert_array_equal(render(small_photo, st.replace(exposure_time=1.0)), render(small_photo, st))


def test_larger_film_formats_make_grain_finer():
    window = np.full((600, 600, 3), 118, np.uint8)  # the corner of a 3000 px image: s = 1 on 35 mm

    def corner(fmt: str) -> np.ndarray:
        st = Settings(dtype="float32", film_format=fmt)
        k = grain_constants(window, st)  # a uniform image: its corner's K_c is the whole image's
        return render_window(window, (0, 0), (3000, 3000), (0, 400, 0, 400), st, k)[..., 1]

    f35, f45 = corner("35mm"), corner("4x5")
    assert _correlation(f35, 2) > _correlation(f45, 2) + 0.1


def test_linear_input_in_any_sample_type(small_photo):
    """Linear-light data give the same render whether stored as float, 16-bit or 8-bit codes."""
    st = Settings(grain="none", dtype="float32", linear_input=True)
    as_float = small_photo.astype(np.float32) / 255
    ref = render(as_float, st)
    assert np.abs(render((small_photo.astype(np.uint16) * 257), st) - ref).max() < 1e-5
    assert np.abs(render(small_photo, st) - ref).max() < 1e-5
    assert np.abs(render(small_photo, st.replace(linear_input=False)) - ref).max() > 0.05
