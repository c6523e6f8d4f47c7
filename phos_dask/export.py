"""Exports from an output store: its images as ordinary files for people and other programs (the contact
sheet is `phos_dask.contact`).

`export_store` writes every complete image of a store as a file named after its input:
`sub dir/photo.jpg` becomes `TO/sub dir/photo.jpg` (``jpeg``), `TO/sub dir/photo.png` (``png``) or
`TO/sub dir/photo.tif` (``tiff16``). Subfolders are kept. When two inputs would give the same file name
(`a.jpg` and `a.png` exported as PNG), each of them keeps its input's extension in the name
(`a.jpg.png`, `a.png.png`); the names depend only on the store's inputs, never on which images are
exported. Only pyramid level 0 (the full resolution) is exported.

Sample conversions: `phos_dask.samples` (exact, so an export is reproducible).

Formats: ``jpeg`` (8-bit, quality 1–100, default 92, no chroma subsampling: 4:2:0 smears colour grain and
doubles the error, 8.8 vs 4.2 codes mean on a grainy Portra 400 render), ``png`` (8-bit) and ``tiff16``
(16-bit, deflate with the horizontal predictor), all written by `phos_dask.encode`, the encoder `preview` uses
too (the same pixels give the same bytes). Colour images are RGB; B&W stocks give grey files. Every file
carries an ICC profile: sRGB for colour, and for grey files a grey profile with the sRGB tone curve (an RGB
profile is not valid on a one-channel image: libpng, for one, rejects it). JPEG and PNG files keep the input's
EXIF data (read from the input file itself, which must still have the SHA-256 the store recorded) with
Orientation set to 1, because the stored pixels are already upright, PixelXDimension/PixelYDimension set to
the exported size, and the TIFF layout tags of a TIFF input (strip offsets, bit depth, its own ICC profile, …)
left out. An input that cannot be read, or that changed since the render, gives a file without EXIF rather
than a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from phos_dask import encode as _encoder
from phos_dask.encode import grey_icc, srgb_icc
from phos_dask.errors import PhosError
from phos_dask.samples import image_codes

if TYPE_CHECKING:  # zarr (and the store module's numba kernels) load only when a store is opened
    import zarr

#: Export format → file extension.
FORMATS: dict[str, str] = {"jpeg": ".jpg", "png": ".png", "tiff16": ".tif"}
#: Default JPEG quality (1–100): the package's one default (`phos_dask.encode`).
JPEG_QUALITY = _encoder.JPEG_QUALITY

# EXIF tags
_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
_MAKER_NOTE = 0x927C
#: Tags that describe a TIFF input's own pixel layout (or its own ICC profile): wrong for any other file.
_TIFF_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320, 322, 323, 324, 325,
    338, 339, 340, 341, 347, 513, 514, 530, 531, 532, 34675,
})
#: The largest EXIF block a JPEG APP1 segment can hold (65535 minus the length field).
_MAX_EXIF = _encoder.MAX_EXIF


class ExportError(PhosError, ValueError):
    """An export that cannot start: no store, unknown format, bad quality. One line, names the problem."""


# ---------------------------------------------------------------------------------------------- ICC


def icc_for(channels: int) -> bytes:
    """The profile for an image of `channels` channels (3: sRGB, 1: grey with the sRGB curve); `srgb_icc`
    and `grey_icc` are `phos_dask.encode`'s."""
    return _encoder.icc_profile(channels)


# ---------------------------------------------------------------------------------------------- EXIF


def source_exif(phos: dict[str, Any], size_wh: tuple[int, int], storage_options: dict | None = None
                ) -> bytes | None:
    """The input file's EXIF block ready to embed, or None when there is none or the input cannot be read
    or has changed since the render (its SHA-256 differs from the recorded one). Orientation is set to 1,
    PixelX/YDimension to `size_wh` (px), TIFF layout tags dropped; a block too long for a JPEG loses its
    MakerNote, and is dropped if it is still too long."""
    from phos_dask.imageio import pillow_open

    source = phos.get("source") or {}
    url = source.get("url")
    if not url:
        return None
    try:
        from phos_dask.storage import Location

        where = Location.of(url, storage_options)
        if where.local and source.get("size") is not None and os.stat(where.root).st_size != source["size"]:
            return None  # changed since the render (and never a FIFO or device: those are not read)
        data = where.get("")
        if data is None:
            return None
        recorded = source.get("sha256")
        if recorded and hashlib.sha256(data).hexdigest() != recorded:
            return None
        with pillow_open(data) as im:  # the input's own size was checked when it was rendered
            exif = im.getexif()
            if not len(exif):
                return None
            for tag in _TIFF_LAYOUT_TAGS & set(exif):
                del exif[tag]
            exif[_ORIENTATION] = 1
            sub = exif.get_ifd(_EXIF_IFD)
            if _PIXEL_X in sub:
                sub[_PIXEL_X] = int(size_wh[0])
            if _PIXEL_Y in sub:
                sub[_PIXEL_Y] = int(size_wh[1])
            block = exif.tobytes()
            if len(block) > _MAX_EXIF and _MAKER_NOTE in sub:
                del sub[_MAKER_NOTE]
                block = exif.tobytes()
    except Exception:  # unreadable, not an image, malformed EXIF: export without it
        return None
    return block if len(block) <= _MAX_EXIF else None


