"""Working-size resampling (spec §1): Lanczos-4 when enlarging, area averaging when reducing."""

from __future__ import annotations

import math

import numpy as np


def working_shape(shape: tuple[int, int], n: int) -> tuple[int, int]:
    """(rows, cols) after resampling so the short side is n px; long side floor(long·n/short), made even."""
    h, w = shape
    short, long_ = min(h, w), max(h, w)
    new_long = math.floor(long_ * n / short)
    if new_long % 2:
        new_long += 1
    return (n, new_long) if h <= w else (new_long, n)


def resample_to(image: np.ndarray, n: int) -> np.ndarray:
    """The image with its short side resampled to n px (dtype kept)."""
    import cv2

    h, w = image.shape[:2]
    nh, nw = working_shape((h, w), n)
    if (nh, nw) == (h, w):
        return image
    interp = cv2.INTER_LANCZOS4 if nh * nw > h * w else cv2.INTER_AREA
    out = cv2.resize(image, (nw, nh), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out
