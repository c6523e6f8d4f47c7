"""The output store: a Zarr v3 group holding one OME-Zarr 0.5 image per input, written so that a crash or
a rerun never loses finished work.

Rules this module keeps: the root is only ever opened in mode "a"; an image's arrays are created before
any task writes to them; every task writes whole chunks (one writer per chunk); an image's metadata and
its completion marker (`attributes.phos.status == "complete"`) are written last, after all its pixels.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import unicodedata
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from phos_dask.pyramid import downsample2
from phos_dask.tiles import TILE_LEVELS, TilePlan, assert_one_writer_per_chunk, pyramid_shapes

OME_VERSION = "0.5"
STAGING = "_staging"
REPORT = "_report.json"
COMPLETE = "complete"


def fast_compressor() -> BloscCodec:
    """LZ4 with byte shuffle: GB/s both ways, so storage never paces the model."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def open_root(url: str, storage_options: dict | None = None) -> zarr.Group:
    """The job's output group, created if missing; never truncated."""
    from phos_dask.sources import options_for

    options = options_for(url, storage_options) or None
    try:
        return zarr.open_group(store=url, mode="a", storage_options=options)
    except zarr.errors.ContainsGroupError:  # another task created it a moment ago
        return zarr.open_group(store=url, mode="r+", storage_options=options)


#: Longest image key (bytes): file systems allow 255 per name, and the store adds nothing to it.
MAX_KEY = 160


