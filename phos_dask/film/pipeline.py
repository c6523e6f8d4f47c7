"""The film model, composed: one plan per (settings, image size), and the region renderer that every
whole-image render, tile task and GPU task goes through.

Domains are half-open global pixel boxes (y0, y1, x0, x1). A neighbourhood stage reads its input through
index maps that apply the border rule (reflect) at the image's true edges, so a window that touches an edge
and the whole image feed every stage the same values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from phos_dask.film import colour, grain, ops, psf, scratch, tone
from phos_dask.film.coarse import CoarseBlur, reflect_index
from phos_dask.film.params import CODE_MAX, FILM_FORMATS, FilmParams
from phos_dask.film.stocks import HDCurve, Stock

REFERENCE_SHORT_SIDE = 3000
#: Red and blue bloom scattering relative to green, by ISO (spec S4).
ISO_RATIOS: dict[int, tuple[float, float]] = {
    50: (0.8430, 0.7940),
    100: (0.9670, 0.6017),
    125: (1.0189, 0.5755),
    200: (1.2834, 0.6121),
    400: (1.6443, 1.2110),
    800: (1.0258, 1.2082),
}
HALATION_THRESHOLD = 0.5
#: H&D preset used when a colour stock is asked for a characteristic curve (it has none of its own).
DEFAULT_HD = HDCurve(True, 0.65, 0.1, 2.5, 2.0, 1.5)

Box = tuple[int, int, int, int]


def scale_for(shape: tuple[int, int], film_format: str = "35mm") -> float:
    """s = short_side/3000 · 24/film_short_side_mm (spec §1)."""
    return min(shape[0], shape[1]) / REFERENCE_SHORT_SIDE * (24.0 / FILM_FORMATS[film_format])


def coarse_factor(s: float) -> int:
    """Cell size f (px of this image) of the reduced-resolution bloom and halation blurs at scale s.

    s ≥ 1: f = floor(4·s) (4 px at s = 1; a cell spans 3.2–4 px of the s = 1 reference image).
    s < 1: f = clamp(floor(s / 0.09), 1, 4), i.e. the largest f ≤ 4 whose cell spans at most 11.1 reference
    px (f/s ≤ 11.1, about 0.56 σ_b of the bloom core): f = 1 below s = 0.18, 2 from 0.18, 3 from 0.27 (a 1 MP
    3:2 photo, s = 0.272), 4 from 0.36. The blurs' error against the spec's exact kernels depends mainly on
    f/s; at f/s ≤ 11.1 it stays ≤ 7e-4 in linear light (spec §5 allows 1e-3; bloom at the largest η of any
    stock, Cinestill800T halation; worst 6.8e-4 at s = 0.18, f = 2). floor(4·s) alone kept s < 0.5 at f = 1:
    a 1 MP render then cost ~5× per pixel what a 24 MP one does. The cap at 4 keeps f non-decreasing
    across s = 1, where the cells (and pixels) are those of floor(4·s).
    """
    if s >= 1:
        return math.floor(4 * s)
    return max(1, min(4, math.floor(s / 0.09 + 1e-9)))


def bloom_etas(stock: Stock, scattering: float) -> tuple[float, ...]:
    if not stock.is_color:
        return (scattering,)
    rR, rB = ISO_RATIOS[stock.iso]
    return (scattering * rR, scattering, scattering * rB)


@dataclass(frozen=True)
class Plan:
    """Everything a render needs that does not depend on pixels, for one image size."""

    params: FilmParams
    stock: Stock
    s: float
    matrix: np.ndarray
    factors: np.ndarray | None
    etas: tuple[float, ...]
    bloom: CoarseBlur
    halation: CoarseBlur | None
    halation_k: tuple[float, ...]
    grain_taps: np.ndarray | None
    grain_coef: np.ndarray
    grain_base: float  # intensity/(3·sqrt(ΣG²)): n_p = clip(ρ_b · grain_base / sqrt(K_p), −1, 1)
    #: r(s) (spec §4) when grain is on and s < 1, else 1.0. Applied to the grain's effect after the tone
    #: curve: F = F_no-grain + r·(F_grain − F_no-grain) per channel, before quantisation (see `render_region`).
    grain_r: float
    grain_keys: tuple[int, ...]
    wd: np.ndarray
    ws: np.ndarray
    hd: HDCurve | None
    tables: tuple | None  # Z → code threshold tables, only for chains with an H&D curve
    #: K_c per grain plane (spec §4), the per-image constant every tile of the image must share; None until
    #: given (`with_grain_k`, `make_plan(…, grain_k=…)`) — a render then computes it only from a whole image.
    grain_k: tuple[float, ...] | None = None

    @property
    def channels(self) -> int:
        return self.stock.channels

    @property
    def has_grain(self) -> bool:
        return self.grain_taps is not None

    @property
    def grain_planes(self) -> int:
        return len(self.grain_keys) if self.has_grain else 0

    def with_grain_k(self, grain_k: Iterable[float] | None) -> Plan:
        """This plan with the image's per-plane grain constants K_c (from `grain_constants` or summed
        `grain_sums`); None clears them. Without grain the plan takes any (checked) value and ignores it."""
        if grain_k is None:
            return dataclasses.replace(self, grain_k=None)
        k = tuple(float(v) for v in grain_k)
        if self.has_grain and len(k) != len(self.grain_keys):
            raise ValueError(f"grain_k needs {len(self.grain_keys)} value(s), one per grain plane, got {len(k)}")
        if not all(math.isfinite(v) and 0 < v <= 1 for v in k):
            raise ValueError(f"grain_k values must lie in (0, 1], got {k}")
        return dataclasses.replace(self, grain_k=k)

    @property
    def grain_nscale(self) -> np.ndarray:
        """Per-plane float32 factor n_p = clip(ρ_b,p · nscale_p, −1, 1) = 1/(3·sqrt(V_p)) · intensity with
        V_p = ΣG²·K_p (r(s) is applied after the tone curve: `grain_r`); empty without grain. Raises when
        grain is on and K_c was not given."""
        if not self.has_grain:
            return np.zeros(0, np.float32)
        if self.grain_k is None:
            raise ValueError("grain is on but the plan has no per-image grain constant K_c: pass grain_k "
                             "(pipeline.grain_constants or summed grain_sums of the whole image)")
        return np.array([self.grain_base / math.sqrt(k) for k in self.grain_k], np.float32)

    @property
    def grain_radius(self) -> int:
        return 0 if self.grain_taps is None else (len(self.grain_taps) - 1) // 2

    @property
    def halo_bloom(self) -> int:
        return self.bloom.halo

    @property
    def halo_halation(self) -> int:
        return 0 if self.halation is None else self.halation.halo

    @property
    def halo(self) -> int:
        """Input px a tile needs on each side of its output (bloom → halation chained, grain beside)."""
        return max(self.halo_bloom + self.halo_halation, self.grain_radius)

    @property
    def vmax(self) -> int | None:
        return CODE_MAX.get(self.params.dtype)


@cache
def _tables(tone_: object, hd: HDCurve | None, vmax: int):
    return tone.quant_table(tone_, hd, vmax)


def film_params(settings) -> FilmParams:
    """FilmParams as they are, or built from settings that can make them (phos_dask.settings.Settings)."""
    return settings if isinstance(settings, FilmParams) else settings.film_params()


def make_plan(settings, shape: tuple[int, int], grain_k: Sequence[float] | None = None) -> Plan:
    """The plan for an image of `shape` (rows, cols) — after any working-size resampling — with `settings`
    (FilmParams, or Settings). `grain_k`: the image's K_c per grain plane (`grain_constants`); a region of
    the image can be rendered only with it (a whole-image render computes it when it is missing)."""
    params = film_params(settings)
    base = _plan_cached(dataclasses.replace(params, image_seed=0), round(scale_for(shape, params.film_format), 12))
    keys = tuple(grain.plane_key(params.image_seed, p) for p in _grain_planes(base.stock))
    return Plan(**{**base.__dict__, "params": params, "grain_keys": keys}).with_grain_k(grain_k)


def grain_sums(block, origin: tuple[int, int], plan) -> tuple[tuple[int, int], ...]:
    """The exact integer sums of K_c over one block of the prepared input image (the array `render` feeds
    the model; (h, w, 3) or grey), whose top-left pixel sits at global `origin`: per grain plane
    (Σq, n) over the block's pixels with global y ≡ 0 and x ≡ 0 (mod 4), q = round(2³²/max(E0·X_c, 1)).
    X_c is the S1–S3 response computed in float64 on the host (any array type: only the subsample is
    copied). Sums of disjoint blocks that cover the image, added in any order (`add_grain_sums`), give
    `grain_k_from_sums` exactly the value `grain_constants` computes from the whole image."""
    settings = plan.params if isinstance(plan, Plan) else film_params(plan)  # or FilmParams, Settings
    stock = settings.stock
    if settings.grain_style <= 0:
        return ()
    step = grain.K_STEP
    oy, ox = int(origin[0]), int(origin[1])
    block = as_rgb(block)
    sub = _to_host(block[(-oy) % step :: step, (-ox) % step :: step, ...])
    matrix = colour.emulsion_matrix(stock).astype(np.float64)
    factors = colour.reciprocity_factors(stock, settings.exposure_time)
    if sub.dtype in (np.uint8, np.uint16):
        from phos_dask.film import _cpu

        table = colour.input_table(sub.dtype, settings.linear_input).astype(np.float64)
        fac = np.ones(matrix.shape[0]) if factors is None else np.asarray(factors, np.float64)
        n = sub.shape[0] * sub.shape[1]
        return tuple((int(t), n) for t in _cpu.k_sums_lut(sub, table, matrix, fac, factors is not None))
    lin = colour.linearise(np, sub, settings.linear_input).astype(np.float64)
    out = []
    for c in range(matrix.shape[0]):
        m = matrix[c]
        X = m[0] * lin[..., 0] + m[1] * lin[..., 1] + m[2] * lin[..., 2]
        if factors is not None:
            X = np.clip(X * float(factors[c]), 0.0, 1.0)
        out.append(grain.k_sums(X))
    return tuple(out)


def add_grain_sums(*parts: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The sums of several blocks' `grain_sums`, plane by plane (exact: integers)."""
    if not parts:
        return ()
    return tuple((sum(p[i][0] for p in parts), sum(p[i][1] for p in parts)) for i in range(len(parts[0])))


