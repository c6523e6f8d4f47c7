"""Film stocks: the package's own copy of the 16 Phos stock profiles, loaded and validated once."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from phos_dask.errors import PhosError

CHARACTER: dict[str, str] = {
    "NC200": "Fuji natural colour, soft contrast, gentle greens",
    "Gold200": "Kodak consumer colour, warm and saturated",
    "Portra400": "Kodak portrait colour, low contrast, kind skin tones",
    "Ektar100": "Kodak fine-grain colour, punchy saturation",
    "ProImage100": "Kodak everyday colour, neutral and clean",
    "Business100": "Kodak business colour, plain and even",
    "Velvia50": "Fuji slide, deep blacks, vivid colour",
    "Superia400": "Fuji consumer colour, cool greens, visible grain",
    "C400": "Fuji colour 400, bright and airy",
    "UltraMax400": "Kodak consumer 400, warm, grainy",
    "Cinestill800T": "tungsten cine film without anti-halation: red glow round highlights",
    "FS200": "Fomapan-style B&W 200, red-blind pan, soft toe",
    "AS100": "slow B&W 100, red-sensitive, fine grain",
    "HP5Plus400": "Ilford HP5 Plus, classic B&W 400",
    "TriX400": "Kodak Tri-X, contrasty B&W 400 with bold grain",
    "FP4Plus125": "Ilford FP4 Plus, fine-grain B&W 125",
}


class StockError(PhosError, ValueError):
    """A stock name or profile that cannot be used."""


@dataclass(frozen=True)
class Layer:
    """One emulsion layer: a row of the emulsion matrix (applied to linear r, g, b) and its mix/grain."""

    weights: tuple[float, float, float]
    diffuse: float
    direct: float
    grain: float

    @property
    def w_diffuse(self) -> float:
        total = self.diffuse + self.direct
        return self.diffuse / total if total > 0 else 0.0

    @property
    def w_direct(self) -> float:
        total = self.diffuse + self.direct
        return self.direct / total if total > 0 else 0.0


@dataclass(frozen=True)
class Tone:
    """Filmic curve constants A..F (spec S7)."""

    A: float
    B: float
    C: float
    D: float
    E: float
    F: float


@dataclass(frozen=True)
class Halation:
    """Beer-Lambert double pass through the base; psf_radius in px at scale 1."""

    T_e: tuple[float, float, float]
    T_b: float
    T_ah: tuple[float, float, float]
    R_bp: float
    psf_radius: float
    energy_fraction: float

    def strength(self) -> tuple[float, float, float]:
        """`f_h,c · energy_fraction` per channel: the share of light above 0.5 that halates."""
        return tuple(
            (te * self.T_b * tah) ** 2 * self.R_bp * self.energy_fraction
            for te, tah in zip(self.T_e, self.T_ah, strict=True)
        )  # type: ignore[return-value]


@dataclass(frozen=True)
class Reciprocity:
    """Schwarzschild exponents per channel; times in seconds."""

    p: tuple[float, float, float]
    t_low: float
    t_high: float
    failure_strength: float
    k: float
    p_mono: float | None = None


@dataclass(frozen=True)
class HDCurve:
    """Characteristic-curve preset: gamma (density per decade), D_min/D_max, toe/shoulder softness."""

    enabled: bool
    gamma: float
    D_min: float
    D_max: float
    toe_strength: float
    shoulder_strength: float


@dataclass(frozen=True)
class Stock:
    name: str
    kind: str  # "color" or "bw"
    iso: int
    pan: Layer
    tone: Tone
    threshold: float
    scattering: float
    reciprocity: Reciprocity
    red: Layer | None = None
    green: Layer | None = None
    blue: Layer | None = None
    halation: Halation | None = None
    hd_curve: HDCurve | None = None

    @property
    def is_color(self) -> bool:
        return self.kind == "color"

    @property
    def channels(self) -> int:
        return 3 if self.is_color else 1

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers whose rows form the emulsion matrix: (R, G, B) for colour, (P,) for B&W."""
        if self.is_color:
            return (self.red, self.green, self.blue)  # type: ignore[return-value]
        return (self.pan,)

    @property
    def character(self) -> str:
        return CHARACTER.get(self.name, "")


def _layer(d: dict) -> Layer:
    w = tuple(float(v) for v in d["weights"])
    if len(w) != 3:
        raise StockError(f"layer weights must have 3 entries, got {len(w)}")
    return Layer(w, float(d["diffuse"]), float(d["direct"]), float(d["grain"]))  # type: ignore[arg-type]


def _stock(name: str, d: dict) -> Stock:
    try:
        kind = d["kind"]
        if kind not in ("color", "bw"):
            raise StockError(f"kind must be 'color' or 'bw', got {kind!r}")
        rec = d["reciprocity"]
        hal = d.get("halation")
        hd = d.get("hd_curve")
        stock = Stock(
            name=name,
            kind=kind,
            iso=int(d["iso"]),
            pan=_layer(d["pan"]),
            tone=Tone(**{k: float(v) for k, v in d["tone"].items()}),
            threshold=float(d["bloom"]["threshold"]),
            scattering=float(d["bloom"]["scattering"]),
            reciprocity=Reciprocity(
                p=tuple(float(v) for v in rec["p"]),  # type: ignore[arg-type]
                t_low=float(rec["t_low"]),
                t_high=float(rec["t_high"]),
                failure_strength=float(rec["failure_strength"]),
                k=float(rec["k"]),
                p_mono=float(rec["p_mono"]) if "p_mono" in rec else None,
            ),
            red=_layer(d["red"]) if kind == "color" else None,
            green=_layer(d["green"]) if kind == "color" else None,
            blue=_layer(d["blue"]) if kind == "color" else None,
            halation=(
                Halation(
                    T_e=tuple(float(v) for v in hal["T_e"]),  # type: ignore[arg-type]
                    T_b=float(hal["T_b"]),
                    T_ah=tuple(float(v) for v in hal["T_ah"]),  # type: ignore[arg-type]
                    R_bp=float(hal["R_bp"]),
                    psf_radius=float(hal["psf_radius"]),
                    energy_fraction=float(hal["energy_fraction"]),
                )
                if hal is not None
                else None
            ),
            hd_curve=HDCurve(**hd) if hd is not None else None,
        )
    except (KeyError, TypeError) as exc:
        raise StockError(f"stock {name!r}: malformed profile ({exc})") from exc
    if stock.is_color and stock.halation is None:
        raise StockError(f"stock {name!r}: colour stocks need a halation table")
    return stock


@cache
def all_stocks() -> dict[str, Stock]:
    """Every stock in the package's data file, by name, in file order."""
    text = resources.files("phos_dask").joinpath("data/stocks.toml").read_text(encoding="utf-8")
    return {name: _stock(name, d) for name, d in tomllib.loads(text).items()}


def get_stock(name: str) -> Stock:
    """The stock called `name` (case-insensitive); unknown names raise StockError listing the valid ones."""
    stocks = all_stocks()
    if name in stocks:
        return stocks[name]
    folded = {k.lower(): v for k, v in stocks.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise StockError(f"unknown film stock {name!r}; valid names: {', '.join(stocks)}")
