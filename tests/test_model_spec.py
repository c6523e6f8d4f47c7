"""The film model against the numbers in spec/phos-model.md."""

from __future__ import annotations

import numpy as np
import pytest

from phos_dask import Settings, SettingsError, StockError, all_stocks, get_stock, render
from phos_dask.film import colour, psf, tone
from phos_dask.film.pipeline import ISO_RATIOS, bloom_etas, make_plan, scale_for
from phos_dask.resample import working_shape

COLOUR = [n for n, s in all_stocks().items() if s.is_color]
BW = [n for n, s in all_stocks().items() if not s.is_color]


def test_sixteen_stocks_load_eleven_colour_five_bw():
    assert len(all_stocks()) == 16
    assert len(COLOUR) == 11 and len(BW) == 5
    assert all(get_stock(n).hd_curve.enabled for n in BW)


# --- §0 sRGB -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "linear"),
    [(0.0, 0.0), (0.04045, 0.04045 / 12.92), (0.5, 0.2140411), (0.735357, 0.5), (1.0, 1.0)],
)
def test_srgb_decode_matches_iec_61966_2_1(encoded, linear):
    assert colour.srgb_decode(np, np.float64(encoded)) == pytest.approx(linear, abs=2e-7)


def test_srgb_encode_is_the_inverse_and_clips():
    v = np.linspace(0, 1, 10001)
    assert np.allclose(colour.srgb_encode(np, colour.srgb_decode(np, v)), v, atol=1e-12)
    assert colour.srgb_encode(np, np.float64(0.18)) == pytest.approx(0.4613561, abs=1e-6)
    assert colour.srgb_encode(np, np.array([-0.5, 2.0])).tolist() == [0.0, pytest.approx(1.0)]


def test_decode_tables_are_exact_for_8_and_16_bit():
    t8, t16 = colour.decode_table(8), colour.decode_table(16)
    assert t8.shape == (256,) and t16.shape == (65536,)
    assert t8[128] == np.float32(colour.srgb_decode(np, np.float64(128 / 255)))
    assert t16[65535] == 1.0 and t16[0] == 0.0


# --- S2 emulsion, S3 reciprocity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLOUR)
def test_grey_stays_neutral_through_the_emulsion_matrix(name):
    m = colour.emulsion_matrix(get_stock(name)).astype(np.float64)
    for g in np.linspace(0, 1, 11):
        X = m @ np.array([g, g, g])
        assert X.max() - X.min() < 0.01


def test_reciprocity_is_off_at_one_second_and_darkens_long_exposures():
    st = get_stock("Portra400")
    assert colour.reciprocity_factors(st, None) is None
    assert colour.reciprocity_factors(st, 1.0) is None
    long = colour.reciprocity_factors(st, 30.0)
    # p = p0 - k·log10(t/t_high)·fs, clipped to [0.75, 1]; factor t^(p-1)
    rec = st.reciprocity
    expected = [30.0 ** (min(max(p0 - rec.k * np.log10(30.0) * rec.failure_strength, 0.75), 1.0) - 1)
                for p0 in rec.p]
    assert np.allclose(long, expected, rtol=1e-6)
    assert np.all(long < 1)
    short = colour.reciprocity_factors(st, 1e-4)
    assert np.allclose(short, [(1e-4) ** (p0 - 0.05 * rec.failure_strength - 1) for p0 in rec.p], rtol=1e-6)


def test_bw_reciprocity_uses_p_mono_when_present():
    hp5 = get_stock("HP5Plus400")
    assert colour.reciprocity_factors(hp5, 10.0)[0] == pytest.approx(
        10.0 ** (0.87 - hp5.reciprocity.k * 1.0 * hp5.reciprocity.failure_strength - 1), rel=1e-6
    )


# --- S4 bloom ---------------------------------------------------------------------------------------------


def test_bloom_psf_sums_to_one_with_the_spec_energy_shares():
    K = psf.bloom_psf(1.0)
    assert K.shape == (159, 159)
    assert K.sum() == pytest.approx(1.0, abs=1e-12)
    y, x = np.mgrid[-79:80, -79:80]
    r = np.hypot(x, y)
    shares = [K[r <= rr].sum() for rr in (20, 40, 60, 79)]
    assert shares == pytest.approx([0.376, 0.832, 0.968, 0.994], abs=0.0006)


