"""The one encoder of the files the package writes for people: `preview`'s output (`imageio.write_image`) and
`export`'s files. The same pixels and options give the same bytes whichever command wrote them.

Formats (`encode(image, fmt)`; `fmt` is ``jpeg``, ``png`` or ``tiff``; `format_of` maps a file extension):

* ``jpeg``: 8-bit, baseline, through libjpeg-turbo (imagecodecs); quality `JPEG_QUALITY` (92) unless given;
  no chroma subsampling (4:4:4): 4:2:0 smears colour grain and doubles the error (8.8 vs 4.2 codes mean on a
  grainy Portra 400 render). Bands of `JPEG_BAND_MCU_ROWS` rows of blocks are encoded on every core and
  joined with restart markers between them (`_jpeg_join`): a decoder gets the very pixels of one
  single-stream encode (checked with libjpeg-turbo, Pillow and OpenCV). A 24 MP render takes 0.08-0.09 s
  on two cores (Pillow's writer: 0.18-0.21 s). The profile and EXIF segments are added here, as Pillow's
  writer adds them: an image of one band is byte for byte Pillow's file.
* ``png``: 8 or 16-bit, written here (`_png`): the Sub filter on every row, deflate at level 1 with the
  run-length strategy (the settings OpenCV's libpng writer uses: within 0.1 % of its size), compressed in
  independent pieces of about `PNG_PIECE_BYTES` on every core and joined into one zlib stream (each piece
  but the last ends on a sync flush, as pigz does), one IDAT chunk per piece; the profile in an iCCP chunk
  and EXIF in an eXIf chunk. The pieces are fixed by the image's size, not the core count, so the bytes
  are the same on every machine. A grainy 24 MP 16-bit RGB file costs about 1.1 CPU seconds (OpenCV's
  single-threaded writer: 1.7 s), spread over the cores (`bench/write.py`).
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
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMATS",
    "JPEG_QUALITY",
    "MAX_EXIF",
    "PNG_LEVEL",
    "PNG_PIECE_BYTES",
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
#: JPEG writing: the image is encoded in bands of this many rows of 8×8 blocks (fewer when its width would make
#: a band more than 65535 blocks, the longest restart interval), on every core, and joined into one file with
#: a restart marker between bands. Fixed, so a file's bytes do not depend on the core count; an image of one
#: band is one plain encode.
JPEG_BAND_MCU_ROWS = 32
#: The most ICC profile bytes one JPEG APP2 segment holds (65533 minus ``ICC_PROFILE\0``, number and count).
_ICC_PIECE = MAX_EXIF - 14
#: TIFF writing: deflate at level 1 in strips of 64 rows (readable by libtiff, Pillow, OpenCV and tifffile).
TIFF_WRITE: dict[str, Any] = {"compression": "zlib", "compressionargs": {"level": 1}, "rowsperstrip": 64}
#: PNG writing: zlib level (1: fastest) and strategy (run-length: LZ77 limited to distance 1, as OpenCV's
#: writer sets; on grainy 16-bit renders 2 % smaller than level 1's default strategy and 2–3× faster), with
#: zlib's largest memLevel (9: longer blocks, 10 % faster than 8).
PNG_LEVEL = 1
_PNG_STRATEGY = zlib.Z_RLE
#: PNG writing: the filtered bytes (rows, each with its filter byte) compressed as one piece, about; a piece
#: is whole rows. Fixed, so a file's bytes do not depend on the core count.
PNG_PIECE_BYTES = 1 << 21
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The zlib stream header: deflate, 32 KiB window, no dictionary, "fastest" level flag (RFC 1950).
_ZLIB_HEADER = b"\x78\x01"
_ADLER_BASE = 65521
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
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    mcus_per_row = -(-w // 8)  # 8×8 blocks: no chroma subsampling
    band = 8 * min(JPEG_BAND_MCU_ROWS, 0xFFFF // mcus_per_row)
    bands = [image[y : y + band] for y in range(0, h, band)] if band else [image]
    workers = min(len(bands), _cores())
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="jpeg-encode") as pool:
            files = list(pool.map(lambda rows: _jpeg_file(rows, quality), bands))
    else:
        files = [_jpeg_file(rows, quality) for rows in bands]
    data = files[0] if len(files) == 1 else _jpeg_join(files, h, mcus_per_row * band // 8)
    if data[:4] != b"\xff\xd8\xff\xe0":  # libjpeg starts every JFIF file with SOI and APP0
        raise RuntimeError("the JPEG encoder wrote no JFIF header")
    after_app0 = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:after_app0] + _jpeg_metadata(icc, exif) + data[after_app0:]


def _jpeg_file(rows: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg8_encode(rows, level=quality, subsampling="444")


def _jpeg_segments(data: bytes) -> tuple[dict[int, int], int]:
    """The marker segments of a JPEG file up to its first SOS (marker → offset of its first segment), and
    where the entropy-coded data starts (just after that SOS segment)."""
    found, at = {}, 2
    while data[at] == 0xFF:
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        found.setdefault(marker, at)
        at += 2 + length
        if marker == 0xDA:
            return found, at
    raise RuntimeError("the JPEG encoder wrote no scan")


def _jpeg_join(files: list[bytes], height: int, interval: int) -> bytes:
    """One JPEG file of the bands `files` (top to bottom, each but the last `interval` 8×8 blocks), encoded
    alike: the first band's headers with the whole image's `height` in its frame header (SOF0) and a restart
    interval of one band (DRI), then each band's entropy-coded data followed by a restart marker (RST0-7 in
    turn: a decoder resets its DC predictions there, as each band's own encoder started them), then EOI."""
    walked = [_jpeg_segments(f) for f in files]
    segments, start = walked[0]
    header = bytearray(files[0][:start])
    if 0xC0 not in segments or any(f[:scan] != header for f, (_, scan) in zip(files[1:-1], walked[1:-1],
                                                                             strict=True)):
        raise RuntimeError("the JPEG bands were not encoded alike")
    frame, sos = segments[0xC0], segments[0xDA]
    header[frame + 5 : frame + 7] = struct.pack(">H", height)  # after the marker, length and precision
    header[sos:sos] = b"\xff\xdd" + struct.pack(">HH", 4, interval)
    parts = [bytes(header)]
    for k, (f, (_, scan)) in enumerate(zip(files, walked, strict=True)):
        if not f.endswith(b"\xff\xd9"):
            raise RuntimeError("a JPEG band does not end with EOI")
        parts.append(f[scan:-2])
        parts.append(bytes((0xFF, 0xD0 + k % 8)) if k < len(files) - 1 else b"\xff\xd9")
    return b"".join(parts)


