"""Reading and writing ordinary image files (spec stage S0 and the preview's output).

`read_image` and `decode_image` decode JPEG, PNG, TIFF/BigTIFF, WebP, BMP, AVIF, JPEG 2000, PNM, camera
RAW, … and return the array the film model takes: RGB channel order (never BGR), the file's own bit depth
(uint8, uint16 or float32), EXIF orientation applied, grey kept 2-D, alpha dropped (not composited),
palettes expanded, CMYK converted to RGB, and the pixels in sRGB: an embedded ICC profile other than sRGB
is converted first. `decode_image_info` returns the same array and what the decoder learned (format, bit
depth, linear light, what became of the ICC profile). `open_region_reader` reads windows of a tiled TIFF,
decoding only the tiles a window touches. `write_image` writes .jpg/.jpeg, .png and .tif/.tiff.

The package, one concern a module:

| module | holds |
| --- | --- |
| `formats` | extension sets, sniffing, the pixel limit, structural checks (light: no image library) |
| `decoder` | the `Decoder` protocol (`info`, then `decode`), `Header`, `Decoded`, the orientations |
| `decode` | the dispatcher `decode_image_info` (format → decoder → colour → orientation), `read_image` |
| `jpeg`, `tiff`, `raw`, `opencv` | the decoder families (libjpeg-turbo/Pillow, tifffile, LibRaw, OpenCV) |
| `pillow` | headers read through Pillow's plugins (`pillow_open`) |
| `colour` | ICC colour management to sRGB (LittleCMS through imagecodecs) |
| `region` | `RegionReader`: region reads of tiled TIFFs |
| `write` | `write_image`, `check_writable` (encoding is `phos_dask.encode`'s) |

The names below are loaded on first use (PEP 562), so importing `phos_dask.imageio.formats` alone (as
`phos_dask.sources` does) loads neither OpenCV, tifffile nor imagecodecs.

Nothing here changes process-wide state: Pillow's `MAX_IMAGE_PIXELS`, OpenCV's environment and log level
are left as the caller set them. The pixel limit that applies is this package's own (`max_pixels`, checked
from the header before anything is decoded); Pillow reads headers through its format plugins directly, so
its global limit neither refuses nor warns about an image this package has accepted. OpenCV, which decodes
PNG, BMP, GIF, … here, keeps its own limit of 2**30 px unless the process sets OPENCV_IO_MAX_IMAGE_PIXELS
before cv2 is loaded (`python -m phos_dask` and the worker processes of its local clusters do).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phos_dask.imageio.decode import decode_image, decode_image_info, read_image
    from phos_dask.imageio.formats import DEFAULT_MAX_PIXELS, RAW_EXTENSIONS, ImageReadError, check_pixels
    from phos_dask.imageio.pillow import pillow_open
    from phos_dask.imageio.region import RegionReader, open_region_reader
    from phos_dask.imageio.write import JPEG_QUALITY, TIFF_WRITE, WRITE_FORMATS, check_writable, write_image

#: Public name → the module of this package that holds it.
_HOME = {
    "DEFAULT_MAX_PIXELS": "formats",
    "RAW_EXTENSIONS": "formats",
    "ImageReadError": "formats",
    "check_pixels": "formats",
    "decode_image": "decode",
    "decode_image_info": "decode",
    "read_image": "decode",
    "pillow_open": "pillow",
    "RegionReader": "region",
    "open_region_reader": "region",
    "JPEG_QUALITY": "write",
    "TIFF_WRITE": "write",
    "WRITE_FORMATS": "write",
    "check_writable": "write",
    "write_image": "write",
}

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "JPEG_QUALITY",
    "RAW_EXTENSIONS",
    "TIFF_WRITE",
    "WRITE_FORMATS",
    "ImageReadError",
    "RegionReader",
    "check_pixels",
    "check_writable",
    "decode_image",
    "decode_image_info",
    "open_region_reader",
    "pillow_open",
    "read_image",
    "write_image",
]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (then the name is an ordinary attribute)."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
