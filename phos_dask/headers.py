"""Image sizes from file headers alone: never a pixel decoded, never more read than the header needs.

`read_header(read, name)` sizes every format the decoders accept — JPEG (SOF, EXIF orientation), PNG
(IHDR; an eXIf chunk before the image data), GIF, BMP, WebP (VP8, VP8L, VP8X), TIFF and BigTIFF (the first
page's ImageWidth/ImageLength and Orientation), PNM (P1–P6) and JPEG 2000 (the ihdr box) — through `read`, a
callable (offset, size) → bytes that may return fewer bytes at the end of the file. It asks for small
ranges and skips what it does not need (a JPEG's thousand APP1 segments cost one small read each, never
their content), so a header is cheap to read from an object store or from memory alike.

It raises HeaderError with one line for a file it cannot size (a damaged or unknown header); callers refuse
such a file rather than decode it without a pixel budget. Camera RAW files are sized by LibRaw instead
(`imageio`), which opens them without developing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from phos_dask.errors import PhosError

Read = Callable[[int, int], bytes]

#: More JPEG segments than this before the frame header, or more bytes: not a photograph.
MAX_JPEG_SEGMENTS = 10_000
MAX_JPEG_HEADER_BYTES = 256 << 20
#: More PNG chunks than this before the image data: not a photograph.
MAX_PNG_CHUNKS = 10_000


class HeaderError(PhosError, ValueError):
    """A header that does not say the image's size; the message is "cannot read the size of NAME: REASON"."""

    @property
    def reason(self) -> str:
        return str(self).split("': ", 1)[-1]


@dataclass(frozen=True)
class Header:
    format: str
    width: int  # px as stored (before orientation)
    height: int
    orientation: int = 1  # EXIF/TIFF orientation 1–8

    @property
    def upright(self) -> tuple[int, int]:
        """(rows, cols) of the image once its orientation is applied."""
        return (self.width, self.height) if self.orientation in (5, 6, 7, 8) else (self.height, self.width)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def from_bytes(data: bytes) -> Read:
    """A `read` over bytes in memory."""
    return lambda offset, size: data[offset:offset + size]


def read_header(read: Read, name: str = "image") -> Header:
    """The image's format, size and orientation from its header (see the module docstring)."""
    head = read(0, 32)
    fmt, parse = _format(head)
    if parse is None:
        raise HeaderError(f"cannot read the size of {name!r}: not a recognised image format")
    try:
        return parse(read, head, name)
    except HeaderError as e:
        if fmt in str(e):
            raise
        raise HeaderError(f"cannot read the size of {name!r}: a damaged {fmt} header ({e.reason})") from None
    except (struct.error, IndexError, ValueError):
        raise HeaderError(f"cannot read the size of {name!r}: a damaged {fmt} header") from None


def _format(head: bytes) -> tuple[str, Callable[[Read, bytes, str], Header] | None]:
    if head.startswith(b"\xff\xd8"):
        return "JPEG", lambda read, head, name: _jpeg(read, name)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", lambda read, head, name: _png(read, name)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF", lambda read, head, name: _sized("GIF", *struct.unpack("<HH", _need(head, 6, 4, name)), name)
    if head.startswith(b"BM"):
        return "BMP", lambda read, head, name: _bmp(head, name)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP", lambda read, head, name: _webp(read, name)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF", lambda read, head, name: _tiff(read, name)
    if head[:3] == b"P7\n":
        return "PAM", lambda read, head, name: _pam(read, name)
    if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2:
        return "PNM", lambda read, head, name: _pnm(read, name)
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000", lambda read, head, name: _jp2(read, head, name)
    return "", None


def _need(data: bytes, offset: int, size: int, name: str) -> bytes:
    part = data[offset:offset + size]
    if len(part) < size:
        raise HeaderError(f"cannot read the size of {name!r}: the header is cut short")
    return part


