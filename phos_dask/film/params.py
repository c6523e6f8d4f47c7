"""The film model's parameters as data: what decides a render's pixels, and nothing of jobs, files or stores.

`FilmParams` is what `phos_dask.film` computes from; `phos_dask.settings.Settings` (the validated settings of
a job, with its image key, working size and the ranges the CLI shows) builds it with `film_params()`. Every
`film` function that takes parameters takes either, so the model can be used, and lifted out, on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from phos_dask.film.stocks import Stock, get_stock

#: The largest code of each integer output encoding (sRGB codes); float outputs have none.
CODE_MAX: dict[str, int] = {"uint8": 255, "uint16": 65535}
#: Short side of the film frame in mm (spec §1).
FILM_FORMATS: dict[str, float] = {"35mm": 24.0, "645": 41.5, "6x6": 56.0, "6x7": 56.0, "4x5": 102.0}


@dataclass(frozen=True)
class FilmParams:
    """One render's parameters, already validated (see the module docstring).

    film: stock name (phos_dask.film.stocks). grain_style: grain amplitude multiplier (0 none … 1.5 coarse);
    grain_size: grain correlation σ in px at scale 1; grain_intensity: grain amplitude; scattering: bloom
    scattering 0–1; exposure_time: s, for reciprocity failure (None: 1 s); film_format: a key of
    FILM_FORMATS; hd_curve: whether the characteristic curve applies; linear_input: float input is linear
    light (else sRGB); dtype: the output's encoding (uint8/uint16 sRGB codes, float16/float32 linear light);
    image_seed: the image's 64-bit grain seed."""

    film: str
    grain_style: float
    grain_size: float
    grain_intensity: float
    scattering: float
    exposure_time: float | None
    film_format: str
    hd_curve: bool
    linear_input: bool
    dtype: str
    image_seed: int = 0

    @property
    def stock(self) -> Stock:
        return get_stock(self.film)
