"""The one encoder of the files the package writes for people: `preview`'s output (`imageio.write_image`) and
`export`'s files. The same pixels and options give the same bytes whichever command wrote them.

Formats (`encode(image, fmt)`; `fmt` is ``jpeg``, ``png`` or ``tiff``; `format_of` maps a file extension):

* ``jpeg``: 8-bit, through Pillow (libjpeg-turbo); quality `JPEG_QUALITY` (92) unless given; no chroma
  subsampling (4:4:4): 4:2:0 smears colour grain and doubles the error (8.8 vs 4.2 codes mean on a grainy
  Portra 400 render).
* ``png``: 8 or 16-bit, through OpenCV (libpng, OpenCV's default fast settings: about as small as zlib
  level 6, four times faster), the profile in an iCCP chunk and EXIF in an eXIf chunk
  (`cv2.imencodeWithMetadata`).
* ``tiff``: 8 or 16-bit or float32, through tifffile: deflate at level 1 (most of level 6's ratio on
  grainy renders, 3× faster) in strips of 64 rows, compressed on every core, with the horizontal predictor
  for integer samples; the profile in tag 34675.

Images are (h, w, 3) RGB or (h, w) grey. Every file carries an ICC profile (`icc_profile`), all from
LittleCMS through `imagecodecs.cms_profile`: its built-in sRGB for colour; for grey a grey profile with
the sRGB tone curve (an RGB profile is not valid on a one-channel image: libpng, for one, rejects it); for
float32 TIFFs, which hold linear light, linear sRGB (sRGB primaries and white, gamma 1) or linear grey.
Each profile's creation date is fixed, so a file's bytes depend only on its pixels and options.

EXIF (JPEG and PNG; `exif`): a block as Pillow's `Image.Exif.tobytes()` gives it (``Exif\\0\\0`` and a TIFF
structure); a JPEG holds at most `MAX_EXIF` bytes of it.
"""

from __future__ import annotations

import io
import os
import struct
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMATS",
    "JPEG_QUALITY",
    "MAX_EXIF",
    "TIFF_WRITE",
    "encode",
    "format_of",
    "grey_icc",
    "icc_profile",
    "srgb_icc",
]

#: Default JPEG quality (1–100) of every JPEG the package writes for people (preview and export).
JPEG_QUALITY = 92
#: Format → the file extensions that name it.
FORMATS: dict[str, tuple[str, ...]] = {"jpeg": (".jpg", ".jpeg"), "png": (".png",), "tiff": (".tif", ".tiff")}
#: Format → the sample dtypes it holds.
DTYPES: dict[str, tuple[str, ...]] = {"jpeg": ("uint8",), "png": ("uint8", "uint16"),
                                      "tiff": ("uint8", "uint16", "float32")}
#: The largest EXIF block a JPEG APP1 segment can hold (65535 minus the length field).
MAX_EXIF = 65533
#: TIFF writing: deflate at level 1 in strips of 64 rows (readable by libtiff, Pillow, OpenCV and tifffile).
TIFF_WRITE: dict[str, Any] = {"compression": "zlib", "compressionargs": {"level": 1}, "rowsperstrip": 64}
#: The creation date written into every profile (ICC header bytes 24–35), so the bytes are reproducible.
_PROFILE_DATE = struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
#: D50, the ICC connection space's white: the grey profiles' media white.
_D50 = (0.3457, 0.3585)
_SRGB_WHITE, _SRGB_PRIMARIES = (0.3127, 0.3290), (0.64, 0.33, 0.30, 0.60, 0.15, 0.06)


def format_of(path: str | os.PathLike[str]) -> str | None:
    """The format (``jpeg``, ``png``, ``tiff``) a file name's extension names, or None."""
    ext = Path(path).suffix.lower()
    return next((fmt for fmt, exts in FORMATS.items() if ext in exts), None)


def _dated(profile: bytes) -> bytes:
    return profile[:24] + _PROFILE_DATE + profile[36:]


@cache
def srgb_icc() -> bytes:
    """LittleCMS's built-in sRGB profile, embedded in colour files."""
    import imagecodecs

    return _dated(imagecodecs.cms_profile("srgb"))


