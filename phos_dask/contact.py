"""The contact sheet of an output store: `write_contact_sheet` writes `OUT/_phos/contact.jpg`: for each
complete image (up to 200, in key order) the input on the left and the rendered result on the right, each
fitted into a thumb×thumb px square and meeting in the pair's middle, with the input's relative path under
the pair; four pairs per row. Its size in px is `contact_sheet_size(n, thumb)`. The pictures are the
thumbnails the tasks made (`phos_dask.thumbs`); the sheet never decodes an input."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from phos_dask.encode import srgb_icc
from phos_dask.export import ExportError, image_keys, is_local, open_store, relpath, write_bytes
from phos_dask.samples import image_codes

if TYPE_CHECKING:  # zarr (and the store module's numba kernels) load only when a store is opened
    import zarr

#: The contact sheet's path inside the store (with the job's other files, see phos_dask.store), and its JPEG
#: quality.
CONTACT_SHEET = "_phos/contact.jpg"
CONTACT_QUALITY = 90
#: Before/after pairs per row of the contact sheet.
CONTACT_COLUMNS = 4

_BACKGROUND = 40  # contact sheet: dark grey
_PLACEHOLDER = 128  # an input that cannot be read: mid grey
_TEXT = (225, 225, 225)


def _smallest_level(group: zarr.Group, attrs: dict[str, Any]) -> zarr.Array:
    try:
        path = attrs["ome"]["multiscales"][0]["datasets"][-1]["path"]
        return group[path]
    except (KeyError, IndexError, TypeError):
        levels = sorted((int(k) for k in group.array_keys() if k.isdigit()), reverse=True)
        return group[str(levels[0])]



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
    return thumbs.rgb8(thumbs.fit(image_codes(level, 8), thumb))


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
    from phos_dask.store import complete_image

    # the job that just ran names its images (`keys`): the store is then opened (Zarr imported: 0.3 s) only
    # for an image without thumbnails
    root = open_store(out, storage_options) if keys is None else None
    found = []
    for key in keys if keys is not None else image_keys(root):
        c = complete_image(root, key) if keys is None else (None, {"source": {"relpath": (labels or {}).get(key, key)}})
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
                if group is None:
                    root = root if root is not None else open_store(out, storage_options)
                    group = root[key]
                rendered = _rendered_thumb(group, thumb)
            except Exception:
                rendered = None
        shape = (rendered if rendered is not None else np.empty((thumb, thumb))).shape[:2]
        for image, x_at, align in ((source, x, "right"), (rendered, x + thumb + pad, "left")):
            if image is None:
                image = np.full((*shape, 3), _PLACEHOLDER, np.uint8)
            _paste(sheet, image, y, x_at, thumb, align)
        caption = "".join(c if c.isprintable() else "?" for c in relpath(key, phos))  # one line of text
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
    write_bytes(fs, target, buf.getvalue())
    return target if is_local(fs) else fs.unstrip_protocol(target)
