"""Point-spread functions of the neighbourhood stages, at scale s (lengths in px at s = 1 are × s).

A kernel component is `weight · g(y) · g(x)` with `g(t) = exp(-t²/2σ²)` for |t| ≤ radius: a truncated,
separable Gaussian on a square support. Bloom's exponential tail is not separable; it is represented by a
least-squares mixture of such Gaussians (its error is checked in the tests against the exact PSF).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

BLOOM_SIGMA = 19.9885  # px at s = 1
BLOOM_KAPPA = 29.9951  # px at s = 1
BLOOM_RADIUS = math.floor(4 * BLOOM_SIGMA)  # 79 px at s = 1
BLOOM_CORE = 0.95
BLOOM_TAIL = 0.05
#: (relative σ, radius at s = 1) of the three halation Gaussians: σ0, 2σ0, 4σ0 on sides 61, 121, 151.
HALATION_PARTS = ((1.0, 30, 0.5), (2.0, 60, 0.3), (4.0, 75, 0.2))
HALATION_RADIUS = 75
#: Tail Gaussians as multiples of κ, fitted by least squares.
_TAIL_SIGMAS = (0.3, 1.0, 2.5)


def scaled_radius(radius_px: float, s: float) -> int:
    """A radius given in px at s = 1, at scale s (rounded up, at least 1)."""
    return max(1, math.ceil(radius_px * s - 1e-9))


@dataclass(frozen=True)
class Component:
    weight: float
    sigma: float  # px
    radius: int  # px

    def taps(self) -> np.ndarray:
        t = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        return np.exp(-(t**2) / (2 * self.sigma**2))

    def kernel2d(self) -> np.ndarray:
        g = self.taps()
        return self.weight * np.outer(g, g)


def _square_radius_grid(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    return np.hypot(x, y)


@cache
def bloom_psf(s: float) -> np.ndarray:
    """The exact bloom PSF K at scale s on its square support (side 2R+1), normalised to sum 1."""
    R = scaled_radius(BLOOM_RADIUS, s)
    r = _square_radius_grid(R)
    K = BLOOM_CORE * np.exp(-(r**2) / (2 * (BLOOM_SIGMA * s) ** 2)) + BLOOM_TAIL * np.exp(
        -r / (BLOOM_KAPPA * s)
    )
    return K / K.sum()


@cache
def bloom_components(s: float) -> tuple[Component, ...]:
    """Bloom PSF as separable components: the exact Gaussian core plus a fitted tail mixture."""
    R = scaled_radius(BLOOM_RADIUS, s)
    r = _square_radius_grid(R)
    sb, kb = BLOOM_SIGMA * s, BLOOM_KAPPA * s
    core = BLOOM_CORE * np.exp(-(r**2) / (2 * sb**2))
    tail = BLOOM_TAIL * np.exp(-r / kb)
    total = core.sum() + tail.sum()
    sigmas = [m * kb for m in _TAIL_SIGMAS]
    A = np.stack([np.exp(-(r**2) / (2 * sg**2)).ravel() for sg in sigmas], axis=1)
    w, *_ = np.linalg.lstsq(A, tail.ravel() / total, rcond=None)
    comps = [Component(BLOOM_CORE / total, sb, R)]
    comps += [Component(float(wi), sg, R) for wi, sg in zip(w, sigmas, strict=True)]
    return tuple(comps)


def halation_components(psf_radius: float, s: float) -> tuple[Component, ...]:
    """H = 0.5·G1 + 0.3·G2 + 0.2·G3, each a truncated Gaussian normalised on its own square support."""
    sigma0 = 0.2 * psf_radius * s
    comps = []
    for rel, radius, share in HALATION_PARTS:
        c = Component(1.0, rel * sigma0, scaled_radius(radius, s))
        comps.append(Component(share / c.taps().sum() ** 2, c.sigma, c.radius))
    return tuple(comps)


def halation_kernel(psf_radius: float, s: float) -> np.ndarray:
    """The exact 2D halation kernel (sum of the three parts) on the largest support."""
    comps = halation_components(psf_radius, s)
    R = max(c.radius for c in comps)
    out = np.zeros((2 * R + 1, 2 * R + 1))
    for c in comps:
        o = R - c.radius
        out[o : o + 2 * c.radius + 1, o : o + 2 * c.radius + 1] += c.kernel2d()
    return out


def grain_radius(grain_size: float, s: float) -> int:
    """Radius of the grain correlation kernel: side clamp(2·ceil(2σ)+1, 3, 15) px, the bounds × s."""
    sigma = grain_size * s
    return int(min(max(math.ceil(2 * sigma - 1e-9), 1), max(7, math.ceil(7 * s))))


def grain_taps(grain_size: float, s: float) -> np.ndarray:
    """1D grain kernel, normalised to sum 1 (the 2D kernel is its outer product)."""
    c = Component(1.0, grain_size * s, grain_radius(grain_size, s))
    g = c.taps()
    return g / g.sum()
