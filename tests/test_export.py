"""Exports (JPEG / PNG / 16-bit TIFF files) and the contact sheet, from stores made by the real pipeline."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image, ImageCms

from phos_dask import Settings, thumbs
from phos_dask.contact import contact_sheet_size, write_contact_sheet
from phos_dask.export import ExportError, _names, export_store
from phos_dask.samples import to_codes
from phos_dask.storage import Location

MAKE, MODEL = "PhosTestCam", "Model X1"
KEYS = ["plain.png", "rotated.jpg", "sub_dir__grey.png"]
NAMES = {"jpeg": ["plain.jpg", "rotated.jpg", "sub dir/grey.jpg"],
         "png": ["plain.png", "rotated.png", "sub dir/grey.png"],
         "tiff16": ["plain.tif", "rotated.tif", "sub dir/grey.tif"]}


def _exif_app1(orientation: int, size_wh: tuple[int, int]) -> bytes:
    """A JPEG APP1 segment with a little-endian EXIF: IFD0 Make, Model, Orientation and a pointer to an
    Exif IFD holding PixelXDimension / PixelYDimension (the stored size)."""
    make, model = MAKE.encode() + b"\x00", MODEL.encode() + b"\x00"
    ifd0_size = 2 + 12 * 4 + 4
    exif_ifd_at = 8 + ifd0_size
    data_at = exif_ifd_at + 2 + 12 * 2 + 4
    ifd0 = (struct.pack("<H", 4)
            + struct.pack("<HHII", 0x010F, 2, len(make), data_at)
            + struct.pack("<HHII", 0x0110, 2, len(model), data_at + len(make))
            + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
            + struct.pack("<HHII", 0x8769, 4, 1, exif_ifd_at)
            + struct.pack("<I", 0))
    exif_ifd = (struct.pack("<H", 2) + struct.pack("<HHII", 0xA002, 4, 1, size_wh[0])
                + struct.pack("<HHII", 0xA003, 4, 1, size_wh[1]) + struct.pack("<I", 0))
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + exif_ifd + make + model
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.fixture(scope="module")
def cluster():
    from phos_dask.cluster import connect

    with connect(workers=2, dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory, small_photo) -> Path:
    """rotated.jpg (stored 300×200, EXIF orientation 6 → upright 200×300, with Make/Model), plain.png
    (16-bit colour, 240×180) and 'sub dir/grey.png' (8-bit grey, 200×150)."""
    src = tmp_path_factory.mktemp("export") / "src"
    (src / "sub dir").mkdir(parents=True)
    bgr = cv2.cvtColor(small_photo, cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(bgr, (300, 200), interpolation=cv2.INTER_AREA))
    assert ok
    jpeg = jpeg.tobytes()
    (src / "rotated.jpg").write_bytes(jpeg[:2] + _exif_app1(6, (300, 200)) + jpeg[2:])
    plain = cv2.resize(bgr, (240, 180), interpolation=cv2.INTER_AREA).astype(np.uint16) * 256 + 77
    cv2.imwrite(str(src / "plain.png"), plain)
    grey = cv2.cvtColor(cv2.resize(bgr, (200, 150), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(src / "sub dir" / "grey.png"), grey)
    return src


def _store(cluster, source: Path, out: Path, film: str, dtype: str, include: tuple[str, ...] = ()) -> Path:
    from phos_dask.job import JobSpec, run_job

    spec = JobSpec(source=str(source), out=str(out), settings=Settings(film=film, dtype=dtype, seed=7),
                   include=include)
    report = run_job(spec, cluster)
    assert report["counts"]["failed"] == 0, report
    return out


@pytest.fixture(scope="module")
def colour16(cluster, source, tmp_path_factory) -> Path:
    return _store(cluster, source, tmp_path_factory.mktemp("s") / "colour16.zarr", "Portra400", "uint16")


@pytest.fixture(scope="module")
def grey8(cluster, source, tmp_path_factory) -> Path:
    return _store(cluster, source, tmp_path_factory.mktemp("s") / "grey8.zarr", "HP5Plus400", "uint8")


@pytest.fixture(scope="module")
def colour_f16(cluster, source, tmp_path_factory) -> Path:
    return _store(cluster, source, tmp_path_factory.mktemp("s") / "f16.zarr", "Portra400", "float16",
                  include=("rotated.jpg",))


def _level0(store: Path, key: str) -> np.ndarray:
    """Level 0 as (h, w, 3) or (h, w)."""
    a = zarr.open_group(str(store), mode="r")[key]["0"][...]
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)


def _to8(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _icc(path: Path) -> ImageCms.ImageCmsProfile:
    if path.suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            data = bytes(tif.pages[0].tags[34675].value)
    else:
        with Image.open(path) as im:
            data = im.info["icc_profile"]
    return ImageCms.ImageCmsProfile(io.BytesIO(data))


def _assert_srgb(path: Path, channels: int) -> None:
    """sRGB, or for grey LittleCMS's grey profile with sRGB's curve (its description is LittleCMS's
    "gray built-in"; what it does is checked in test_grey_store_exports_grey_files_with_a_grey_profile)."""
    profile = _icc(path)
    assert ("sRGB" if channels == 3 else "gray") in ImageCms.getProfileDescription(profile), path
    assert profile.profile.xcolor_space == ("RGB " if channels == 3 else "GRAY"), path


def _exif(path: Path) -> Image.Exif:
    with Image.open(path) as im:
        return im.getexif()


def test_jpeg_export_names_pixels_profile_and_exif(colour16: Path, tmp_path: Path) -> None:
    results = export_store(str(colour16), str(tmp_path), "jpeg")
    assert [r["key"] for r in results] == KEYS
    assert all(r["status"] == "written" and r["error"] is None for r in results), results
    assert _files(tmp_path) == NAMES["jpeg"]
    assert {Path(r["path"]).relative_to(tmp_path).as_posix() for r in results} == set(NAMES["jpeg"])
    for key, name in zip(KEYS, NAMES["jpeg"], strict=True):
        with Image.open(tmp_path / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            got = np.asarray(im)
        want = _to8(_level0(colour16, key))
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want).mean() < 5, name  # quality 92 on grain: about 4.2
        _assert_srgb(tmp_path / name, 3)
    export_store(str(colour16), str(tmp_path / "q100"), "jpeg", quality=100)
    for key, name in zip(KEYS, NAMES["jpeg"], strict=True):
        with Image.open(tmp_path / "q100" / name) as im:
            assert np.abs(np.asarray(im).astype(int) - _to8(_level0(colour16, key))).mean() < 1, name
    exif = _exif(tmp_path / "rotated.jpg")
    assert exif[0x0112] == 1  # the pixels are upright already
    assert exif[0x010F] == MAKE and exif[0x0110] == MODEL
    assert _level0(colour16, "rotated.jpg").shape[:2] == (300, 200)
    assert dict(exif.get_ifd(0x8769))[0xA002] == 200 and dict(exif.get_ifd(0x8769))[0xA003] == 300
    assert not len(_exif(tmp_path / "plain.jpg"))  # the PNG input had none


@pytest.mark.parametrize("shape", [(48, 64, 3), (33, 17), (20, 30, 3)])
@pytest.mark.parametrize("with_exif", [False, True])
def test_jpeg_bytes_are_pillows_for_the_same_pixels_profile_and_exif(shape, with_exif) -> None:
    """The JPEG writer (libjpeg-turbo through imagecodecs, its metadata segments added by the package) writes
    an image of one band byte for byte as Pillow's writer does with the same quality, 4:4:4, profile and
    EXIF; a profile longer than one segment is split as Pillow splits it."""
    from phos_dask import encode

    image = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    exif = None
    if with_exif:
        block = Image.Exif()
        block[0x010F] = MAKE
        exif = block.tobytes()
    icc = encode.srgb_icc() if image.ndim == 3 else encode.grey_icc()
    if shape == (20, 30, 3):
        icc = bytes(range(256)) * 600  # 153 600 bytes: three APP2 segments
    want = io.BytesIO()
    Image.fromarray(image).save(want, "JPEG", quality=90, subsampling=0, icc_profile=icc,
                                **({"exif": exif} if exif else {}))
    assert encode._jpeg(image, icc, 90, exif) == want.getvalue()


@pytest.mark.parametrize(("shape", "band_rows"), [((1000, 600, 3), 256), ((517, 300), 256), ((300, 16400), 248),
                                                 ((2600, 40), 256)])
def test_a_jpeg_of_several_bands_decodes_to_the_pixels_of_one_stream_everywhere(shape, band_rows, monkeypatch):
    """A JPEG taller than one band is encoded in bands joined by restart markers: libjpeg-turbo, Pillow and
    OpenCV decode it to exactly the pixels of Pillow's single-stream file of the same image; its restart
    interval is one band (fewer rows when the image is so wide that 32 rows of blocks pass 65535 blocks); its
    bytes do not depend on how many cores encoded it. (2600 rows: 11 bands, the markers RST0-7 in turn.)"""
    import imagecodecs

    from phos_dask import encode

    image = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 3] //= 4  # bands that differ in content
    icc = encode.srgb_icc() if image.ndim == 3 else encode.grey_icc()
    data = encode._jpeg(image, icc, 92, None)
    monkeypatch.setattr(encode, "_cores", lambda: 1)
    assert encode._jpeg(image, icc, 92, None) == data
    dri = data.index(b"\xff\xdd")
    assert struct.unpack(">H", data[dri + 4 : dri + 6])[0] == -(-shape[1] // 8) * band_rows // 8
    bands = -(-shape[0] // band_rows)
    assert sum(data.count(bytes((0xFF, 0xD0 + k))) for k in range(8)) == bands - 1  # FF is stuffed in a scan
    single = io.BytesIO()
    Image.fromarray(image).save(single, "JPEG", quality=92, subsampling=0, icc_profile=icc)
    want = imagecodecs.jpeg8_decode(single.getvalue())
    np.testing.assert_array_equal(imagecodecs.jpeg8_decode(data), want)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["icc_profile"] == icc
        np.testing.assert_array_equal(np.asarray(im), want)
    flag = cv2.IMREAD_COLOR if image.ndim == 3 else cv2.IMREAD_GRAYSCALE
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), flag),
                                  cv2.imdecode(np.frombuffer(single.getvalue(), np.uint8), flag))


def test_png_export_is_exact_and_keeps_exif(colour16: Path, tmp_path: Path) -> None:
    results = export_store(str(colour16), str(tmp_path), "png")
    assert {r["status"] for r in results} == {"written"}
    assert _files(tmp_path) == NAMES["png"]
    for key, name in zip(KEYS, NAMES["png"], strict=True):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "RGB"
            got = np.asarray(im)
        np.testing.assert_array_equal(got, _to8(_level0(colour16, key)))
        _assert_srgb(tmp_path / name, 3)
    exif = _exif(tmp_path / "rotated.png")
    assert exif[0x0112] == 1 and exif[0x010F] == MAKE


def test_tiff16_keeps_every_16_bit_value(colour16: Path, tmp_path: Path) -> None:
    export_store(str(colour16), str(tmp_path), "tiff16")
    assert _files(tmp_path) == NAMES["tiff16"]
    for key, name in zip(KEYS, NAMES["tiff16"], strict=True):
        got = tifffile.imread(tmp_path / name)
        want = _level0(colour16, key)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)
        _assert_srgb(tmp_path / name, 3)
    assert np.any(_level0(colour16, "plain.png") % 257)  # really 16-bit data, not 8-bit ×257


def test_grey_store_exports_grey_files_with_a_grey_profile(grey8: Path, tmp_path: Path) -> None:
    for fmt in ("png", "tiff16", "jpeg"):
        results = export_store(str(grey8), str(tmp_path / fmt), fmt)
        assert {r["status"] for r in results} == {"written"}
    for key, png, tif, jpg in zip(KEYS, NAMES["png"], NAMES["tiff16"], NAMES["jpeg"], strict=True):
        level = _level0(grey8, key)
        assert level.ndim == 2 and level.dtype == np.uint8
        with Image.open(tmp_path / "png" / png) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), level)
        got16 = tifffile.imread(tmp_path / "tiff16" / tif)
        assert got16.dtype == np.uint16
        np.testing.assert_array_equal(got16, level.astype(np.uint16) * 257)
        with Image.open(tmp_path / "jpeg" / jpg) as im:
            assert im.mode == "L"
            assert np.abs(np.asarray(im).astype(int) - level).mean() < 3  # quality 92 on grain: about 2.2
        for path in (tmp_path / "png" / png, tmp_path / "tiff16" / tif, tmp_path / "jpeg" / jpg):
            _assert_srgb(path, 1)
    # the grey profile maps every code to the same sRGB grey (it is sRGB's tone curve)
    profile = _icc(tmp_path / "png" / NAMES["png"][0])
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8)[None], "L")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    mapped = np.asarray(ImageCms.applyTransform(ramp, ImageCms.buildTransform(profile, srgb, "L", "RGB")))
    assert np.abs(mapped[0].astype(int) - np.arange(256)[:, None]).max() <= 1
    assert _exif(tmp_path / "png" / "rotated.png")[0x010F] == MAKE


def test_float16_store_is_srgb_encoded(colour_f16: Path, colour16: Path, tmp_path: Path) -> None:
    export_store(str(colour_f16), str(tmp_path / "t"), "tiff16")
    export_store(str(colour_f16), str(tmp_path / "p"), "png")
    assert _files(tmp_path / "t") == ["rotated.tif"]
    linear = _level0(colour_f16, "rotated.jpg").astype(np.float64)
    assert linear.min() >= 0 and linear.max() <= 1
    x = np.clip(linear, 0, 1)
    encoded = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    want16 = np.floor(encoded * 65535 + 0.5).astype(np.uint16)
    got16 = tifffile.imread(tmp_path / "t" / "rotated.tif")
    np.testing.assert_array_equal(got16, want16)
    with Image.open(tmp_path / "p" / "rotated.png") as im:
        got8 = np.asarray(im)
    np.testing.assert_array_equal(got8, np.floor(encoded * 255 + 0.5).astype(np.uint8))
    # the same render stored as uint16 sRGB codes agrees to float16's precision
    ref16 = _level0(colour16, "rotated.jpg")
    assert np.abs(got16.astype(int) - ref16).max() <= 20
    assert np.abs(got8.astype(int) - _to8(ref16)).max() <= 1


def test_to_codes_conversions() -> None:
    u16 = np.array([0, 128, 129, 385, 386, 32896, 65535], np.uint16)
    np.testing.assert_array_equal(to_codes(u16, 8), [0, 0, 1, 1, 2, 128, 255])
    np.testing.assert_array_equal(to_codes(u16, 16), u16)
    u8 = np.array([0, 1, 128, 255], np.uint8)
    np.testing.assert_array_equal(to_codes(u8, 16), [0, 257, 32896, 65535])
    np.testing.assert_array_equal(to_codes(u8, 8), u8)
    f = np.array([0, 0.5, 1, -1, 2, np.nan, np.inf, 0.001], np.float16)
    np.testing.assert_array_equal(to_codes(f, 8), [0, 188, 255, 0, 255, 0, 255, 3])
    assert to_codes(f, 16)[1] == round((1.055 * float(np.float16(0.5)) ** (1 / 2.4) - 0.055) * 65535)


@pytest.mark.parametrize("shape", [(2250, 3000), (4001, 2999), (300, 9000), (816, 1224), (300, 400)])
def test_an_input_thumbnail_is_the_area_mean_of_the_whole_input(shape) -> None:
    """A worker's thumbnail of an input (8-bit RGB) is OpenCV's one-step area average at the thumbnail's size
    within a code, on gradients and on a hard checker pattern near the thumbnail's resolution alike:
    landscape, portrait with odd sides, a panorama, a 1 MP photo's size and a small photo (OpenCV's own)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 255 // w), (y * 255 // h), ((x // 37 + y // 41) % 2) * 255], axis=2).astype(np.uint8)
    image[h // 3 : h // 3 + 40, w // 4 : w // 4 + 60] = (255, 0, 40)
    got = thumbs.source_thumb(image)
    s = min(256 / h, 256 / w)
    want = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    assert got.shape == want.shape and max(got.shape[:2]) == 256
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16])
@pytest.mark.parametrize("channels", [3, 1])
def test_a_result_thumbnail_is_the_area_mean_of_the_stored_level_in_8_bit_codes(dtype, channels) -> None:
    """Whatever the order of averaging and conversion, the thumbnail of a stored level is within a code of
    its 8-bit codes area-averaged to the thumbnail's size, channel for channel (grey as three equal ones)."""
    rng = np.random.default_rng(7)
    h, w = 408, 612
    y, x = np.mgrid[0:h, 0:w]
    ramps = [x / w, y / h, (x + y) / (w + h)][:channels]
    level = np.stack([np.clip(r + rng.normal(0, 0.05, (h, w)), 0, 1) for r in ramps])
    codes = level if dtype == np.float16 else np.round(level * np.iinfo(dtype).max)  # float16: linear light
    level = codes.astype(dtype)
    want = cv2.resize(np.moveaxis(to_codes(level, 8), 0, -1), (256, 171), interpolation=cv2.INTER_AREA)
    want = np.repeat(want[:, :, None], 3, axis=2) if channels == 1 else want
    got = thumbs.result_thumb(level)
    assert got.shape == (171, 256, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    if channels == 3:  # the channels keep their order
        assert got[:, -1, 0].mean() > 200 > got[:, 0, 0].mean() and got[-1, :, 1].mean() > 200 > got[0, :, 1].mean()


def test_contact_sheet(colour16: Path, source: Path) -> None:
    path = write_contact_sheet(str(colour16))
    assert path == str(colour16 / "_phos" / "contact.jpg")
    with Image.open(path) as im:
        assert im.format == "JPEG"
        sheet = np.asarray(im.convert("RGB"))
    assert contact_sheet_size(3, 256) == (1656, 329)  # 3 pairs of 2×256 px + 8 px, 24 px margins
    assert sheet.shape == (329, 1656, 3)
    # first pair: plain.png (240×180 → 256×192), input against the right edge of its square, result
    # against the left edge of the next, both centred vertically
    y0, x0 = 24 + (256 - 192) // 2, 24
    left = sheet[y0:y0 + 192, x0:x0 + 256].astype(int)
    right = sheet[y0:y0 + 192, x0 + 264:x0 + 264 + 256].astype(int)
    src = cv2.cvtColor(cv2.imread(str(source / "plain.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    want_src = cv2.resize(_to8(src), (256, 192), interpolation=cv2.INTER_LINEAR).astype(int)
    want_out = cv2.resize(_to8(_level0(colour16, "plain.png")), (256, 192), interpolation=cv2.INTER_LINEAR)
    err = {(a, b): np.abs(x - y).mean() for a, x in (("left", left), ("right", right))
           for b, y in (("src", want_src), ("out", want_out.astype(int)))}
    assert err["left", "src"] < 4 and err["right", "out"] < 8, err  # a quality-90 JPEG of grain
    assert err["left", "src"] < err["left", "out"] / 2 and err["right", "out"] < err["right", "src"] / 2, err
    # at most max_images pairs; four per row
    small = write_contact_sheet(str(colour16), path=str(colour16.parent / "two.jpg"), max_images=2, thumb=64)
    with Image.open(small) as im:
        assert im.size == contact_sheet_size(2, 64) == (2 * 132 + 3 * 12, 64 + 14 + 2 * 12)
    assert contact_sheet_size(9, 64) == (4 * 132 + 5 * 12, 3 * 78 + 4 * 12)


def test_the_contact_sheet_never_reads_an_input(cluster, source: Path, tmp_path: Path) -> None:
    """The sheet is built from the thumbnails the tasks made: with every input gone, it still shows them."""
    moved = tmp_path / "src"
    shutil.copytree(source, moved)
    store = _store(cluster, moved, tmp_path / "s.zarr", "Portra400", "uint8")
    shutil.rmtree(moved)
    sheet = write_contact_sheet(str(store), thumb=64)
    with Image.open(sheet) as im:
        grid = np.asarray(im.convert("RGB")).astype(int)
    src = cv2.cvtColor(cv2.imread(str(source / "plain.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    want = cv2.resize(_to8(src), (64, 48), interpolation=cv2.INTER_AREA).astype(int)
    y0 = 12 + (64 - 48) // 2
    assert np.abs(grid[y0:y0 + 48, 12:76] - want).mean() < 6  # plain.png's input, not a placeholder


def test_incomplete_images_missing_sources_and_changed_sources(colour16: Path, source: Path,
                                                               tmp_path: Path) -> None:
    store = tmp_path / "copy.zarr"
    shutil.copytree(colour16, store)
    root = zarr.open_group(str(store), mode="a")
    root["sub_dir__grey.png"].attrs.update({"phos": {"status": "in-progress"}})
    gone = dict(root["plain.png"].attrs)["phos"]
    root["plain.png"].attrs.update({"phos": {**gone, "source": {**gone["source"], "url": str(tmp_path / "x.png")}}})
    changed = tmp_path / "changed.jpg"
    changed.write_bytes((source / "rotated.jpg").read_bytes() + b"\x00")
    phos = dict(root["rotated.jpg"].attrs)["phos"]
    root["rotated.jpg"].attrs.update({"phos": {**phos, "source": {**phos["source"], "url": str(changed)}}})

    results = export_store(str(store), str(tmp_path / "out"), "jpeg", quality=80)
    assert [(r["key"], r["status"]) for r in results] == [("plain.png", "written"), ("rotated.jpg", "written")]
    assert _files(tmp_path / "out") == ["plain.jpg", "rotated.jpg"]
    assert not len(_exif(tmp_path / "out" / "rotated.jpg"))  # the file is not the one rendered: no EXIF

    asked = export_store(str(store), str(tmp_path / "k"), "png", keys=["rotated.jpg", "sub_dir__grey.png", "nope"])
    assert [(r["key"], r["status"]) for r in asked] == [
        ("nope", "failed"), ("rotated.jpg", "written"), ("sub_dir__grey.png", "failed")]
    assert "not a complete image" in asked[0]["error"]

    _drop_thumbnails(store, "plain.png")  # as a store from before thumbnails were stored
    sheet = write_contact_sheet(str(store), thumb=64)
    with Image.open(sheet) as im:
        grid = np.asarray(im.convert("RGB")).astype(int)
    assert grid.shape == (contact_sheet_size(2, 64)[1], contact_sheet_size(2, 64)[0], 3)
    # plain.png has no stored thumbnails: its input is never decoded by the sheet, it is a mid-grey
    # placeholder the shape of the result (64×48)
    y0 = 12 + (64 - 48) // 2
    assert np.abs(grid[y0 + 2:y0 + 46, 14:74] - 128).max() <= 6
    # as the job names its images (keys): the store is opened for plain.png's result all the same
    named = write_contact_sheet(str(store), path=str(tmp_path / "named.jpg"), thumb=64,
                                keys=["plain.png", "rotated.jpg"])
    with Image.open(named) as im:
        assert np.abs(np.asarray(im.convert("RGB")).astype(int) - grid).mean() < 2


def _drop_thumbnails(store: Path, key: str) -> None:
    """Rewrite the store's thumbnail packs as one without `key`'s."""
    out = Location.of(str(store))
    pairs, packs = thumbs.read_packs(out)
    assert key in pairs
    for name in packs:
        (store / "_phos" / "thumbs" / name).unlink()
    out.put("_phos/thumbs/0-rewritten-0.zip", thumbs.pack({k: v for k, v in pairs.items() if k != key}))


def test_output_names_stay_unique() -> None:
    names = _names(["a.jpg", "a.png", "sub/b.tif", "sub/B.TIF", "c"], ".png")
    assert names["a.jpg"] == "a.jpg.png" and names["a.png"] == "a.png.png"
    assert names["c"] == "c.png"
    assert names["sub/b.tif"] != names["sub/B.TIF"]
    assert len({n.lower() for n in names.values()}) == 5


def test_export_to_an_fsspec_url_and_errors(colour16: Path, tmp_path: Path) -> None:
    results = export_store(str(colour16), "memory://phos-export-test", "png", keys=["sub_dir__grey.png"])
    assert results[0]["status"] == "written"
    written = results[0]["path"]
    assert written.startswith("memory://") and written.endswith("/phos-export-test/sub dir/grey.png")
    with fsspec.open(results[0]["path"], "rb") as f, Image.open(f) as im:
        assert im.size == (200, 150)
    with pytest.raises(ExportError, match="no output store"):
        export_store(str(tmp_path / "missing.zarr"), str(tmp_path / "d"), "png")
    with pytest.raises(ExportError, match="unknown export format"):
        export_store(str(colour16), str(tmp_path / "d"), "gif")
    with pytest.raises(ExportError, match="quality"):
        export_store(str(colour16), str(tmp_path / "d"), "jpeg", quality=0)
    empty = tmp_path / "empty.zarr"
    zarr.open_group(str(empty), mode="w")
    assert write_contact_sheet(str(empty)) is None and export_store(str(empty), str(tmp_path / "d"), "png") == []
