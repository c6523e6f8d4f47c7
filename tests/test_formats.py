"""phos_dask.imageio, issue 4: every common format and mode, ICC colour management, decoder info, region reads.

Each test makes its files itself (Pillow, OpenCV, tifffile, or bytes by hand) and checks the decode against
the source pixels (lossless formats) or an independent decoder (lossy ones, CMYK and ICC conversions).
"""

from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import fsspec
import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from phos_dask.imageio import (
    ImageReadError,
    RegionReader,
    decode_image,
    decode_image_info,
    open_region_reader,
    read_image,
)

H, W = 40, 52
DATA = Path(__file__).parent / "data"
ADOBE_RGB = (DATA / "compatibleWithAdobeRGB1998.icc").read_bytes()
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- helpers ----------------------------------------------------------------------------------------------


def _random(dtype: str, channels: int | None, seed: int = 1, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Random samples whose channels differ, so a swap, transpose or depth loss shows."""
    rng = np.random.default_rng(seed)
    full = shape if channels is None else (*shape, channels)
    if dtype == "float32":
        return rng.random(full, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=full, dtype=dtype)


def _gradient16(h: int = 120, w: int = 160) -> np.ndarray:
    """A smooth 16-bit RGB gradient with far more than 10 000 distinct values in each channel."""
    ramp = np.round(np.linspace(0, 65535, h * w)).astype(np.uint16).reshape(h, w)
    return np.dstack([ramp, ramp[::-1, ::-1], ramp.T.reshape(h, w)])


def _soft_gradient16(h: int = 120, w: int = 160) -> np.ndarray:
    """A 16-bit gradient of nearly neutral colours (inside both Adobe RGB's and sRGB's gamut)."""
    ramp = np.linspace(0, 1, h * w).reshape(h, w)
    tint = np.dstack([ramp, 0.06 + 0.9 * ramp, 0.03 + 0.92 * ramp[::-1, ::-1] * 0.1 + 0.85 * ramp])
    return np.round(np.clip(tint, 0, 1) * 65535).astype(np.uint16)


def _pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _tiff_bytes(array: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_by_hand(samples: np.ndarray, colour_type: int, extra_chunks: bytes = b"") -> bytes:
    """A PNG of `samples` ((h, w, s), uint8 or uint16) with the given IHDR colour type, filter 0 rows."""
    h, w = samples.shape[:2]
    depth = samples.dtype.itemsize * 8
    rows = samples.astype(samples.dtype.newbyteorder(">")).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
        + extra_chunks
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _drop_jpeg_segment(jpeg: bytes, marker: int) -> bytes:
    """The JPEG without its header segments of type `marker` (0xEE: Adobe APP14)."""
    out, pos = bytearray(jpeg[:2]), 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] not in (0xDA, 0xD9):
        length = struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        if jpeg[pos + 1] != marker:
            out += jpeg[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out + jpeg[pos:])


def _decode(data: bytes, **expect: object) -> np.ndarray:
    """decode_image, checking that decode_image_info gives the same array and the expected info entries."""
    image, info = decode_image_info(data, "test")
    np.testing.assert_array_equal(decode_image(data, "test"), image)
    assert set(info) == {"format", "bits", "linear", "icc"}
    assert info["bits"] == image.dtype.itemsize * 8
    assert info["linear"] == (image.dtype.kind == "f")
    for key, value in expect.items():
        assert info[key] == value, (key, info)
    return image


def _pillow_srgb(rgb8: np.ndarray, icc: bytes) -> np.ndarray:
    """The oracle: Pillow's ImageCms (LittleCMS), profile → sRGB, perceptual, 8-bit."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    transform = ImageCms.buildTransform(
        src, ImageCms.createProfile("sRGB"), "RGB", "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
    )
    return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb8), transform))


def _s15(value: float) -> bytes:
    """An ICC s15Fixed16Number."""
    return struct.pack(">i", round(value * 65536))


