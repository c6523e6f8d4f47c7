"""Reading and writing ordinary image files (spec stage S0 and the preview's output).

`read_image` and `decode_image` decode JPEG, PNG, TIFF/BigTIFF, WebP, BMP, AVIF, JPEG 2000, PNM, … and return
the array the film model takes: RGB channel order (never BGR), the file's own bit depth (uint8, uint16 or
float32), EXIF orientation applied, grey kept 2-D, alpha dropped (not composited), palettes expanded, CMYK
converted to RGB, and the pixels in sRGB: an embedded ICC profile other than sRGB is converted first.
`decode_image_info` returns the same array and what the decoder learned (format, bit depth, linear light,
what became of the ICC profile). `open_region_reader` reads windows of a tiled TIFF, decoding only the tiles
a window touches, so a tile task never holds the whole image.

Decoders:

* JPEG: colour and grey are decoded by libjpeg-turbo through imagecodecs straight into the result array
  (OpenCV holds two copies of a decoded image at its peak: 1.8 GB for a 300 MP JPEG instead of 0.9 GB). CMYK
  (and YCCK) JPEGs go through Pillow, which undoes Adobe's inverted CMYK; anything else through OpenCV.
* TIFF and BigTIFF: tifffile, with imagecodecs' codecs (deflate, LZW, zstd, JPEG, WebP, …), strips or
  tiles, contiguous or planar samples. The photometric interpretation is applied here: min-is-white
  inverted, palettes expanded (to uint8 when the colour map holds 8-bit values, else uint16), CMYK converted,
  1–7-bit samples scaled to 0–255 and 9–15-bit ones to 0–65535, float16/float64 made float32. A TIFF that
  tifffile cannot read (old-style JPEG, subsampled YCbCr, …) goes to OpenCV (libtiff).
* Everything else (PNG, WebP, BMP, …): OpenCV, which applies EXIF orientation itself. The ICC profile comes
  from Pillow's reading of the header (WebP's ICCP chunk is found here: Pillow's WebP reader would set up a
  whole decoder); a PNG's IHDR says whether it is grey + alpha, which OpenCV would otherwise replicate into
  three channels, so such a PNG is decoded as grey.

Colour management. The profile comes from the file (JPEG APP2, PNG iCCP, WebP ICCP, TIFF tag 34675) and is
applied with LittleCMS 2 through imagecodecs' `cms_transform`: the library Pillow's ImageCms wraps, but it
works on NumPy arrays of 8-bit, 16-bit and float samples alike (ImageCms has no 16-bit RGB mode), so a 16-bit
file stays 16-bit through the conversion. The rules:

* Target: LittleCMS's built-in sRGB for integer data. Float data are linear light (issue 4: float TIFFs),
  so their target is linear sRGB (sRGB primaries and white, gamma 1); a float TIFF tagged with the ordinary
  (encoded) sRGB profile is therefore linearised, as its tag says it should be.
* Whether a profile already is sRGB is decided by what it does, not by its name: LittleCMS maps a 9×9×9 grid
  (grey: a 256-step ramp) from the profile to the target in float, and a profile moving no value by more
  than 2/255 counts as sRGB (variants of sRGB pass: icc-profiles-free's sRGB.icc differs from LittleCMS's
  by 1.4/255 at most; a "linear sRGB" does not). Such pixels are left bit for bit as decoded:
  ``info["icc"] == "srgb"``.
* Anything else is converted, rendering intent perceptual (for matrix/TRC profiles such as Adobe RGB,
  ProPhoto or Display P3 that is the same as relative colorimetric); out-of-gamut colours are clipped at 0
  and at the top of the range (float: at 0 only, light above 1 is kept). 8-bit RGB uses LittleCMS's
  optimised 8-bit transform (within one code of an exact float evaluation). 16-bit RGB uses the unoptimised
  16-bit pipeline (the optimised one resamples onto a 3-D table that errs by thousands of codes near the
  gamut edge): exact, but about 0.2 µs a pixel, ~4 s for 24 MP. Grey data go through a 256- or
  65536-entry table that LittleCMS fills; CMYK data through the CMYK profile when there is one (8-bit:
  the optimised transform, as Pillow's ImageCms does; 16-bit: unoptimised, exact).
* Limits: a profile of another colour space than the pixels (an RGB profile on a grey image), or one that
  cannot be parsed, is ignored (``"none"``); Lab and other colour spaces are not handled. Untagged files are
  taken as sRGB: PNG gAMA/cHRM chunks without iCCP, and EXIF's "Adobe RGB" InteropIndex (R03) without a
  profile, are not read. Untagged CMYK uses Pillow's naive formula (R = (1 − C)(1 − K), …).

`write_image` writes .jpg/.jpeg, .png and .tif/.tiff through `phos_dask.encode`, the encoder `export` uses
too: JPEG 4:4:4 at quality 92, every file with its ICC profile (sRGB, or grey with the sRGB tone curve).

Nothing here changes process-wide state: Pillow's `MAX_IMAGE_PIXELS`, OpenCV's environment and log level
are left as the caller set them. The pixel limit that applies is this module's own (`max_pixels`, checked
from the header before anything is decoded); Pillow reads headers through its format plugins directly, so
its global limit neither refuses nor warns about an image this module has accepted. OpenCV, which decodes
PNG, BMP, GIF, … here, keeps its own limit of 2**30 px unless the process sets OPENCV_IO_MAX_IMAGE_PIXELS
before cv2 is loaded (`python -m phos_dask` and the worker processes of its local clusters do).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageCms

from phos_dask import encode
from phos_dask.errors import PhosError, one_line
from phos_dask.headers import HeaderError, from_bytes, read_header
from phos_dask.storage import NotARegularFile, read_local, write_atomic

__all__ = [
    "JPEG_QUALITY",
    "WRITE_FORMATS",
    "ImageReadError",
    "RegionReader",
    "check_writable",
    "decode_image",
    "decode_image_info",
    "open_region_reader",
    "read_image",
    "write_image",
]

#: JPEG quality used by `write_image` (1–100): the package's one default (`phos_dask.encode`).
JPEG_QUALITY = encode.JPEG_QUALITY

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

# Leading bytes of the formats we can name (for messages and `decode_image_info`).
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
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"#?RADIANCE", "HDR"),
    (b"#?RGBE", "HDR"),
    (b"v/1\x01", "EXR"),
    (b"PF\n", "PFM"),
    (b"Pf\n", "PFM"),
)

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

#: LittleCMS rendering intent (0 perceptual, 1 relative colorimetric, 2 saturation, 3 absolute).
_INTENT = 0
#: cmsFLAGS_NOOPTIMIZE: evaluate the full pipeline for each pixel (exact 16-bit transforms).
_CMS_NOOPTIMIZE = 0x0100
#: A profile that moves no probe value by more than this (0–1 scale) counts as sRGB.
_SRGB_TOLERANCE = 2 / 255
#: TIFF compression codes of the JPEG flavours (their decoder delivers RGB from YCbCr, subsampled or not).
_JPEG_COMPRESSIONS = (6, 7, 33007, 34892)
#: Samples per chunk for the in-place colour conversions (bounds the temporary memory).
_CHUNK_SAMPLES = 1 << 22


class ImageReadError(PhosError, ValueError):
    """A file that cannot be decoded as an image; the message is one line naming the file and the problem."""


#: Largest image decoded by default (px, width × height): 1 gigapixel is 3 GB as 8-bit RGB and about 50 GB
#: of model working memory if rendered whole. Checked from the header, before any pixel is allocated.
DEFAULT_MAX_PIXELS = 1_000_000_000


def check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Raise ImageReadError when a width × height image is over `max_pixels` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"image {name!r} is {width}x{height} px ({width * height / 1e9:.2f} gigapixels), over the limit "
            f"of {max_pixels} px (--max-pixels); not decoded"
        )


_PNG_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


def _png_problem(data: bytes) -> str | None:
    """What is structurally wrong with a PNG (a chunk cut short, no IEND, a critical chunk failing its CRC),
    or None. libpng would find the same, but print it on stderr first."""
    pos = 8
    while True:
        if pos + 12 > len(data):
            return "truncated PNG data (the file ends before the IEND chunk)"
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return f"truncated PNG data (the file ends inside a {kind.decode('latin-1')!r} chunk)"
        if kind in _PNG_CRITICAL:
            crc = int.from_bytes(data[end - 4 : end], "big")
            if zlib.crc32(data[pos + 4 : end - 4]) & 0xFFFFFFFF != crc:
                return f"corrupt PNG data (the {kind.decode()} chunk at byte {pos} fails its CRC check)"
        if kind == b"IEND":
            return None
        pos = end


#: PNG chunks OpenCV's decoder is given: what the pixels need. Colour management (iCCP) is read from the
#: original bytes by this module; text, time, EXIF and animation chunks mean nothing to the pixels, and a
#: damaged one only makes libpng print a warning on the terminal.
_PNG_PIXEL_CHUNKS = (*_PNG_CRITICAL, b"tRNS")


def _png_for_decoder(data: bytes) -> bytes:
    """The PNG with only the chunks its pixels need (the same bytes when there is nothing else); call only
    on data that passed `_png_problem`."""
    parts, pos, dropped = [data[:8]], 8, False
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] in _PNG_PIXEL_CHUNKS:
            parts.append(data[pos:end])
        else:
            dropped = True
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos = end
    return b"".join(parts) if dropped else data


def _jpeg_problem(data: bytes) -> str | None:
    """Whether a JPEG stops before its end-of-image marker (libjpeg-turbo decodes what there is and pads
    the rest with grey, silently). Walks the marker segments and the entropy-coded scans of the primary
    image; whatever follows its EOI (a phone's appended video, an MPF second image) is not looked at."""
    n, pos = len(data), 2
    while pos < n:
        if data[pos] != 0xFF:
            return "corrupt JPEG data (a marker was expected)"
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if pos + 2 > n:
            break
        pos += int.from_bytes(data[pos : pos + 2], "big")
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data: 0xFF only as FF00 (a data byte) or FFD0–FFD7 (restart markers)
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return "truncated JPEG data (the file ends before the end-of-image marker)"
            nxt = data[pos + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                pos += 2
                continue
            break
    return "truncated JPEG data (the file ends before the end-of-image marker)"


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first chunk (VP8X canvas, VP8 key frame or VP8L header), or None."""
    fourcc = data[12:16]
    if fourcc == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if fourcc == b"VP8 " and len(data) >= 30:
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if fourcc == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _sniff(data: bytes) -> str | None:
    """The format name that `data` starts like, or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PNM"
    return None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode the image file at `path`.

    Returns an (h, w, 3) RGB array, or (h, w) for a grey file, of dtype uint8 or uint16 (sRGB codes,
    0–255 / 0–65535) or float32 (as stored: linear light for TIFFs). EXIF orientation is applied, so h and w
    are those of the upright picture. Alpha is dropped (not composited); palette images are expanded to
    RGB, CMYK converted to RGB; an embedded ICC profile other than sRGB is converted to sRGB (see the module
    doc). Raises `ImageReadError` for a missing, empty, unreadable, corrupt or unsupported file.
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


#: Camera RAW files, developed by LibRaw (the optional `raw` extra: rawpy) to 16-bit sRGB.
RAW_EXTENSIONS = frozenset({
    ".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef",
    ".srw", ".3fr", ".erf", ".kdc", ".dcr", ".mrw", ".x3f", ".iiq", ".raw",
})


def _develop_raw(data: bytes, name: str, max_pixels: int | None) -> np.ndarray:
    """A camera RAW file developed by LibRaw: camera white balance, no auto-brightening, sRGB primaries and
    the sRGB tone curve, 16 bits, its orientation applied."""
    try:
        import rawpy
    except ImportError:
        raise ImageReadError(f"cannot read RAW file {name!r}: install the raw extra (pip install "
                             "'phos_dask[raw]')") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            check_pixels(name, raw.sizes.width, raw.sizes.height, max_pixels)
            return raw.postprocess(output_bps=16, use_camera_wb=True, no_auto_bright=True,
                                   output_color=rawpy.ColorSpace.sRGB, gamma=(2.4, 12.92))
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"cannot decode RAW file {name!r}: {one_line(e, 200)}") from None


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
    if os.path.splitext(name)[1].lower() in RAW_EXTENSIONS:  # before sniffing: a DNG is also a TIFF
        image = _develop_raw(data, name, max_pixels)
        return image, {"format": "RAW", "bits": 16, "linear": False, "icc": "none"}
    try:  # the size from the header alone, for every format, before any decoder sees the data
        sized = read_header(from_bytes(data), name)
    except HeaderError as e:
        raise ImageReadError(f"cannot decode image {name!r}: {e.reason}") from None
    check_pixels(name, sized.width, sized.height, max_pixels)
    kind = _sniff(data)
    decoded: _Decoded | None = None
    header: _Header | None = None
    tiff_problem = ""
    problem = _png_problem(data) if kind == "PNG" else _jpeg_problem(data) if kind == "JPEG" else None
    if problem:
        raise ImageReadError(f"cannot decode image {name!r}: {problem}")
    if kind in ("TIFF", "BigTIFF"):
        try:
            decoded = _decode_tiff(data, name, max_pixels)
        except ImageReadError:
            raise
        except Exception as e:  # let OpenCV (libtiff) try; say what tifffile said if it fails too
            tiff_problem = f" ({one_line(e, 200)})"
    elif kind == "WebP":  # Pillow's WebP reader sets up a whole decoder (and canvas) just to open a file
        size = _webp_size(data)
        if size is not None:
            check_pixels(name, *size, max_pixels)
        header = _Header("WEBP", "", (0, 0), 1, _webp_icc(data))
    else:
        header = _pil_header(data, exif=kind == "JPEG")
        if header is not None:
            check_pixels(name, *header.size, max_pixels)
        if kind == "JPEG" and header is not None:
            decoded = _decode_jpeg(data, header)
    if decoded is None:
        if kind == "PNG":  # IHDR colour type 4 (Pillow reports a 16-bit one as RGBA)
            grey_alpha = len(data) > 25 and data[25] == 4
        else:
            grey_alpha = header is not None and header.mode in ("LA", "La")
        pixels = _decode_opencv(_png_for_decoder(data) if kind == "PNG" else data, name, kind, grey_alpha,
                                tiff_problem)
        fmt = kind or (header.format if header is not None and header.format else "unknown")
        decoded = _Decoded(pixels, fmt, header.icc if header is not None else None)
    pixels, icc = _colour_manage(decoded.pixels, decoded.icc, decoded.cmyk)
    image = _ORIENT[decoded.orientation](pixels)
    fmt = "TIFF" if decoded.fmt == "BigTIFF" else decoded.fmt
    info = {"format": fmt, "bits": image.dtype.itemsize * 8, "linear": image.dtype.kind == "f", "icc": icc}
    return image, info


@dataclass
class _Header:
    """What Pillow reads from a file's header without decoding the pixels."""

    format: str | None
    mode: str
    size: tuple[int, int]
    orientation: int
    icc: bytes | None


@dataclass
class _Decoded:
    """A decoder's result before colour management and orientation."""

    pixels: np.ndarray  # (h, w) grey, (h, w, 3) RGB, or (h, w, 4) CMYK ink amounts; as stored
    fmt: str
    icc: bytes | None = None
    orientation: int = 1  # EXIF/TIFF orientation still to apply (1: none, or the decoder applied it)
    cmyk: bool = False


#: Our format names → Pillow's plugin module and image class, for `pillow_open`.
_PILLOW_CLASSES = {
    "JPEG": ("JpegImagePlugin", "JpegImageFile"),
    "PNG": ("PngImagePlugin", "PngImageFile"),
    "TIFF": ("TiffImagePlugin", "TiffImageFile"),
    "BigTIFF": ("TiffImagePlugin", "TiffImageFile"),
    "GIF": ("GifImagePlugin", "GifImageFile"),
    "BMP": ("BmpImagePlugin", "BmpImageFile"),
    "WebP": ("WebPImagePlugin", "WebPImageFile"),
    "PNM": ("PpmImagePlugin", "PpmImageFile"),
    "PFM": ("PpmImagePlugin", "PpmImageFile"),
    "JPEG 2000": ("Jpeg2KImagePlugin", "Jpeg2KImageFile"),
}


def pillow_open(data: bytes) -> Image.Image:
    """Pillow's (lazy) image of a file's bytes, opened by the plugin of the format the bytes start like,
    without `PIL.Image.open`'s check against the process-wide `Image.MAX_IMAGE_PIXELS`: callers have checked
    the size from the header against their own limit. Other formats go through `Image.open` (and its
    limit). Raises what Pillow raises for data it cannot read."""
    import importlib

    where = _PILLOW_CLASSES.get(_sniff(data) or "")
    if where is None:
        return Image.open(io.BytesIO(data))
    plugin = importlib.import_module(f"PIL.{where[0]}")
    return getattr(plugin, where[1])(io.BytesIO(data))


def _pil_header(data: bytes, exif: bool) -> _Header | None:
    """Pillow's reading of the header (format, mode, size, orientation if `exif`, ICC profile), or None.

    Only JPEG's EXIF is looked at: for a PNG Pillow may decode the whole image to find an eXIf chunk (OpenCV
    applies the orientation of the other formats itself).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the decoder's error, if any, says more
            im = pillow_open(data)
            with im:
                orientation = im.getexif().get(0x0112, 1) if exif else 1
                return _Header(im.format, im.mode, im.size, orientation, im.info.get("icc_profile") or None)
    except Exception:
        return None


def _webp_icc(data: bytes) -> bytes | None:
    """The ICCP chunk of a WebP file (RIFF chunks: fourcc, little-endian size, data padded to even), or None."""
    pos, end = 12, min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while pos + 8 <= end:
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc == b"ICCP":
            return data[pos + 8 : pos + 8 + size] or None
        if fourcc in (b"VP8 ", b"VP8L", b"ANIM"):  # the profile comes before the image data
            return None
        pos += 8 + size + (size & 1)
    return None


def _decode_jpeg(data: bytes, header: _Header) -> _Decoded | None:
    """A colour or grey JPEG decoded in place into its final array (orientation still to apply), or a CMYK
    one decoded by Pillow (ink amounts, Adobe's inversion undone); None for anything else."""
    if header.orientation not in _ORIENT:
        return None
    w, h = header.size
    try:
        if header.mode in ("RGB", "L"):
            out = np.empty((h, w, 3) if header.mode == "RGB" else (h, w), np.uint8)
            imagecodecs.jpeg8_decode(data, out=out)
            return _Decoded(out, "JPEG", header.icc, header.orientation)
        if header.mode == "CMYK":
            with pillow_open(data) as im:
                ink = np.array(im)
            return _Decoded(ink, "JPEG", header.icc, header.orientation, cmyk=True)
    except Exception:  # any doubt: let OpenCV decode it (and report its errors)
        return None
    return None


def _decode_opencv(data: bytes, name: str, kind: str | None, grey_alpha: bool, detail: str = "") -> np.ndarray:
    """OpenCV's decode (orientation applied) as RGB or grey; grey + alpha read as grey. (OpenCV may also log
    its complaint about a bad file on stderr, at the log level the process chose; `python -m phos_dask` and
    its workers silence it, since the ImageReadError says it in one line.)"""
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE if grey_alpha else _DECODE_FLAGS
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:  # e.g. an image over OpenCV's pixel limit
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "decoder error"
        if "CV_IO_MAX_IMAGE_PIXELS" in msg:
            msg = ("over OpenCV's own pixel limit (2**30 px unless OPENCV_IO_MAX_IMAGE_PIXELS was set in the "
                   "environment before cv2 was loaded)")
        raise ImageReadError(f"cannot decode image {name!r}: {msg}") from None
    if image is None:
        why = (f"corrupt, truncated or unsupported {kind} data{detail}" if kind else
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


# --- TIFF -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TiffLayout:
    """How a TIFF page's samples become the model's pixels (shared by whole-file and region reads)."""

    kind: str  # "grey", "grey-inverted" (min-is-white), "rgb", "palette" or "cmyk"
    dtype: np.dtype  # the samples' dtype as tifffile decodes them
    bits: int  # bits per sample as stored
    colormap: np.ndarray | None  # (3, 2**bits) uint16, for palettes

    @classmethod
    def of(cls, page: tifffile.TiffPage) -> _TiffLayout:
        """The layout of `page`; ValueError for what this decoder does not handle."""
        if page.dtype is None:
            raise ValueError(f"unsupported sample format {page.sampleformat}, {page.bitspersample}-bit")
        dtype = np.dtype(page.dtype)
        if dtype.kind not in "buf" or (dtype.kind == "u" and dtype.itemsize > 2):
            raise ValueError(f"unsupported sample type {dtype}")
        if page.imagedepth > 1:
            raise ValueError("volumetric image")
        photometric, samples = int(page.photometric), int(page.samplesperpixel)
        colormap = None
        if photometric in (0, 1):
            kind = "grey-inverted" if photometric == 0 else "grey"
        elif photometric == 2 and samples >= 3:
            kind = "rgb"
        elif photometric == 6 and samples >= 3 and page.compression in _JPEG_COMPRESSIONS:
            kind = "rgb"  # JPEG-compressed YCbCr: the JPEG decoder delivers RGB
        elif photometric == 3 and samples == 1 and page.colormap is not None and dtype.kind != "f":
            kind, colormap = "palette", np.asarray(page.colormap)
        elif photometric == 5 and samples >= 4 and page.tags.valueof(332, 1) == 1:  # InkSet CMYK
            kind = "cmyk"
        else:
            raise ValueError(f"unsupported photometric interpretation {photometric} with {samples} samples")
        return cls(kind, dtype, int(page.bitspersample), colormap)

    @property
    def out_dtype(self) -> np.dtype:
        """The dtype `finish` returns."""
        if self.kind == "palette":
            return np.dtype(np.uint8 if self._colormap8 else np.uint16)
        if self.dtype.kind == "f":
            return np.dtype(np.float32)
        return np.dtype(np.uint8 if self.dtype.kind == "b" or self.dtype.itemsize == 1 else np.uint16)

    @property
    def channels(self) -> int:
        """1 for grey, 3 for colour."""
        return 1 if self.kind.startswith("grey") else 3

    @property
    def _colormap8(self) -> bool:
        return self.colormap is not None and not np.any(self.colormap % 257)

    def finish(self, samples: np.ndarray) -> tuple[np.ndarray, bool]:
        """(h, w, s) decoded samples → (pixels, is_cmyk): grey (h, w), RGB (h, w, 3) or CMYK ink (h, w, 4)."""
        if self.kind == "palette":
            index = samples[..., 0]
            table = (self.colormap // 257).astype(np.uint8) if self._colormap8 else self.colormap.astype(np.uint16)
            return np.ascontiguousarray(table.T)[index.astype(np.intp, copy=False)], False
        take = {"grey": 1, "grey-inverted": 1, "rgb": 3, "cmyk": 4}[self.kind]
        a = samples[..., 0] if take == 1 else samples[..., :take]
        if a.dtype.kind == "b":
            a = a.view(np.uint8) * np.uint8(255)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)
        elif self.bits not in (8, 16):  # 1–7 or 9–15 significant bits: stretch to the container's range
            top, full = (1 << self.bits) - 1, np.iinfo(a.dtype).max
            ramp = np.minimum(np.arange(full + 1), top)
            a = np.round(ramp * (full / top)).astype(a.dtype)[a]
        a = np.ascontiguousarray(a)
        if self.kind == "grey-inverted":
            if a.dtype.kind == "f":
                np.subtract(1, a, out=a)
            else:
                np.subtract(np.iinfo(a.dtype).max, a, out=a)
        return a, self.kind == "cmyk"


def _tiff_icc(page: tifffile.TiffPage) -> bytes | None:
    """The page's embedded ICC profile (tag 34675), or None."""
    tag = page.tags.get(34675)
    value = tag.value if tag is not None else None
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def _samples_last(raw: np.ndarray) -> np.ndarray:
    """tifffile's normalised (separate samples, depth, h, w, contiguous samples) array → (h, w, samples)."""
    if raw.shape[0] == 1:
        return raw[0, 0]
    return np.moveaxis(raw[:, 0, :, :, 0], 0, -1)


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs its complaints about a damaged file as warnings; the ImageReadError says it instead."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _decode_tiff(data: bytes, name: str, max_pixels: int | None) -> _Decoded:
    """The first page of a TIFF or BigTIFF through tifffile; raises for anything it cannot read
    (ImageReadError, not to be retried with another decoder, for a size over `max_pixels` or a compression
    no TIFF reader knows)."""
    with _quiet_tifffile(), tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = tf.pages.first
        check_pixels(name, int(page.imagewidth), int(page.imagelength), max_pixels)
        try:
            tifffile.COMPRESSION(page.compression)
        except ValueError:
            raise ImageReadError(f"cannot decode image {name!r}: unsupported TIFF compression "
                                 f"{int(page.compression)}") from None
        layout = _TiffLayout.of(page)
        orientation = int(page.tags.valueof(274, 1))
        icc = _tiff_icc(page)
        try:
            raw = page.asarray(squeeze=False)
        except Exception as e:  # damaged data: no other decoder may fill it in
            raise ImageReadError(f"cannot decode image {name!r}: damaged TIFF data ({one_line(e, 200)})") from None
    pixels, cmyk = layout.finish(_samples_last(raw))
    del raw
    return _Decoded(pixels, "TIFF", icc, orientation if orientation in _ORIENT else 1, cmyk)


# --- colour management -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """An embedded ICC profile that LittleCMS accepted."""

    data: bytes
    space: str  # ICC colour space signature, stripped: "RGB", "GRAY", "CMYK", …
    description: str


@functools.lru_cache(maxsize=16)
def _profile(icc: bytes) -> _Profile | None:
    """The parsed profile, or None when LittleCMS cannot read it."""
    try:
        p = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile
        space = p.xcolor_space.strip()
        description = " ".join((p.profile_description or "").split()) or "unnamed profile"
    except Exception:
        return None
    return _Profile(icc, space, description)


@functools.cache
def _target_profile(linear: bool) -> bytes:
    """LittleCMS's sRGB, or linear sRGB (same primaries and white, gamma 1) for linear-light data."""
    if linear:
        return imagecodecs.cms_profile(
            "rgb", whitepoint=[0.3127, 0.3290], primaries=[0.64, 0.33, 0.30, 0.60, 0.15, 0.06], gamma=1.0
        )
    return imagecodecs.cms_profile("srgb")


def _cms(samples: np.ndarray, icc: bytes, space: str, linear: bool, out: np.ndarray | None = None) -> np.ndarray:
    """LittleCMS: `samples` ("rgb", "gray" or "cmyk" colour space) from `icc` to (linear) sRGB RGB."""
    flags = _CMS_NOOPTIMIZE if samples.dtype == np.uint16 else None
    return imagecodecs.cms_transform(
        samples, icc, _target_profile(linear), colorspace=space, outcolorspace="rgb",
        intent=_INTENT, flags=flags, out=out,
    )


@functools.lru_cache(maxsize=32)
def _is_srgb(icc: bytes, space: str, linear: bool) -> bool:
    """Whether converting from `icc` to the target moves no probe value by more than `_SRGB_TOLERANCE`."""
    if space == "gray":
        probe = np.linspace(0, 1, 256, dtype=np.float32)[None]
        expected = np.repeat(probe[..., None], 3, axis=-1)
    else:
        axis = np.linspace(0, 1, 9, dtype=np.float32)
        probe = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(1, -1, 3)
        expected = probe
    try:
        got = np.clip(_cms(probe, icc, space, linear), 0, 1)
    except Exception:
        return False
    return bool(np.abs(got - expected).max() <= _SRGB_TOLERANCE)


def _rows_per_chunk(pixels: np.ndarray) -> int:
    return max(1, _CHUNK_SAMPLES // max(1, pixels[0].size))


def _colour_manage(pixels: np.ndarray, icc: bytes | None, cmyk: bool) -> tuple[np.ndarray, str]:
    """Pixels in sRGB (linear sRGB for float data) and the `info["icc"]` label; CMYK becomes RGB.

    `pixels` is the decoder's own contiguous array and is converted in place where the layout stays.
    """
    profile = _profile(icc) if icc else None
    if cmyk:
        if profile is not None and profile.space == "CMYK":
            with contextlib.suppress(Exception):  # LittleCMS refused it: fall back to the naive formula
                return _convert_cmyk_icc(pixels, profile.data), f"converted:{profile.description}"
        return _cmyk_to_rgb(pixels), "none"
    grey = pixels.ndim == 2
    if profile is None or profile.space != ("GRAY" if grey else "RGB"):
        return pixels, "none"
    space, linear = ("gray" if grey else "rgb"), pixels.dtype.kind == "f"
    if _is_srgb(profile.data, space, linear):
        return pixels, "srgb"
    try:
        if grey and not linear:
            _convert_grey_table(pixels, profile.data)
        else:
            _convert_in_place(pixels, profile.data, space)
    except Exception:  # LittleCMS refused the profile for a transform: leave the pixels as they are
        return pixels, "none"
    return pixels, f"converted:{profile.description}"


def _convert_in_place(pixels: np.ndarray, icc: bytes, space: str) -> None:
    """RGB (any dtype) or float grey, chunk by chunk, written back into `pixels`."""
    rows = _rows_per_chunk(pixels)
    float_data = pixels.dtype.kind == "f"
    buf = None if space == "gray" else np.empty((min(rows, len(pixels)), *pixels.shape[1:]), pixels.dtype)
    for r0 in range(0, len(pixels), rows):
        block = pixels[r0 : r0 + rows]
        if space == "gray":  # float grey → RGB; the channels of a neutral agree, keep green
            block[...] = _cms(block, icc, space, True)[..., 1]
        else:
            block[...] = _cms(block, icc, space, float_data, out=buf[: len(block)])
        if float_data:
            np.maximum(block, 0, out=block)


def _convert_grey_table(pixels: np.ndarray, icc: bytes) -> None:
    """8/16-bit grey through a table with one entry per code, computed by LittleCMS in float."""
    top = np.iinfo(pixels.dtype).max
    ramp = np.linspace(0, 1, top + 1, dtype=np.float32)[None]
    encoded = np.clip(_cms(ramp, icc, "gray", False)[0, :, 1], 0, 1)
    table = np.round(encoded * top).astype(pixels.dtype)
    rows = _rows_per_chunk(pixels)
    for r0 in range(0, len(pixels), rows):
        block = pixels[r0 : r0 + rows]
        block[...] = table[block]


def _convert_cmyk_icc(ink: np.ndarray, icc: bytes) -> np.ndarray:
    """CMYK ink amounts through their profile to sRGB (linear sRGB for float data), chunk by chunk."""
    float_data = ink.dtype.kind == "f"
    out = np.empty((*ink.shape[:2], 3), np.float32 if float_data else ink.dtype)
    rows = _rows_per_chunk(ink)
    for r0 in range(0, len(ink), rows):
        block = ink[r0 : r0 + rows]
        block = (block * np.float32(100)) if float_data else np.ascontiguousarray(block)  # float CMYK: 0–100 %
        _cms(block, icc, "cmyk", float_data, out=out[r0 : r0 + rows])
    if out.dtype.kind == "f":
        np.maximum(out, 0, out=out)
    return out


def _cmyk_to_rgb(ink: np.ndarray) -> np.ndarray:
    """Untagged CMYK ink amounts → RGB with Pillow's formula, R = (1 − C)(1 − K) rounded (likewise G, B)."""
    if ink.dtype.kind == "f":
        return np.ascontiguousarray((1 - ink[..., :3]) * (1 - ink[..., 3:4]), dtype=np.float32)
    top = int(np.iinfo(ink.dtype).max)
    out = np.empty((*ink.shape[:2], 3), ink.dtype)
    rows = _rows_per_chunk(ink)
    for r0 in range(0, len(ink), rows):
        block = ink[r0 : r0 + rows].astype(np.int64)
        nk = top - block[..., 3:4]
        t = block[..., :3] * nk + (top + 1) // 2  # Pillow's MULDIV255, generalised to the container's range
        out[r0 : r0 + rows] = nk - ((t + (t >> (8 if top == 255 else 16))) >> (8 if top == 255 else 16))
    return out


# --- region reads ------------------------------------------------------------------------------------------


class RegionReader:
    """Windows of a tiled TIFF's first page, decoding only the tiles that a window touches.

    Made by `open_region_reader`. ``shape`` is (h, w) of the picture (only files with orientation 1 are
    accepted, so stored and upright agree), ``dtype`` and ``channels`` (1: `read` returns (h, w) grey;
    3: (h, w, 3) RGB) are those of `read`'s result, and ``info`` is the dict `decode_image_info` would give.
    `read` returns exactly the same crop of what `decode_image` returns for the whole file (the same
    photometric handling and colour management). Reads may run from several threads (a lock on the file
    serialises the seeks and reads; decoding runs in parallel). The reader pickles as its URL and storage
    options and reopens the file on its first read (so it can travel to a Dask worker). Close it, or use it
    as a context manager.

    Tiles are read through tifffile's public Zarr interface: the page's `aszarr()` store, opened as a Zarr
    array and sliced. The slicing runs on zarr's asynchronous API in an event loop of the calling thread,
    so each thread reads and decodes its own window's tiles (zarr's synchronous API would run every
    reader's reads and decodes on zarr's one I/O thread); in a thread that already runs an event loop it
    uses the synchronous API.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        """Open `url` and check its first page; ValueError when it cannot be read by region."""
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._lock = threading.Lock()
        self._handles: tuple[tifffile.TiffFile, Any, Any] | None = None
        tf = self._tiff()
        try:
            page = tf.pages.first
            if not page.is_tiled or page.imagedepth > 1:
                raise ValueError("not a 2-D tiled TIFF page")
            if page.is_subsampled and page.compression not in _JPEG_COMPRESSIONS:
                raise ValueError("chroma-subsampled YCbCr")
            if int(page.tags.valueof(274, 1)) != 1:
                raise ValueError("orientation other than 1")
            self._layout = _TiffLayout.of(page)
            self._icc = _tiff_icc(page)
            self.shape: tuple[int, int] = (int(page.imagelength), int(page.imagewidth))
            self._axes: str = page.axes  # of the page's Zarr array: "YX", "YXS" (contiguous) or "SYX" (planar)
            if set(self._axes) - set("YXS"):
                raise ValueError(f"unexpected axes {self._axes!r}")
        except Exception:
            self.close()
            raise
        cmyk = self._layout.kind == "cmyk"
        self.channels: int = self._layout.channels
        self.dtype: np.dtype = self._layout.out_dtype
        probe = np.zeros((1, 1, 4 if cmyk else 3) if self.channels == 3 else (1, 1), self._layout.out_dtype)
        _, icc = _colour_manage(probe, self._icc, cmyk)
        self.info: dict[str, Any] = {
            "format": "TIFF", "bits": self.dtype.itemsize * 8, "linear": self.dtype.kind == "f", "icc": icc,
        }

    def _open(self) -> tuple[tifffile.TiffFile, Any]:
        """The open TiffFile and its first page's Zarr store (opened on first use after unpickling)."""
        with self._lock:
            if self._handles is None:
                import fsspec

                fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
                protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
                f = None if "file" in protocols or "local" in protocols else fs.open(path, "rb")
                try:
                    tf = tifffile.TiffFile(path if f is None else f)
                    # the store serialises seeks and reads with the file's lock and sets its decoder up now;
                    # maxworkers=1: tiles are decoded in the reading thread (several readers, several threads)
                    store = tf.pages.first.aszarr(maxworkers=1) if tf.pages.first.is_tiled else None
                except Exception:
                    if f is not None:
                        f.close()
                    raise
                self._handles = (tf, f, store)
            return self._handles[0], self._handles[2]

    def _tiff(self) -> tifffile.TiffFile:
        """The open TiffFile (opened on first use after unpickling)."""
        return self._open()[0]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1 and columns x0:x1 of the picture, as `decode_image` would give them."""
        h, w = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"window [{y0}:{y1}, {x0}:{x1}] is not inside the {h}×{w} image {self.url!r}")
        _, store = self._open()
        axes = self._axes
        selection = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None) for a in axes)
        try:
            raw = _read_window(store, selection)
        except Exception as e:
            raise ImageReadError(f"cannot decode image {self.url!r}: damaged TIFF data ({one_line(e, 200)})") from None
        samples = np.moveaxis(raw, (axes.index("Y"), axes.index("X")), (0, 1))  # (h, w[, s])
        if "S" not in axes:
            samples = samples[..., None]
        pixels, cmyk = self._layout.finish(samples)
        del raw, samples
        return _colour_manage(pixels, self._icc, cmyk)[0]

    def close(self) -> None:
        """Close the file (a later `read` reopens it)."""
        with self._lock:
            handles, self._handles = self._handles, None
        if handles is not None:
            if handles[2] is not None:
                handles[2].close()
            handles[0].close()
            if handles[1] is not None:
                handles[1].close()

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        h, w = self.shape
        return f"RegionReader({self.url!r}, {h}×{w}×{self.channels} {self.dtype})"


async def _read_async(store: Any, selection: tuple[slice, ...]) -> np.ndarray:
    import zarr.api.asynchronous

    array = await zarr.api.asynchronous.open_array(store=store, mode="r")
    return np.asarray(await array.getitem(selection))


def _read_window(store: Any, selection: tuple[slice, ...]) -> np.ndarray:
    """`selection` of the Zarr array in `store`, read in an event loop of this thread (see RegionReader)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running here: the usual case
        return asyncio.run(_read_async(store, selection))
    import zarr

    return np.asarray(zarr.open_array(store=store, mode="r")[selection])


def open_region_reader(path_or_url: str, storage_options: dict | None = None) -> RegionReader | None:
    """A `RegionReader` for a TIFF/BigTIFF whose first page is tiled (and upright: orientation 1, in a
    photometric layout this module decodes), else None — also for a file that cannot be opened or parsed,
    so the caller falls back to `decode_image`, which reports the problem. `path_or_url` is a local path or
    an fsspec URL (`storage_options` go to fsspec)."""
    try:
        with _quiet_tifffile():
            return RegionReader(str(path_or_url), storage_options)
    except Exception:
        return None


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


#: TIFF writing settings (see `phos_dask.encode`).
TIFF_WRITE = encode.TIFF_WRITE
