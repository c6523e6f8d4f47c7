"""What a file is, from its name and first bytes, before any decoder sees it: the extension sets, format
sniffing, the pixel limit checked from the header, and the structural checks that refuse a PNG or JPEG cut
short (decoders would pad it with grey, or complain on the terminal). Light: no image library is loaded."""

from __future__ import annotations

import os
import zlib

from phos_dask.errors import PhosError
from phos_dask.headers import HeaderError, from_bytes, read_header

#: Camera RAW files, developed by LibRaw (the optional `raw` extra: rawpy) to 16-bit sRGB.
RAW_EXTENSIONS = frozenset({
    ".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef",
    ".srw", ".3fr", ".erf", ".kdc", ".dcr", ".mrw", ".x3f", ".iiq", ".raw",
})

#: The file names a source folder is searched for (whatever the name, a file is decoded by what it holds).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".apng", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".jp2", ".pgm", ".ppm",
     ".pnm"}
) | RAW_EXTENSIONS

#: Largest image decoded by default (px, width × height): 1 gigapixel is 3 GB as 8-bit RGB and about 50 GB
#: of model working memory if rendered whole. Checked from the header, before any pixel is allocated.
DEFAULT_MAX_PIXELS = 1_000_000_000

#: Leading bytes of the formats we can name (for messages and `decode_image_info`).
SIGNATURES: tuple[tuple[bytes, str], ...] = (
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

#: The PNG chunks every decoder needs.
PNG_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


class ImageReadError(PhosError, ValueError):
    """A file that cannot be decoded as an image; the message is one line naming the file and the problem."""


def is_raw(name: str) -> bool:
    """Whether `name` is a camera RAW file's (decided by the extension: a DNG is also a TIFF)."""
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def sniff(data: bytes) -> str | None:
    """The format name that `data` starts like, or None."""
    for magic, name in SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PNM"
    return None


def check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Raise ImageReadError when a width × height image is over `max_pixels` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"image {name!r} is {width}x{height} px ({width * height / 1e9:.2f} gigapixels), over the limit "
            f"of {max_pixels} px (--max-pixels); not decoded"
        )


def check_header(data: bytes, name: str, max_pixels: int | None) -> None:
    """Refuse (ImageReadError) a file whose header cannot be read or whose size is over `max_pixels`: the size
    comes from the header alone (`phos_dask.headers`), for every format, before any decoder sees the data."""
    try:
        sized = read_header(from_bytes(data), name)
    except HeaderError as e:
        raise ImageReadError(f"cannot decode image {name!r}: {e.reason}") from None
    check_pixels(name, sized.width, sized.height, max_pixels)


def png_problem(data: bytes) -> str | None:
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
        if kind in PNG_CRITICAL:
            crc = int.from_bytes(data[end - 4 : end], "big")
            if zlib.crc32(data[pos + 4 : end - 4]) & 0xFFFFFFFF != crc:
                return f"corrupt PNG data (the {kind.decode()} chunk at byte {pos} fails its CRC check)"
        if kind == b"IEND":
            return None
        pos = end


def jpeg_problem(data: bytes) -> str | None:
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


def webp_size(data: bytes) -> tuple[int, int] | None:
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


def webp_icc(data: bytes) -> bytes | None:
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