def grain_k_from_sums(sums: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    """K_c per grain plane from the image's summed `grain_sums`."""
    return tuple(grain.k_value(t, n) for t, n in sums)


def grain_constants(image, plan) -> tuple[float, ...]:
    """K_c per grain plane (spec §4) of a whole prepared image, in one pass; () without grain."""
    return grain_k_from_sums(grain_sums(image, (0, 0), plan))


def _to_host(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # CuPy
    return get() if callable(get) else np.asarray(a)


def _grain_planes(stock: Stock) -> tuple[int, ...]:
    return (grain.PLANE_R, grain.PLANE_G, grain.PLANE_B) if stock.is_color else (grain.PLANE_P,)


@cache
def _plan_cached(settings: FilmParams, s: float) -> Plan:
    stock = settings.stock
    f = coarse_factor(s)
    bloom = CoarseBlur.build(psf.bloom_components(s), f)
    if stock.is_color:
        hal = stock.halation
        halation = CoarseBlur.build(psf.halation_components(hal.psf_radius, s), f)
        halation_k = hal.strength()
    else:
        halation, halation_k = None, ()
    style = settings.grain_style
    C = stock.channels
    if style > 0:
        taps = psf.grain_taps(settings.grain_size, s).astype(np.float32)
        grain_r = grain.resolution_factor(settings.grain_size, s)
        nscale = settings.grain_intensity / (3.0 * grain.grain_norm(taps))
        gP = stock.pan.grain
        if stock.is_color:
            coef = np.array([[style * 0.30 * L.grain, style * gP, style * gP] for L in stock.layers])
        else:
            coef = np.array([[style * gP]])
    else:
        taps, nscale, coef, grain_r = None, 0.0, np.zeros((C, 0)), 1.0
    hd = (stock.hd_curve or DEFAULT_HD) if settings.hd_curve else None
    vmax = CODE_MAX.get(settings.dtype)
    tables = None
    if vmax is not None and hd is not None:  # without an H&D curve codes come from the filmic kernel
        tables = tuple(_tables(stock.tone, hd, vmax) for _ in range(C))
        if any(t is None for t in tables):
            tables = None
    return Plan(
        params=settings,
        stock=stock,
        s=s,
        matrix=colour.emulsion_matrix(stock),
        factors=colour.reciprocity_factors(stock, settings.exposure_time),
        etas=bloom_etas(stock, settings.scattering),
        bloom=bloom,
        halation=halation,
        halation_k=tuple(halation_k),
        grain_taps=taps,
        grain_coef=coef.astype(np.float32),
        grain_base=nscale,
        grain_r=grain_r,
        grain_keys=(),
        wd=np.array([L.w_diffuse for L in stock.layers], np.float32),
        ws=np.array([L.w_direct for L in stock.layers], np.float32),
        hd=hd,
        tables=tables,
    )


def total_halo(settings, shape: tuple[int, int]) -> int:
    """Px of input a tile of an image of `shape` needs on each side of its output region."""
    return make_plan(settings, shape).halo


def _expand(box: Box, halo: int, shape: tuple[int, int]) -> Box:
    y0, y1, x0, x1 = box
    H, W = shape
    return max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)


def _span(idx: np.ndarray) -> tuple[int, int]:
    return int(idx.min()), int(idx.max()) + 1


def _blurred(src, origin, out_box: Box, shape, blur: CoarseBlur, thr: float, eta: float, made_from=None):
    """The blurred coarse field of eta·(src − thr)₊ that out_box's pixels interpolate (None when nothing in
    reach exceeds thr), and the row and column interpolation (`CoarseBlur.interpolation`).
    made_from = (X, (xy, xx), bloom, interp_rows, interp_cols, bthr, beta): src is not stored but is what
    `ops.compose` makes of X (src's [0, 0] at X's [xy, xx]) with that bloom field (CPU only; `src` is X)."""
    oy, ox = origin
    y0, y1, x0, x1 = out_box
    rows = reflect_index(np.arange(*blur.source_rows(y0, y1)), shape[0]) - oy
    cols = reflect_index(np.arange(*blur.source_rows(x0, x1)), shape[1]) - ox
    ry, rx = blur.interpolation(y0, y1), blur.interpolation(x0, x1)
    ys, xs = _span(rows), _span(cols)
    blurred = None
    if eta <= 0:
        return blurred, ry, rx
    # On the CPU the cells themselves say whether anything exceeds thr (a cell holds a positive sum exactly
    # when one of its pixels does), which saves a scan of the source; elsewhere a scan is cheaper.
    cpu = ops._is_cpu(src)
    if cpu or ops.any_above(src, (*ys, *xs), thr):
        if made_from is None:
            c = ops.cells(src, rows, cols, blur.f, thr, eta)
        else:
            X, (xy, xx), bloom, b_rows, b_cols, bthr, beta = made_from
            c = ops.cells_composed(X, xy, xx, bloom, b_rows, b_cols, bthr, beta, rows, cols, blur.f, thr, eta)
        if not cpu or c.any():
            blurred = ops.blur_valid(c, blur.taps_v, blur.taps_h, blur.radii)
    return blurred, ry, rx


def _blur_stage(src, origin, out_box: Box, shape, blur: CoarseBlur, thr: float, eta: float, out):
    """out = clip01(src - eta·(src - thr)₊ + blur ⊛ eta·(src - thr)₊) on out_box; src covers `origin`+."""
    blurred, ry, rx = _blurred(src, origin, out_box, shape, blur, thr, eta)
    return ops.compose(src, out_box[0] - origin[0], out_box[2] - origin[1], blurred, ry, rx, thr, eta, out)


def source_box(plan: Plan, out_box: Box, shape: tuple[int, int]) -> Box:
    """The input pixels (clipped to the image) a render of out_box reads."""
    return _expand(out_box, plan.halo, shape)


def render_region(window, window_origin: tuple[int, int], shape: tuple[int, int], out_box: Box, plan: Plan,
                  planar: bool = False):
    """The model's output on `out_box` of an image of `shape`, from a window of its (working-size) pixels.

    window: (h, w, 3) uint8/uint16/float sRGB (float linear if the settings say so), covering at least
    `source_box(plan, out_box, shape)`; window_origin: global (row, col) of window[0, 0].
    Returns (h, w, 3) for colour stocks or (h, w) for B&W, dtype per settings; bit-identical to the same
    region of a whole-image render. `planar`: (C, h, w) instead, C = 3 or 1 (the layout of the output's
    Zarr arrays; the CPU's fused pass writes it directly, sparing a transposing copy).
    """
    H, W = shape
    y0, y1, x0, x1 = out_box
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"output box {out_box} is not inside the image {shape}")
    if plan.has_grain and plan.grain_k is None:
        if tuple(window_origin) != (0, 0) or tuple(window.shape[:2]) != (H, W):
            raise ValueError("grain is on but the plan has no per-image grain constant K_c, and the window "
                             "is not the whole image: make the plan with the whole image's grain_k "
                             "(pipeline.grain_constants or summed grain_sums)")
        plan = plan.with_grain_k(grain_constants(window, plan))
    xp = ops.namespace(window)
    hal = plan.halation
    y_box = _expand(out_box, plan.halo_halation, shape) if hal is not None else out_box
    x_box = source_box(plan, out_box, shape)
    wy, wx = window_origin
    if not (wy <= x_box[0] and wx <= x_box[2] and wy + window.shape[0] >= x_box[1]
            and wx + window.shape[1] >= x_box[3]):
        raise ValueError(f"window at {window_origin} of size {window.shape[:2]} does not cover {x_box}")
    src = window[x_box[0] - wy : x_box[1] - wy, x_box[2] - wx : x_box[3] - wx, ...]
    if isinstance(src, np.ndarray):
        src = np.ascontiguousarray(src)
    fused = _fused(src, plan)
    X = ops.front(src, plan.matrix, plan.factors, plan.params.linear_input,
                  scratch.array("X", (plan.channels, *src.shape[:2])) if fused else None)
    xo = (x_box[0], x_box[2])
    thr = plan.stock.threshold
    C = plan.channels
    if fused:
        return _render_fused(X, xo, y_box, out_box, shape, plan, planar)
    Y = xp.empty((C, y_box[1] - y_box[0], y_box[3] - y_box[2]), dtype=xp.float32)
    for c in range(C):
        Y[c, ...] = _blur_stage(X[c, ...], xo, y_box, shape, plan.bloom, thr, plan.etas[c], Y[c, ...])
    if hal is not None:
        yo = (y_box[0], y_box[2])
        Yp = xp.empty((C, y1 - y0, x1 - x0), dtype=xp.float32)
        for c in range(C):
            Yp[c, ...] = _blur_stage(Y[c, ...], yo, out_box, shape, hal, HALATION_THRESHOLD, plan.halation_k[c],
                                     Yp[c, ...])
        del Y
    else:
        Yp = Y
    noise = noise_planes(X, xo, out_box, shape, plan)
    args = (Yp, X, y0 - xo[0], x0 - xo[1], noise, plan.grain_coef, plan.grain_nscale, plan.wd, plan.ws)
    # r(s) < 1 (grain on, s < 1): the grain's effect is scaled after the tone curve, which needs the
    # grain-free F as well (spec §4 as implemented, see `grain_r`); r = 1 takes the single-curve paths.
    r = plan.grain_r
    if plan.vmax is not None and plan.hd is None:
        out = ops.mix_filmic_encode(*args, (plan.stock.tone,) * C, plan.vmax, r)
    elif plan.vmax is not None and plan.tables is not None and r >= 1.0:
        out = ops.mix_encode(*args, plan.tables, plan.vmax)
    else:
        out = _encode(_tone(args, plan), plan)
    if planar:
        return xp.moveaxis(out, -1, 0)
    return out[..., 0] if C == 1 else out


