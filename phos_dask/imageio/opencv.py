"""OpenCV's decoders, for PNG, WebP, BMP, GIF, PNM, JPEG 2000, … (and whatever the JPEG and TIFF decoders
hand over). OpenCV applies EXIF orientation itself. The ICC profile and the size come from the header as
Pillow reads it (WebP's ICCP chunk and size are found here: Pillow's WebP reader would set up a whole
decoder); a PNG's IHDR says whether it is grey + alpha, which OpenCV would otherwise replicate into three
channels, so such a PNG is decoded as grey. A PNG is refused when it is cut short or a critical chunk fails
its CRC (`formats.png_problem`).

OpenCV may log its complaint about a bad file on stderr, at the log level the process chose; `python -m
phos_dask` and its workers silence it, since the ImageReadError says it in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phos_dask.imageio.decoder import Decoded, Header
from phos_dask.imageio.formats import (
    PNG_CRITICAL,
    ImageReadError,
    check_header,
    check_pixels,
    png_problem,
    webp_icc,
    webp_size,
)
from phos_dask.imageio.pillow import pil_header

#: PNG chunks OpenCV's decoder is given: what the pixels need. Colour management (iCCP) is read from the
#: original bytes; text, time, EXIF and animation chunks mean nothing to the pixels, and a damaged one only
#: makes libpng print a warning on the terminal.
_PNG_PIXEL_CHUNKS = (*PNG_CRITICAL, b"tRNS")


def _png_for_decoder(data: bytes) -> bytes:
    """The PNG with only the chunks its pixels need (the same bytes when there is nothing else); call only
    on data that passed `png_problem`."""
    parts, pos, dropped = [data[:8]], 8, False
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] in _PNG_PIXEL_CHUNKS:
            parts.append(data[pos:end])
        else:
            dropped = True
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos = end
    return b"".join(parts) if dropped else data


def decode_opencv(data: bytes, name: str, kind: str | None, header: Header | None, detail: str = "") -> Decoded:
    """OpenCV's decode (orientation applied) as RGB or grey, grey + alpha read as grey; the ICC profile and
    the format name (when `kind` is None) from `header`. `detail` ends the message of a file OpenCV cannot
    decode either."""
    import cv2  # loaded when first needed: the JPEG and TIFF decoders hand over only what they cannot read

    # keep 16-bit/float depth, keep grey as one channel, apply EXIF orientation (IMREAD_UNCHANGED would keep
    # the alpha channel but silently ignores the orientation tag)
    colour_flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if kind == "PNG":  # IHDR colour type 4 (Pillow reports a 16-bit one as RGBA)
        grey_alpha = len(data) > 25 and data[25] == 4
        data = _png_for_decoder(data)
    else:
        grey_alpha = header is not None and header.mode in ("LA", "La")
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE if grey_alpha else colour_flags
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:  # e.g. an image over OpenCV's pixel limit
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "decoder error"
        if "CV_IO_MAX_IMAGE_PIXELS" in msg:
            msg = ("over OpenCV's own pixel limit (2**30 px unless OPENCV_IO_MAX_IMAGE_PIXELS was set in the "
                   "environment before cv2 was loaded)")
        raise ImageReadError(f"cannot decode image {name!r}: {msg}") from None
    if image is None:
        why = (f"corrupt, truncated or unsupported {kind} data{detail}" if kind else
               "not a recognised image format")
        raise ImageReadError(f"cannot decode image {name!r}: {why}")
    fmt = kind or (header.format if header is not None and header.format else "unknown")
    return Decoded(_to_rgb(image), fmt, header.icc if header is not None else None)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's decoded array (BGR/BGRA/grey) → RGB or grey, alpha dropped, contiguous."""
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (1, 2):  # grey, or grey + alpha
            image = image[:, :, 0]
        elif channels == 3:  # in place: a gigapixel decode must not be copied
            import cv2  # loaded already: the image is OpenCV's

            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
        else:  # BGRA or more: keep the colour channels only
            image = image[:, :, 2::-1]
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)



def _no_problem(data: bytes) -> str | None:
    return None


@dataclass(frozen=True)
class OpenCVDecoder:
    """The `Decoder` of the formats OpenCV decodes: `problem` is the format's structural check (a reason to
    refuse the file, or None), `exif` whether Pillow reads the EXIF orientation from the header."""

    problem: Callable[[bytes], str | None] = _no_problem
    exif: bool = False

    def info(self, data: bytes, name: str, kind: str | None, max_pixels: int | None) -> Header | None:
        check_header(data, name, max_pixels)
        problem = self.problem(data)
        if problem:
            raise ImageReadError(f"cannot decode image {name!r}: {problem}")
        header = self.header(data)
        if header is not None:
            check_pixels(name, *header.size, max_pixels)
        return header

    def header(self, data: bytes) -> Header | None:
        """What the file's header says (Pillow's reading), or None."""
        return pil_header(data, exif=self.exif)

    def decode(self, data: bytes, name: str, kind: str | None, header: Header | None,
               max_pixels: int | None) -> Decoded:
        return decode_opencv(data, name, kind, header)


@dataclass(frozen=True)
class WebPDecoder(OpenCVDecoder):
    """WebP: the size and ICC profile from the RIFF chunks (Pillow's WebP reader would set up a whole decoder
    and canvas just to open a file)."""

    def header(self, data: bytes) -> Header | None:
        return Header("WEBP", "", webp_size(data) or (0, 0), 1, webp_icc(data))


#: PNG: refused when cut short or failing a CRC.
PNG = OpenCVDecoder(png_problem)
WEBP = WebPDecoder()
#: Everything without a decoder of its own.
OPENCV = OpenCVDecoder()