def _sized(fmt: str, width: int, height: int, name: str, orientation: int = 1) -> Header:
    if width <= 0 or height <= 0:
        raise HeaderError(f"cannot read the size of {name!r}: its {fmt} header says {width}×{height} px")
    return Header(fmt, width, height, orientation if orientation in range(1, 9) else 1)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(read: Read, name: str) -> Header:
    pos, orientation, seen_exif = 2, 1, False
    for _ in range(MAX_JPEG_SEGMENTS):
        marker = read(pos, 4)
        while marker[:2] == b"\xff\xff" and pos <= MAX_JPEG_HEADER_BYTES:  # fill bytes, skipped a run at a time
            run = read(pos, 4096)
            rest = run.lstrip(b"\xff")
            pos += len(run) - len(rest) - (1 if rest else 0)  # stay on the 0xFF that starts the marker
            if not run:
                break
            marker = read(pos, 4)
        if pos > MAX_JPEG_HEADER_BYTES:
            raise HeaderError(f"cannot read the size of {name!r}: no JPEG frame header in its first "
                              f"{MAX_JPEG_HEADER_BYTES >> 20} MiB")
        if len(marker) < 4 or marker[0] != 0xFF:
            raise HeaderError(f"cannot read the size of {name!r}: no JPEG frame header before the data ends")
        kind, length = marker[1], struct.unpack(">H", marker[2:4])[0]
        if kind in _SOF:
            segment = _need(read(pos + 4, 6), 0, 6, name)
            h, w = struct.unpack(">HH", segment[1:5])
            return _sized("JPEG", w, h, name, orientation)
        if kind == 0xE1 and not seen_exif and length >= 8 and read(pos + 4, 6) == b"Exif\x00\x00":
            seen_exif = True
            orientation = _tiff_orientation(read(pos + 10, min(length - 8, 1 << 16)))
        if kind in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        pos += 2 + length
    raise HeaderError(f"cannot read the size of {name!r}: no JPEG frame header among its first segments")