def _cmyk_profile() -> bytes:
    """A small ICC v2 CMYK input profile made here (no free CMYK profile ships with the test tools): one
    A2B0 lut8 tag whose 2-point grid maps each CMYK corner to a plausible Lab colour."""
    ascii_desc = b"Test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(ascii_desc)) + ascii_desc + bytes(8) + bytes(3 + 67)
    wtpt = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    cprt = b"text" + bytes(4) + b"No copyright, test data\0"
    corners = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    light = max(0.04, (1 - 0.35 * c - 0.45 * m - 0.08 * y) * (1 - 0.9 * k))
                    a = 128 + 60 * m - 45 * c - 10 * y
                    b = 128 + 70 * y - 40 * c - 25 * m
                    corners += [round(255 * light), min(255, max(0, a)), min(255, max(0, b))]
    ramp = bytes(range(256))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + bytes(corners) + ramp * 3
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + bytes(4) + struct.pack(">I", 0x02100000) + b"scnrCMYKLab "
              + bytes(12) + b"acsp" + bytes(28) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    return header + table + body


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, np.power((v + 0.055) / 1.055, 2.4))


def _adobe_to_srgb_textbook(rgb: np.ndarray) -> np.ndarray:
    """Adobe RGB (1998) → sRGB by the published definitions (gamma 563/256, D65 primaries), clipped; floats."""
    adobe_to_xyz = np.array([[0.5767, 0.1856, 0.1882], [0.2974, 0.6273, 0.0753], [0.0270, 0.0707, 0.9911]])
    xyz_to_srgb = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    linear = np.power(rgb, 563 / 256) @ (xyz_to_srgb @ adobe_to_xyz).T
    return _srgb_encode(linear)


# --- JPEG -------------------------------------------------------------------------------------------------


