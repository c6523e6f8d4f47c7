"""Image sizes from headers alone: every format the decoders take, sized exactly as decoded, without reading
more than the header."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from phos_dask.headers import HeaderError, from_bytes, read_header
from phos_dask.imageio import decode_image

RNG = np.random.default_rng(3)
PIXELS = RNG.integers(0, 255, (37, 53, 3), dtype=np.uint8)


def _pil(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PIXELS).save(buf, fmt, **kw)
    return buf.getvalue()


def _cv(ext: str, image: np.ndarray = PIXELS) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _tiff(**kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, PIXELS, **kw)
    return buf.getvalue()


FILES = {
    "jpeg": lambda: _cv(".jpg"),
    "progressive jpeg": lambda: _pil("JPEG", progressive=True),
    "png": lambda: _cv(".png"),
    "png 16-bit grey": lambda: _cv(".png", PIXELS[:, :, 0].astype(np.uint16) * 257),
    "gif": lambda: _pil("GIF"),
    "bmp": lambda: _cv(".bmp"),
    "webp lossy": lambda: _pil("WEBP", quality=80),
    "webp lossless": lambda: _pil("WEBP", lossless=True),
    "tiff": lambda: _tiff(),
    "tiff tiled": lambda: _tiff(tile=(16, 16)),
    "bigtiff": lambda: _tiff(bigtiff=True),
    "ppm": lambda: _cv(".ppm"),
    "pgm": lambda: _cv(".pgm", PIXELS[:, :, 0]),
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_every_format_is_sized_as_its_decoder_sees_it(kind):
    data = FILES[kind]()
    header = read_header(from_bytes(data), kind)
    assert header.upright == decode_image(data, kind).shape[:2] == (37, 53)


def _exif(orientation: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def test_a_jpeg_turned_by_exif_is_sized_upright():
    jpeg = _cv(".jpg")
    app1 = b"Exif\x00\x00" + _exif(6)
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    assert read_header(from_bytes(data)).upright == decode_image(data, "x.jpg").shape[:2] == (53, 37)


def test_thousands_of_app_segments_cost_one_small_read_each():
    jpeg = _cv(".jpg")
    app1 = b"X" * 60000
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    data = jpeg[:2] + segment * 2000 + jpeg[2:]
    asked: list[int] = []

    def read(offset: int, size: int) -> bytes:
        asked.append(size)
        return data[offset:offset + size]

    assert read_header(read).upright == (37, 53)
    assert sum(asked) < 2001 * 64  # never the segments' 120 MB


def test_a_png_whose_ancillary_chunk_fails_its_crc_is_still_sized():
    png = _cv(".png")
    bad = struct.pack(">I", 4) + b"tEXt" + b"a\x00bc" + b"\0\0\0\0"  # wrong CRC
    data = png[:33] + bad + png[33:]
    assert read_header(from_bytes(data)).upright == (37, 53)


def test_a_png_claiming_60000_squared_is_sized_from_its_first_bytes():
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data += struct.pack(">I", 10) + b"IDAT" + b"\0" * 14
    assert read_header(from_bytes(data)).pixels == 3_600_000_000


@pytest.mark.parametrize("data", [b"", b"hello world", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n",
                                  b"<html></html>", b"GIF89a\x00\x00\x00\x00"])
def test_what_cannot_be_sized_is_one_clear_error(data):
    with pytest.raises(HeaderError, match="cannot read the size of 'f'"):
        read_header(from_bytes(data), "f")