def _tiff_orientation(data: bytes) -> int:
    """Orientation (tag 0x0112) of the first IFD of a TIFF structure held in `data`, else 1."""
    try:
        endian = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack(endian + "I", data[4:8])
        (count,) = struct.unpack(endian + "H", data[ifd:ifd + 2])
        for i in range(min(count, 512)):
            entry = data[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, _typ, _n = struct.unpack(endian + "HHI", entry[:8])
            if tag == 0x0112:
                return struct.unpack(endian + "H", entry[8:10])[0]
    except (struct.error, IndexError):
        pass
    return 1


def _png(read: Read, name: str) -> Header:
    ihdr = _need(read(8, 25), 0, 25, name)
    if ihdr[4:8] != b"IHDR":
        raise HeaderError(f"cannot read the size of {name!r}: its PNG header has no IHDR chunk first")
    w, h = struct.unpack(">II", ihdr[8:16])
    pos, orientation = 8 + 12 + 13, 1
    for _ in range(MAX_PNG_CHUNKS):  # an eXIf chunk counts only before the image data, as for decoders
        chunk = read(pos, 8)
        if len(chunk) < 8:
            break
        length, kind = struct.unpack(">I", chunk[:4])[0], chunk[4:8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf":
            orientation = _tiff_orientation(read(pos + 8, min(length, 1 << 16)))
            break
        pos += 12 + length
    return _sized("PNG", w, h, name, orientation)


def _bmp(head: bytes, name: str) -> Header:
    size = struct.unpack("<I", _need(head, 14, 4, name))[0]
    if size == 12:
        w, h = struct.unpack("<HH", _need(head, 18, 4, name))
    else:
        w, h = struct.unpack("<ii", _need(head, 18, 8, name))
    return _sized("BMP", w, abs(h), name)


def _webp(read: Read, name: str) -> Header:
    pos = 12
    for _ in range(64):
        chunk = read(pos, 8 + 10)
        if len(chunk) < 8:
            break
        fourcc, size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        body = chunk[8:]
        if fourcc == b"VP8X":
            body = _need(body, 0, 10, name)
            return _sized("WebP", 1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little"),
                          name)
        if fourcc == b"VP8 ":
            body = _need(body, 0, 10, name)
            w, h = struct.unpack("<HH", body[6:10])
            return _sized("WebP", w & 0x3FFF, h & 0x3FFF, name)
        if fourcc == b"VP8L":
            bits = int.from_bytes(_need(body, 1, 4, name), "little")
            return _sized("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, name)
        pos += 8 + size + (size & 1)
    raise HeaderError(f"cannot read the size of {name!r}: no WebP image chunk")


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def _tiff(read: Read, name: str) -> Header:
    head = read(0, 16)
    _need(head, 0, 8, name)
    endian = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if big:
        offset = struct.unpack(endian + "Q", _need(head, 8, 8, name))[0]
        count_fmt, entry_size, value_at = "Q", 20, 12
    else:
        offset = struct.unpack(endian + "I", head[4:8])[0]
        count_fmt, entry_size, value_at = "H", 12, 8
    count_size = struct.calcsize(count_fmt)
    (count,) = struct.unpack(endian + count_fmt, _need(read(offset, count_size), 0, count_size, name))
    entries = _need(read(offset + count_size, min(count, 4096) * entry_size), 0, min(count, 4096) * entry_size, name)
    tags: dict[int, int] = {}
    for i in range(min(count, 4096)):
        entry = entries[i * entry_size:(i + 1) * entry_size]
        tag, typ = struct.unpack(endian + "HH", entry[:4])
        if tag in (256, 257, 274) and typ in _TIFF_TYPES:
            fmt, size = _TIFF_TYPES[typ]
            tags[tag] = struct.unpack(endian + fmt, entry[value_at:value_at + size])[0]
    if 256 not in tags or 257 not in tags:
        raise HeaderError(f"cannot read the size of {name!r}: its first TIFF page has no width or length")
    return _sized("BigTIFF" if big else "TIFF", tags[256], tags[257], name, tags.get(274, 1))


def _pnm(read: Read, name: str) -> Header:
    text = read(0, 512)
    fields: list[bytes] = []
    for line in text[2:].split(b"\n"):
        fields += line.split(b"#", 1)[0].split()
        if len(fields) >= 2:
            break
    try:
        w, h = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        raise HeaderError(f"cannot read the size of {name!r}: a damaged PNM header") from None
    return _sized("PNM", w, h, name)


def _pam(read: Read, name: str) -> Header:
    fields = {}
    for line in read(0, 1024).split(b"\n")[1:]:
        if line.strip() == b"ENDHDR":
            break
        key, _, value = line.partition(b" ")
        fields[key.strip()] = value.strip()
    try:
        return _sized("PAM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]), name)
    except (KeyError, ValueError):
        raise HeaderError(f"cannot read the size of {name!r}: a damaged PAM header") from None


def _jp2(read: Read, head: bytes, name: str) -> Header:
    if head[:4] == b"\xff\x4f\xff\x51":  # a bare codestream: SIZ follows SOC
        siz = _need(read(4, 40), 0, 40, name)
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", siz[4:20])
        return _sized("JPEG 2000", xsiz - x0, ysiz - y0, name)
    pos = 0
    for _ in range(64):
        box = read(pos, 16)
        if len(box) < 8:
            break
        length, kind = struct.unpack(">I", box[:4])[0], box[4:8]
        if kind == b"jp2h":
            pos, length = pos + 8, 8
            continue
        if kind == b"ihdr":
            h, w = struct.unpack(">II", _need(read(pos + 8, 8), 0, 8, name))
            return _sized("JPEG 2000", w, h, name)
        if length < 8:
            break
        pos += length
    raise HeaderError(f"cannot read the size of {name!r}: no JPEG 2000 image header")
