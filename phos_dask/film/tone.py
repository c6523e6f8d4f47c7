"""Pixel-local output stages: the monotone H&D curve (S6b), the filmic tone curve (S7) and encoding (S8).

For quantised outputs the whole chain Z → [H&D] → filmic → sRGB → round is one monotone function per
channel, so it is compiled once into the exact thresholds in Z where the output code steps up; a pixel then
needs only a table look-up (see `QuantTable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from phos_dask.film.colour import srgb_decode, srgb_encode
from phos_dask.film.stocks import HDCurve, Tone

MID_GREY = 0.18


def filmic(xp, Z, tone: Tone):
    """S7: F(10·Z₊) clipped to [0, 1]; Z linear, result linear."""
    A, B, C, D, E, F = tone.A, tone.B, tone.C, tone.D, tone.E, tone.F
    x = 10 * xp.maximum(Z, 0)
    out = (x * (A * x + C * B) + D * E) / (x * (A * x + B) + D * F) - E / F
    return xp.clip(out, 0, 1)


def _softplus(xp, u, k: float):
    return xp.logaddexp(0, k * u) / k


def hd_curve(xp, Z, hd: HDCurve):
    """S6b: exposure (linear) → normalised positive response in [0, 1], monotone non-decreasing.

    Our own curve: negative density D(L) over log exposure L = log10(Z) is a straight line of slope γ
    through mid-grey at the middle of [D_min, D_max], bent into a toe (softplus of sharpness
    toe_strength) and a shoulder (softplus towards D_max of sharpness shoulder_strength). The print
    re-expands density by 1/γ, so the straight line is exposure-preserving and mid-grey stays at 0.18;
    the toe lifts and compresses shadows, the shoulder compresses highlights. Normalised so that zero
    exposure maps to 0 and clipped to at most 1.
    """
    R = hd.D_max - hd.D_min
    L = xp.log10(xp.maximum(Z, 1e-12))
    u = hd.gamma * (L - float(np.log10(MID_GREY))) + R / 2  # density above D_min on the straight line
    a = _softplus(xp, u, hd.toe_strength)
    b = R - _softplus(xp, R - a, hd.shoulder_strength)
    b_min = R - float(np.logaddexp(0, hd.shoulder_strength * R) / hd.shoulder_strength)
    b_mid = R - float(_softplus(np, R - float(_softplus(np, R / 2, hd.toe_strength)), hd.shoulder_strength))
    P = MID_GREY * 10 ** ((b - b_mid) / hd.gamma)
    P_min = MID_GREY * 10 ** ((b_min - b_mid) / hd.gamma)
    return xp.where(Z > 0, xp.clip((P - P_min) / (1 - P_min), 0, 1), 0)


def tone_chain(xp, Z, tone: Tone, hd: HDCurve | None):
    """Z (linear, after layer mix and grain) → F, the linear output value in [0, 1]."""
    if hd is not None:
        Z = hd_curve(xp, Z, hd)
    return filmic(xp, Z, tone)


def quantise(xp, F, vmax: int):
    """S8: linear F → sRGB code, round half up."""
    return xp.astype(xp.floor(srgb_encode(xp, xp.astype(F, xp.float64)) * vmax + 0.5),
                     xp.uint8 if vmax == 255 else xp.uint16)


@dataclass(frozen=True)
class QuantTable:
    """Exact thresholds of one channel's monotone chain: code(Z) = max{k : Z ≥ thresholds[k]}.

    `thresholds[1..vmax]` are the steps, each rounded up to float32 so that comparing a float32 Z equals
    comparing with the exact value; [0] is -inf and the entries past vmax are +inf.
    """

    thresholds: np.ndarray
    #: first code of each bucket of positive float32 Z, bucketed by the top bits of its bit pattern (see
    #: BUCKET_SHIFT); the last entry is vmax. A pixel's code lies in [start[b], start[b+1]].
    start: np.ndarray


#: Buckets keep 10 mantissa bits (1024 per octave) of positive float32 Z from 2**-24 up to 2**6.
BUCKET_SHIFT = 13
BUCKET_BASE = int(np.float32(2.0**-24).view(np.uint32)) >> BUCKET_SHIFT
BUCKET_COUNT = (int(np.float32(2.0**6).view(np.uint32)) >> BUCKET_SHIFT) - BUCKET_BASE


#: A bucket may hold at most this many codes: the per-pixel search is 7 fixed steps.
BUCKET_MAX_CODES = 127


def _bucket_starts(thresholds: np.ndarray, vmax: int) -> np.ndarray | None:
    lower = ((np.arange(BUCKET_COUNT, dtype=np.uint32) + BUCKET_BASE) << BUCKET_SHIFT).view(np.float32)
    t = thresholds[1 : vmax + 1]
    start = np.searchsorted(t, lower, side="right").astype(np.int64)
    start[0] = 0  # bucket 0 also takes every positive Z below 2**-24
    start = np.concatenate([start, [np.isfinite(t).sum()]])  # the top bucket ends at the last reachable code
    if np.diff(start).max() > BUCKET_MAX_CODES:
        return None
    return start.astype(np.int32)


def _chain64(Z: np.ndarray, tone: Tone, hd: HDCurve | None, vmax: int) -> np.ndarray:
    return srgb_encode(np, tone_chain(np, Z, tone, hd)) * vmax


@cache
def quant_table(tone: Tone, hd: HDCurve | None, vmax: int) -> QuantTable | None:
    """The threshold table, or None when the chain is not monotone (then pixels are evaluated directly)."""
    grid = np.concatenate([[0.0], np.geomspace(1e-9, 64.0, 200_000)])
    if np.any(np.diff(_chain64(grid, tone, hd, vmax)) < -1e-9):
        return None
    target = np.arange(1, vmax + 1, dtype=np.float64) - 0.5
    lo = np.zeros_like(target)
    hi = np.full_like(target, 64.0)
    reachable = _chain64(hi, tone, hd, vmax) >= target
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        up = _chain64(mid, tone, hd, vmax) >= target
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    t32 = hi.astype(np.float32)
    t32 = np.where(t32.astype(np.float64) < hi, np.nextafter(t32, np.float32(np.inf)), t32)
    t32 = np.where(reachable, t32, np.float32(np.inf))
    # +inf past vmax, and enough of it that a search step never reads beyond the array
    thresholds = np.concatenate([[-np.inf], t32, np.full(BUCKET_MAX_CODES + 1, np.inf)]).astype(np.float32)
    start = _bucket_starts(thresholds, vmax)
    return None if start is None else QuantTable(thresholds, start)


@cache
def code_tables(vmax: int, cells: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(guess, steps) for coding a linear F in [0, 1]: guess[j] = enc((j/cells)²)·vmax (float32), and
    steps[k] = dec((k - 0.5)/vmax) rounded up to float32 for k = 1..vmax, steps[0] = -inf,
    steps[vmax+1] = +inf, so that code(F) = max{k : F ≥ steps[k]} exactly."""
    u = np.arange(cells + 1, dtype=np.float64) / cells
    guess = (srgb_encode(np, u * u) * vmax).astype(np.float32)
    exact = srgb_decode(np, (np.arange(1, vmax + 1, dtype=np.float64) - 0.5) / vmax)
    t32 = exact.astype(np.float32)
    t32 = np.where(t32.astype(np.float64) < exact, np.nextafter(t32, np.float32(np.inf)), t32)
    steps = np.concatenate([[-np.inf], t32, [np.inf]]).astype(np.float32)
    return guess, steps


