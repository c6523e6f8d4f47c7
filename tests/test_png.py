"""The PNG writer of `phos_dask.encode` (pieces deflated in parallel, joined into one zlib stream): common
readers decode its files bit-exactly, the profile and EXIF survive, and the bytes do not depend on the core
count."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import imagecodecs
import numpy as np
import pytest
from PIL import Image

from phos_dask import encode


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk; asserts the signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, at = [], 8
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + n]
        assert struct.unpack(">I", data[at + 8 + n : at + 12 + n])[0] == zlib.crc32(kind + body), kind
        out.append((kind, body))
        at += 12 + n
    return out


def _image(h: int, w: int, dtype: str, grey: bool, seed: int = 0) -> np.ndarray:
    """Random samples over the dtype's whole range (every bit of both bytes matters)."""
    top = np.iinfo(dtype).max
    shape = (h, w) if grey else (h, w, 3)
    return np.random.default_rng(seed).integers(0, top + 1, shape, dtype=np.int64).astype(dtype)


def _check_decoders(data: bytes, image: np.ndarray) -> None:
    """OpenCV, imagecodecs (libpng), Pillow and zlib all read back `image` exactly."""
    colour = image.ndim == 3
    got = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    got = got.reshape(image.shape[:2] + got.shape[2:])  # OpenCV drops the axes of a 1×1 grey image
    np.testing.assert_array_equal(got[:, :, ::-1] if colour else got, image)
    np.testing.assert_array_equal(imagecodecs.png_decode(data).reshape(image.shape), image)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (image.shape[1], image.shape[0])
        pixels = np.asarray(im)
    if colour and image.dtype == np.uint16:  # Pillow has no 16-bit colour mode: it keeps the high bytes
        np.testing.assert_array_equal(pixels, (image >> 8).astype(np.uint8))
    else:
        np.testing.assert_array_equal(pixels, image)
    stream = b"".join(body for kind, body in _chunks(data) if kind == b"IDAT")
    raw = zlib.decompress(stream)  # the zlib header and the Adler-32 of the whole stream hold
    assert len(raw) == image.shape[0] * (image[0].nbytes + 1)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 7), (1, 9), (8, 1), (64, 48)])
def test_png_decodes_bit_exactly(dtype: str, grey: bool, h: int, w: int) -> None:
    image = _image(h, w, dtype, grey)
    data = encode.encode(image, "png")
    _check_decoders(data, image)
    ihdr = _chunks(data)[0]
    assert ihdr == (b"IHDR", struct.pack(">IIBBBBB", w, h, 8 * image.itemsize, 0 if grey else 2, 0, 0, 0))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("grey", [False, True])
def test_png_in_many_pieces_decodes_bit_exactly(monkeypatch: pytest.MonkeyPatch, dtype: str, grey: bool) -> None:
    image = _image(37, 23, dtype, grey, seed=1)
    whole = encode.encode(image, "png")
    monkeypatch.setattr(encode, "PNG_PIECE_BYTES", 100)  # a few rows a piece: many sync-flushed pieces
    data = encode.encode(image, "png")
    assert sum(kind == b"IDAT" for kind, _ in _chunks(data)) > 5 > sum(kind == b"IDAT" for kind, _ in _chunks(whole))
    _check_decoders(data, image)


def test_png_bytes_do_not_depend_on_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(300, 200, "uint16", grey=False, seed=2)
    monkeypatch.setattr(encode, "PNG_PIECE_BYTES", 10_000)
    got = set()
    for cores in (1, 2, 5):
        monkeypatch.setattr(encode, "_cores", lambda cores=cores: cores)
        got.add(encode.encode(image, "png"))
    assert len(got) == 1


def test_png_takes_any_memory_layout() -> None:
    image = _image(20, 30, "uint16", grey=False, seed=3)
    want = encode.encode(image, "png")
    assert encode.encode(image.astype(">u2"), "png") == want  # big-endian samples
    flipped = np.ascontiguousarray(image[:, ::-1])
    assert encode.encode(image[:, ::-1], "png") == encode.encode(flipped, "png")  # a strided view
    assert encode.encode(image[:, :, :1], "png") == encode.encode(image[:, :, 0], "png")  # (h, w, 1) is grey


@pytest.mark.parametrize("grey", [False, True])
def test_png_keeps_the_profile_and_exif(grey: bool) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif[0x0110] = "Model X"
    image = _image(5, 4, "uint16", grey)
    data = encode.encode(image, "png", exif=exif.tobytes())
    kinds = [kind for kind, _ in _chunks(data)]
    assert kinds[:3] == [b"IHDR", b"iCCP", b"eXIf"] and kinds[-1] == b"IEND"
    assert set(kinds[3:-1]) == {b"IDAT"}
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["icc_profile"] == encode.icc_profile(1 if grey else 3)
        assert im.getexif()[0x010F] == "Maker" and im.getexif()[0x0110] == "Model X"
    name, _, rest = dict(_chunks(data))[b"iCCP"].partition(b"\x00")
    assert name == b"ICC Profile" and rest[0] == 0 and zlib.decompress(rest[1:]) == encode.icc_profile(1 if grey else 3)
    assert b"eXIf" not in encode.encode(image, "png")  # no EXIF given: no chunk


def test_adler32_combine_matches_zlib() -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 5552, 65521, 65522, 199_999, 200_000):
        a, b = data[:cut], data[cut:]
        assert encode._adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)
    ones = b"\xff" * 300_000  # sums that wrap the modulus many times
    assert encode._adler32_combine(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(ones + ones)
