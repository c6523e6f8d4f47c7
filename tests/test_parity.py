"""Agreement with the original Phos app (spec §6) and across resolutions (spec §1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import PARITY

from phos_dask import Settings, render


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("film", ["Portra400", "Cinestill800T", "Velvia50"])
def test_matches_the_upstream_app_on_the_parity_crop(coffee, read_rgb, film):
    st = Settings(film=film, working_size=3000, scattering=0.10, grain="none")
    out = render(coffee, st)
    assert out.shape == (3000, 4500, 3)
    ref = read_rgb(PARITY / f"coffee_{film}_y1000-2024_x1500-2524.png")
    crop = out[1000:2024, 1500:2524]
    assert psnr(crop, ref) >= 45.0
    assert np.abs(crop.astype(int) - ref).max() <= 2


def test_one_look_at_every_resolution(coffee):
    """A 6000×4000 render reduced to 3000×2000 looks like the 3000×2000 render of the reduced input."""
    big_in = cv2.resize(coffee, (6000, 4000), interpolation=cv2.INTER_LANCZOS4)
    small_in = cv2.resize(big_in, (3000, 2000), interpolation=cv2.INTER_AREA)
    st = Settings(film="Portra400", grain="none")
    big_out = cv2.resize(render(big_in, st), (3000, 2000), interpolation=cv2.INTER_AREA)
    small_out = render(small_in, st)
    assert psnr(big_out, small_out) >= 35.0