# ---------------------------------------------------------------------------------------------- writing


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path`, creating folders. Local files appear whole or not at all (a temporary file
    beside the target, then a rename); other filesystems get one PUT, which object stores make atomic."""
    if is_local(fs):
        from phos_dask.storage import write_atomic

        write_atomic(path, data)
    else:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            with contextlib.suppress(Exception):  # object stores have no folders
                fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)


def encode(image: np.ndarray, fmt: str, quality: int = JPEG_QUALITY, exif: bytes | None = None) -> bytes:
    """File bytes of an (h, w, 3) RGB or (h, w) grey image: ``jpeg``/``png`` take uint8, ``tiff16`` uint16.
    The ICC profile is `icc_for` the image; `exif` (JPEG and PNG only) is embedded when given. Written by
    `phos_dask.encode`, so `preview` gives the same bytes for the same pixels."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return _encoder.encode(image, "tiff" if fmt == "tiff16" else fmt, quality=quality,
                           exif=None if fmt == "tiff16" else exif)


# ---------------------------------------------------------------------------------------------- store


def open_store(out: str, storage_options: dict | None) -> zarr.Group:
    import zarr

    if fsspec.core.split_protocol(out)[0] is None:
        storage_options = None  # a plain path: zarr refuses options it would not use (they are for inputs)
    try:
        return zarr.open_group(store=out, mode="r", storage_options=storage_options or None)
    except (FileNotFoundError, ValueError) as e:  # zarr's GroupNotFoundError is both
        raise ExportError(f"no output store at {out!r}: {str(e).splitlines()[0] if str(e) else e}") from None


def image_keys(root: zarr.Group) -> list[str]:
    with warnings.catch_warnings():  # stores of earlier versions keep the job's files beside the images
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized")
        return sorted(k for k in root.group_keys() if not k.startswith("_"))


def relpath(key: str, phos: dict[str, Any]) -> str:
    return str((phos.get("source") or {}).get("relpath") or key)


def _names(relpaths: Iterable[str], ext: str) -> dict[str, str]:
    """relpath → output path relative to the export folder, unique (case-insensitively)."""
    relpaths = sorted(set(relpaths))

    def plain(rel: str) -> str:
        return str(PurePosixPath(rel).with_suffix(ext)) if PurePosixPath(rel).suffix else rel + ext

    counts: dict[str, int] = {}
    for rel in relpaths:
        counts[plain(rel).lower()] = counts.get(plain(rel).lower(), 0) + 1
    names = {rel: plain(rel) if counts[plain(rel).lower()] == 1 else rel + ext for rel in relpaths}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
    for rel, name in names.items():
        if seen[name.lower()] > 1:  # differ in case only
            digest = hashlib.blake2b(rel.encode(), digest_size=4).hexdigest()
            names[rel] = f"{rel}-{digest}{ext}"
    return names


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def export_store(out: str, to_dir: str, fmt: str, quality: int = JPEG_QUALITY,
                 storage_options: dict | None = None, keys: list[str] | None = None) -> list[dict]:
    """Write every complete image of the store `out` (or only `keys`) as a `fmt` file under `to_dir`.

    `fmt` is ``jpeg``, ``png`` or ``tiff16``; `quality` (1–100) is the JPEG quality. `storage_options` open
    the store and read the inputs (for their EXIF); `to_dir` is a local folder or an fsspec URL (opened with
    default options) and is created as needed. Incomplete images are left out (a key in `keys` that is not
    a complete image is reported failed). Returns, in key order, one ``{"key", "path", "status", "error"}``
    per image: status ``written`` (error None) or ``failed`` (error: one line). Raises `ExportError` when
    the store does not exist or `fmt`/`quality` is invalid.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not 1 <= int(quality) <= 100:
        raise ExportError(f"JPEG quality must be between 1 and 100, got {quality}")
    from phos_dask.store import complete_image

    ext = FORMATS[fmt]
    root = open_store(out, storage_options)
    found = {k: c for k in image_keys(root) if (c := complete_image(root, k)) is not None}
    manifest = (dict(root.attrs).get("phos") or {}).get("inputs") or {}
    names = _names([relpath(k, phos) for k, (_, phos) in found.items()] + list(manifest.values()), ext)
    fs, base = fsspec.core.url_to_fs(to_dir)
    base = base.rstrip("/") if base not in ("/", "") else base
    results: list[dict] = []
    for key in sorted(set(keys)) if keys is not None else sorted(found):
        if key not in found:
            results.append({"key": key, "path": None, "status": "failed",
                            "error": f"{key!r} is not a complete image in {out!r}"})
            continue
        group, phos = found[key]
        name = names[relpath(key, phos)]
        path = f"{base}/{name}" if base else name
        shown = path if is_local(fs) else fs.unstrip_protocol(path)
        if not _safe_relative(name):
            results.append({"key": key, "path": None, "status": "failed",
                            "error": f"input path {name!r} would leave {to_dir!r}"})
            continue
        try:
            image = image_codes(group["0"], 16 if fmt == "tiff16" else 8)
            exif = None if fmt == "tiff16" else source_exif(phos, (image.shape[1], image.shape[0]),
                                                              storage_options)
            write_bytes(fs, path, encode(image, fmt, int(quality), exif))
            del image
        except Exception as e:  # one image's problem never stops the others
            msg = " ".join(str(e).split()) or type(e).__name__
            results.append({"key": key, "path": shown, "status": "failed", "error": msg})
            continue
        results.append({"key": key, "path": shown, "status": "written", "error": None})
    return results




__all__ = [
    "FORMATS",
    "JPEG_QUALITY",
    "ExportError",
    "encode",
    "export_store",
    "grey_icc",
    "icc_for",
    "source_exif",
    "srgb_icc",
]
