"""Reading and writing ordinary image files (spec stage S0 and the preview's output).

`read_image` decodes JPEG, PNG, TIFF, WebP, BMP, AVIF, JPEG 2000, PNM, … and returns the array
the film model takes: RGB channel order (never BGR), the file's own bit depth (uint8, uint16 or float32),
EXIF orientation applied, grey kept 2-D, alpha dropped, palettes expanded. Pixel values are the file's sRGB
codes, unchanged. Embedded ICC profiles are not converted (the pixels are taken as sRGB).

`write_image` writes .jpg/.jpeg (quality 95), .png and .tif/.tiff (through tifffile, so 16-bit RGB is
stored as RGB with the right photometric tag).

Colour and grey JPEGs are decoded by libjpeg-turbo through imagecodecs straight into the result array (OpenCV
holds two copies of a decoded image at its peak: 1.8 GB for a 300 MP JPEG instead of 0.9 GB); everything
else, and any JPEG that path declines (CMYK, …), goes through OpenCV.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile

__all__ = ["JPEG_QUALITY", "WRITE_FORMATS", "ImageReadError", "check_writable", "read_image", "write_image"]

#: JPEG quality used by `write_image` (0–100).
JPEG_QUALITY = 95

#: Output extension → the dtypes that format can hold (RGB or grey).
WRITE_FORMATS: dict[str, tuple[str, ...]] = {
    ".jpg": ("uint8",),
    ".jpeg": ("uint8",),
    ".png": ("uint8", "uint16"),
    ".tif": ("uint8", "uint16", "float32"),
    ".tiff": ("uint8", "uint16", "float32"),
}

# OpenCV decode flags: keep 16-bit/float depth, keep grey as one channel, apply EXIF orientation.
# (IMREAD_UNCHANGED would keep the alpha channel but silently ignores the orientation tag.)
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR

# Leading bytes of the formats we can name when a decode fails (for the error message only).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
)


class ImageReadError(ValueError):
    """A file that cannot be decoded as an image; the message is one line naming the file and the problem."""


def _sniff(data: bytes) -> str | None:
    """The format name that `data` starts like, or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    return None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode the image file at `path`.

    Returns an (h, w, 3) RGB array, or (h, w) for a grey file, of dtype uint8 or uint16 (sRGB codes,
    0–255 / 0–65535) or float32 (as stored, normally sRGB-encoded in [0, 1]). EXIF orientation is applied,
    so h and w are those of the upright picture. Alpha is dropped (not composited); palette images are
    expanded to RGB. Raises `ImageReadError` for a missing, empty, unreadable, corrupt or unsupported file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {str(p)!r}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"cannot read image {str(p)!r}: it is a directory") from None
    except OSError as e:
        raise ImageReadError(f"cannot read image {str(p)!r}: {e.strerror or e}") from None
    return decode_image(data, str(p))


#: EXIF orientation → the view of the stored pixels that shows the picture upright.
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a[::-1].swapaxes(0, 1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a[:, ::-1].swapaxes(0, 1),
}


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """A colour or grey JPEG decoded in place into its final array (upright: EXIF orientation applied as a
    view, so the result may be non-contiguous); None for anything this path does not handle."""
    try:
        import imagecodecs
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(io.BytesIO(data)) as im:
            mode, (w, h) = im.mode, im.size
            orientation = im.getexif().get(0x0112, 1)
        if mode not in ("RGB", "L") or orientation not in _ORIENT:
            return None
        out = np.empty((h, w, 3) if mode == "RGB" else (h, w), np.uint8)
        imagecodecs.jpeg8_decode(data, out=out)
    except Exception:  # any doubt: let OpenCV decode it (and report its errors)
        return None
    return _ORIENT[orientation](out)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an image file's bytes (`name` is only for messages); same result and errors as read_image."""
    if data[:3] == b"\xff\xd8\xff":
        image = _decode_jpeg(data)
        if image is not None:
            return image
    # OpenCV would also log its complaint on stderr; ImageReadError already says it in one line
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    if not data:
        raise ImageReadError(f"cannot read image {name!r}: the file is empty")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    except cv2.error as e:  # e.g. an image over OpenCV's pixel limit
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "decoder error"
        raise ImageReadError(f"cannot decode image {name!r}: {msg}") from None
    if image is None:
        kind = _sniff(data)
        why = (f"corrupt, truncated or unsupported {kind} data" if kind else
               "not a recognised image format")
        raise ImageReadError(f"cannot decode image {name!r}: {why}")
    return _to_rgb(image)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's decoded array (BGR/BGRA/grey) → RGB or grey, alpha dropped, contiguous."""
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (1, 2):  # grey, or grey + alpha
            image = image[:, :, 0]
        elif channels == 3:  # in place: a gigapixel decode must not be copied
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
        else:  # BGRA or more: keep the colour channels only
            image = image[:, :, 2::-1]
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)


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


def write_image(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write `array` to `path`, choosing the format from the extension; returns the path written.

    array: (h, w) grey or (h, w, 3) RGB. Allowed dtypes per format are in `WRITE_FORMATS`: .jpg/.jpeg
    uint8 (quality `JPEG_QUALITY`), .png uint8 or uint16, .tif/.tiff uint8, uint16 or float32 (zlib
    compressed). Values are written as they are (sRGB codes for integer data). Parent folders are created;
    the file appears complete or not at all (written beside it, then renamed). Raises ValueError for an
    unsupported extension, dtype or shape.
    """
    p = Path(path)
    ext = p.suffix.lower()
    array = np.asarray(array)
    check_writable(p, array.dtype.name)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape[:2]:
        raise ValueError(
            f"cannot write {str(p)!r}: expected an (h, w) grey or (h, w, 3) RGB image, "
            f"got shape {array.shape}"
        )
    if ext in (".tif", ".tiff"):
        data = _encode_tiff(array)
    else:
        bgr = array if array.ndim == 2 else array[:, :, ::-1]
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
        if not ok:
            raise ValueError(f"cannot write {str(p)!r}: OpenCV could not encode the image as {ext}")
        data = buf.tobytes()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return p


def _encode_tiff(array: np.ndarray) -> bytes:
    """TIFF bytes of a grey or RGB array, zlib-compressed (with the horizontal predictor for integers)."""
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        np.ascontiguousarray(array),
        photometric="rgb" if array.ndim == 3 else "minisblack",
        compression="zlib",
        predictor=array.dtype.kind == "u",
    )
    return buf.getvalue()
