"""The film model's reference path (the one CuPy runs) under array_api_strict: no NumPy-only call anywhere
in it, and it computes what the fused CPU kernels compute. float16 output is outside the array API standard
(NumPy and CuPy have it), so it is not checked here."""

from __future__ import annotations

import numpy as np
import pytest

from phos_dask import Settings, make_plan, render, render_window
from phos_dask.film.pipeline import grain_constants
from phos_dask.stocks import all_stocks

xs = pytest.importorskip("array_api_strict")


@pytest.fixture(scope="module")
def image(small_photo) -> np.ndarray:
    return np.ascontiguousarray(small_photo[::3, ::3])  # 100×150: every stage, quickly


@pytest.mark.parametrize("film", list(all_stocks()))
def test_every_stock_under_a_strict_namespace_matches_the_cpu_kernels(image, film):
    st = Settings(film=film, seed=11, image_key="strict", dtype="float32", exposure_time=20.0)
    got = render(xs.asarray(image), st)
    assert type(got).__module__.startswith("array_api_strict")
    assert np.abs(np.asarray(got) - render(image, st)).max() < 2e-5
    for dtype in ("uint8", "uint16"):
        codes = np.asarray(render(xs.asarray(image), st.replace(dtype=dtype))).astype(np.int64)
        assert np.abs(codes - render(image, st.replace(dtype=dtype))).max() <= 1


@pytest.mark.parametrize("pixels", ["grey uint16", "float linear"])
def test_other_inputs_under_a_strict_namespace(image, pixels):
    src = (image[..., 1].astype(np.uint16) * 257 if pixels == "grey uint16"
           else (image / 255.0).astype(np.float32) ** 2.2)
    st = Settings(film="Cinestill800T", image_key="k", dtype="uint16", linear_input=pixels == "float linear")
    codes = np.asarray(render(xs.asarray(src), st)).astype(np.int64)
    assert np.abs(codes - render(src, st)).max() <= 1


def test_a_region_under_a_strict_namespace_equals_the_same_region_of_the_whole(image):
    st = Settings(film="Portra400", seed=2, image_key="k", dtype="uint16")
    H, W = image.shape[:2]
    whole = np.asarray(render(xs.asarray(image), st))
    halo = make_plan(st, (H, W)).halo
    box = (17, 61, 40, 111)
    win = (max(0, box[0] - halo), min(H, box[1] + halo), max(0, box[2] - halo), min(W, box[3] + halo))
    k = grain_constants(xs.asarray(image), st)
    assert k == grain_constants(image, st)  # computed on the host from the subsample: the same bits
    part = render_window(xs.asarray(image[win[0] : win[1], win[2] : win[3]]), (win[0], win[2]), (H, W), box, st,
                         grain_k=k)
    np.testing.assert_array_equal(np.asarray(part), whole[box[0] : box[1], box[2] : box[3]])
