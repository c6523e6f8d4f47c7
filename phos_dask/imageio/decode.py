"""The dispatcher: `decode_image_info` sniffs a file's format, hands it to that format's `Decoder`, then
applies colour management and orientation, the same for all; `decode_image` and `read_image` around it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from phos_dask.imageio.colour import colour_manage
from phos_dask.imageio.decoder import ORIENT, Decoder
from phos_dask.imageio.formats import DEFAULT_MAX_PIXELS, ImageReadError, is_raw, sniff
from phos_dask.imageio.jpeg import JPEG
from phos_dask.imageio.opencv import OPENCV, PNG, WEBP
from phos_dask.imageio.raw import RAW
from phos_dask.imageio.tiff import TiffDecoder
from phos_dask.storage import NotARegularFile, read_local

#: Format (`formats.sniff`'s name, or "RAW" by extension) → its decoder; any other goes to `OPENCV`.
DECODERS: dict[str | None, Decoder] = {
    "RAW": RAW, "JPEG": JPEG, "PNG": PNG, "WebP": WEBP, "TIFF": TiffDecoder(), "BigTIFF": TiffDecoder(),
}
#: Format names reported differently in `info["format"]`.
_REPORTED = {"BigTIFF": "TIFF"}


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode the image file at `path`.

    Returns an (h, w, 3) RGB array, or (h, w) for a grey file, of dtype uint8 or uint16 (sRGB codes,
    0–255 / 0–65535) or float32 (as stored: linear light for TIFFs). EXIF orientation is applied, so h and w
    are those of the upright picture. Alpha is dropped (not composited); palette images are expanded to
    RGB, CMYK converted to RGB; an embedded ICC profile other than sRGB is converted to sRGB (see
    `phos_dask.imageio.colour`). Raises `ImageReadError` for a missing, empty, unreadable, corrupt or
    unsupported file.
    """
    p = Path(path)
    try:
        data = read_local(str(p))
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {str(p)!r}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"cannot read image {str(p)!r}: it is a directory") from None
    except NotARegularFile as e:
        raise ImageReadError(f"cannot read image {str(p)!r}: {e.strerror}") from None
    except OSError as e:
        raise ImageReadError(f"cannot read image {str(p)!r}: {e.strerror or e}") from None
    return decode_image(data, str(p))


def decode_image(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file's bytes (`name` is only for messages); same result and errors as read_image."""
    return decode_image_info(data, name, max_pixels)[0]


def decode_image_info(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an image file's bytes like `decode_image`, and say what was found.

    Refused before decoding (ImageReadError): an image whose header claims more than `max_pixels` px, a
    PNG cut short or with a critical chunk failing its CRC, a JPEG that ends before its end-of-image marker
    (decoders would silently pad it with grey). An animated GIF, PNG (APNG) or WebP gives its first frame.

    Returns (array, info). The array is exactly `decode_image`'s (upright; it may be a non-contiguous view).
    info: ``"format"`` ("JPEG", "PNG", "TIFF" (BigTIFF too), "WebP", "BMP", …, or "unknown"),
    ``"bits"`` (8, 16 or 32: the array's sample size), ``"linear"`` (True for float data, which are linear
    light), ``"icc"`` ("none": no usable profile, taken as sRGB; "srgb": a profile that is sRGB (for float
    data: linear sRGB), pixels untouched; "converted:<profile description>": converted to sRGB).
    """
    if not data:
        raise ImageReadError(f"cannot read image {name!r}: the file is empty")
    kind = "RAW" if is_raw(name) else sniff(data)  # by name first: a DNG is also a TIFF
    decoder = DECODERS.get(kind, OPENCV)
    header = decoder.info(data, name, kind, max_pixels)  # refuses a file before any pixel is allocated
    decoded = decoder.decode(data, name, kind, header, max_pixels)
    pixels, icc = colour_manage(decoded.pixels, decoded.icc, decoded.cmyk)
    image = ORIENT[decoded.orientation](pixels)
    fmt = _REPORTED.get(decoded.fmt, decoded.fmt)
    return image, {"format": fmt, "bits": image.dtype.itemsize * 8, "linear": image.dtype.kind == "f", "icc": icc}
