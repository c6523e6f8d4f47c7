"""Exports from an output store: ordinary image files for people and other programs, and a contact sheet.

`export_store` writes every complete image of a store as a file named after its input:
`sub dir/photo.jpg` becomes `TO/sub dir/photo.jpg` (``jpeg``), `TO/sub dir/photo.png` (``png``) or
`TO/sub dir/photo.tif` (``tiff16``). Subfolders are kept. When two inputs would give the same file name
(`a.jpg` and `a.png` exported as PNG), each of them keeps its input's extension in the name
(`a.jpg.png`, `a.png.png`); the names depend only on the store's inputs, never on which images are
exported. Only pyramid level 0 (the full resolution) is exported.

Sample conversions (all exact integer arithmetic or a lookup table, so an export is reproducible):

* uint8 store → 8-bit: unchanged; → 16-bit: ×257 (0 → 0, 255 → 65535).
* uint16 store → 8-bit: ``(v·255 + 32767) // 65535`` (round half up); → 16-bit: unchanged.
* float16 store (linear light in [0, 1]; NaN and values below 0 count as 0, above 1 as 1) →
  sRGB encode (IEC 61966-2-1) → ``floor(e·N + 0.5)`` with N = 255 or 65535.

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

`write_contact_sheet` writes `OUT/_phos/contact.jpg`: for each complete image (up to 200, in key order) the
input on the left and the rendered result on the right, each fitted into a thumb×thumb px square and meeting in the
pair's middle, with the input's relative path under the pair; four pairs per row. Its size in px is
`contact_sheet_size(n, thumb)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import warnings
from collections.abc import Iterable
from functools import cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from phos_dask import encode as _encoder
from phos_dask.encode import grey_icc, srgb_icc
from phos_dask.errors import PhosError

if TYPE_CHECKING:  # zarr (and the store module's numba kernels) load only when a store is opened
    import zarr

#: Export format → file extension.
FORMATS: dict[str, str] = {"jpeg": ".jpg", "png": ".png", "tiff16": ".tif"}
#: Default JPEG quality (1–100): the package's one default (`phos_dask.encode`).
JPEG_QUALITY = _encoder.JPEG_QUALITY
#: The contact sheet's path inside the store (with the job's other files, see phos_dask.store), and its JPEG
#: quality.
CONTACT_SHEET = "_phos/contact.jpg"
CONTACT_QUALITY = 90
#: Before/after pairs per row of the contact sheet.
CONTACT_COLUMNS = 4
#: Rows of level 0 converted at a time are chosen so one band holds about this many bytes.
_BAND_BYTES = 64 << 20

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

_BACKGROUND = 40  # contact sheet: dark grey
_PLACEHOLDER = 128  # an input that cannot be read: mid grey
_TEXT = (225, 225, 225)


class ExportError(PhosError, ValueError):
    """An export that cannot start: no store, unknown format, bad quality. One line, names the problem."""


# ---------------------------------------------------------------------------------------------- samples


@cache
def _float16_tables() -> tuple[np.ndarray, np.ndarray]:
    """Every float16 bit pattern (linear light) → its 8-bit and 16-bit sRGB code."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    e = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    e = np.clip(e, 0.0, 1.0)
    return np.floor(e * 255 + 0.5).astype(np.uint8), np.floor(e * 65535 + 0.5).astype(np.uint16)


