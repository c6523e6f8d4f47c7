"""Contact-sheet thumbnails: an input and its rendered result, each fitted into a square of THUMB px,
stored together as one small JPEG (input left, result right, same size). Made by the task that holds both
images, so the client never decodes an input to show it."""

from __future__ import annotations

import cv2
import numpy as np

#: Side of a thumbnail's square, px.
THUMB = 256
QUALITY = 88


def fit(image: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """(h, w[, c]) → fitted into thumb×thumb keeping the aspect ratio (area averaging when shrinking)."""
    h, w = image.shape[:2]
    s = min(thumb / h, thumb / w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interp)


def rgb8(image: np.ndarray) -> np.ndarray:
    """Decoded input samples (uint8/uint16 codes, float sRGB in [0, 1]; grey, RGB or RGBA) → (h, w, 3)
    uint8."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.floor(np.clip(np.nan_to_num(image), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def source_thumb(image: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """A decoded input (h, w[, c]) → its (h', w', 3) uint8 thumbnail. Shrinks first (cheap on big inputs)."""
    return rgb8(fit(image, thumb))


def result_thumb(level_chw: np.ndarray, thumb: int = THUMB) -> np.ndarray:
    """A stored pyramid level (C, h, w) in the store's dtype → its (h', w', 3) uint8 thumbnail."""
    from phos_dask.export import to_codes

    codes = to_codes(np.asarray(level_chw), 8)
    image = codes[0] if codes.shape[0] == 1 else np.moveaxis(codes, 0, -1)
    return rgb8(fit(image, thumb))


def encode_pair(source: np.ndarray | None, result: np.ndarray) -> bytes:
    """One JPEG of [source | result] (a source that is missing is stored as a grey square)."""
    if source is None or source.shape != result.shape:
        source = np.full_like(result, 96) if source is None else cv2.resize(source, result.shape[1::-1])
    pair = np.concatenate([source, result], axis=1)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pair, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert ok
    return data.tobytes()


def decode_pair(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(source, result) RGB uint8 thumbnails from `encode_pair`'s bytes, or None when they are unreadable."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.shape[1] % 2:
        return None
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    half = pixels.shape[1] // 2
    return pixels[:, :half], pixels[:, half:]
