"""Colour management: pixels as decoded → sRGB (linear sRGB for float data), with the ICC profile read from
the file (JPEG APP2, PNG iCCP, WebP ICCP, TIFF tag 34675). `colour_manage` is the one entry point.

The profile is applied with LittleCMS 2 through imagecodecs' `cms_transform`: the library Pillow's ImageCms
wraps, but it works on NumPy arrays of 8-bit, 16-bit and float samples alike (ImageCms has no 16-bit RGB
mode), so a 16-bit file stays 16-bit through the conversion. The rules:

* Target: LittleCMS's built-in sRGB for integer data. Float data are linear light (issue 4: float TIFFs),
  so their target is linear sRGB (sRGB primaries and white, gamma 1); a float TIFF tagged with the ordinary
  (encoded) sRGB profile is therefore linearised, as its tag says it should be.
* Whether a profile already is sRGB is decided by what it does, not by its name: LittleCMS maps a 9×9×9 grid
  (grey: a 256-step ramp) from the profile to the target in float, and a profile moving no value by more
  than 2/255 counts as sRGB (variants of sRGB pass: icc-profiles-free's sRGB.icc differs from LittleCMS's
  by 1.4/255 at most; a "linear sRGB" does not). Such pixels are left bit for bit as decoded:
  ``info["icc"] == "srgb"``.
* Anything else is converted, rendering intent perceptual (for matrix/TRC profiles such as Adobe RGB,
  ProPhoto or Display P3 that is the same as relative colorimetric); out-of-gamut colours are clipped at 0
  and at the top of the range (float: at 0 only, light above 1 is kept). 8-bit RGB uses LittleCMS's
  optimised 8-bit transform (within one code of an exact float evaluation). 16-bit RGB uses the unoptimised
  16-bit pipeline (the optimised one resamples onto a 3-D table that errs by thousands of codes near the
  gamut edge): exact, but about 0.2 µs a pixel, ~4 s for 24 MP. Grey data go through a 256- or
  65536-entry table that LittleCMS fills; CMYK data through the CMYK profile when there is one (8-bit:
  the optimised transform, as Pillow's ImageCms does; 16-bit: unoptimised, exact).
* Limits: a profile of another colour space than the pixels (an RGB profile on a grey image), or one that
  cannot be parsed, is ignored (``"none"``); Lab and other colour spaces are not handled. Untagged files are
  taken as sRGB: PNG gAMA/cHRM chunks without iCCP, and EXIF's "Adobe RGB" InteropIndex (R03) without a
  profile, are not read. Untagged CMYK uses Pillow's naive formula (R = (1 − C)(1 − K), …).
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import ImageCms

#: LittleCMS rendering intent (0 perceptual, 1 relative colorimetric, 2 saturation, 3 absolute).
_INTENT = 0
#: cmsFLAGS_NOOPTIMIZE: evaluate the full pipeline for each pixel (exact 16-bit transforms).
_CMS_NOOPTIMIZE = 0x0100
#: A profile that moves no probe value by more than this (0–1 scale) counts as sRGB.
_SRGB_TOLERANCE = 2 / 255
#: Samples per chunk for the in-place colour conversions (bounds the temporary memory).
_CHUNK_SAMPLES = 1 << 22


@dataclass(frozen=True)
class _Profile:
    """An embedded ICC profile that LittleCMS accepted."""

    data: bytes
    space: str  # ICC colour space signature, stripped: "RGB", "GRAY", "CMYK", …
    description: str


@functools.lru_cache(maxsize=16)
def _profile(icc: bytes) -> _Profile | None:
    """The parsed profile, or None when LittleCMS cannot read it."""
    try:
        p = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile
        space = p.xcolor_space.strip()
        description = " ".join((p.profile_description or "").split()) or "unnamed profile"
    except Exception:
        return None
    return _Profile(icc, space, description)


@functools.cache
def _target_profile(linear: bool) -> bytes:
    """LittleCMS's sRGB, or linear sRGB (same primaries and white, gamma 1) for linear-light data."""
    if linear:
        return imagecodecs.cms_profile(
            "rgb", whitepoint=[0.3127, 0.3290], primaries=[0.64, 0.33, 0.30, 0.60, 0.15, 0.06], gamma=1.0
        )
    return imagecodecs.cms_profile("srgb")


def _cms(samples: np.ndarray, icc: bytes, space: str, linear: bool, out: np.ndarray | None = None) -> np.ndarray:
    """LittleCMS: `samples` ("rgb", "gray" or "cmyk" colour space) from `icc` to (linear) sRGB RGB."""
    flags = _CMS_NOOPTIMIZE if samples.dtype == np.uint16 else None
    return imagecodecs.cms_transform(
        samples, icc, _target_profile(linear), colorspace=space, outcolorspace="rgb",
        intent=_INTENT, flags=flags, out=out,
    )