def to_codes(block: np.ndarray, bits: int) -> np.ndarray:
    """Stored samples (uint8 or uint16 sRGB codes, or float16 linear light) → `bits`-bit sRGB codes
    (8 → uint8, 16 → uint16), same shape, by the conversions in the module docstring."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if block.dtype == np.float16:
        return _float16_tables()[0 if bits == 8 else 1][block.view(np.uint16)]
    if block.dtype == np.uint8:
        return block.copy() if bits == 8 else block.astype(np.uint16) * np.uint16(257)
    if block.dtype == np.uint16:
        if bits == 16:
            return block.copy()
        return ((block.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if block.dtype.kind == "f":  # float32 linear light (not written by `run`, but cheap to allow)
        x = np.clip(np.nan_to_num(block.astype(np.float64), nan=0.0), 0.0, 1.0)
        e = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
        return np.floor(e * ((1 << bits) - 1) + 0.5).astype(np.uint8 if bits == 8 else np.uint16)
    raise ValueError(f"cannot export samples of dtype {block.dtype}")


def _image_codes(array: zarr.Array, bits: int) -> np.ndarray:
    """A stored (C, h, w) level as an (h, w, 3) RGB or (h, w) grey array of `bits`-bit codes, read and
    converted in bands of rows so the float or uint16 source never sits in memory whole."""
    c, h, w = array.shape
    out = np.empty((h, w, c) if c > 1 else (h, w), np.uint8 if bits == 8 else np.uint16)
    chunk_rows = max(1, array.chunks[1])
    row_bytes = c * w * array.dtype.itemsize
    rows = chunk_rows * max(1, _BAND_BYTES // max(1, row_bytes * chunk_rows))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        codes = to_codes(np.asarray(array[:, y0:y1, :]), bits)
        if c > 1:
            out[y0:y1] = np.moveaxis(codes, 0, -1)
        else:
            out[y0:y1] = codes[0]
    return out


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


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path`, creating folders. Local files appear whole or not at all (a temporary file
    beside the target, then a rename); other filesystems get one PUT, which object stores make atomic."""
    if _is_local(fs):
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


def _open_store(out: str, storage_options: dict | None) -> zarr.Group:
    import zarr

    if fsspec.core.split_protocol(out)[0] is None:
        storage_options = None  # a plain path: zarr refuses options it would not use (they are for inputs)
    try:
        return zarr.open_group(store=out, mode="r", storage_options=storage_options or None)
    except (FileNotFoundError, ValueError) as e:  # zarr's GroupNotFoundError is both
        raise ExportError(f"no output store at {out!r}: {str(e).splitlines()[0] if str(e) else e}") from None


def _image_keys(root: zarr.Group) -> list[str]:
    with warnings.catch_warnings():  # stores of earlier versions keep the job's files beside the images
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized")
        return sorted(k for k in root.group_keys() if not k.startswith("_"))


def _complete(root: zarr.Group, key: str) -> tuple[zarr.Group, dict[str, Any]] | None:
    import zarr

    from phos_dask.store import COMPLETE

    try:
        group = root[key]
    except KeyError:
        return None
    if not isinstance(group, zarr.Group):
        return None
    phos = dict(group.attrs).get("phos")
    if not isinstance(phos, dict) or phos.get("status") != COMPLETE:
        return None
    return group, phos


def _relpath(key: str, phos: dict[str, Any]) -> str:
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


def _smallest_level(group: zarr.Group, attrs: dict[str, Any]) -> zarr.Array:
    try:
        path = attrs["ome"]["multiscales"][0]["datasets"][-1]["path"]
        return group[path]
    except (KeyError, IndexError, TypeError):
        levels = sorted((int(k) for k in group.array_keys() if k.isdigit()), reverse=True)
        return group[str(levels[0])]


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
    ext = FORMATS[fmt]
    root = _open_store(out, storage_options)
    found = {k: c for k in _image_keys(root) if (c := _complete(root, k)) is not None}
    manifest = (dict(root.attrs).get("phos") or {}).get("inputs") or {}
    names = _names([_relpath(k, phos) for k, (_, phos) in found.items()] + list(manifest.values()), ext)
    fs, base = fsspec.core.url_to_fs(to_dir)
    base = base.rstrip("/") if base not in ("/", "") else base
    results: list[dict] = []
    for key in sorted(set(keys)) if keys is not None else sorted(found):
        if key not in found:
            results.append({"key": key, "path": None, "status": "failed",
                            "error": f"{key!r} is not a complete image in {out!r}"})
            continue
        group, phos = found[key]
        name = names[_relpath(key, phos)]
        path = f"{base}/{name}" if base else name
        shown = path if _is_local(fs) else fs.unstrip_protocol(path)
        if not _safe_relative(name):
            results.append({"key": key, "path": None, "status": "failed",
                            "error": f"input path {name!r} would leave {to_dir!r}"})
            continue
        try:
            image = _image_codes(group["0"], 16 if fmt == "tiff16" else 8)
            exif = None if fmt == "tiff16" else source_exif(phos, (image.shape[1], image.shape[0]),
                                                              storage_options)
            _write_bytes(fs, path, encode(image, fmt, int(quality), exif))
            del image
        except Exception as e:  # one image's problem never stops the others
            msg = " ".join(str(e).split()) or type(e).__name__
            results.append({"key": key, "path": shown, "status": "failed", "error": msg})
            continue
        results.append({"key": key, "path": shown, "status": "written", "error": None})
    return results