def existing_root(url: str, storage_options: dict | None = None) -> zarr.Group | None:
    """The output group if it exists (opened read-only), else None; creates nothing."""
    from phos_dask.sources import options_for

    try:
        return zarr.open_group(store=url, mode="r", storage_options=options_for(url, storage_options) or None)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def safe_key(relpath: str) -> str:
    """An image key from a path relative to the source: one name, never a path. Accents are dropped
    (é → e), separators become '__', anything else outside [A-Za-z0-9._-] becomes '_', no key starts
    with '.' or '_' (reserved for the job's own files), and keys longer than MAX_KEY are cut, with a hash
    of the whole path appended."""
    text = unicodedata.normalize("NFKD", relpath.replace("\\", "/"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    key = re.sub(r"[^A-Za-z0-9._-]", "_", text.replace("/", "__"))
    if key[:1] in (".", "_", ""):
        key = "i" + key
    if len(key) > MAX_KEY:
        key = f"{key[: MAX_KEY - 17]}-{_digest(relpath, 8)}"
    return key


def _digest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def unique_keys(relpaths: list[str]) -> dict[str, str]:
    """relpath → key for every input: distinct even ignoring case (stores on case-insensitive file systems),
    when two paths make the same safe key both get a hash of their own path appended."""
    base = {p: safe_key(p) for p in relpaths}
    count = collections.Counter(k.lower() for k in base.values())
    keys = {p: k if count[k.lower()] == 1 else f"{k[: MAX_KEY - 9]}-{_digest(p, 4)}" for p, k in base.items()}
    if len({k.lower() for k in keys.values()}) < len(keys):  # a 32-bit hash collision: use 128 bits
        keys = {p: k if count[k.lower()] == 1 else f"{k[: MAX_KEY - 33]}-{_digest(p, 16)}" for p, k in base.items()}
    assert len({k.lower() for k in keys.values()}) == len(keys), "image keys must be distinct"
    return keys


def image_status(root: zarr.Group, key: str) -> dict | None:
    """The `phos` attributes of a finished image, or None when the image is absent or incomplete."""
    try:
        group = root[key]
        phos = dict(group.attrs).get("phos")
    except Exception:  # absent, or metadata that cannot be read: not complete
        return None
    if not isinstance(phos, dict) or phos.get("status") != COMPLETE:
        return None
    return phos


def _level_chunks(plan: TilePlan, level: int, h: int, w: int) -> tuple[int, int]:
    ch, cw = plan.chunk_shape(level) if level <= TILE_LEVELS else (1024, 1024)
    return max(1, min(ch, h)), max(1, min(cw, w))


def create_image(root: zarr.Group, key: str, channels: int, shape: tuple[int, int], dtype: str,
                 plan: TilePlan) -> None:
    """Make sure the image's group holds empty-or-stale pyramid arrays of the right layout, and mark it
    in progress. Arrays that already have that layout are kept, so a retried task never wipes chunks
    other tasks have written; anything else is recreated."""
    levels = pyramid_shapes(shape)
    wanted = {
        str(level): ((channels, h, w), (channels, *_level_chunks(plan, level, h, w)))
        for level, (h, w) in enumerate(levels)
    }
    try:
        group = root[key]
        arrays = {name: group[name] for name in wanted}
        compatible = all(
            a.shape == shp and a.chunks == chk and str(a.dtype) == dtype
            for (shp, chk), a in ((wanted[n], arrays[n]) for n in wanted)
        )
    except (KeyError, TypeError):
        compatible = False
    assert_one_writer_per_chunk(plan, [chk[1:] for _, chk in wanted.values()])
    if compatible:
        group.attrs.update({"phos": {"status": "in-progress"}})
        return
    group = root.create_group(key, overwrite=True, attributes={"phos": {"status": "in-progress"}})
    for name, (shp, chk) in wanted.items():
        group.create_array(name, shape=shp, dtype=dtype, chunks=chk, compressors=fast_compressor(),
                           dimension_names=("c", "y", "x"), fill_value=0)


def write_tile(root: zarr.Group, key: str, plan: TilePlan, tile, block: np.ndarray) -> None:
    """Write a tile's output (C, h, w) to level 0 and its own chunk of each tile-written pyramid level."""
    group = root[key]
    levels = len(pyramid_shapes(plan.shape))
    for level in range(min(levels, TILE_LEVELS + 1)):
        if level:
            block = downsample2(block)
        y0, y1, x0, x1 = plan.level_box(tile, level)
        group[str(level)][:, y0:y1, x0:x1] = block


def finish_pyramid(root: zarr.Group, key: str, shape: tuple[int, int]) -> None:
    """Levels past TILE_LEVELS (gigapixel images only), each from the whole previous level (small)."""
    group = root[key]
    shapes = pyramid_shapes(shape)
    for level in range(TILE_LEVELS + 1, len(shapes)):
        group[str(level)][...] = downsample2(group[str(level - 1)][...])


def ome_attributes(key: str, channels: int, shape: tuple[int, int], dtype: str) -> dict[str, Any]:
    datasets = []
    for level, _ in enumerate(pyramid_shapes(shape)):
        f = float(2**level)
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [1.0, f, f]}]})
    names = ["red", "green", "blue"] if channels == 3 else ["grey"]
    colors = ["FF0000", "00FF00", "0000FF"] if channels == 3 else ["FFFFFF"]
    vmax = {"uint8": 255, "uint16": 65535}.get(dtype, 1)
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": key,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"},
                ],
                "datasets": datasets,
            }
        ],
        "omero": {
            "channels": [
                {"label": n, "color": c, "active": True, "window": {"min": 0, "max": vmax, "start": 0, "end": vmax}}
                for n, c in zip(names, colors, strict=True)
            ],
            "rdefs": {"model": "color" if channels == 3 else "greyscale"},
        },
    }


def mark_complete(root: zarr.Group, key: str, channels: int, shape: tuple[int, int], dtype: str,
                  provenance: dict[str, Any]) -> None:
    """Metadata and completion marker, in one attribute write, after every pixel of the image."""
    root[key].attrs.update(
        {"ome": ome_attributes(key, channels, shape, dtype), "phos": {**provenance, "status": COMPLETE}}
    )


def staging_path(key: str) -> str:
    return f"{STAGING}/{key}"


def write_json(url: str, name: str, payload: Any, storage_options: dict | None = None) -> None:
    """A JSON document beside the images (e.g. _report.json), replaced atomically where the
    filesystem allows (local: write a temporary file, then rename)."""
    import fsspec

    from phos_dask.sources import options_for

    fs, root = fsspec.core.url_to_fs(url, **options_for(url, storage_options))
    path = f"{root.rstrip('/')}/{name}"
    data = json.dumps(payload, indent=2, default=str).encode()
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        tmp = path + ".tmp"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)