#: Whether NumPy renders with integer outputs take the fused CPU pass (`ops.finish`); tests switch it off
#: to compare the fused pass with the separate kernels it stands for.
FUSED_CPU = True


def _fused(src, plan: Plan) -> bool:
    """Whether this render takes `_render_fused`: a CPU render whose codes come from the filmic kernel or
    from threshold tables (the paths `ops.finish` fuses)."""
    return ops._is_cpu(src) and _fuses(plan)


def _fuses(plan: Plan) -> bool:
    """Whether a CPU render with `plan` takes `_render_fused`."""
    if not FUSED_CPU or plan.vmax is None:
        return False
    return plan.hd is None or (plan.tables is not None and plan.grain_r >= 1.0)


def touch_scratch(plan: Plan, shape: tuple[int, int]) -> bool:
    """Take now the first-touch page faults of the scratch array in which this thread's CPU render of a
    whole image of `shape` with `plan` will keep its exposures X (`scratch.touch`), e.g. while another
    thread loads the kernels; returns whether there is such an array to touch (and it is kept)."""
    return _fuses(plan) and scratch.touch("X", (plan.channels, *shape))


def _render_fused(X, xo: tuple[int, int], y_box: Box, out_box: Box, shape: tuple[int, int], plan: Plan,
                  planar: bool = False):
    """`render_region` from S1–S3's X on: the bloom stage's blurred cells on y_box (colour), then the last
    blur stage (halation on the bloom stage's output Y, or bloom on X for B&W), the grain and S6–S8 in one
    fused pass (`ops.finish`). Y is never stored: the halation's cells and the fused pass compose each row
    of it from X as they read it."""
    C = plan.channels
    thr = plan.stock.threshold
    y0, x0 = out_box[0], out_box[2]
    composed = None
    if plan.halation is not None:
        yo = (y_box[0], y_box[2])
        at = (yo[0] - xo[0], yo[1] - xo[1])
        bloom = [_blurred(X[c, ...], xo, y_box, shape, plan.bloom, thr, plan.etas[c]) for c in range(C)]
        fields = [_blurred(X[c, ...], yo, out_box, shape, plan.halation, HALATION_THRESHOLD, plan.halation_k[c],
                           (X[c, ...], at, *bloom[c], thr, plan.etas[c])) for c in range(C)]
        composed = ([b[0] for b in bloom], bloom[0][1], bloom[0][2], thr, plan.etas)
        S, so, sthr, etas = None, yo, HALATION_THRESHOLD, plan.halation_k
    else:
        S, so, sthr, etas = X, xo, thr, plan.etas
        fields = [_blurred(X[c, ...], xo, out_box, shape, plan.bloom, thr, etas[c]) for c in range(C)]
    ry, rx = fields[0][1], fields[0][2]
    rows, cols = _grain_maps(out_box, shape, xo, plan.grain_radius)
    keys = plan.grain_keys if plan.has_grain else ()
    out = ops.finish(S, y0 - so[0], x0 - so[1], [f[0] for f in fields], ry, rx, sthr, etas, X, y0 - xo[0],
                     x0 - xo[1], rows, cols, xo, keys, plan.grain_taps, plan.grain_coef, plan.grain_nscale,
                     plan.wd, plan.ws, (plan.stock.tone,) * C, plan.vmax, plan.grain_r,
                     plan.tables if plan.hd is not None else None, composed, planar)
    if planar:
        return out
    return out[..., 0] if C == 1 else out