#: `code_guesses`: bits of F's float32 pattern dropped to pick its bucket (1024 buckets per octave).
CODE_GUESS_SHIFT = 13


@cache
def code_guesses(vmax: int) -> tuple[np.ndarray, int, int]:
    """(G, base, shift) for coding a linear F in [0, 1] by its float32 bit pattern: bucket
    b = (bits(F) >> shift) − base (clipped to the table; F < 2⁻²⁴ falls in bucket 0), G[b] = enc(lower edge
    of b)·vmax (float32), and F's position in its bucket (the dropped bits) interpolates between G[b] and
    G[b+1]: within 0.05 of enc(F)·vmax, so rounding it and settling against one of `code_tables`' steps
    (`_pixel.guessed_code`, `settled_code`) gives the exact code, the same as `srgb_code`'s (checked for
    every float32 in [0, 1]) with one table read pair and no square root."""
    shift = CODE_GUESS_SHIFT
    base = int(np.float32(2.0**-24).view(np.uint32)) >> shift
    top = (int(np.float32(1.0).view(np.uint32)) >> shift) + 1
    edges = (np.arange(base, top + 1, dtype=np.uint32) << shift).view(np.float32).astype(np.float64)
    return (srgb_encode(np, edges) * vmax).astype(np.float32), base, shift


def linear_to_code_reference(xp, Z, tone: Tone, hd: HDCurve | None, vmax: int):
    """Direct evaluation of the chain in float32 then rounding: the definition the tables must follow."""
    return quantise(xp, tone_chain(xp, xp.astype(Z, xp.float32), tone, hd), vmax)


__all__ = [
    "QuantTable",
    "filmic",
    "hd_curve",
    "linear_to_code_reference",
    "quant_table",
    "quantise",
    "srgb_decode",
    "srgb_encode",
    "tone_chain",
]
