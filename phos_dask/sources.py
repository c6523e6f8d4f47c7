"""Finding the inputs of a job and sizing them cheaply (header only) before any pixel work."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import fsspec.utils

from phos_dask.imageio import RAW_EXTENSIONS
from phos_dask.store import unique_keys

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".jp2", ".pgm", ".ppm", ".pnm"}
) | RAW_EXTENSIONS


def options_for(url: str, storage_options: dict | None) -> dict:
    """The job's storage options where `url` is remote; none for local paths (one job may read a bucket
    and write a local store, or the other way round)."""
    protocol = fsspec.utils.get_protocol(url)
    return {} if protocol in ("file", "local") else dict(storage_options or {})


@dataclass(frozen=True)
class SourceItem:
    """One input: where it is, its path relative to the source root, its output key and its size."""

    url: str
    relpath: str
    key: str
    size: int


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Glob patterns match the path relative to the source or the file name alone (`*.tif`, `raw/**`)."""
    def hit(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], p) for p in patterns)

    return (not include or hit(include)) and not hit(exclude)


def discover(source: str, storage_options: dict | None = None, include: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> list[SourceItem]:
    """Every image file under `source` (a folder, a single file, or an fsspec URL), sorted by path,
    restricted to paths matching any `include` glob and none of the `exclude` globs."""
    fs, root = fsspec.core.url_to_fs(source, **options_for(source, storage_options))
    if not fs.exists(root):
        raise FileNotFoundError(f"source {source!r} does not exist")
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    local = protocol in ("file", "local")
    if fs.isfile(root):
        entries = {root: fs.info(root)}
        base = os.path.dirname(root.rstrip("/"))
    else:
        entries = fs.find(root, detail=True)
        base = root.rstrip("/")
    found = []
    for path, info in sorted(entries.items()):
        if Path(path).suffix.lower() not in IMAGE_EXTENSIONS or info.get("type") == "directory":
            continue
        rel = path[len(base) :].lstrip("/") if path.startswith(base) else Path(path).name
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders
        if not _selected(rel, include, exclude):
            continue
        url = path if local else fs.unstrip_protocol(path)
        found.append((url, rel, int(info.get("size") or 0)))
    keys = unique_keys([rel for _, rel, _ in found])
    return [SourceItem(url, rel, keys[rel], size) for url, rel, size in found]


def probe_shape(url: str, storage_options: dict | None = None) -> tuple[int, int] | None:
    """(rows, cols) of the upright image from its header alone, or None when the header is unreadable
    (the decoder then decides, and reports the error)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with fsspec.open(url, "rb", **options_for(url, storage_options)) as f, Image.open(f) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