def noise_planes(X, origin: tuple[int, int], out_box: Box, shape: tuple[int, int], plan: Plan):
    """Blurred grain planes ρ_b = G_g ⊛ (a(X)·u) on out_box, (P, h, w) float32; X covers out_box plus the
    grain radius (clipped to the image) from global `origin`. n_p = clip(ρ_b,p × plan.grain_nscale[p], ±1)."""
    xp = ops.namespace(X)
    y0, y1, x0, x1 = out_box
    if plan.grain_taps is None:
        return xp.zeros((0, y1 - y0, x1 - x0), dtype=xp.float32)
    rows, cols = _grain_maps(out_box, shape, origin, plan.grain_radius)
    planes = xp.empty((len(plan.grain_keys), y1 - y0, x1 - x0), dtype=xp.float32)
    for c, key in enumerate(plan.grain_keys):
        ops.grain_noise(X[c, ...], rows, cols, origin[0], origin[1], key, plan.grain_taps, planes[c, ...])
    return planes


def _grain_maps(out_box: Box, shape: tuple[int, int], origin: tuple[int, int], r: int):
    """The rows and columns of X (global `origin`) that out_box's grain reads: out_box widened by the grain
    radius r, under the border rule, as indices into X."""
    y0, y1, x0, x1 = out_box
    rows = reflect_index(np.arange(y0 - r, y1 + r), shape[0]) - origin[0]
    cols = reflect_index(np.arange(x0 - r, x1 + r), shape[1]) - origin[1]
    return rows, cols