def _photo(seed: int = 3) -> np.ndarray:
    """A smooth-ish 8-bit RGB picture (JPEG-friendly) with distinct channels."""
    yy, xx = np.mgrid[0:H, 0:W]
    noise = np.random.default_rng(seed).integers(0, 30, (H, W, 3))
    base = np.dstack([xx * 255 // W, yy * 255 // H, (xx + yy) * 255 // (H + W)])
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_rgb_baseline_and_progressive_match_pillow(progressive: bool) -> None:
    data = _pil_bytes(Image.fromarray(_photo()), "JPEG", quality=92, progressive=progressive)
    with Image.open(io.BytesIO(data)) as im:
        assert bool(im.info.get("progressive")) == progressive
        expected = np.asarray(im.convert("RGB"))
    img = _decode(data, format="JPEG", bits=8, icc="none")
    assert img.shape == (H, W, 3)
    assert np.abs(img.astype(int) - expected).max() <= 1


def test_jpeg_grey_stays_grey() -> None:
    grey = _photo()[..., 0]
    data = _pil_bytes(Image.fromarray(grey), "JPEG", quality=95)
    img = _decode(data, format="JPEG", bits=8)
    assert img.shape == (H, W)
    assert np.abs(img.astype(int) - np.asarray(Image.open(io.BytesIO(data)))).max() <= 1


def test_jpeg_cmyk_adobe_inverted_matches_pillow_conversion() -> None:
    cmyk = Image.fromarray(_random("uint8", 4, seed=7), "CMYK")
    data = _pil_bytes(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK" and "adobe" in im.info  # Pillow writes Photoshop's inverted CMYK
        expected = np.asarray(im.convert("RGB"))
    img = _decode(data, format="JPEG", bits=8, icc="none")
    assert img.shape == (H, W, 3)
    np.testing.assert_array_equal(img, expected)


def test_jpeg_cmyk_without_adobe_marker_is_not_inverted() -> None:
    cmyk = Image.fromarray(_random("uint8", 4, seed=8), "CMYK")
    data = _drop_jpeg_segment(_pil_bytes(cmyk, "JPEG", quality=95), 0xEE)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK" and "adobe" not in im.info
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(_decode(data, format="JPEG"), expected)


def test_jpeg_cmyk_orientation_is_applied() -> None:
    cmyk = Image.fromarray(_random("uint8", 4, seed=9), "CMYK")
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _pil_bytes(cmyk, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    img = _decode(data)
    assert img.shape == (W, H, 3)
    np.testing.assert_array_equal(img, expected)


# --- PNG --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "channels"), [("uint8", 3), ("uint16", 3), ("uint8", None), ("uint16", None)]
)
def test_png_rgb_and_grey_8_and_16_bit_are_exact(dtype: str, channels: int | None) -> None:
    a = _random(dtype, channels, seed=11)
    ok, buf = cv2.imencode(".png", a if channels is None else a[..., ::-1])
    assert ok
    img = _decode(buf.tobytes(), format="PNG", bits=8 * np.dtype(dtype).itemsize, icc="none")
    assert img.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(img, a)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_grey_plus_alpha_stays_grey(dtype: str) -> None:
    grey, alpha = _random(dtype, None, seed=12), _random(dtype, None, seed=13)
    data = _png_by_hand(np.dstack([grey, alpha]), colour_type=4)
    img = _decode(data, format="PNG")
    assert img.shape == (H, W) and img.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(img, grey)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_rgba_drops_alpha(dtype: str) -> None:
    rgba = _random(dtype, 4, seed=14)
    data = _png_by_hand(rgba, colour_type=6)
    img = _decode(data, format="PNG")
    assert img.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(img, rgba[..., :3])


@pytest.mark.filterwarnings("ignore:Palette images with Transparency expressed in bytes")
@pytest.mark.parametrize("transparency", [None, "index", "table"])
def test_png_palette_with_and_without_transparency(transparency: str | None) -> None:
    pal = Image.fromarray(_photo()).quantize(32)
    kwargs: dict[str, object] = {}
    if transparency == "index":
        kwargs["transparency"] = 5  # one fully transparent entry
    elif transparency == "table":
        kwargs["transparency"] = bytes(range(0, 256, 8))  # an alpha for each of the 32 entries
    data = _pil_bytes(pal, "PNG", **kwargs)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "P" and (transparency is None) == ("transparency" not in im.info)
        expected = np.asarray(im.convert("RGB"))
    img = _decode(data, format="PNG", bits=8)
    assert img.shape == (H, W, 3)
    np.testing.assert_array_equal(img, expected)


# --- TIFF -------------------------------------------------------------------------------------------------


TIFF_VARIANTS: dict[str, dict[str, object]] = {
    "striped": {"rowsperstrip": 7},
    "tiled": {"tile": (16, 32)},
    "bigtiff": {"bigtiff": True},
    "bigtiff-tiled-deflate": {"bigtiff": True, "tile": (16, 16), "compression": "zlib"},
    "deflate+predictor": {"compression": "zlib", "predictor": True},
    "lzw": {"compression": "lzw"},
    "zstd": {"compression": "zstd"},
    "packbits": {"compression": "packbits"},  # 8-bit samples only
}


TIFF_SAMPLES = [("uint8", 3), ("uint16", 3), ("float32", 3), ("uint16", None), ("float32", None)]


@pytest.mark.parametrize(
    ("variant", "dtype", "channels"),
    [(v, d, c) for v in sorted(TIFF_VARIANTS) for d, c in TIFF_SAMPLES if v != "packbits" or d == "uint8"],
)
def test_tiff_layouts_and_compressions_are_exact(variant: str, dtype: str, channels: int | None) -> None:
    kwargs = dict(TIFF_VARIANTS[variant])
    if dtype == "float32" and kwargs.get("predictor"):
        kwargs["predictor"] = 3  # floating-point predictor
    a = _random(dtype, channels, seed=21)
    data = _tiff_bytes(a, photometric="rgb" if channels else "minisblack", **kwargs)
    img = _decode(data, format="TIFF", bits=8 * np.dtype(dtype).itemsize, linear=dtype == "float32",
                  icc="none")
    assert img.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(img, a)


def test_tiff_planar_separate_and_alpha() -> None:
    rgb = _random("uint16", 3, seed=22)
    planes = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(_decode(_tiff_bytes(planes, photometric="rgb", planarconfig="separate")), rgb)
    rgba = np.dstack([rgb, _random("uint16", None, seed=23)])
    data = _tiff_bytes(rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    np.testing.assert_array_equal(_decode(data), rgb)
    grey_alpha = _random("uint8", 2, seed=24)
    data = _tiff_bytes(grey_alpha, photometric="minisblack", extrasamples=["assocalpha"], planarconfig="contig")
    np.testing.assert_array_equal(_decode(data), grey_alpha[..., 0])


def test_tiff_photometric_interpretations() -> None:
    grey = _random("uint8", None, seed=25)
    np.testing.assert_array_equal(_decode(_tiff_bytes(grey, photometric="miniswhite")), 255 - grey)
    grey16 = _random("uint16", None, seed=26)
    np.testing.assert_array_equal(_decode(_tiff_bytes(grey16, photometric="miniswhite")), 65535 - grey16)

    bilevel = _random("uint8", None, seed=27) > 127
    img = _decode(_tiff_bytes(bilevel, photometric="minisblack"), bits=8)
    np.testing.assert_array_equal(img, np.where(bilevel, 255, 0))

    nibbles = _random("uint8", None, seed=28) // 16
    img = _decode(_tiff_bytes(nibbles, photometric="minisblack", bitspersample=4), bits=8)
    np.testing.assert_array_equal(img, nibbles * 17)  # 4-bit codes stretched to 0–255

    twelve = _random("uint16", None, seed=29) >> 4
    img = _decode(_tiff_bytes(twelve, photometric="minisblack", bitspersample=12), bits=16)
    np.testing.assert_array_equal(img, np.round(twelve * (65535 / 4095)).astype(np.uint16))

    palette = Image.fromarray(_photo()).quantize(16)
    index = np.asarray(palette)
    colours = np.array(palette.getpalette()[: 16 * 3], np.uint16).reshape(16, 3)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :16] = colours.T * 257
    img = _decode(_tiff_bytes(index, photometric="palette", colormap=colormap), bits=8)
    np.testing.assert_array_equal(img, colours[index].astype(np.uint8))
    colormap[0, 3] += 1  # no longer an 8-bit palette: expanded to 16-bit
    img = _decode(_tiff_bytes(index, photometric="palette", colormap=colormap), bits=16)
    np.testing.assert_array_equal(img, colormap.T[index])


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_tiff_cmyk_matches_pillow_conversion(dtype: str) -> None:
    ink = _random(dtype, 4, seed=30)
    img = _decode(_tiff_bytes(ink, photometric="separated"), format="TIFF", icc="none")
    if dtype == "uint8":
        np.testing.assert_array_equal(img, np.asarray(Image.fromarray(ink, "CMYK").convert("RGB")))
    else:  # Pillow has no 16-bit CMYK: its formula, R = (1 − C)(1 − K), in floats
        assert img.dtype == np.uint16
        unit = ink / 65535.0
        expected = (1 - unit[..., :3]) * (1 - unit[..., 3:]) * 65535
        assert np.abs(img - expected).max() <= 0.5 + 1e-9


def test_tiff_jpeg_compressed_matches_tifffile_and_orientation_is_applied() -> None:
    data = _tiff_bytes(_photo(), photometric="rgb", compression="jpeg")
    np.testing.assert_array_equal(_decode(data, format="TIFF"), tifffile.imread(io.BytesIO(data)))
    rgb = _random("uint16", 3, seed=31)
    for orientation, view in [(3, rgb[::-1, ::-1]), (6, rgb[::-1].swapaxes(0, 1)), (8, rgb[:, ::-1].swapaxes(0, 1))]:
        data = _tiff_bytes(rgb, photometric="rgb", extratags=[(274, 3, 1, orientation, True)])
        np.testing.assert_array_equal(_decode(data), view)


def test_tiff_float16_and_float64_become_float32() -> None:
    for dtype in (np.float16, np.float64):
        a = _random("float32", 3, seed=32).astype(dtype)
        img = _decode(_tiff_bytes(a, photometric="rgb"), bits=32, linear=True)
        assert img.dtype == np.float32
        np.testing.assert_array_equal(img, a.astype(np.float32))


def test_unreadable_tiff_names_the_problem() -> None:
    data = _tiff_bytes(_random("uint8", 3, seed=33), photometric="rgb")
    broken = data[:8] + b"\xff" * 40  # header intact, first IFD garbage
    with pytest.raises(ImageReadError) as err:
        decode_image(broken, "broken.tif")
    msg = str(err.value)
    assert "\n" not in msg and "broken.tif" in msg and "TIFF" in msg


# --- WebP and 16-bit end to end ---------------------------------------------------------------------------


def test_webp_lossless_rgb_and_rgba_are_exact() -> None:
    rgb = _random("uint8", 3, seed=41)
    np.testing.assert_array_equal(
        _decode(_pil_bytes(Image.fromarray(rgb), "WEBP", lossless=True), format="WebP", bits=8, icc="none"), rgb
    )
    rgba = np.dstack([rgb, _random("uint8", None, seed=42)])
    data = _pil_bytes(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True, exact=True)
    np.testing.assert_array_equal(_decode(data, format="WebP"), rgb)


@pytest.mark.parametrize("fmt", ["png", "tiff", "tiff-tiled-lzw"])
def test_16_bit_gradient_stays_16_bit(fmt: str) -> None:
    grad = _gradient16()
    if fmt == "png":
        ok, buf = cv2.imencode(".png", grad[..., ::-1])
        assert ok
        data = buf.tobytes()
    else:
        kwargs = {"tile": (32, 32), "compression": "lzw"} if fmt.endswith("lzw") else {}
        data = _tiff_bytes(grad, photometric="rgb", **kwargs)
    img = _decode(data, bits=16)
    np.testing.assert_array_equal(img, grad)
    assert all(len(np.unique(img[..., c])) > 10000 for c in range(3))


def test_other_opencv_formats_report_their_names() -> None:
    rgb = _random("uint8", 3, seed=43)
    ok, buf = cv2.imencode(".bmp", rgb[..., ::-1])
    assert ok
    np.testing.assert_array_equal(_decode(buf.tobytes(), format="BMP"), rgb)
    ok, buf = cv2.imencode(".ppm", rgb[..., ::-1])
    assert ok
    np.testing.assert_array_equal(_decode(buf.tobytes(), format="PNM"), rgb)


# --- colour management ------------------------------------------------------------------------------------


GREEN = (30, 200, 40)  # a saturated Adobe RGB green, outside sRGB's gamut


def _tagged_patch() -> np.ndarray:
    """Random colours plus a block of saturated green."""
    rgb = _random("uint8", 3, seed=51)
    rgb[:10, :10] = GREEN
    return rgb


def _tagged_8bit(fmt: str, rgb: np.ndarray, icc: bytes) -> bytes:
    if fmt == "tiff":
        return _tiff_bytes(rgb, photometric="rgb", iccprofile=icc)
    if fmt == "jpeg":
        return _pil_bytes(Image.fromarray(rgb), "JPEG", quality=100, subsampling=0, icc_profile=icc)
    kwargs = {"lossless": True} if fmt == "webp" else {}
    return _pil_bytes(Image.fromarray(rgb), fmt.upper(), icc_profile=icc, **kwargs)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff", "webp"])
def test_adobe_rgb_8_bit_is_converted_like_littlecms(fmt: str) -> None:
    rgb = _tagged_patch()
    untagged = None if fmt == "jpeg" else decode_image(_tagged_8bit(fmt, rgb, b""), "untagged")
    data = _tagged_8bit(fmt, rgb, ADOBE_RGB)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) if fmt == "jpeg" else rgb
    img = _decode(data, bits=8, icc="converted:Compatible with Adobe RGB (1998)")
    expected = _pillow_srgb(stored, ADOBE_RGB)
    assert np.abs(img.astype(int) - expected).max() <= 1
    assert np.mean(img != expected) < 0.02
    green = img[2:8, 2:8].reshape(-1, 3).mean(axis=0)
    assert green[0] < 5 and green[2] < 5 and 195 < green[1] < 207, green  # out-of-gamut green clipped to sRGB
    if untagged is not None:
        np.testing.assert_array_equal(untagged, rgb)
        assert np.abs(img.astype(int) - untagged).max() > 20


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_adobe_rgb_16_bit_keeps_16_bit_precision(fmt: str) -> None:
    grad = _soft_gradient16()
    if fmt == "png":
        data = _pil_bytes(Image.new("RGB", (4, 4)), "PNG", icc_profile=ADOBE_RGB)
        iccp = data[data.index(b"iCCP") - 4 :]
        iccp = iccp[: struct.unpack(">I", iccp[:4])[0] + 12]
        data = _png_by_hand(grad, colour_type=2, extra_chunks=iccp)
    else:
        data = _tiff_bytes(grad, photometric="rgb", iccprofile=ADOBE_RGB, compression="zlib")
    img = _decode(data, bits=16, icc="converted:Compatible with Adobe RGB (1998)")
    assert img.dtype == np.uint16
    assert all(len(np.unique(img[..., c])) > 10000 for c in range(3))
    textbook = _adobe_to_srgb_textbook(grad / 65535.0) * 65535
    assert np.abs(img - textbook).max() < 0.005 * 65535  # the published matrices, within profile rounding
    # and the same conversion as LittleCMS's 8-bit one where the 16-bit codes are 8-bit codes
    codes8 = (grad[::7, ::7] // 257).astype(np.uint8)
    data8 = _tiff_bytes(codes8.astype(np.uint16) * 257, photometric="rgb", iccprofile=ADOBE_RGB)
    assert np.abs(decode_image(data8, "x") / 257 - _pillow_srgb(codes8, ADOBE_RGB)).max() <= 1.0


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff", "webp"])
def test_srgb_tagged_files_are_left_unchanged(fmt: str) -> None:
    rgb = _tagged_patch()
    for profile in (SRGB, imagecodecs.cms_profile("srgb")):
        tagged = _tagged_8bit(fmt, rgb, profile)
        plain = _tagged_8bit(fmt, rgb, b"")
        np.testing.assert_array_equal(_decode(tagged, icc="srgb"), decode_image(plain, "plain"))
    grad = _gradient16()
    data = _tiff_bytes(grad, photometric="rgb", iccprofile=SRGB)
    np.testing.assert_array_equal(_decode(data, icc="srgb"), grad)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_grey_profile_is_converted_to_srgb_grey(dtype: str) -> None:
    gamma22 = imagecodecs.cms_profile("gray", gamma=2.2)
    grey = _random(dtype, None, seed=52)
    data = _tiff_bytes(grey, photometric="minisblack", iccprofile=gamma22)
    img = _decode(data, bits=8 * np.dtype(dtype).itemsize)
    assert img.shape == (H, W) and img.dtype == np.dtype(dtype)
    top = np.iinfo(dtype).max
    expected = _srgb_encode(np.power(grey / top, 2.2)) * top
    assert np.abs(img - expected).max() <= 0.002 * top + 0.5
    assert decode_image_info(data, "x")[1]["icc"].startswith("converted:")


def test_float_tiff_is_linear_light_and_tagged_floats_become_linear_srgb() -> None:
    a = _random("float32", 3, seed=53)
    np.testing.assert_array_equal(_decode(_tiff_bytes(a, photometric="rgb"), linear=True, icc="none"), a)
    linear_srgb = imagecodecs.cms_profile(
        "rgb", whitepoint=[0.3127, 0.3290], primaries=[0.64, 0.33, 0.30, 0.60, 0.15, 0.06], gamma=1.0
    )
    img = _decode(_tiff_bytes(a, photometric="rgb", iccprofile=linear_srgb), linear=True, icc="srgb")
    np.testing.assert_array_equal(img, a)
    # a float TIFF tagged with the (encoded) sRGB profile holds encoded values: they come out linear
    img = _decode(_tiff_bytes(a, photometric="rgb", iccprofile=SRGB), linear=True, icc="converted:sRGB built-in")
    assert np.abs(img - _srgb_decode(a)).max() < 2e-3
    # light above 1 is kept through a conversion; negative out-of-gamut results are clipped at 0
    bright = np.full((4, 4, 3), 4.0, np.float32)
    img = decode_image(_tiff_bytes(bright, photometric="rgb", iccprofile=ADOBE_RGB), "x")
    assert img.min() > 1.5


def test_cmyk_with_a_profile_is_converted_through_it() -> None:
    icc = _cmyk_profile()
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    transform = ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), "CMYK", "RGB",
                                        renderingIntent=ImageCms.Intent.PERCEPTUAL)
    ink = _random("uint8", 4, seed=56)
    expected = np.asarray(ImageCms.applyTransform(Image.fromarray(ink, "CMYK"), transform))
    naive = np.asarray(Image.fromarray(ink, "CMYK").convert("RGB"))
    assert np.abs(expected.astype(int) - naive).max() > 40  # the profile matters
    img = _decode(_tiff_bytes(ink, photometric="separated", iccprofile=icc), icc="converted:Test CMYK")
    assert np.abs(img.astype(int) - expected).max() <= 1
    jpeg = _pil_bytes(Image.fromarray(ink, "CMYK"), "JPEG", quality=95, icc_profile=icc)
    with Image.open(io.BytesIO(jpeg)) as im:
        expected = np.asarray(ImageCms.applyTransform(im, transform))
    img = _decode(jpeg, format="JPEG", icc="converted:Test CMYK")
    assert np.abs(img.astype(int) - expected).max() <= 1
    # 16-bit: LittleCMS's unoptimised 16-bit pipeline, equal to its float evaluation (CMYK in 0–100 %)
    ink16 = _random("uint16", 4, seed=57)
    img = _decode(_tiff_bytes(ink16, photometric="separated", iccprofile=icc), bits=16)
    exact = imagecodecs.cms_transform((ink16 / 655.35).astype(np.float32), icc, imagecodecs.cms_profile("srgb"),
                                      colorspace="cmyk", outcolorspace="rgb")
    assert np.abs(img - np.clip(exact, 0, 1) * 65535).max() <= 1.0


def test_unusable_profiles_are_ignored() -> None:
    grey = _random("uint8", None, seed=54)
    data = _pil_bytes(Image.fromarray(grey), "PNG", icc_profile=ADOBE_RGB)  # an RGB profile on grey pixels
    np.testing.assert_array_equal(_decode(data, icc="none"), grey)
    rgb = _random("uint8", 3, seed=55)
    data = _pil_bytes(Image.fromarray(rgb), "PNG", icc_profile=b"not a profile at all" * 10)
    np.testing.assert_array_equal(_decode(data, icc="none"), rgb)


# --- region reads -----------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


REGION_CASES: dict[str, Callable[[], tuple[np.ndarray, dict[str, object]]]] = {
    "rgb16-deflate": lambda: (_random("uint16", 3, 61, (300, 410)), {"photometric": "rgb", "compression": "zlib"}),
    "rgb8-jpeg": lambda: (np.resize(_photo(), (300, 410, 3)).astype(np.uint8),
                          {"photometric": "rgb", "compression": "jpeg"}),
    "grey-float": lambda: (_random("float32", None, 62, (300, 410)), {"photometric": "minisblack"}),
    "rgb16-planar-adobe": lambda: (np.moveaxis(_random("uint16", 3, 63, (300, 410)), -1, 0).copy(),
                                   {"photometric": "rgb", "planarconfig": "separate", "iccprofile": ADOBE_RGB}),
    "grey8-miniswhite-bigtiff": lambda: (_random("uint8", None, 64, (300, 410)),
                                         {"photometric": "miniswhite", "bigtiff": True}),
    "cmyk8": lambda: (_random("uint8", 4, 65, (300, 410)), {"photometric": "separated"}),
}


@pytest.mark.parametrize("case", sorted(REGION_CASES))
def test_region_reads_equal_crops_of_the_whole_decode(tmp_path: Path, case: str) -> None:
    array, kwargs = REGION_CASES[case]()
    path = _write(tmp_path, "t.tif", _tiff_bytes(array, tile=(64, 96), **kwargs))
    whole, info = decode_image_info(path.read_bytes(), str(path))
    reader = open_region_reader(str(path))
    assert isinstance(reader, RegionReader)
    with reader:
        assert reader.shape == whole.shape[:2]
        assert reader.dtype == whole.dtype
        assert reader.channels == (1 if whole.ndim == 2 else 3)
        assert reader.info == info
        for y0, y1, x0, x1 in [(0, 300, 0, 410), (0, 1, 0, 1), (70, 201, 5, 390), (299, 300, 409, 410),
                               (64, 128, 96, 192), (10, 290, 100, 101)]:
            np.testing.assert_array_equal(reader.read(y0, y1, x0, x1), whole[y0:y1, x0:x1])
        with pytest.raises(ValueError, match="not inside"):
            reader.read(0, 301, 0, 10)
        with pytest.raises(ValueError, match="not inside"):
            reader.read(5, 5, 0, 10)


def test_region_reader_is_only_for_upright_tiled_tiffs(tmp_path: Path) -> None:
    rgb = _random("uint8", 3, seed=66)
    assert open_region_reader(str(_write(tmp_path, "strips.tif", _tiff_bytes(rgb, photometric="rgb")))) is None
    turned = _tiff_bytes(rgb, photometric="rgb", tile=(16, 16), extratags=[(274, 3, 1, 6, True)])
    assert open_region_reader(str(_write(tmp_path, "turned.tif", turned))) is None
    ok, buf = cv2.imencode(".png", rgb)
    assert ok
    assert open_region_reader(str(_write(tmp_path, "a.png", buf.tobytes()))) is None
    assert open_region_reader(str(tmp_path / "missing.tif")) is None
    assert open_region_reader(str(_write(tmp_path, "junk.tif", b"II*\x00" + b"\x00" * 20))) is None


def test_region_reader_through_fsspec_and_pickle() -> None:
    rgb = _random("uint16", 3, seed=67, shape=(200, 260))
    url = "memory://phos-dask-test/region.tif"
    with fsspec.open(url, "wb") as f:
        f.write(_tiff_bytes(rgb, photometric="rgb", tile=(32, 64), compression="zlib"))
    try:
        reader = open_region_reader(url)
        assert reader is not None
        np.testing.assert_array_equal(reader.read(30, 150, 70, 200), rgb[30:150, 70:200])
        copy = pickle.loads(pickle.dumps(reader))
        reader.close()
        np.testing.assert_array_equal(copy.read(0, 200, 0, 260), rgb)
        copy.close()
        np.testing.assert_array_equal(copy.read(199, 200, 0, 5), rgb[199:, :5])  # reopens after close
        copy.close()
    finally:
        fsspec.filesystem("memory").rm("/phos-dask-test", recursive=True)


def test_region_read_of_a_large_tiled_tiff_touches_only_its_tiles(tmp_path: Path) -> None:
    """4000×3000 uint16 RGB in 256-pixel tiles: a 512×512 window equals the crop of the full decode and
    allocates a small fraction of the whole image's 72 MB."""
    h, w = 3000, 4000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.uint32)
    image = np.empty((h, w, 3), np.uint16)
    image[..., 0] = (xx * 16 + yy) & 0xFFFF
    image[..., 1] = (yy * 21 + xx * 3) & 0xFFFF
    image[..., 2] = (xx ^ yy) * 13 & 0xFFFF
    del yy, xx
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, photometric="rgb", tile=(256, 256))
    window = (1100, 1612, 2050, 2562)  # straddles tile borders: 3×3 tiles
    expected = read_image(path)[window[0] : window[1], window[2] : window[3]]
    np.testing.assert_array_equal(expected, image[window[0] : window[1], window[2] : window[3]])
    del image
    with open_region_reader(str(path)) as reader:
        assert reader.shape == (h, w) and reader.dtype == np.uint16 and reader.channels == 3
        tracemalloc.start()
        try:
            got = reader.read(*window)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    whole_bytes = h * w * 3 * 2
    print(f"region read peak {peak / 1e6:.2f} MB, whole image {whole_bytes / 1e6:.0f} MB")
    assert peak < whole_bytes / 8, f"peak {peak / 1e6:.1f} MB for a 512×512 window"


def test_region_reads_from_several_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rgb = _random("uint16", 3, seed=68, shape=(256, 384))
    path = _write(tmp_path, "t.tif", _tiff_bytes(rgb, photometric="rgb", tile=(32, 32), compression="zlib"))
    windows = [(y, y + 70, x, x + 90) for y in range(0, 180, 30) for x in range(0, 290, 40)]
    reader = pickle.loads(pickle.dumps(open_region_reader(str(path))))  # a fresh copy: first reads race
    with reader, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda win: reader.read(*win), windows))
    for (y0, y1, x0, x1), got in zip(windows, results, strict=True):
        np.testing.assert_array_equal(got, rgb[y0:y1, x0:x1])
