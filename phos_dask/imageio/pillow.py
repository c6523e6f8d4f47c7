"""Pillow, for headers only (and CMYK JPEGs): a file opened by the plugin of its sniffed format, without
Pillow's process-wide pixel limit, and what its header says (`Header`)."""

from __future__ import annotations

import importlib
import io
import warnings

from PIL import Image

from phos_dask.imageio.decoder import Header
from phos_dask.imageio.formats import sniff

#: Our format names → Pillow's plugin module and image class, for `pillow_open`.
PILLOW_CLASSES = {
    "JPEG": ("JpegImagePlugin", "JpegImageFile"),
    "PNG": ("PngImagePlugin", "PngImageFile"),
    "TIFF": ("TiffImagePlugin", "TiffImageFile"),
    "BigTIFF": ("TiffImagePlugin", "TiffImageFile"),
    "GIF": ("GifImagePlugin", "GifImageFile"),
    "BMP": ("BmpImagePlugin", "BmpImageFile"),
    "WebP": ("WebPImagePlugin", "WebPImageFile"),
    "PNM": ("PpmImagePlugin", "PpmImageFile"),
    "PFM": ("PpmImagePlugin", "PpmImageFile"),
    "JPEG 2000": ("Jpeg2KImagePlugin", "Jpeg2KImageFile"),
}


def pillow_open(data: bytes) -> Image.Image:
    """Pillow's (lazy) image of a file's bytes, opened by the plugin of the format the bytes start like,
    without `PIL.Image.open`'s check against the process-wide `Image.MAX_IMAGE_PIXELS`: callers have checked
    the size from the header against their own limit. Other formats go through `Image.open` (and its
    limit). Raises what Pillow raises for data it cannot read."""
    where = PILLOW_CLASSES.get(sniff(data) or "")
    if where is None:
        return Image.open(io.BytesIO(data))
    plugin = importlib.import_module(f"PIL.{where[0]}")
    return getattr(plugin, where[1])(io.BytesIO(data))


def pil_header(data: bytes, exif: bool) -> Header | None:
    """Pillow's reading of the header (format, mode, size, orientation if `exif`, ICC profile), or None.

    Only JPEG's EXIF is looked at: for a PNG Pillow may decode the whole image to find an eXIf chunk (OpenCV
    applies the orientation of the other formats itself).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the decoder's error, if any, says more
            im = pillow_open(data)
            with im:
                orientation = im.getexif().get(0x0112, 1) if exif else 1
                return Header(im.format, im.mode, im.size, orientation, im.info.get("icc_profile") or None)
    except Exception:
        return None
