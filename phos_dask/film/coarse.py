"""Reduced-resolution blurs on a grid aligned to the image's global pixel grid.

A wide separable kernel at full resolution is computed as: block means over f×f cells of the global grid
(cell j covers global rows j·f … j·f+f-1) → a short direct separable convolution on the cells → bilinear
interpolation back to pixel centres. Every step has a fixed summation order and depends only on global
coordinates, so a tile and the whole image compute the same bits wherever both have the cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phos_dask.film.psf import Component


def _bin_taps(g: np.ndarray, radius: int, f: int) -> np.ndarray:
    """Integrate full-res taps g[-radius..radius] over coarse bins [k·f - f/2, k·f + f/2]."""
    r = math.ceil((radius + 0.5 + f / 2) / f) - 1
    out = np.zeros(2 * r + 1)
    for m in range(-radius, radius + 1):
        lo, hi = m - 0.5, m + 0.5
        for k in range(math.floor((lo + f / 2) / f), math.floor((hi + f / 2) / f) + 1):
            overlap = min(hi, k * f + f / 2) - max(lo, k * f - f / 2)
            if overlap > 0 and -r <= k <= r:
                out[k + r] += g[m + radius] * overlap
    return out


@dataclass(frozen=True)
class CoarseBlur:
    """A sum of separable components, evaluated on f×f cells. `taps[i]` is component i (weight folded
    into it) padded to the common coarse radius `r`; the result is Σ_i (taps_i ⊗ taps_i-unweighted)."""

    f: int
    taps_v: np.ndarray  # (n, 2r+1) float32, weight folded in
    taps_h: np.ndarray  # (n, 2r+1) float32
    radii: np.ndarray  # (n,) int64, each component's own coarse radius
    r: int

    @classmethod
    def build(cls, comps: Sequence[Component], f: int) -> CoarseBlur:
        rows_v, rows_h, radii = [], [], []
        extra_var = (f * f - 1) / 4.0  # block mean + tap binning + bilinear interpolation
        for c in comps:
            g = c.taps()
            var = c.sigma**2 - extra_var
            if f > 1 and var > (0.5 * c.sigma) ** 2:
                t = np.arange(-c.radius, c.radius + 1, dtype=np.float64)
                gc = np.exp(-(t**2) / (2 * var))
                gc *= g.sum() / gc.sum()
            else:
                gc = g
            b = _bin_taps(gc, c.radius, f)
            rows_v.append(b * c.weight)
            rows_h.append(b)
            radii.append((len(b) - 1) // 2)
        r = max(radii)
        pad = lambda b: np.pad(b, (r - (len(b) - 1) // 2,) * 2)  # noqa: E731
        return cls(
            f=f,
            taps_v=np.stack([pad(b) for b in rows_v]).astype(np.float32),
            taps_h=np.stack([pad(b) for b in rows_h]).astype(np.float32),
            radii=np.array(radii, dtype=np.int64),
            r=r,
        )

    @property
    def halo(self) -> int:
        """Full-res px of input needed on each side of an output range."""
        return self.r * self.f + math.ceil(1.5 * self.f - 0.5)

    def cells(self, a: int, b: int) -> tuple[int, int]:
        """Inclusive range of blurred cells that bilinear interpolation needs for pixels [a, b)."""
        f = self.f
        lo = math.floor((a + 0.5) / f - 0.5)
        hi = math.floor((b - 1 + 0.5) / f - 0.5) + 1
        return lo, hi

    def source_rows(self, a: int, b: int) -> tuple[int, int]:
        """Global full-res rows [start, stop) whose cells feed the output pixels [a, b)."""
        lo, hi = self.cells(a, b)
        return (lo - self.r) * self.f, (hi + self.r + 1) * self.f

    def interpolation(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For pixels a..b-1: index of the lower cell (relative to cells(a, b)[0]) and the two weights."""
        f = self.f
        y = np.arange(a, b, dtype=np.float64)
        t = (y + 0.5) / f - 0.5
        j0 = np.floor(t)
        w1 = t - j0
        lo, _ = self.cells(a, b)
        return (j0 - lo).astype(np.int64), (1.0 - w1).astype(np.float32), w1.astype(np.float32)


def reflect_index(g: np.ndarray, n: int) -> np.ndarray:
    """Global coordinates → in-image coordinates under the border rule (…cba|abc…xyz|zyx…)."""
    m = np.mod(g, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)
