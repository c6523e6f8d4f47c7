"""A region rendered from a padded window is bit-identical to the same pixels of the whole image."""

from __future__ import annotations

import numpy as np
import pytest

from phos_dask import Settings, make_plan, render, render_window
from phos_dask.film.pipeline import grain_constants


def _test_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) ** 0.6 * 255).astype(np.uint8)
    # bright, blooming highlights, some on edges and corners
    img[h // 3 : h // 3 + 40, w // 4 : w // 4 + 50] = 255
    img[:12, -20:] = 252
    img[-9:, :15] = 255
    img[h // 2, :] = 250
    img[2 * h // 3 :, : w // 2] //= 10  # a deep shadow: K_c well away from a mid-grey image's 1/180
    return img


def _windows(rng, H, W, halo, n, max_side):
    for _ in range(n):
        y0 = int(rng.integers(0, H)); y1 = int(rng.integers(y0 + 1, min(H, y0 + max_side) + 1))  # noqa: E702
        x0 = int(rng.integers(0, W)); x1 = int(rng.integers(x0 + 1, min(W, x0 + max_side) + 1))  # noqa: E702
        extra = int(rng.integers(0, 4))  # windows may be larger than needed
        yield (y0, y1, x0, x1), (max(0, y0 - halo - extra), min(H, y1 + halo + extra),
                                 max(0, x0 - halo - extra), min(W, x1 + halo + extra))


@pytest.mark.parametrize(
    ("film", "fmt"),
    [("Portra400", "35mm"), ("Cinestill800T", "6x6"), ("TriX400", "35mm"), ("Velvia50", "645")],
)
def test_hundreds_of_random_windows_match_the_whole_image(film, fmt):
    H, W = 1013, 777
    img = _test_image(H, W, 1)
    st = Settings(film=film, film_format=fmt, seed=11, image_key="odd.jpg", grain="default")
    whole = render(img, st)
    plan = make_plan(st, (H, W))
    assert plan.s != 1
    k = grain_constants(img, st)
    assert all(v * 180 > 1.5 for v in k)  # the grain amplitude really depends on this image's own K_c
    rng = np.random.default_rng(5)
    for out_box, win in _windows(rng, H, W, plan.halo, 120, 260):
        y0, y1, x0, x1 = out_box
        got = render_window(img[win[0] : win[1], win[2] : win[3]], (win[0], win[2]), (H, W), out_box, st, k)
        np.testing.assert_array_equal(got, whole[y0:y1, x0:x1], err_msg=f"{film} {out_box}")


@pytest.mark.parametrize(("H", "W", "f"), [(1601, 1703, 4), (1063, 1031, 3)])
@pytest.mark.parametrize("film", ["Portra400", "Cinestill800T", "HP5Plus400"])
def test_windows_match_with_coarse_cells_larger_than_one_pixel(film, H, W, f):
    """From s = 0.18 bloom and halation run on grid-aligned cells of 2+ px (here s = 0.53 and 0.34: 4 and
    3 px; the 1013×777 image above, s = 0.26 on 35 mm, has 2 px cells); tiles must still agree."""
    img = _test_image(H, W, 2)
    st = Settings(film=film, seed=3, image_key="big.png", dtype="uint16")
    plan = make_plan(st, (H, W))
    assert plan.bloom.f == f
    whole = render(img, st)
    k = grain_constants(img, st)
    rng = np.random.default_rng(9)
    boxes = [(0, 300, 0, 301), (H - 257, H, W - 300, W), (700, 1000, 0, W), (0, H, 801, 1003)]
    boxes += [b for b, _ in _windows(rng, H, W, plan.halo, 8, 500)]
    for out_box in boxes:
        y0, y1, x0, x1 = out_box
        h = plan.halo
        win = (max(0, y0 - h), min(H, y1 + h), max(0, x0 - h), min(W, x1 + h))
        got = render_window(img[win[0] : win[1], win[2] : win[3]], (win[0], win[2]), (H, W), out_box, st, k)
        np.testing.assert_array_equal(got, whole[y0:y1, x0:x1], err_msg=f"{film} {out_box}")


def test_float_output_regions_match_too():
    H, W = 400, 333
    img = _test_image(H, W, 4)
    st = Settings(film="Cinestill800T", dtype="float32", seed=1)
    whole = render(img, st)
    plan = make_plan(st, (H, W))
    out_box = (100, 250, 0, 120)
    h = plan.halo
    win = (max(0, 100 - h), min(H, 250 + h), 0, min(W, 120 + h))
    got = render_window(img[win[0] : win[1], win[2] : win[3]], (win[0], win[2]), (H, W), out_box, st,
                        grain_constants(img, st))
    np.testing.assert_array_equal(got, whole[100:250, 0:120])


def test_a_window_too_small_for_the_halo_is_refused():
    img = _test_image(300, 300, 0)
    st = Settings()
    with pytest.raises(ValueError, match="does not cover"):
        render_window(img[100:200, 100:200], (100, 100), (300, 300), (110, 190, 110, 190), st,
                      grain_constants(img, st))


def test_a_window_without_the_images_grain_constant_is_refused():
    """A tile must never make up its own K_c: without grain_k only the whole image renders with grain."""
    img = _test_image(300, 300, 0)
    st = Settings()
    with pytest.raises(ValueError, match="grain_k"):
        render_window(img[:200, :200], (0, 0), (300, 300), (0, 100, 0, 100), st)
    with pytest.raises(ValueError, match="grain_k"):
        make_plan(st, (300, 300)).grain_nscale  # noqa: B018
    plain = render_window(img, (0, 0), (300, 300), (0, 100, 0, 100), st)  # the whole image: computed here
    np.testing.assert_array_equal(plain, render(img, st)[:100, :100])
    no_grain = st.replace(grain="none")
    np.testing.assert_array_equal(render_window(img[:200, :200], (0, 0), (300, 300), (0, 100, 0, 100), no_grain),
                                  render(img, no_grain)[:100, :100])
