"""phos_dask.imageio: decoding (channel order, depth, orientation, alpha, palettes, errors) and writing."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from phos_dask.imageio import ImageReadError, read_image, write_image

H, W = 24, 36


def _pattern(dtype: str, channels: int | None, seed: int = 1) -> np.ndarray:
    """A random image whose three channels differ, so a BGR/RGB swap or a transpose shows."""
    rng = np.random.default_rng(seed)
    shape = (H, W) if channels is None else (H, W, channels)
    if dtype == "float32":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


def _exif_app1(orientation: int) -> bytes:
    """A JPEG APP1 segment holding a minimal little-endian EXIF IFD0 with only the Orientation tag."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, type SHORT, count 1, value, pad
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@pytest.mark.parametrize(
    ("ext", "dtype", "channels"),
    [
        (".png", "uint8", 3),
        (".png", "uint16", 3),
        (".png", "uint8", None),
        (".png", "uint16", None),
        (".tif", "uint8", 3),
        (".tiff", "uint16", 3),
        (".tif", "uint16", None),
        (".tif", "float32", 3),
    ],
)
def test_lossless_round_trip(tmp_path: Path, ext: str, dtype: str, channels: int | None) -> None:
    a = _pattern(dtype, channels)
    path = write_image(tmp_path / f"img{ext}", a)
    b = read_image(path)
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)


def test_jpeg_round_trip_keeps_channel_order(tmp_path: Path) -> None:
    a = np.zeros((H, W, 3), np.uint8)
    a[:, : W // 2] = (200, 40, 10)  # orange-red left half
    a[:, W // 2 :] = (10, 60, 220)  # blue right half
    b = read_image(write_image(tmp_path / "a.jpg", a))
    assert b.shape == a.shape and b.dtype == np.uint8
    assert np.abs(b.astype(int) - a).mean() < 3
    assert b[H // 2, 2, 0] > 180 and b[H // 2, -3, 2] > 200


def test_files_from_other_writers_decode_as_rgb(tmp_path: Path) -> None:
    rgb = _pattern("uint8", 3)
    cv2.imwrite(str(tmp_path / "cv.png"), rgb[:, :, ::-1])  # OpenCV stores what it is given as BGR
    np.testing.assert_array_equal(read_image(tmp_path / "cv.png"), rgb)
    rgb16 = _pattern("uint16", 3)
    tifffile.imwrite(tmp_path / "tf.tif", rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "tf.tif"), rgb16)


def test_written_tiff_is_rgb_for_other_readers(tmp_path: Path) -> None:
    rgb16 = _pattern("uint16", 3)
    write_image(tmp_path / "out.tif", rgb16)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), rgb16)
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (40, 60), (0, 0)),  # as stored: marker top-left
        (3, (40, 60), (-1, -1)),  # rotated 180°: bottom-right
        (6, (60, 40), (0, -1)),  # rotate 90° clockwise to view: top-right
        (8, (60, 40), (-1, 0)),  # rotate 90° counter-clockwise to view: bottom-left
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, shape: tuple[int, int], corner: tuple[int, int]
) -> None:
    stored = np.full((40, 60, 3), 30, np.uint8)
    stored[:12, :16] = (230, 20, 20)  # red marker in the stored top-left corner
    ok, buf = cv2.imencode(".jpg", stored[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    jpeg = buf.tobytes()
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(jpeg[:2] + _exif_app1(orientation) + jpeg[2:])  # APP1 right after SOI
    img = read_image(path)
    assert img.shape == (*shape, 3)
    cy, cx = corner
    ys = slice(0, 6) if cy == 0 else slice(-6, None)
    xs = slice(0, 6) if cx == 0 else slice(-6, None)
    patch = img[ys, xs].reshape(-1, 3).mean(axis=0)
    assert patch[0] > 180 and patch[1] < 70, patch
    # the opposite corner stays dark
    far = img[(slice(-6, None) if cy == 0 else slice(0, 6)), (slice(-6, None) if cx == 0 else slice(0, 6))]
    assert far.mean() < 60


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
def test_grey_stays_two_dimensional(tmp_path: Path, ext: str) -> None:
    grey = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    cv2.imwrite(str(tmp_path / f"g{ext}"), grey)
    img = read_image(tmp_path / f"g{ext}")
    assert img.shape == (H, W)
    assert np.abs(img.astype(int) - grey).max() <= 3


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_alpha_is_dropped_not_composited(tmp_path: Path, dtype: str) -> None:
    rgb = _pattern(dtype, 3, seed=5)
    alpha = np.zeros((H, W), dtype)
    alpha[:, W // 2 :] = np.iinfo(dtype).max // 3
    bgra = np.dstack([rgb[:, :, ::-1], alpha])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    img = read_image(tmp_path / "rgba.png")
    assert img.shape == (H, W, 3) and img.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(img, rgb)  # colour kept where alpha is 0 and where it is partial


def test_palette_png_is_expanded(tmp_path: Path) -> None:
    palette = bytes([250, 10, 10, 10, 240, 10, 10, 10, 230])  # red, green, blue
    rows = b"".join(b"\x00" + bytes([0, 1, 2, 1]) for _ in range(3))  # filter byte 0 + indices
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 3, 0, 0, 0))  # 4×3, 8-bit, colour type 3
        + _png_chunk(b"PLTE", palette)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )
    (tmp_path / "pal.png").write_bytes(png)
    img = read_image(tmp_path / "pal.png")
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[1], [[250, 10, 10], [10, 240, 10], [10, 10, 230], [10, 240, 10]])