@functools.lru_cache(maxsize=32)
def _is_srgb(icc: bytes, space: str, linear: bool) -> bool:
    """Whether converting from `icc` to the target moves no probe value by more than `_SRGB_TOLERANCE`."""
    if space == "gray":
        probe = np.linspace(0, 1, 256, dtype=np.float32)[None]
        expected = np.repeat(probe[..., None], 3, axis=-1)
    else:
        axis = np.linspace(0, 1, 9, dtype=np.float32)
        probe = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(1, -1, 3)
        expected = probe
    try:
        got = np.clip(_cms(probe, icc, space, linear), 0, 1)
    except Exception:
        return False
    return bool(np.abs(got - expected).max() <= _SRGB_TOLERANCE)


def _rows_per_chunk(pixels: np.ndarray) -> int:
    return max(1, _CHUNK_SAMPLES // max(1, pixels[0].size))


def colour_manage(pixels: np.ndarray, icc: bytes | None, cmyk: bool) -> tuple[np.ndarray, str]:
    """Pixels in sRGB (linear sRGB for float data) and the `info["icc"]` label; CMYK becomes RGB.

    `pixels` is the decoder's own contiguous array and is converted in place where the layout stays.
    """
    profile = _profile(icc) if icc else None
    if cmyk:
        if profile is not None and profile.space == "CMYK":
            with contextlib.suppress(Exception):  # LittleCMS refused it: fall back to the naive formula
                return _convert_cmyk_icc(pixels, profile.data), f"converted:{profile.description}"
        return _cmyk_to_rgb(pixels), "none"
    grey = pixels.ndim == 2
    if profile is None or profile.space != ("GRAY" if grey else "RGB"):
        return pixels, "none"
    space, linear = ("gray" if grey else "rgb"), pixels.dtype.kind == "f"
    if _is_srgb(profile.data, space, linear):
        return pixels, "srgb"
    try:
        if grey and not linear:
            _convert_grey_table(pixels, profile.data)
        else:
            _convert_in_place(pixels, profile.data, space)
    except Exception:  # LittleCMS refused the profile for a transform: leave the pixels as they are
        return pixels, "none"
    return pixels, f"converted:{profile.description}"


def _convert_in_place(pixels: np.ndarray, icc: bytes, space: str) -> None:
    """RGB (any dtype) or float grey, chunk by chunk, written back into `pixels`."""
    rows = _rows_per_chunk(pixels)
    float_data = pixels.dtype.kind == "f"
    buf = None if space == "gray" else np.empty((min(rows, len(pixels)), *pixels.shape[1:]), pixels.dtype)
    for r0 in range(0, len(pixels), rows):
        block = pixels[r0 : r0 + rows]
        if space == "gray":  # float grey → RGB; the channels of a neutral agree, keep green
            block[...] = _cms(block, icc, space, True)[..., 1]
        else:
            block[...] = _cms(block, icc, space, float_data, out=buf[: len(block)])
        if float_data:
            np.maximum(block, 0, out=block)


def _convert_grey_table(pixels: np.ndarray, icc: bytes) -> None:
    """8/16-bit grey through a table with one entry per code, computed by LittleCMS in float."""
    top = np.iinfo(pixels.dtype).max
    ramp = np.linspace(0, 1, top + 1, dtype=np.float32)[None]
    encoded = np.clip(_cms(ramp, icc, "gray", False)[0, :, 1], 0, 1)
    table = np.round(encoded * top).astype(pixels.dtype)
    rows = _rows_per_chunk(pixels)
    for r0 in range(0, len(pixels), rows):
        block = pixels[r0 : r0 + rows]
        block[...] = table[block]


def _convert_cmyk_icc(ink: np.ndarray, icc: bytes) -> np.ndarray:
    """CMYK ink amounts through their profile to sRGB (linear sRGB for float data), chunk by chunk."""
    float_data = ink.dtype.kind == "f"
    out = np.empty((*ink.shape[:2], 3), np.float32 if float_data else ink.dtype)
    rows = _rows_per_chunk(ink)
    for r0 in range(0, len(ink), rows):
        block = ink[r0 : r0 + rows]
        block = (block * np.float32(100)) if float_data else np.ascontiguousarray(block)  # float CMYK: 0–100 %
        _cms(block, icc, "cmyk", float_data, out=out[r0 : r0 + rows])
    if out.dtype.kind == "f":
        np.maximum(out, 0, out=out)
    return out


def _cmyk_to_rgb(ink: np.ndarray) -> np.ndarray:
    """Untagged CMYK ink amounts → RGB with Pillow's formula, R = (1 − C)(1 − K) rounded (likewise G, B)."""
    if ink.dtype.kind == "f":
        return np.ascontiguousarray((1 - ink[..., :3]) * (1 - ink[..., 3:4]), dtype=np.float32)
    top = int(np.iinfo(ink.dtype).max)
    out = np.empty((*ink.shape[:2], 3), ink.dtype)
    rows = _rows_per_chunk(ink)
    for r0 in range(0, len(ink), rows):
        block = ink[r0 : r0 + rows].astype(np.int64)
        nk = top - block[..., 3:4]
        t = block[..., :3] * nk + (top + 1) // 2  # Pillow's MULDIV255, generalised to the container's range
        out[r0 : r0 + rows] = nk - ((t + (t >> (8 if top == 255 else 16))) >> (8 if top == 255 else 16))
    return out

