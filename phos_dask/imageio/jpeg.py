"""JPEG: colour and grey are decoded by libjpeg-turbo through imagecodecs straight into the result array
(OpenCV holds two copies of a decoded image at its peak: 1.8 GB for a 300 MP JPEG instead of 0.9 GB). CMYK
(and YCCK) JPEGs go through Pillow, which undoes Adobe's inverted CMYK; anything else through OpenCV. A JPEG
that ends before its end-of-image marker is refused (`formats.jpeg_problem`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import imagecodecs
import numpy as np

from phos_dask.imageio.decoder import ORIENT, Decoded, Header
from phos_dask.imageio.formats import jpeg_problem
from phos_dask.imageio.opencv import OpenCVDecoder, decode_opencv
from phos_dask.imageio.pillow import pillow_open


def decode_jpeg(data: bytes, header: Header) -> Decoded | None:
    """A colour or grey JPEG decoded in place into its final array (orientation still to apply), or a CMYK
    one decoded by Pillow (ink amounts, Adobe's inversion undone); None for anything else."""
    if header.orientation not in ORIENT:
        return None
    w, h = header.size
    try:
        if header.mode in ("RGB", "L"):
            out = np.empty((h, w, 3) if header.mode == "RGB" else (h, w), np.uint8)
            imagecodecs.jpeg8_decode(data, out=out)
            return Decoded(out, "JPEG", header.icc, header.orientation)
        if header.mode == "CMYK":
            with pillow_open(data) as im:
                ink = np.array(im)
            return Decoded(ink, "JPEG", header.icc, header.orientation, cmyk=True)
    except Exception:  # any doubt: let OpenCV decode it (and report its errors)
        return None
    return None


@dataclass(frozen=True)
class JpegDecoder(OpenCVDecoder):
    """The header (with its EXIF orientation) as OpenCV's decoders read it, then libjpeg-turbo or Pillow,
    and OpenCV for what they leave."""

    problem: Callable[[bytes], str | None] = jpeg_problem
    exif: bool = True

    def decode(self, data: bytes, name: str, kind: str | None, header: Header | None,
               max_pixels: int | None) -> Decoded:
        decoded = decode_jpeg(data, header) if header is not None else None
        return decoded if decoded is not None else decode_opencv(data, name, kind, header)


JPEG = JpegDecoder()
