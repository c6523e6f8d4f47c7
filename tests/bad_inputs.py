"""A source tree of hostile and awkward inputs, generated from one real photograph.

`make_corpus(dir, photo)` writes the files and returns {relative path: expectation}; an expectation is
"fails" (the file must be reported with one line and produce no image) or "renders" (a good file whose
output must be complete and correct). The corpus covers every case of issue 5's list that is a file; the
cases that need timing or another user (a file deleted mid-job, one without read permission) are made by
the tests themselves.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FAILS = "fails"
RENDERS = "renders"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_header_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width × height RGB pixels, followed by one tiny (short) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def bad_crc_png(good_png: bytes) -> bytes:
    """The PNG with one byte of its first IDAT chunk's data flipped, so that chunk's CRC no longer matches."""
    pos = good_png.index(b"IDAT") + 4 + 100
    return good_png[:pos] + bytes([good_png[pos] ^ 0xFF]) + good_png[pos + 1 :]


def tiff_with_compression(rgb: np.ndarray, code: int) -> bytes:
    """A baseline strip TIFF of `rgb` whose Compression tag says `code` (e.g. 50000: no codec knows it)."""
    h, w = rgb.shape[:2]
    pixels = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    entries = [
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, code), (262, 3, 1, 2),
        (273, 4, 1, None), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(pixels)),
    ]
    ifd_at = 8
    ifd_len = 2 + 12 * len(entries) + 4
    bits_at = ifd_at + ifd_len
    data_at = bits_at + 6
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at))
    out += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bits_at
        elif tag == 273:
            value = data_at
        if typ == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 8, 8, 8)
    out += pixels
    return bytes(out)


def animated(rgb: np.ndarray, fmt: str) -> bytes:
    """A 3-frame animation (GIF or APNG) whose first frame is `rgb` and whose later frames differ."""
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb), Image.fromarray(np.roll(rgb, 40, axis=1))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def cmyk_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def make_corpus(root: Path, photo: np.ndarray) -> dict[str, str]:
    """Write the corpus under `root` (created) and return {relative path: FAILS | RENDERS}."""
    root.mkdir(parents=True, exist_ok=True)
    small = cv2.resize(photo, (360, 240), interpolation=cv2.INTER_AREA)
    jpeg, png = encode(small, ".jpg"), encode(small, ".png")
    files: dict[str, tuple[bytes, str]] = {
        "good.jpg": (jpeg, RENDERS),
        "empty.jpg": (b"", FAILS),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], FAILS),
        "truncated.png": (png[: len(png) // 2], FAILS),
        "bad-crc.png": (bad_crc_png(png), FAILS),
        "noise.png": (np.random.default_rng(5).bytes(20_000), FAILS),
        "noise.tif": (b"II*\0" + np.random.default_rng(6).bytes(5_000), FAILS),
        "page.jpg": (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n",
                     FAILS),
        "one-pixel.png": (encode(small[:1, :1], ".png"), RENDERS),
        "smaller-than-halo.png": (encode(cv2.resize(small, (3, 2), interpolation=cv2.INTER_AREA), ".png"), RENDERS),
        "huge-header.png": (huge_header_png(), FAILS),
        "odd-compression.tif": (tiff_with_compression(small[:64, :64], 60000), FAILS),
        "cmyk.jpg": (cmyk_jpeg(small), RENDERS),
        "animated.gif": (animated(small, "GIF"), RENDERS),
        "animated.png": (animated(small, "PNG"), RENDERS),
        "with space.jpg": (jpeg, RENDERS),
        "ünïcødé 写真.jpg": (jpeg, RENDERS),
        "-leading-dash.jpg": (jpeg, RENDERS),
        "--help.jpg": (jpeg, RENDERS),
        "dots..in..name.jpg": (jpeg, RENDERS),
        "a..b/c.jpg": (jpeg, RENDERS),
        "deep/er/x.png": (png, RENDERS),
    }
    for rel, (data, _) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink("..", root / "deep" / "loop")  # deep/loop/deep/loop/… never ends
    os.symlink("self.jpg", root / "self.jpg")  # a link to itself: ELOOP on open
    return {rel: want for rel, (_, want) in files.items()} | {"self.jpg": FAILS, "deep/loop": FAILS}