def _tone(args: tuple, plan: Plan):
    """S6–S7 without threshold tables: F (C, h, w) float32 of the mix of `args` (`ops.mix`'s arguments).
    With r = plan.grain_r < 1, F = F₀ + r·(F − F₀) for the grain-free F₀ (same chain, no grain terms)."""
    Z = ops.mix(*args)
    xp = ops.namespace(Z)
    F = tone.tone_chain(xp, Z, plan.stock.tone, plan.hd)
    if plan.grain_r < 1.0:
        Yp, X, xy, xx, noise, coef, nscale, wd, ws = args
        Z0 = ops.mix(Yp, X, xy, xx, noise[:0, ...], coef[:, :0], nscale[:0], wd, ws)
        F = ops.blend(tone.tone_chain(xp, Z0, plan.stock.tone, plan.hd), F, plan.grain_r)
    return F


def _encode(F, plan: Plan):
    """F (linear, after the tone chain) → output without threshold tables: float outputs, or codes for a
    non-monotone chain or an H&D chain whose grain is scaled after the curve."""
    xp = ops.namespace(F)
    vmax = plan.vmax
    if vmax is not None:
        out = tone.quantise(xp, F, vmax)
    else:
        out = xp.astype(F, xp.float16 if plan.params.dtype == "float16" else xp.float32)
    return xp.moveaxis(out, 0, -1)


def as_rgb(image):
    """Grey (h, w) or (h, w, 1) → (h, w, 3); alpha dropped; anything else rejected."""
    xp = ops.namespace(image)
    if image.ndim == 2:
        return xp.repeat(xp.expand_dims(image, axis=2), 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (1, 2):
        return xp.repeat(image[:, :, :1], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"expected an image of shape (h, w), (h, w, 1|2|3|4), got {image.shape}")
