"""Writing the image files `preview` outputs: `write_image` chooses the format from the extension and encodes
through `phos_dask.encode`, the encoder `export` uses too (JPEG 4:4:4 at quality 92, every file with its ICC
profile: sRGB, or grey with the sRGB tone curve)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from phos_dask import encode
from phos_dask.storage import write_atomic

#: JPEG quality used by `write_image` (1–100): the package's one default (`phos_dask.encode`).
JPEG_QUALITY = encode.JPEG_QUALITY
#: TIFF writing settings (see `phos_dask.encode`).
TIFF_WRITE = encode.TIFF_WRITE

#: Output extension → the dtypes that format can hold (RGB or grey).
WRITE_FORMATS: dict[str, tuple[str, ...]] = {
    ".jpg": ("uint8",),
    ".jpeg": ("uint8",),
    ".png": ("uint8", "uint16"),
    ".tif": ("uint8", "uint16", "float32"),
    ".tiff": ("uint8", "uint16", "float32"),
}


def check_writable(path: str | os.PathLike[str], dtype: str) -> None:
    """Raise ValueError (one line naming the file) unless `path`'s extension can hold `dtype` samples.

    Lets a command refuse an output before spending time on the render; `write_image` checks the same.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in WRITE_FORMATS:
        raise ValueError(
            f"cannot write {str(p)!r}: unsupported extension {p.suffix or '(none)'!r}; "
            f"use one of {', '.join(WRITE_FORMATS)}"
        )
    allowed = WRITE_FORMATS[ext]
    if dtype not in allowed:
        hint = " (float output can only be written as .tif)" if dtype.startswith("float") else ""
        raise ValueError(
            f"cannot write {str(p)!r}: {ext} holds {' or '.join(allowed)} data, got {dtype}{hint}"
        )


def write_image(path: str | os.PathLike[str], array: np.ndarray, quality: int = JPEG_QUALITY) -> Path:
    """Write `array` to `path`, choosing the format from the extension; returns the path written.

    array: (h, w) grey or (h, w, 3) RGB. Allowed dtypes per format are in `WRITE_FORMATS`: .jpg/.jpeg
    uint8 (4:4:4 at `quality`, default `JPEG_QUALITY`), .png uint8 or uint16, .tif/.tiff uint8, uint16 or
    float32 (deflate). Values are written as they are (sRGB codes for integer data, linear light for float),
    with the matching ICC profile; the bytes are those `phos_dask.encode.encode` gives (and `export` writes)
    for the same pixels. Parent folders are created; the file appears complete or not at all (written
    beside it, then renamed). Raises ValueError for an unsupported extension, dtype or shape.
    """
    p = Path(path)
    array = np.asarray(array)
    check_writable(p, array.dtype.name)
    fmt = encode.format_of(p)
    assert fmt is not None  # check_writable knows the extension
    try:
        data = encode.encode(array, fmt, quality=quality)
    except ValueError as e:
        raise ValueError(f"cannot write {str(p)!r}: {e}") from None
    write_atomic(str(p), data)
    return p