def _jpeg_metadata(icc: bytes, exif: bytes | None) -> bytes:
    """The APP1 (EXIF, when given and within `MAX_EXIF`) and APP2 segments (the ICC profile in pieces of at
    most `_ICC_PIECE` bytes, each headed ``ICC_PROFILE\\0``, its number from 1 and the count) that follow a
    JPEG's JFIF header, in the order Pillow's writer puts them."""
    segments = []
    if exif and len(exif) <= MAX_EXIF:
        segments.append(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)
    pieces = [icc[i : i + _ICC_PIECE] for i in range(0, len(icc), _ICC_PIECE)]
    for number, piece in enumerate(pieces, 1):
        segments.append(b"\xff\xe2" + struct.pack(">H", len(piece) + 16) + b"ICC_PROFILE\0"
                        + bytes((number, len(pieces))) + piece)
    return b"".join(segments)


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _adler32_combine(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of A + B from A's (`first`), B's (`second`) and B's length in bytes. With A's sums
    (a1, b1) and B's (a2, b2), both started from (1, 0): a = a1 + a2 − 1 and b = b1 + b2 + len(B)·(a1 − 1),
    modulo 65521 (each of B's bytes adds the running a, which starts at a1 instead of 1)."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + second_len * (a1 - 1)) % _ADLER_BASE
    return (b << 16) | a


def _png_piece(rows: np.ndarray, first: bool, last: bool) -> tuple[bytes, int, int, int]:
    """Rows of an image ((n, w) or (n, w, c), uint8 or uint16) → (raw deflate of the Sub-filtered rows,
    preceded by the zlib header when `first`; the CRC-32 of "IDAT" and those bytes; the Adler-32 of the
    filtered rows; their length in bytes). All but the `last` piece end on a sync flush (byte-aligned, not
    final), so the pieces concatenate into one deflate stream. NumPy and zlib release the GIL: pieces can
    run in threads."""
    n = rows.shape[0]
    bpp = (rows.shape[2] if rows.ndim == 3 else 1) * rows.itemsize
    samples = rows.astype(">u2", order="C") if rows.itemsize == 2 else np.ascontiguousarray(rows)
    raw = samples.view(np.uint8).reshape(n, -1)  # big-endian samples, as PNG stores them
    filtered = np.empty((n, raw.shape[1] + 1), np.uint8)
    filtered[:, 0] = 1  # filter type 1, Sub: each byte minus the byte one pixel to its left (mod 256)
    filtered[:, 1 : 1 + bpp] = raw[:, :bpp]
    np.subtract(raw[:, bpp:], raw[:, :-bpp], out=filtered[:, 1 + bpp :])
    compressor = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, -15, 9, _PNG_STRATEGY)
    data = compressor.compress(filtered) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    if first:
        data = _ZLIB_HEADER + data
    return data, zlib.crc32(data, zlib.crc32(b"IDAT")), zlib.adler32(filtered), filtered.nbytes


def _cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _png(image: np.ndarray, icc: bytes, exif: bytes | None) -> bytes:
    """The PNG file of `image` ((h, w) or (h, w, 3), uint8 or uint16): IHDR, iCCP (`icc`, named "ICC
    Profile", zlib level 9), eXIf (`exif` without its "Exif\\0\\0" prefix) when given, one IDAT chunk per
    piece of rows (the zlib stream's header in the first, its Adler-32 at the end of the last), IEND."""
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else 3
    row_bytes = w * channels * image.itemsize + 1
    step = max(1, PNG_PIECE_BYTES // row_bytes)
    pieces = [(image[y : y + step], y == 0, y + step >= h) for y in range(0, h, step)]
    workers = min(len(pieces), _cores())
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="png-encode") as pool:
            done = list(pool.map(lambda piece: _png_piece(*piece), pieces))
    else:
        done = [_png_piece(*piece) for piece in pieces]
    adler = 1
    for _, _, piece_adler, length in done:
        adler = _adler32_combine(adler, piece_adler, length)
    ihdr = struct.pack(">IIBBBBB", w, h, 8 * image.itemsize, 0 if channels == 1 else 2, 0, 0, 0)
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc, 9))]
    if exif:  # an eXIf chunk holds the TIFF structure itself, without JPEG's "Exif\0\0" prefix
        parts.append(_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    for k, (data, crc, _, _) in enumerate(done):
        tail = struct.pack(">I", adler) if k == len(done) - 1 else b""
        parts += [struct.pack(">I", len(data) + len(tail)), b"IDAT", data, tail,
                  struct.pack(">I", zlib.crc32(tail, crc))]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


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