@cache
def grey_icc() -> bytes:
    """A grey profile whose tone curve is sRGB's (a 1024-point table of IEC 61966-2-1's decoding), white
    D50: the grey counterpart of `srgb_icc`, embedded in grey files."""
    import imagecodecs

    t = np.linspace(0.0, 1.0, 1024)
    curve = np.where(t <= 0.04045, t / 12.92, ((t + 0.055) / 1.055) ** 2.4)
    table = np.round(curve * 65535).astype(np.uint16)
    return _dated(imagecodecs.cms_profile("gray", whitepoint=_D50, transferfunction=table))


@cache
def _linear_icc(channels: int) -> bytes:
    import imagecodecs

    if channels == 3:
        return _dated(imagecodecs.cms_profile("rgb", whitepoint=_SRGB_WHITE, primaries=_SRGB_PRIMARIES, gamma=1.0))
    return _dated(imagecodecs.cms_profile("gray", whitepoint=_D50, gamma=1.0))


def icc_profile(channels: int, linear: bool = False) -> bytes:
    """The profile of an image of `channels` channels (3: colour, 1: grey); `linear`: of linear-light
    (float) samples."""
    if linear:
        return _linear_icc(3 if channels == 3 else 1)
    return srgb_icc() if channels == 3 else grey_icc()


def _check(image: np.ndarray, fmt: str) -> np.ndarray:
    """`image` as (h, w) or (h, w, 3), or ValueError."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or 0 in image.shape[:2]:
        raise ValueError(f"expected an (h, w) grey or (h, w, 3) RGB image, got shape {image.shape}")
    if image.dtype.name not in DTYPES[fmt]:
        raise ValueError(f"{fmt} holds {' or '.join(DTYPES[fmt])} data, got {image.dtype}")
    return image


def encode(image: np.ndarray, fmt: str, *, quality: int = JPEG_QUALITY, exif: bytes | None = None) -> bytes:
    """The file bytes of `image` ((h, w, 3) RGB or (h, w) grey) in `fmt` (``jpeg``: uint8; ``png``: uint8 or
    uint16; ``tiff``: uint8, uint16 or float32), with its ICC profile (`icc_profile`) and, for JPEG and PNG,
    the EXIF block `exif` when given. `quality` (1–100) is the JPEG quality. Raises ValueError for an
    unknown format, a shape or dtype the format cannot hold, or a bad quality."""
    image = _check(image, fmt)
    channels = 3 if image.ndim == 3 else 1
    if fmt == "tiff":
        return _tiff(image, icc_profile(channels, linear=image.dtype.kind == "f"))
    icc = icc_profile(channels)
    if fmt == "jpeg":
        return _jpeg(image, icc, int(quality), exif)
    return _png(image, icc, exif)


def _jpeg(image: np.ndarray, icc: bytes, quality: int, exif: bytes | None) -> bytes:
    from PIL import Image

    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    extra: dict[str, Any] = {"icc_profile": icc}
    if exif and len(exif) <= MAX_EXIF:
        extra["exif"] = exif
    pil = Image.fromarray(np.ascontiguousarray(image), "RGB" if image.ndim == 3 else "L")
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=quality, subsampling=0, **extra)
    return buf.getvalue()


def _png(image: np.ndarray, icc: bytes, exif: bytes | None) -> bytes:
    import cv2

    kinds, blocks = [cv2.IMAGE_METADATA_ICCP], [np.frombuffer(icc, np.uint8)]
    if exif:  # an eXIf chunk holds the TIFF structure itself, without JPEG's "Exif\0\0" prefix
        kinds.append(cv2.IMAGE_METADATA_EXIF)
        blocks.append(np.frombuffer(exif.removeprefix(b"Exif\x00\x00"), np.uint8))
    pixels = np.ascontiguousarray(image if image.ndim == 2 else image[:, :, ::-1])  # OpenCV takes BGR
    ok, buf = cv2.imencodeWithMetadata(".png", pixels, kinds, blocks, [])
    if not ok:
        raise ValueError("OpenCV could not encode the image as PNG")
    return buf.tobytes()


def _tiff(image: np.ndarray, icc: bytes) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        np.ascontiguousarray(image),
        photometric="rgb" if image.ndim == 3 else "minisblack",
        predictor=image.dtype.kind == "u",
        iccprofile=icc,
        maxworkers=os.cpu_count() or 1,
        **TIFF_WRITE,
    )
    return buf.getvalue()
