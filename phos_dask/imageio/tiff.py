"""TIFF and BigTIFF through tifffile, with imagecodecs' codecs (deflate, LZW, zstd, JPEG, WebP, …), strips
or tiles, contiguous or planar samples. The photometric interpretation is applied here (`TiffLayout`, shared
with the region reads of `region`): min-is-white inverted, palettes expanded (to uint8 when the colour map
holds 8-bit values, else uint16), CMYK converted, 1–7-bit samples scaled to 0–255 and 9–15-bit ones to
0–65535, float16/float64 made float32. A TIFF that tifffile cannot read (old-style JPEG, subsampled YCbCr,
…) goes to OpenCV (libtiff)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from phos_dask.errors import one_line
from phos_dask.imageio.decoder import ORIENT, Decoded, Header
from phos_dask.imageio.formats import ImageReadError, check_header, check_pixels
from phos_dask.imageio.opencv import decode_opencv

if TYPE_CHECKING:
    import tifffile

#: TIFF compression codes of the JPEG flavours (their decoder delivers RGB from YCbCr, subsampled or not).
JPEG_COMPRESSIONS = (6, 7, 33007, 34892)


@dataclass(frozen=True)
class TiffLayout:
    """How a TIFF page's samples become the model's pixels (shared by whole-file and region reads)."""

    kind: str  # "grey", "grey-inverted" (min-is-white), "rgb", "palette" or "cmyk"
    dtype: np.dtype  # the samples' dtype as tifffile decodes them
    bits: int  # bits per sample as stored
    colormap: np.ndarray | None  # (3, 2**bits) uint16, for palettes

    @classmethod
    def of(cls, page: tifffile.TiffPage) -> TiffLayout:
        """The layout of `page`; ValueError for what this decoder does not handle."""
        if page.dtype is None:
            raise ValueError(f"unsupported sample format {page.sampleformat}, {page.bitspersample}-bit")
        dtype = np.dtype(page.dtype)
        if dtype.kind not in "buf" or (dtype.kind == "u" and dtype.itemsize > 2):
            raise ValueError(f"unsupported sample type {dtype}")
        if page.imagedepth > 1:
            raise ValueError("volumetric image")
        photometric, samples = int(page.photometric), int(page.samplesperpixel)
        colormap = None
        if photometric in (0, 1):
            kind = "grey-inverted" if photometric == 0 else "grey"
        elif photometric == 2 and samples >= 3:
            kind = "rgb"
        elif photometric == 6 and samples >= 3 and page.compression in JPEG_COMPRESSIONS:
            kind = "rgb"  # JPEG-compressed YCbCr: the JPEG decoder delivers RGB
        elif photometric == 3 and samples == 1 and page.colormap is not None and dtype.kind != "f":
            kind, colormap = "palette", np.asarray(page.colormap)
        elif photometric == 5 and samples >= 4 and page.tags.valueof(332, 1) == 1:  # InkSet CMYK
            kind = "cmyk"
        else:
            raise ValueError(f"unsupported photometric interpretation {photometric} with {samples} samples")
        return cls(kind, dtype, int(page.bitspersample), colormap)

    @property
    def out_dtype(self) -> np.dtype:
        """The dtype `finish` returns."""
        if self.kind == "palette":
            return np.dtype(np.uint8 if self._colormap8 else np.uint16)
        if self.dtype.kind == "f":
            return np.dtype(np.float32)
        return np.dtype(np.uint8 if self.dtype.kind == "b" or self.dtype.itemsize == 1 else np.uint16)

    @property
    def channels(self) -> int:
        """1 for grey, 3 for colour."""
        return 1 if self.kind.startswith("grey") else 3

    @property
    def _colormap8(self) -> bool:
        return self.colormap is not None and not np.any(self.colormap % 257)

    def finish(self, samples: np.ndarray) -> tuple[np.ndarray, bool]:
        """(h, w, s) decoded samples → (pixels, is_cmyk): grey (h, w), RGB (h, w, 3) or CMYK ink (h, w, 4)."""
        if self.kind == "palette":
            index = samples[..., 0]
            table = (self.colormap // 257).astype(np.uint8) if self._colormap8 else self.colormap.astype(np.uint16)
            return np.ascontiguousarray(table.T)[index.astype(np.intp, copy=False)], False
        take = {"grey": 1, "grey-inverted": 1, "rgb": 3, "cmyk": 4}[self.kind]
        a = samples[..., 0] if take == 1 else samples[..., :take]
        if a.dtype.kind == "b":
            a = a.view(np.uint8) * np.uint8(255)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)
        elif self.bits not in (8, 16):  # 1–7 or 9–15 significant bits: stretch to the container's range
            top, full = (1 << self.bits) - 1, np.iinfo(a.dtype).max
            ramp = np.minimum(np.arange(full + 1), top)
            a = np.round(ramp * (full / top)).astype(a.dtype)[a]
        a = np.ascontiguousarray(a)
        if self.kind == "grey-inverted":
            if a.dtype.kind == "f":
                np.subtract(1, a, out=a)
            else:
                np.subtract(np.iinfo(a.dtype).max, a, out=a)
        return a, self.kind == "cmyk"


def tiff_icc(page: tifffile.TiffPage) -> bytes | None:
    """The page's embedded ICC profile (tag 34675), or None."""
    tag = page.tags.get(34675)
    value = tag.value if tag is not None else None
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def _samples_last(raw: np.ndarray) -> np.ndarray:
    """tifffile's normalised (separate samples, depth, h, w, contiguous samples) array → (h, w, samples)."""
    if raw.shape[0] == 1:
        return raw[0, 0]
    return np.moveaxis(raw[:, 0, :, :, 0], 0, -1)


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile logs its complaints about a damaged file as warnings; the ImageReadError says it instead."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def decode_tiff(data: bytes, name: str, max_pixels: int | None) -> Decoded:
    """The first page of a TIFF or BigTIFF through tifffile; raises for anything it cannot read
    (ImageReadError, not to be retried with another decoder, for a size over `max_pixels` or a compression
    no TIFF reader knows)."""
    import tifffile  # loaded when first needed (0.02 s)

    with quiet_tifffile(), tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = tf.pages.first
        check_pixels(name, int(page.imagewidth), int(page.imagelength), max_pixels)
        try:
            tifffile.COMPRESSION(page.compression)
        except ValueError:
            raise ImageReadError(f"cannot decode image {name!r}: unsupported TIFF compression "
                                 f"{int(page.compression)}") from None
        layout = TiffLayout.of(page)
        orientation = int(page.tags.valueof(274, 1))
        icc = tiff_icc(page)
        try:
            raw = page.asarray(squeeze=False)
        except Exception as e:  # damaged data: no other decoder may fill it in
            raise ImageReadError(f"cannot decode image {name!r}: damaged TIFF data ({one_line(e, 200)})") from None
    pixels, cmyk = layout.finish(_samples_last(raw))
    del raw
    return Decoded(pixels, "TIFF", icc, orientation if orientation in ORIENT else 1, cmyk)



class TiffDecoder:
    """tifffile, and OpenCV (libtiff) for what tifffile cannot read."""

    def info(self, data: bytes, name: str, kind: str | None, max_pixels: int | None) -> Header | None:
        check_header(data, name, max_pixels)
        return None

    def decode(self, data: bytes, name: str, kind: str | None, header: Header | None,
               max_pixels: int | None) -> Decoded:
        try:
            return decode_tiff(data, name, max_pixels)
        except ImageReadError:
            raise
        except Exception as e:  # let OpenCV (libtiff) try; say what tifffile said if it fails too
            return decode_opencv(data, name, kind, None, f" ({one_line(e, 200)})")
