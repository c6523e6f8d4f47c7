"""One validated settings object for a render; the same object is recorded with every output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from phos_dask.errors import PhosError
from phos_dask.film.params import FILM_FORMATS, FilmParams
from phos_dask.stocks import Stock, get_stock

GRAIN_STYLES: dict[str, float] = {"none": 0.0, "soft": 0.5, "default": 1.0, "coarse": 1.5}
DTYPES = ("uint8", "uint16", "float16", "float32")
#: Version of the film model's pixels: part of every fingerprint, so a store written by an earlier model is
#: refused on rerun (unless --overwrite). Bump it with any change to what a render computes.
#: 0.2.0: grain normalised by the image's K_c (spec §4, revised 2026-12-01) and r(s).
#: 0.2.0+r-after-tone: r(s) (s < 1) scales the grain's effect after the tone curve instead of n_c before
#: it (the package version stays 0.2.0, unreleased; the fingerprint is derived from this string, so it
#: must change with the pixels: renders at s < 1 with grain differ from the first 0.2.0 model's).
#: 0.3.0+coarse-small-s: bloom and halation blur on coarser cells below s = 1 (`coarse_factor`: f/s ≤ 11.1
#: instead of floor(4·s)), so renders at s < 1 differ (by < 1e-3 linear before the tone curve); s ≥ 1 unchanged.
#: 0.3.0+across-first: blurred cells are upsampled across first, then down (float32 rounding differs: about one
#: code in 3e6 samples of a photo moves by one), so that a tile resumed by this version matches its neighbours.
MODEL_VERSION = "0.3.0+across-first"


class SettingsError(PhosError, ValueError):
    """A setting outside its allowed range; the message names the field."""


def _validate(name: str, value: object, meta: Mapping) -> None:
    """Check one field's value against its metadata (`option`); None passes for fields that allow it."""
    if value is None or "help" not in meta:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise SettingsError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "range" not in meta:
        return
    lo, hi = meta["range"]
    shown = meta["shown_range"]
    # a range shown as lo..hi (the seed's 0..2**64-1) is named that way in the message too
    within = f" between {shown.replace('..', ' and ')}" if ".." in shown else ""
    if meta["kind"] is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise SettingsError(f"{name} must be an integer{within}, got {value!r}")
    if not (lo <= value <= hi):
        raise SettingsError(f"{name} must be an integer{within}, got {value!r}" if within
                            else f"{name} must be between {lo:g} and {hi:g}, got {value!r}")


def option(help: str, *, range: tuple[float, float] | None = None, choices: object = None, kind: type | None = None,
           metavar: str | None = None, shown_range: str | None = None, default_text: str | None = None,
           aliases: tuple[str, ...] = ()) -> dict:
    """A field's metadata: what it means (`help`), the values it takes (`range` inclusive, or `choices`), its
    Python type (`kind`), and how the command line shows it (`metavar`, `shown_range` instead of `range`,
    `default_text` for a default of None, `aliases`). `Settings` validates with it; phos_dask.flags builds its
    render flags (`--grain-size` for grain_size) from it."""
    meta: dict = {"help": help, "kind": kind, "metavar": metavar, "aliases": aliases}
    if range is not None:
        meta["range"] = range
        meta["shown_range"] = shown_range or f"{range[0]:g}-{range[1]:g}"
    if choices is not None:
        meta["choices"] = tuple(choices)
    if default_text is not None:
        meta["default_text"] = default_text
    return meta


def _field(default: object, **meta: object) -> object:
    return dataclasses.field(default=default, metadata=option(**meta))


@dataclass(frozen=True)
class Settings:
    """Everything that decides a render's pixels.

    Lengths are px at scale 1 (the spec's 3000 px short side); they are multiplied by the image's scale s.
    Each user-facing field's metadata (`option`) states its meaning and allowed values: validation here and
    the command line's flags both read it.
    """

    film: str = _field("Portra400", help="film stock, case-insensitive (list them with 'phos_dask films')",
                       kind=str, metavar="NAME")
    grain: str = _field("default", help="grain style", choices=GRAIN_STYLES, kind=str)
    grain_size: float = _field(1.5, help="grain correlation sigma in px at scale 1", range=(0.25, 10.0),
                               kind=float, metavar="PX")
    grain_intensity: float = _field(0.8, help="grain amplitude", range=(0.0, 4.0), kind=float, metavar="X")
    seed: int = _field(0, help="job seed for the grain", range=(0, 2**64 - 1), shown_range="0..2**64-1", kind=int,
                       metavar="N")
    image_key: str = ""  # stable name of the image, mixed into its grain seed
    scattering: float | None = _field(None, help="bloom scattering", range=(0.0, 1.0), kind=float, metavar="X",
                                      default_text="the stock's own; upstream's app uses 0.10")
    exposure_time: float | None = _field(None, help="exposure time in seconds for reciprocity failure",
                                         range=(1e-5, 3600.0), shown_range="1e-5 to 3600", kind=float,
                                         metavar="SECONDS",
                                         default_text="none, i.e. 1 s")
    film_format: str = _field("35mm", help="frame size: larger formats make grain and glow smaller",
                              choices=FILM_FORMATS, kind=str)
    working_size: int | None = _field(None, help="resample so the short side is N px before rendering",
                                      range=(16, 200_000), kind=int, metavar="N", default_text="keep the size")
    dtype: str = _field("uint8", help="output sample type", choices=DTYPES, kind=str,
                        default_text="depends on the output")
    hd_curve: bool | None = _field(None, help="apply the stock's characteristic curve", kind=bool,
                                   default_text="on for B&W, off for colour")
    linear_input: bool = _field(False, help="input is linear light, not sRGB-encoded (float files such as float "
                                "TIFFs always are)", kind=bool, aliases=("--input-linear",))

    def __post_init__(self) -> None:
        get_stock(self.film)  # raises StockError listing the valid names
        for f in dataclasses.fields(self):
            _validate(f.name, getattr(self, f.name), f.metadata)

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

    def film_params(self) -> FilmParams:
        """What the model computes from (phos_dask.film.params): these settings less the job's fields, with the
        image's grain seed."""
        return FilmParams(film=self.stock.name, grain_style=self.grain_style, grain_size=float(self.grain_size),
                          grain_intensity=float(self.grain_intensity), scattering=float(self.effective_scattering),
                          exposure_time=self.exposure_time, film_format=self.film_format, hd_curve=self.uses_hd_curve,
                          linear_input=self.linear_input, dtype=self.dtype, image_seed=self.image_seed())

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