def _one_line_naming(err: pytest.ExceptionInfo[ImageReadError], path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_corrupt_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 500)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = _one_line_naming(err, path)
    assert "JPEG" in msg


def test_truncated_png_raises(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".png", _pattern("uint8", 3))
    assert ok
    path = tmp_path / "cut.png"
    path.write_bytes(buf.tobytes()[:60])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "PNG" in _one_line_naming(err, path)


def test_not_an_image_missing_and_empty(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("just some text, not a picture\n")
    with pytest.raises(ImageReadError) as err:
        read_image(text)
    assert "not a recognised image format" in _one_line_naming(err, text)

    missing = tmp_path / "nowhere" / "x.png"
    with pytest.raises(ImageReadError) as err:
        read_image(missing)
    assert "no such file" in _one_line_naming(err, missing)

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError) as err:
        read_image(empty)
    assert "empty" in _one_line_naming(err, empty)

    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)
    assert issubclass(ImageReadError, ValueError)


def test_write_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported extension '\.gif'"):
        write_image(tmp_path / "a.gif", _pattern("uint8", 3))
    with pytest.raises(ValueError, match=r"float output can only be written as \.tif"):
        write_image(tmp_path / "a.png", _pattern("float32", 3))
    with pytest.raises(ValueError, match="float32"):
        write_image(tmp_path / "a.jpg", _pattern("float32", 3))
    with pytest.raises(ValueError, match=r"\.jpg holds uint8 data, got uint16"):
        write_image(tmp_path / "a.jpg", _pattern("uint16", 3))
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "a.png", np.zeros((4, 5, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_write_creates_parent_folders_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.PNG"
    write_image(target, _pattern("uint8", None))
    assert target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["c.PNG"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_eight_exif_orientations_match_opencv(tmp_path: Path, orientation: int) -> None:
    """JPEGs decode in place through libjpeg-turbo; OpenCV's own EXIF handling is the oracle."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = (230, 20, 20)
    stored[30:, 50:] = (20, 230, 20)
    stored[:, 28:31] = (20, 20, 230)
    ok, buf = cv2.imencode(".jpg", stored[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    jpeg = buf.tobytes()
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(jpeg[:2] + _exif_app1(orientation) + jpeg[2:])
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read_image(path), expected)


def test_a_16_bit_tiff_written_in_strips_at_deflate_level_1_reads_back_everywhere(tmp_path):
    """The fast TIFF settings (phos_dask.imageio.TIFF_WRITE) stay readable by libtiff (OpenCV), Pillow and
    tifffile, bit for bit."""
    import cv2
    import tifffile
    from PIL import Image

    from phos_dask.imageio import write_image

    rng = np.random.default_rng(4)
    image = rng.integers(0, 65535, (300, 200, 3), dtype=np.uint16)
    path = write_image(tmp_path / "x.tif", image)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.rowsperstrip == 64
        np.testing.assert_array_equal(page.asarray(), image)
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1], image)
    grey = rng.integers(0, 65535, (300, 200), dtype=np.uint16)
    write_image(tmp_path / "g.tif", grey)
    with Image.open(tmp_path / "g.tif") as im:
        np.testing.assert_array_equal(np.asarray(im), grey)
