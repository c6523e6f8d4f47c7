"""Grain amplitude (spec §4, revised 2026-12-01): the per-image constant K_c, its block-wise sums, r(s), and
the look against the original app and across resolutions."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import random

import cv2
import numpy as np
import pytest

from phos_dask import Settings, make_plan, render, render_window, settings
from phos_dask.film import _cpu, colour, grain, ops, tone
from phos_dask.film.pipeline import (
    add_grain_sums,
    grain_constants,
    grain_k_from_sums,
    grain_sums,
    noise_planes,
    render_region,
)


def _image(h: int, w: int, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3)) ** 1.5
    img[: h // 3, : w // 2] *= 0.05  # a deep shadow
    img[-h // 4 :, -w // 3 :] = 1.0  # a highlight
    if dtype == np.float32:
        return img.astype(np.float32)
    vmax = np.iinfo(dtype).max
    return np.round(img * vmax).astype(dtype)


def _random_cuts(rng: random.Random, n: int, parts: int) -> list[int]:
    return [0, *sorted(rng.sample(range(1, n), parts - 1)), n]


# --- K_c: one number per image and plane, from the whole image or from any blocks -------------------------


@pytest.mark.parametrize(
    ("dtype", "st"),
    [
        (np.uint8, Settings()),
        (np.uint16, Settings(film="Cinestill800T", exposure_time=30.0)),
        (np.float32, Settings(film="HP5Plus400")),
        (np.float32, Settings(film="Velvia50", linear_input=True)),
    ],
)
def test_blocks_summed_in_any_order_give_the_whole_images_k_bit_for_bit(dtype, st):
    H, W = 1013, 777
    img = _image(H, W, 3, dtype)
    whole = grain_constants(img, st)
    assert len(whole) == make_plan(st, (H, W)).grain_planes
    rng = random.Random(7)
    for _ in range(4):  # tiles of a random, unaligned grid, added up in a random order
        ys, xs = _random_cuts(rng, H, 5), _random_cuts(rng, W, 4)
        parts = [grain_sums(img[y0:y1, x0:x1], (y0, x0), st)
                 for y0, y1 in itertools.pairwise(ys) for x0, x1 in itertools.pairwise(xs)]
        rng.shuffle(parts)
        assert grain_k_from_sums(add_grain_sums(*parts)) == whole
    strips = [grain_sums(img[y : y + 37], (y, 0), st) for y in range(0, H, 37)]  # row strips
    assert grain_k_from_sums(add_grain_sums(*strips)) == whole


def test_k_is_the_mean_of_the_inverse_exposure_on_the_global_4_by_4_grid():
    """K_c = mean over y ≡ 0, x ≡ 0 (mod 4) of 1/max(E0·X_c, 1), here recomputed independently in float64."""
    img = _image(301, 203, 5)
    st = Settings()
    lin = colour.decode_table(8)[img[::4, ::4]].astype(np.float64)
    X = np.einsum("cj,hwj->chw", colour.emulsion_matrix(st.stock).astype(np.float64), lin)
    expected = (1.0 / np.maximum(1000.0 * X, 1.0)).mean(axis=(1, 2))
    np.testing.assert_allclose(grain_constants(img, st), expected, rtol=1e-9)
    assert grain_constants(img, st.replace(grain="none")) == ()


def test_tiles_rendered_with_the_summed_k_equal_the_whole_image():
    H, W = 517, 389
    img = _image(H, W, 8)
    st = Settings(seed=4, image_key="k.png", dtype="uint16")
    whole = render(img, st)
    halo = make_plan(st, (H, W)).halo
    ys, xs = [0, 200, H], [0, 150, 300, W]
    k = grain_k_from_sums(add_grain_sums(*[grain_sums(img[y0:y1, x0:x1], (y0, x0), st)
                                           for y0, y1 in itertools.pairwise(ys)
                                           for x0, x1 in itertools.pairwise(xs)]))
    for y0, y1 in itertools.pairwise(ys):
        for x0, x1 in itertools.pairwise(xs):
            wy0, wy1, wx0, wx1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
            got = render_window(img[wy0:wy1, wx0:wx1], (wy0, wx0), (H, W), (y0, y1, x0, x1), st, grain_k=k)
            np.testing.assert_array_equal(got, whole[y0:y1, x0:x1])


def test_the_fingerprint_carries_the_model_version(monkeypatch):
    st = Settings()
    now = st.fingerprint()
    # 0.2.0: before r(s) moved after the tone curve; 0.2.0+r-after-tone: before the coarser blur cells below
    # s = 1. Both made other pixels at s < 1.
    for earlier in ("0.1.0", "0.2.0", "0.2.0+r-after-tone"):
        monkeypatch.setattr(settings, "MODEL_VERSION", earlier)
        assert st.fingerprint() != now  # a store written by that model is refused on rerun


# --- r(s) ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_r_is_the_std_of_the_reference_field_averaged_over_the_box(k):
    """The reference (s = 1) unit field, averaged over aligned k×k blocks, has std r(1/k): measured on the
    model's own noise planes for a uniform image (a(X) constant, so ρ_b / (ΣG²·a)^½ is that field)."""
    shape, size = (3000, 3000), 1536
    X = np.full((1, size + 8, size + 8), 0.18, np.float32)
    plan = make_plan(Settings(film="HP5Plus400"), shape, grain_k=(1.0,))
    field = noise_planes(X, (0, 0), (0, size, 0, size), shape, plan)[0].astype(np.float64)
    field /= field.std()
    blocks = field.reshape(size // k, k, size // k, k).mean(axis=(1, 3))
    assert blocks.std() == pytest.approx(grain.resolution_factor(1.5, 1.0 / k), rel=0.03)
    assert grain.resolution_factor(1.5, 1.0) == grain.resolution_factor(1.5, 1.7) == 1.0


# --- the look: against the original app, across resolutions, dark vs bright ---------------------------------

#: Grain std per tone band of the original Phos app (issue 12): coffee photo, Portra400, working size 3000,
#: scattering 0.10, default grain; band = grey level of the grain-free output, std over the band's pixels and
#: all channels of (with grain − without), 8-bit codes. (shared/parity/README.md lists a second draw:
#: 57.5 / 56.1 / 35.6 / 11.7 / 1.6 / 0.4.)
UPSTREAM_BAND_STD = {(0, 40): 57.5, (40, 80): 56.3, (80, 120): 36.0, (120, 160): 11.9, (160, 200): 1.7,
                     (200, 256): 0.4}


def test_grain_std_per_tone_band_matches_the_original_app(coffee):
    st = Settings(film="Portra400", working_size=3000, scattering=0.10, grain="default")
    with_grain = render(coffee, st).astype(np.int16)
    plain = render(coffee, st.replace(grain="none"))
    diff = with_grain - plain
    grey = cv2.cvtColor(plain, cv2.COLOR_RGB2GRAY)
    checked = 0
    for (lo, hi), upstream in UPSTREAM_BAND_STD.items():
        band = (grey >= lo) & (grey < hi)
        if band.mean() < 0.01:
            continue
        ours = float(diff[band].std())
        assert ours == pytest.approx(upstream, rel=0.20), f"band {lo}-{hi}: {ours:.2f} vs {upstream}"
        checked += 1
    assert checked >= 5


@pytest.fixture(scope="module")
def big_renders(coffee):
    """The coffee photo enlarged to 6000×4000 (s = 4/3) and its renders with and without grain."""
    big = cv2.resize(coffee, (6000, 4000), interpolation=cv2.INTER_LANCZOS4)
    st = Settings(film="Portra400", seed=3, image_key="res")
    return big, st, render(big, st).astype(np.float32), render(big, st.replace(grain="none")).astype(np.float32)


def _area(a: np.ndarray, k: int) -> np.ndarray:
    return cv2.resize(a, (a.shape[1] // k, a.shape[0] // k), interpolation=cv2.INTER_AREA)


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 4, 8])
def test_grain_keeps_one_look_across_resolutions(big_renders, k):
    """Spec §4 check on a 6000×4000 photograph: grain std of render(area-downsample_k(I)) within ±15 % of
    that of area-downsample_k(render(I)) − area-downsample_k(render_no_grain(I)), 8-bit codes. Measured
    with r(s) applied after the tone curve: 0.963 / 0.963 / 0.924 for k = 2 / 4 / 8 (applied to n_c before
    the curve, as §4 is written: 1.040 / 1.149 / 1.371)."""
    big, st, with_grain, plain = big_renders
    small = _area(big, k)
    small_grain = render(small, st).astype(np.float32) - render(small, st.replace(grain="none"))
    reduced = _area(with_grain, k) - _area(plain, k)
    assert small_grain.std() / reduced.std() == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize(
    "st",
    [Settings(film="Portra400", dtype="float32"), Settings(film="TriX400"), Settings(film="Portra400")],
    ids=["filmic float32", "H&D uint8", "filmic uint8"],
)
def test_below_scale_one_r_scales_the_grains_effect_after_the_tone_curve(st, small_photo):
    """s < 1: F = F₀ + r(s)·(F₁ − F₀) per channel before quantisation, with F₀ the grain-free value and F₁
    the value whose grain n_c carries no r(s) (rendered here from a plan with r forced to 1)."""
    st = st.replace(seed=6, image_key="after")
    shape = small_photo.shape[:2]
    plan = make_plan(st, shape, grain_k=grain_constants(small_photo, st))
    assert plan.s < 1 and 0.3 < plan.grain_r < 1
    box = (0, shape[0], 0, shape[1])
    st_float = st.replace(dtype="float32")
    F0 = render(small_photo, st_float.replace(grain="none"))
    F1 = render_region(small_photo, (0, 0), shape, box,
                       dataclasses.replace(make_plan(st_float, shape, plan.grain_k), grain_r=1.0))
    F = np.clip(F0 + np.float32(plan.grain_r) * (F1 - F0), 0, 1)
    got = render(small_photo, st)
    if st.dtype == "float32":
        np.testing.assert_array_equal(got, F)
        return
    expected = tone.quantise(np, F, 255).astype(np.int64)
    if st.film == "TriX400":  # the H&D chain evaluates the curve as the float output does: exact
        np.testing.assert_array_equal(got, expected)
    else:  # the fused filmic kernel: its float32 curve may differ from the reference's in the last ulp
        assert np.abs(got.astype(np.int64) - expected).max() <= 1
        assert (got != expected).mean() < 1e-3


def test_from_scale_one_up_the_single_curve_path_runs(monkeypatch, small_photo):
    """s ≥ 1: r = 1, and neither the grain-free curve nor the blend is evaluated (no extra cost)."""
    def refuse(*_a, **_k):
        raise AssertionError("the after-curve blend ran at s >= 1")

    monkeypatch.setattr(ops, "blend", refuse)
    monkeypatch.setattr(_cpu, "mix_filmic_blend_encode", refuse)
    fused = _cpu.finish
    modes = []

    def finish(*args):  # the fused pass: mode 1 is its after-curve blend
        modes.append(inspect.signature(fused).bind(*args).arguments["mode"])
        return fused(*args)

    monkeypatch.setattr(_cpu, "finish", finish)
    shape = (3000, 3400)
    img = cv2.resize(small_photo, (3400, 3000), interpolation=cv2.INTER_LINEAR)
    for st in (Settings(), Settings(film="TriX400"), Settings(dtype="float32")):
        plan = make_plan(st, shape, grain_k=grain_constants(img, st))
        assert plan.s >= 1 and plan.grain_r == 1.0
        win = img[: 64 + plan.halo, : 64 + plan.halo]
        out = render_region(win, (0, 0), shape, (0, 64, 0, 64), plan)
        assert out.shape[:2] == (64, 64)
    assert modes and 1 not in modes


def test_a_dark_photo_gets_fainter_mid_tone_grain_than_a_bright_one(small_photo):
    """The same photograph (300×450, top-left, so the same grain hash values) beside a dark or a bright
    surround: the dark surround raises K_c, and the photo's mid-tone grain shrinks by sqrt(K_bright/K_dark)
    per plane (spec §4). Each channel mixes the three planes with positive weights, so its ratio lies between
    the planes' (small intensity: no clipping, the tone curve locally linear)."""
    st = Settings(film="Portra400", dtype="float32", grain_intensity=0.2, seed=9, image_key="dark-bright")
    renders, ks = {}, {}
    for name, level in (("dark", 8), ("bright", 200)):
        canvas = np.full((600, 900, 3), level, np.uint8)
        canvas[:300, :450] = small_photo
        ks[name] = np.array(grain_constants(canvas, st))
        renders[name] = render(canvas, st)[:260, :410] - render(canvas, st.replace(grain="none"))[:260, :410]
    plain = render(small_photo, st.replace(grain="none"))[:260, :410]
    mid = (plain.mean(axis=2) > 0.15) & (plain.mean(axis=2) < 0.6)
    assert mid.mean() > 0.2
    per_plane = np.sqrt(ks["bright"] / ks["dark"])
    assert per_plane.max() < 0.7  # the dark surround matters
    for c in range(3):
        ratio = renders["dark"][..., c][mid].std() / renders["bright"][..., c][mid].std()
        assert per_plane.min() * 0.95 <= ratio <= per_plane.max() * 1.05, (c, ratio, per_plane)


def test_a_tiff_read_by_region_renders_its_tiles_with_the_whole_images_k(tmp_path, small_photo, monkeypatch):
    """The task layer's direct path (tiles read from the file itself) sums K_c tile by tile at staging."""
    monkeypatch.setenv("PHOS_DASK_FETCH_WHOLE_BYTES", "0")  # the workers read even this small TIFF by region
    import tifffile

    from phos_dask.cluster import connect
    from phos_dask.imageio import read_image
    from phos_dask.job import JobSpec, run_job
    from phos_dask.tiles import MIN_TILE

    src = tmp_path / "src"
    src.mkdir()
    img = (cv2.resize(small_photo, (900, 700), interpolation=cv2.INTER_CUBIC).astype(np.uint16) * 257)
    img[:300, :400] //= 16  # a shadow, so K_c is far from a mid-grey image's
    tifffile.imwrite(src / "scan.tif", img, tile=(256, 256), photometric="rgb")
    st = Settings(dtype="uint16", grain="default", seed=2)
    out = tmp_path / "out.zarr"
    with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
        report = run_job(JobSpec(str(src), str(out), st, tile=MIN_TILE, whole_limit_mp=0.0), client)
    assert report["counts"] == {"done": 1, "skipped": 0, "failed": 0}
    import zarr

    group = zarr.open_group(str(out), mode="r")["scan.tif"]
    assert group.attrs["phos"]["tile_plan"]["mode"] == "tiled, read by region"
    expected = render(read_image(src / "scan.tif"), st.replace(image_key="scan.tif"))
    np.testing.assert_array_equal(np.moveaxis(group["0"][...], 0, -1), expected)


def test_the_cpu_kernels_grain_deviates_are_the_references_bit_for_bit():
    """The CPU row loops split the hash (the counter term shared by a pixel's planes, then each plane's key)
    and read the inverse-normal table as (T, dT) pairs: u is still `grain.hash_normal`'s, bit for bit, for
    every plane, also where the column crosses 2³¹ (the counter is 64-bit)."""
    rows, cols = np.arange(1000, 1012), np.arange(2**31 - 6, 2**31 + 6)
    X = np.zeros((rows.size, cols.size), np.float32)  # a(0) = 1: ρ is u itself
    one_tap = np.ones(1, np.float32)  # radius 0: the blur is ρ·1
    for plane in (grain.PLANE_R, grain.PLANE_G, grain.PLANE_B):
        key = grain.plane_key(12345, plane)
        got = np.empty_like(X)
        _cpu.grain_noise(X, np.arange(rows.size), np.arange(cols.size), int(rows[0]), int(cols[0]), np.uint64(key),
                         grain.normal_pairs(), one_tap, got)
        want = grain.hash_normal(np, key, rows, cols).astype(np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("r", [1, 3, 4, 5, 7, 8, 15, 16])
def test_the_cpu_grain_blur_adds_its_symmetric_pairs_in_order(r):
    """The CPU grain blur is taps[r]·ρ(centre) + Σ_{q=1..r} taps[r+q]·(ρ(−q) + ρ(+q)), added in the order of
    q, vertically and then horizontally: the bits of that sum evaluated in float32, step by step, for radii
    that the passes take four pairs at a time, one at a time, or both."""
    h, w = 9, 37
    rows, cols = np.arange(200, 200 + h + 2 * r), np.arange(500, 500 + w + 2 * r)
    X = np.zeros((rows.size, cols.size), np.float32)  # a(0) = 1: ρ is u itself
    key = grain.plane_key(777, grain.PLANE_G)
    taps = np.random.default_rng(r).uniform(0.01, 0.2, 2 * r + 1).astype(np.float32)
    taps = (taps + taps[::-1]) / np.float32(2)
    got = np.empty((h, w), np.float32)
    _cpu.grain_noise(X, np.arange(rows.size), np.arange(cols.size), int(rows[0]), int(cols[0]), np.uint64(key),
                     grain.normal_pairs(), taps, got)
    rho = grain.hash_normal(np, key, rows, cols).astype(np.float32)

    def pairs(a, axis: int, n: int) -> np.ndarray:
        part = (lambda k: a[k : k + n]) if axis == 0 else (lambda k: a[:, k : k + n])
        acc = taps[r] * part(r)
        for q in range(1, r + 1):
            acc = acc + taps[r + q] * (part(r - q) + part(r + q))
        return acc

    want = pairs(pairs(rho, 0, h), 1, w)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_inverse_normal_is_pythons_normal_dist_bit_for_bit():
    """The table's Φ⁻¹ is evaluated on whole arrays (`grain.inverse_normal`, ~6× faster than a loop over
    NormalDist.inv_cdf, once per process) with the same float64 results: at the table's cell edges, and at
    random points of both tails and the centre."""
    from statistics import NormalDist

    n = 1 << grain.TABLE_BITS
    edges = np.arange(n + 1, dtype=np.float64) / n
    edges[0], edges[-1] = 0.25 / n, 1 - 0.25 / n
    anywhere = np.random.default_rng(5).uniform(1e-10, 1 - 1e-10, 20000)
    for p in (edges, anywhere, np.array([0.075, 0.925, 0.5 - 0.425, 0.5 + 0.425, 0.5])):
        expected = np.array([NormalDist().inv_cdf(float(v)) for v in p])
        assert np.array_equal(grain.inverse_normal(p).view(np.int64), expected.view(np.int64))
    with pytest.raises(ValueError, match="e\\^-25"):
        grain.inverse_normal(np.array([1e-12]))