def test_bloom_components_approximate_the_psf_closely():
    comps = psf.bloom_components(1.0)
    approx = sum(c.kernel2d() for c in comps)
    K = psf.bloom_psf(1.0)
    assert np.abs(approx - K).sum() < 0.005  # L1 error: ≤ 0.5 % of the PSF's energy


def test_bloom_ratios_by_iso():
    st = get_stock("Portra400")
    assert bloom_etas(st, 0.1) == pytest.approx((0.1 * 1.6443, 0.1, 0.1 * 1.2110))
    assert bloom_etas(get_stock("TriX400"), 0.08) == (0.08,)
    assert set(ISO_RATIOS) >= {s.iso for s in all_stocks().values()}


# --- S5 halation ------------------------------------------------------------------------------------------


def test_halation_strengths_match_the_spec():
    assert get_stock("Portra400").halation.strength() == pytest.approx((6.6e-4, 6.5e-5, 1.3e-5), rel=0.05)
    assert get_stock("Cinestill800T").halation.strength() == pytest.approx((0.0366, 0.0327, 0.0263), rel=0.01)


def test_halation_kernel_is_three_normalised_gaussians():
    comps = psf.halation_components(80.0, 1.0)
    assert [2 * c.radius + 1 for c in comps] == [61, 121, 151]
    assert [c.sigma for c in comps] == pytest.approx([16.0, 32.0, 64.0])
    assert [c.kernel2d().sum() for c in comps] == pytest.approx([0.5, 0.3, 0.2])
    assert psf.halation_kernel(80.0, 1.0).sum() == pytest.approx(1.0)


# --- S7 tone, S8 encode -----------------------------------------------------------------------------------

FILMIC_CHECKS = {
    "Portra400": (0.3415, 0.5529, 0.6951),
    "NC200": (0.3344, 0.5679, 0.7062),
    "Ektar100": (0.3927, 0.6247, 0.7536),
    "Velvia50": (0.4586, 0.6804, 0.7975),
    "Cinestill800T": (0.2750, 0.5125, 0.6555),
}


@pytest.mark.parametrize(("name", "values"), FILMIC_CHECKS.items())
def test_filmic_check_values(name, values):
    F = tone.filmic(np, np.array([0.18, 0.5, 1.0], np.float32), get_stock(name).tone)
    assert pytest.approx(values, abs=1e-4) == F


RAMP_IN = [0, 16, 32, 64, 96, 128, 160, 192, 224, 255]
RAMPS = {
    "Portra400": [0, 59, 83, 115, 141, 164, 183, 197, 208, 217],
    "NC200": [0, 31, 55, 100, 136, 164, 185, 200, 211, 218],
    "Ektar100": [0, 43, 69, 113, 149, 175, 195, 208, 218, 225],
    "Velvia50": [0, 56, 85, 130, 163, 187, 204, 216, 224, 230],
}


@pytest.mark.parametrize(("name", "expected"), RAMPS.items())
def test_grey_ramp_through_the_pixel_local_chain(name, expected):
    st = get_stock(name)
    lin = colour.linearise(np, np.array(RAMP_IN, np.uint8))
    X = colour.emulsion_matrix(st) @ np.stack([lin, lin, lin])
    codes = tone.linear_to_code_reference(np, X, st.tone, None, 255)
    assert np.abs(codes.astype(int) - np.array(expected)).max() <= 1


@pytest.mark.parametrize(("name", "expected"), RAMPS.items())
def test_grey_ramp_through_the_whole_model_on_uniform_patches(name, expected):
    """On a uniform field bloom and halation give back what they take, so the ramp holds end to end."""
    img = np.repeat(np.repeat(np.array(RAMP_IN, np.uint8)[None, :, None], 3, axis=2), 1, axis=0)
    img = np.kron(img, np.ones((48, 48, 1), np.uint8))  # ten 48-px patches side by side
    out = render(img, Settings(film=name, grain="none"))
    centres = out[24, 24::48]
    assert np.abs(centres.astype(int) - np.array(expected)[:, None]).max() <= 1


