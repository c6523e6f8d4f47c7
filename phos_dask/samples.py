"""Stored samples → sRGB codes for files people read: the conversions `export`, the contact sheet and the
contact-sheet thumbnails share (all exact integer arithmetic or a lookup table, so an export is
reproducible):

* uint8 store → 8-bit: unchanged; → 16-bit: ×257 (0 → 0, 255 → 65535).
* uint16 store → 8-bit: ``(v·255 + 32767) // 65535`` (round half up); → 16-bit: unchanged.
* float16 store (linear light in [0, 1]; NaN and values below 0 count as 0, above 1 as 1) →
  sRGB encode (IEC 61966-2-1) → ``floor(e·N + 0.5)`` with N = 255 or 65535.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import zarr

#: Rows of level 0 converted at a time are chosen so one band holds about this many bytes.
BAND_BYTES = 64 << 20


@cache
def _float16_tables() -> tuple[np.ndarray, np.ndarray]:
    """Every float16 bit pattern (linear light) → its 8-bit and 16-bit sRGB code."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    e = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    e = np.clip(e, 0.0, 1.0)
    return np.floor(e * 255 + 0.5).astype(np.uint8), np.floor(e * 65535 + 0.5).astype(np.uint16)


def to_codes(block: np.ndarray, bits: int) -> np.ndarray:
    """Stored samples (uint8 or uint16 sRGB codes, or float16 linear light) → `bits`-bit sRGB codes
    (8 → uint8, 16 → uint16), same shape, by the conversions in the module docstring."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if block.dtype == np.float16:
        return _float16_tables()[0 if bits == 8 else 1][block.view(np.uint16)]
    if block.dtype == np.uint8:
        return block.copy() if bits == 8 else block.astype(np.uint16) * np.uint16(257)
    if block.dtype == np.uint16:
        if bits == 16:
            return block.copy()
        return ((block.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if block.dtype.kind == "f":  # float32 linear light (not written by `run`, but cheap to allow)
        x = np.clip(np.nan_to_num(block.astype(np.float64), nan=0.0), 0.0, 1.0)
        e = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
        return np.floor(e * ((1 << bits) - 1) + 0.5).astype(np.uint8 if bits == 8 else np.uint16)
    raise ValueError(f"cannot export samples of dtype {block.dtype}")


def image_codes(array: zarr.Array, bits: int) -> np.ndarray:
    """A stored (C, h, w) level as an (h, w, 3) RGB or (h, w) grey array of `bits`-bit codes, read and
    converted in bands of rows so the float or uint16 source never sits in memory whole."""
    c, h, w = array.shape
    out = np.empty((h, w, c) if c > 1 else (h, w), np.uint8 if bits == 8 else np.uint16)
    chunk_rows = max(1, array.chunks[1])
    row_bytes = c * w * array.dtype.itemsize
    rows = chunk_rows * max(1, BAND_BYTES // max(1, row_bytes * chunk_rows))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        codes = to_codes(np.asarray(array[:, y0:y1, :]), bits)
        if c > 1:
            out[y0:y1] = np.moveaxis(codes, 0, -1)
        else:
            out[y0:y1] = codes[0]
    return out