# ---------------------------------------------------------------------------------------------- contact


def _contact_geometry(thumb: int) -> tuple[int, int, int]:
    """(gap inside a pair, margin around pairs, label height) in px for thumbnails of `thumb` px."""
    pad = max(4, thumb // 32)
    return pad, 3 * pad, max(14, thumb // 10)


def contact_sheet_size(n: int, thumb: int = 256) -> tuple[int, int]:
    """(width, height) in px of the contact sheet of `n` ≥ 1 images with `thumb`-px thumbnails.

    min(n, 4) pairs per row, ceil(n / 4) rows. A pair is two thumb-px squares `pad` px apart over a label
    strip `label` px high; pairs and the sheet's edges are `margin` px apart. pad = max(4, thumb // 32),
    margin = 3·pad, label = max(14, thumb // 10): for thumb 256, pairs are 520 × 281 px with 24 px around.
    """
    pad, margin, label = _contact_geometry(thumb)
    cols = min(n, CONTACT_COLUMNS)
    rows = math.ceil(n / cols)
    return cols * (2 * thumb + pad) + (cols + 1) * margin, rows * (thumb + label) + (rows + 1) * margin


def _rendered_thumb(group: zarr.Group, thumb: int) -> np.ndarray:
    from phos_dask import thumbs

    level = _smallest_level(group, dict(group.attrs))
    return thumbs.rgb8(thumbs.fit(_image_codes(level, 8), thumb))


def _stored_pairs(out: str, keys: list[str], storage_options: dict | None, given: dict[str, bytes]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """{key: (input, result) thumbnails} from `given` or from the store's thumbnail packs (one listing and
    a GET per pack); None for an image without them (made by an older version, or finished by a run that
    was killed before it stored them)."""
    from phos_dask import thumbs
    from phos_dask.storage import Location

    stored = thumbs.read_packs(Location.of(out, storage_options))[0] if set(keys) - set(given) else {}
    data = {**stored, **given}
    return {k: thumbs.decode_pair(data[k]) if data.get(k) else None for k in keys}


def _paste(sheet: np.ndarray, image: np.ndarray, y: int, x: int, thumb: int, align: str) -> None:
    """Put `image` into the thumb×thumb square at (y, x), centred vertically and against the square's
    `align` ("left"/"right") side, so a pair's two pictures meet in the middle."""
    h, w = image.shape[:2]
    y0 = y + (thumb - h) // 2
    x0 = x if align == "left" else x + thumb - w
    sheet[y0:y0 + h, x0:x0 + w] = image


def _fit_label(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def write_contact_sheet(out: str, storage_options: dict | None = None, path: str | None = None,
                        max_images: int = 200, thumb: int = 256, keys: list[str] | None = None,
                        labels: dict[str, str] | None = None, pairs: dict[str, bytes] | None = None
                        ) -> str | None:
    """Write a JPEG contact sheet of the store `out`: for the first `max_images` complete images (key
    order) the input and the rendered result side by side, each fitted into `thumb`×`thumb` px, labelled
    with the input's relative path. The pictures are the thumbnails the image's task made (`pairs`, else
    the store's `_thumbs/`); for an image without them (made by an older version) the result comes from
    the smallest pyramid level and the input is a grey square: the sheet never decodes an input.

    `keys` (with `labels`: key → relative path): the complete images to show, in order, as the job that
    just ran knows them, so nothing is listed or opened per image.

    Written to `path` (default ``OUT/_phos/contact.jpg``; `out` and `path` may be fsspec URLs, opened with
    `storage_options`), replacing any earlier sheet. Returns the path written, or None when the store has no
    complete image. Raises `ExportError` when the store does not exist.
    """
    from PIL import Image, ImageDraw, ImageFont

    if max_images < 1 or thumb < 16:
        raise ExportError(f"contact sheet: max_images must be >= 1 and thumb >= 16, got {max_images}, {thumb}")
    root = _open_store(out, storage_options)
    found = []
    for key in keys if keys is not None else _image_keys(root):
        c = _complete(root, key) if keys is None else (None, {"source": {"relpath": (labels or {}).get(key, key)}})
        if c is not None:
            found.append((key, *c))
        if len(found) == max_images:
            break
    if not found:
        return None
    from phos_dask import thumbs

    pairs = _stored_pairs(out, [k for k, _, _ in found], storage_options, dict(pairs or {}))
    pad, margin, label = _contact_geometry(thumb)
    width, height = contact_sheet_size(len(found), thumb)
    sheet = np.full((height, width, 3), _BACKGROUND, np.uint8)
    labels = []
    for i, (key, group, phos) in enumerate(found):
        row, col = divmod(i, CONTACT_COLUMNS)
        y = margin + row * (thumb + label + margin)
        x = margin + col * (2 * thumb + pad + margin)
        source = rendered = None
        if pairs[key] is not None:
            source, rendered = (thumbs.fit(p, thumb) for p in pairs[key])
        else:  # no stored thumbnails: the result from the store, the input as a placeholder
            try:
                rendered = _rendered_thumb(group if group is not None else root[key], thumb)
            except Exception:
                rendered = None
        shape = (rendered if rendered is not None else np.empty((thumb, thumb))).shape[:2]
        for image, x_at, align in ((source, x, "right"), (rendered, x + thumb + pad, "left")):
            if image is None:
                image = np.full((*shape, 3), _PLACEHOLDER, np.uint8)
            _paste(sheet, image, y, x_at, thumb, align)
        caption = "".join(c if c.isprintable() else "?" for c in _relpath(key, phos))  # one line of text
        labels.append((x + thumb + pad // 2, y + thumb, caption))
    pil = Image.fromarray(sheet, "RGB")
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(8, round(label * 0.7)))
    for x, y, text in labels:
        draw.text((x, y + label // 2), _fit_label(draw, text, font, 2 * thumb + pad), fill=_TEXT, font=font,
                  anchor="mm")
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=CONTACT_QUALITY, icc_profile=srgb_icc())
    if path is None:
        fs, base = fsspec.core.url_to_fs(out, **(storage_options or {}))
        target = f"{base.rstrip('/')}/{CONTACT_SHEET}"
    else:
        same = fsspec.core.split_protocol(path)[0] == fsspec.core.split_protocol(out)[0]
        fs, target = fsspec.core.url_to_fs(path, **((storage_options or {}) if same else {}))
    _write_bytes(fs, target, buf.getvalue())
    return target if _is_local(fs) else fs.unstrip_protocol(target)


__all__ = [
    "CONTACT_SHEET",
    "FORMATS",
    "JPEG_QUALITY",
    "ExportError",
    "contact_sheet_size",
    "encode",
    "export_store",
    "grey_icc",
    "icc_for",
    "source_exif",
    "srgb_icc",
    "to_codes",
    "write_contact_sheet",
]
