"""One validated settings object for a render; the same object is recorded with every output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from phos_dask.errors import PhosError
from phos_dask.stocks import Stock, get_stock

GRAIN_STYLES: dict[str, float] = {"none": 0.0, "soft": 0.5, "default": 1.0, "coarse": 1.5}
#: Short side of the film frame in mm (spec §1).
FILM_FORMATS: dict[str, float] = {"35mm": 24.0, "645": 41.5, "6x6": 56.0, "6x7": 56.0, "4x5": 102.0}
DTYPES = ("uint8", "uint16", "float16", "float32")
#: Version of the film model's pixels: part of every fingerprint, so a store written by an earlier model is
#: refused on rerun (unless --overwrite). Bump it with any change to what a render computes.
#: 0.2.0: grain normalised by the image's K_c (spec §4, revised 2026-12-01) and r(s).
#: 0.2.0+r-after-tone: r(s) (s < 1) scales the grain's effect after the tone curve instead of n_c before
#: it (the package version stays 0.2.0, unreleased; the fingerprint is derived from this string, so it
#: must change with the pixels: renders at s < 1 with grain differ from the first 0.2.0 model's).
MODEL_VERSION = "0.2.0+r-after-tone"


class SettingsError(PhosError, ValueError):
    """A setting outside its allowed range; the message names the field."""


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise SettingsError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """Everything that decides a render's pixels.

    Lengths are px at scale 1 (the spec's 3000 px short side); they are multiplied by the image's scale s.
    """

    film: str = "Portra400"
    grain: str = "default"  # none | soft | default | coarse
    grain_size: float = 1.5  # px at s = 1, Gaussian sigma of the grain correlation
    grain_intensity: float = 0.8
    seed: int = 0  # job seed, 0 .. 2**64-1
    image_key: str = ""  # stable name of the image, mixed into its grain seed
    scattering: float | None = None  # override of the stock's bloom scattering (upstream's app: 0.10)
    exposure_time: float | None = None  # seconds; None or 1 = no reciprocity correction
    film_format: str = "35mm"
    working_size: int | None = None  # resample so the short side is this many px first
    dtype: str = "uint8"
    hd_curve: bool | None = None  # None = the stock's default (on for B&W, off for colour)
    linear_input: bool = False  # input is linear light, not sRGB-encoded (integer codes are then v / vmax)

    def __post_init__(self) -> None:
        get_stock(self.film)  # raises StockError listing the valid names
        if self.grain not in GRAIN_STYLES:
            raise SettingsError(f"grain must be one of {', '.join(GRAIN_STYLES)}, got {self.grain!r}")
        _check_range("grain_size", self.grain_size, 0.25, 10.0)
        _check_range("grain_intensity", self.grain_intensity, 0.0, 4.0)
        if not isinstance(self.seed, int) or not (0 <= self.seed < 2**64):
            raise SettingsError(f"seed must be an integer between 0 and 2**64-1, got {self.seed!r}")
        if self.scattering is not None:
            _check_range("scattering", self.scattering, 0.0, 1.0)
        if self.exposure_time is not None:
            _check_range("exposure_time", self.exposure_time, 1e-5, 3600.0)
        if self.film_format not in FILM_FORMATS:
            raise SettingsError(
                f"film_format must be one of {', '.join(FILM_FORMATS)}, got {self.film_format!r}"
            )
        if self.working_size is not None:
            if not isinstance(self.working_size, int):
                raise SettingsError(f"working_size must be an integer, got {self.working_size!r}")
            _check_range("working_size", self.working_size, 16, 200_000)
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def stock(self) -> Stock:
        return get_stock(self.film)

    @property
    def grain_style(self) -> float:
        return GRAIN_STYLES[self.grain]

    @property
    def uses_hd_curve(self) -> bool:
        if self.hd_curve is not None:
            return self.hd_curve
        hd = self.stock.hd_curve
        return hd is not None and hd.enabled

    @property
    def effective_scattering(self) -> float:
        return self.stock.scattering if self.scattering is None else self.scattering

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["film"] = self.stock.name
        return d

    def fingerprint(self) -> str:
        """A short hash of every pixel-relevant field except the image key (same for a whole job), and of the
        model version."""
        d = self.to_dict()
        d.pop("image_key")
        d["model_version"] = MODEL_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def image_seed(self) -> int:
        """The 64-bit grain seed of this image: a stable mix of the job seed and the image key."""
        key = self.seed.to_bytes(8, "little")
        h = hashlib.blake2b(self.image_key.encode("utf-8"), digest_size=8, key=key)
        return int.from_bytes(h.digest(), "little")
