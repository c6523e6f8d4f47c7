"""Issue 15 §5: a well-behaved library. No process-wide state changes on import or call; `preview` and
`export` write through one encoder (4:4:4 JPEG, ICC profiles); grey files carry a grey profile."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, JpegImagePlugin

from phos_dask import encode, export
from phos_dask.imageio import decode_image_info, read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _pattern(dtype: str, grey: bool = False, shape: tuple[int, int] = (48, 72)) -> np.ndarray:
    rng = np.random.default_rng(3)
    top = 1.0 if dtype == "float32" else np.iinfo(dtype).max
    a = rng.random((*shape, 3)) * top
    a = a[..., 1] if grey else a
    return a.astype(dtype)


#: Run in a fresh interpreter: every public path that reads, renders or writes, with Pillow's limit set very
#: low and OpenCV's log level set by "the user"; afterwards both, and the environment, are as they were.
_SCRIPT = r"""
import hashlib, json, os, sys, warnings
import cv2, numpy as np, tifffile
from PIL import Image

Image.MAX_IMAGE_PIXELS = 1000  # the user's own (low) limit: the package neither needs nor changes it
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
warnings.simplefilter("error", Image.DecompressionBombWarning)
env = dict(os.environ)

import phos_dask
from phos_dask import Settings, encode, export, render
from phos_dask.imageio import decode_image_info, open_region_reader, read_image, write_image

folder = sys.argv[1]
rng = np.random.default_rng(0)
rgb = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
exif = Image.Exif()
exif[0x0112] = 6  # rotate 90° clockwise to view
exif[0x010F] = "Maker"
Image.fromarray(rgb).save(f"{folder}/in.jpg", quality=95, exif=exif.tobytes(), icc_profile=encode.srgb_icc())
Image.fromarray(rgb).save(f"{folder}/in.png")
tifffile.imwrite(f"{folder}/tiled.tif", rgb, tile=(32, 32), photometric="rgb")
out = {}
image, info = decode_image_info(open(f"{folder}/in.jpg", "rb").read(), "in.jpg")
out["jpeg"] = [list(image.shape), info["icc"]]
out["png"] = list(read_image(f"{folder}/in.png").shape)
with open_region_reader(f"{folder}/tiled.tif") as reader:
    out["region"] = bool((reader.read(10, 40, 5, 70) == rgb[10:40, 5:70]).all())
result = render(read_image(f"{folder}/in.png"), Settings(film="Portra400", seed=1))
for ext in (".jpg", ".png", ".tif"):
    write_image(f"{folder}/out{ext}", result)
export.encode(result, "jpeg")
data = open(f"{folder}/in.jpg", "rb").read()
phos = {"source": {"url": f"{folder}/in.jpg", "sha256": hashlib.sha256(data).hexdigest()}}
block = export.source_exif(phos, (60, 90))
out["exif"] = Image.Exif().load(block) is None and block is not None
out["max_image_pixels"] = Image.MAX_IMAGE_PIXELS
out["cv2_log_level"] = cv2.utils.logging.getLogLevel()
out["env_changed"] = sorted(set(os.environ.items()) ^ set(env.items()))
print(json.dumps(out))
"""


def test_no_process_wide_state_changes_on_import_or_call(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["max_image_pixels"] == 1000
    assert out["cv2_log_level"] == 3  # LOG_LEVEL_WARNING, as the "user" set it
    assert out["env_changed"] == []
    # and every read worked although Pillow's own limit (1000 px) is far below these images
    assert out["jpeg"] == [[90, 60, 3], "srgb"]
    assert out["png"] == [60, 90, 3]
    assert out["region"] is True
    assert out["exif"] is True


def test_preview_writes_a_4_4_4_jpeg_with_an_srgb_profile(tmp_path: Path):
    src = write_image(tmp_path / "in.png", read_image(EXAMPLES / "coffee.jpg")[120:184, 250:346])
    out = tmp_path / "out.jpg"
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "preview", str(src), "-o", str(out),
                           "--film", "Portra400"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.mode == "RGB"
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4 (4:2:0 would be 2)
        assert im.info["icc_profile"] == encode.srgb_icc()
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(encode.srgb_icc()))).startswith("sRGB")


@pytest.mark.parametrize(
    ("ext", "fmt", "dtype", "grey"),
    [
        (".jpg", "jpeg", "uint8", False),
        (".jpg", "jpeg", "uint8", True),
        (".png", "png", "uint8", False),
        (".png", "png", "uint8", True),
        (".tif", "tiff16", "uint16", False),
        (".tif", "tiff16", "uint16", True),
    ],
)
def test_preview_and_export_give_identical_bytes(tmp_path: Path, ext: str, fmt: str, dtype: str, grey: bool):
    pixels = _pattern(dtype, grey)
    written = write_image(tmp_path / f"p{ext}", pixels).read_bytes()
    assert written == export.encode(pixels, fmt)
    assert written == encode.encode(pixels, "tiff" if fmt == "tiff16" else fmt)


def _profile_of(path: Path) -> bytes:
    if path.suffix == ".tif":
        with tifffile.TiffFile(path) as tf:
            return bytes(tf.pages.first.tags[34675].value)
    with Image.open(path) as im:
        return im.info["icc_profile"]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
def test_grey_files_carry_a_grey_profile_that_reads_as_srgb(tmp_path: Path, ext: str):
    grey = _pattern("uint8" if ext != ".tif" else "uint16", grey=True)
    path = write_image(tmp_path / f"g{ext}", grey)
    icc = _profile_of(path)
    assert icc == encode.grey_icc()
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "GRAY"
    image, info = decode_image_info(path.read_bytes(), path.name)
    assert info["icc"] == "srgb"  # the reader leaves the codes as they are
    if ext != ".jpg":
        np.testing.assert_array_equal(image, grey)


def test_colour_files_carry_srgb_and_float_tiffs_linear_srgb(tmp_path: Path):
    for ext, dtype in ((".png", "uint16"), (".tif", "uint8")):
        path = write_image(tmp_path / f"c{ext}", _pattern(dtype))
        assert _profile_of(path) == encode.srgb_icc()
    linear = _pattern("float32")
    path = write_image(tmp_path / "f.tif", linear)
    assert _profile_of(path) == encode.icc_profile(3, linear=True) != encode.srgb_icc()
    image, info = decode_image_info(path.read_bytes(), path.name)
    assert info["icc"] == "srgb"  # linear sRGB is what float data are taken to be: untouched
    np.testing.assert_array_equal(image, linear)


def test_profiles_are_the_same_bytes_in_every_process():
    code = "from phos_dask import encode; print(encode.srgb_icc().hex(), encode.grey_icc().hex())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [encode.srgb_icc().hex(), encode.grey_icc().hex()]


def test_png_exif_is_an_exif_chunk_and_jpeg_exif_an_app1_segment(tmp_path: Path):
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif[0x0112] = 1
    block = exif.tobytes()
    pixels = _pattern("uint8")
    for fmt in ("png", "jpeg"):
        with Image.open(io.BytesIO(encode.encode(pixels, fmt, exif=block))) as im:
            assert im.getexif()[0x010F] == "Maker", fmt
    png = encode.encode(pixels, "png", exif=block)
    at = png.index(b"eXIf")
    assert png[at + 4 : at + 6] in (b"II", b"MM")  # the TIFF structure itself, no "Exif\0\0"