@pytest.mark.parametrize("name", BW)
def test_hd_curve_is_monotone_in_zero_one(name):
    hd = get_stock(name).hd_curve
    Z = np.concatenate([[0.0], np.geomspace(1e-7, 50, 20000)])
    P = tone.hd_curve(np, Z, hd)
    assert np.all(np.diff(P) >= 0)
    assert P[0] == 0.0 and P.min() >= 0 and P.max() <= 1
    assert tone.hd_curve(np, np.array([0.18]), hd)[0] == pytest.approx(0.18, abs=0.03)


@pytest.mark.parametrize("vmax", [255, 65535])
@pytest.mark.parametrize("name", ["Portra400", "Velvia50", "HP5Plus400"])
def test_threshold_tables_equal_direct_evaluation(name, vmax):
    st = get_stock(name)
    hd = st.hd_curve if not st.is_color else None
    table = tone.quant_table(st.tone, hd, vmax)
    rng = np.random.default_rng(3)
    Z = np.concatenate([rng.random(200_000) * 1.5, rng.random(1000) * 1e-3, [0.0, 5.0]]).astype(np.float32)
    via_table = np.searchsorted(table.thresholds[1 : vmax + 1], Z, side="right")
    float32_chain = tone.linear_to_code_reference(np, Z, st.tone, hd, vmax).astype(np.int64)
    assert np.abs(via_table - float32_chain).max() <= 1
    exact = tone.quantise(np, tone.tone_chain(np, Z.astype(np.float64), st.tone, hd), vmax).astype(np.int64)
    assert np.mean(via_table != exact) < 1e-4  # the tables are the float64 chain, bar exact ties


# --- §1 scale, working size ------------------------------------------------------------------------------


def test_scale_follows_short_side_and_film_format():
    assert scale_for((2000, 3000)) == pytest.approx(2000 / 3000)
    assert scale_for((3000, 4500)) == 1.0
    assert scale_for((3000, 4500), "6x6") == pytest.approx(24 / 56)
    assert scale_for((6000, 4000), "4x5") == pytest.approx(4000 / 3000 * 24 / 102)


def test_working_shape_rule():
    assert working_shape((2000, 3000), 3000) == (3000, 4500)
    assert working_shape((4000, 6000), 3000) == (3000, 4500)
    assert working_shape((3000, 2000), 1000) == (1500, 1000)
    assert working_shape((777, 1013), 500) == (500, 652)  # floor(1013·500/777) = 651, odd → 652


def test_working_size_resamples_before_the_model(small_photo):
    out = render(small_photo, Settings(working_size=200, grain="none"))
    assert out.shape == (200, 300, 3)


def test_halo_covers_bloom_and_halation_and_scales():
    p1 = make_plan(Settings(), (3000, 4500))
    assert p1.halo >= 154 and p1.halo <= 200
    p2 = make_plan(Settings(), (6000, 9000))
    assert p2.halo >= 2 * 154
    pbw = make_plan(Settings(film="HP5Plus400"), (3000, 4500))
    assert 79 <= pbw.halo < p1.halo


# --- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("grain", "heavy", "grain must be one of none, soft, default, coarse"),
        ("grain_size", 50.0, "grain_size must be between"),
        ("scattering", 2.0, "scattering must be between 0 and 1"),
        ("exposure_time", -1.0, "exposure_time"),
        ("film_format", "8x10", "film_format must be one of"),
        ("working_size", 5, "working_size must be between"),
        ("dtype", "int8", "dtype must be one of"),
        ("seed", -1, "seed must be"),
    ],
)
def test_invalid_settings_name_the_field_and_the_allowed_values(field, value, words):
    with pytest.raises(SettingsError, match=words):
        Settings(**{field: value})


def test_unknown_stock_lists_the_valid_names():
    with pytest.raises(StockError) as err:
        Settings(film="Kodachrome64")
    assert "Kodachrome64" in str(err.value) and "Portra400" in str(err.value) and "TriX400" in str(err.value)


def test_stock_names_are_case_insensitive():
    assert Settings(film="portra400").stock.name == "Portra400"
