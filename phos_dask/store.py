"""The output store: a Zarr v3 group holding one OME-Zarr 0.5 image per input, written so that a crash or
a rerun never loses finished work, in as few requests as an object store allows.

Layout: OUT/zarr.json (the job's settings and fingerprint: constant size), OUT/<key>/ one image per input
(levels 0, 1, … and the image's zarr.json, whose `attributes.phos.status == "complete"` is the completion
marker), OUT/_index/ (which images are finished: see phos_dask.index), OUT/_thumbs/ (contact-sheet
thumbnails), OUT/_staging/ (decoded large inputs while they are rendered in tiles), OUT/_report.json.

Tasks never open the store through Zarr to write: they encode chunks and metadata with Zarr in memory
(`ImageLayout`: the same codecs, so the bytes are what Zarr itself would write) and put the objects
straight into the store through `phos_dask.storage`, all of a task's objects at once, then the image's
zarr.json last. Rules kept: one writer per chunk (tiles own whole chunks of every level they write); the
image's metadata and completion marker after all its pixels; nothing is read back after it is written.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import MemoryStore

from phos_dask.errors import PhosError
from phos_dask.pyramid import downsample2
from phos_dask.storage import Location
from phos_dask.tiles import TILE_LEVELS, Tile, TilePlan, assert_one_writer_per_chunk, pyramid_shapes

OME_VERSION = "0.5"
STAGING = "_staging"
THUMBS = "_thumbs"
REPORT = "_report.json"
COMPLETE = "complete"
METADATA = "zarr.json"
#: Names in the root that are the job's own, not images: image keys never are one, nor start with '_' or '.'.
RESERVED_NAMES = frozenset({METADATA, "contact.jpg"})
#: Files an operating system leaves in folders: an output folder holding only these counts as empty.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})


def fast_compressor() -> BloscCodec:
    """LZ4 with byte shuffle: GB/s both ways, so storage never paces the model."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


#: Longest image key (bytes): file systems allow 255 per name, and the store adds nothing to it.
MAX_KEY = 160


def safe_key(relpath: str) -> str:
    """An image key from a path relative to the source: one name, never a path. Accents are dropped
    (é → e), separators become '__', anything else outside [A-Za-z0-9._-] becomes '_', no key starts
    with '.' or '_' (reserved for the job's own files), and keys longer than MAX_KEY are cut, with a hash
    of the whole path appended."""
    text = unicodedata.normalize("NFKD", relpath.replace("\\", "/"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    key = re.sub(r"[^A-Za-z0-9._-]", "_", text.replace("/", "__"))
    if key[:1] in (".", "_", "") or key in RESERVED_NAMES:
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


def _document(make) -> bytes:
    """The zarr.json that Zarr writes for the node `make(store)` creates (in memory)."""
    objects: dict[str, Any] = {}
    make(MemoryStore(objects))
    return objects[METADATA].to_bytes()


def group_document(attributes: dict[str, Any]) -> bytes:
    """A Zarr v3 group's zarr.json with these attributes."""
    return _document(lambda store: zarr.create_group(store, attributes=attributes))


@dataclass(frozen=True)
class ImageLayout:
    """The pyramid arrays of one output image: level shapes, chunks (tile-aligned up to TILE_LEVELS), dtype
    and codecs; and the store objects (name → bytes, names relative to the store's root) that hold them."""

    key: str
    channels: int
    shape: tuple[int, int]
    dtype: str
    plan: TilePlan

    @property
    def levels(self) -> list[tuple[int, int]]:
        return pyramid_shapes(self.shape)

    def chunks(self, level: int) -> tuple[int, int, int]:
        h, w = self.levels[level]
        ch, cw = self.plan.chunk_shape(level) if level <= TILE_LEVELS else (1024, 1024)
        return self.channels, max(1, min(ch, h)), max(1, min(cw, w))

    def check(self) -> None:
        assert_one_writer_per_chunk(self.plan, [c[1:] for c in map(self.chunks, range(len(self.levels)))])

    def _array(self, level: int, objects: dict[str, Any]) -> zarr.Array:
        return zarr.create_array(MemoryStore(objects), shape=(self.channels, *self.levels[level]), dtype=self.dtype,
                                 chunks=self.chunks(level), compressors=fast_compressor(),
                                 dimension_names=("c", "y", "x"), fill_value=0,
                                 config={"write_empty_chunks": True})

    def _named(self, level: int, objects: dict[str, Any], metadata: bool) -> dict[str, bytes]:
        return {f"{self.key}/{level}/{name}": value.to_bytes() for name, value in objects.items()
                if metadata or name != METADATA}

    def metadata_objects(self) -> dict[str, bytes]:
        """Every level's array zarr.json (written before any tile of a tiled image)."""
        out: dict[str, bytes] = {}
        for level in range(len(self.levels)):
            objects: dict[str, Any] = {}
            self._array(level, objects)
            out.update(self._named(level, objects, True))
        return out

    def tile_objects(self, tile: Tile, block: np.ndarray) -> dict[str, bytes]:
        """The chunks a tile owns: its (C, h, w) output at level 0 and its block of each level up to
        TILE_LEVELS (each the 2×2 mean of the one before)."""
        out: dict[str, bytes] = {}
        for level in range(min(len(self.levels), TILE_LEVELS + 1)):
            if level:
                block = downsample2(block)
            y0, y1, x0, x1 = self.plan.level_box(tile, level)
            objects: dict[str, Any] = {}
            self._array(level, objects)[:, y0:y1, x0:x1] = block
            out.update(self._named(level, objects, False))
        return out

    def levels_objects(self, image: np.ndarray, first: int = 0) -> tuple[dict[str, bytes], np.ndarray]:
        """Levels `first`, first + 1, … of a pyramid whose level `first` is `image` (C, h, w): every
        chunk and every level's metadata, and the smallest level. Level k + 1 is the 2×2 mean of level k;
        for tile-aligned levels this is exactly what the tiles of a tiled render write."""
        out: dict[str, bytes] = {}
        for level in range(first, len(self.levels)):
            if level > first:
                image = downsample2(image)
            objects: dict[str, Any] = {}
            self._array(level, objects)[...] = image
            out.update(self._named(level, objects, True))
        return out, image

    def in_progress_document(self) -> bytes:
        return group_document({"phos": {"status": "in-progress"}})

    def complete_document(self, provenance: dict[str, Any]) -> bytes:
        """The image's zarr.json: OME metadata and the completion marker (written after every pixel)."""
        return group_document({"ome": ome_attributes(self.key, self.channels, self.shape, self.dtype),
                               "phos": {**provenance, "status": COMPLETE}})


def image_state(out: Location, key: str) -> dict[str, Any] | None:
    """The image's `phos` attributes (whatever its status), or None when it has no metadata. One GET."""
    document = out.get_json(f"{key}/{METADATA}")
    if not isinstance(document, dict):
        return None
    phos = (document.get("attributes") or {}).get("phos")
    return phos if isinstance(phos, dict) else {}


def image_status(root: zarr.Group, key: str) -> dict | None:
    """The `phos` attributes of a finished image in an opened group, or None when the image is absent or
    incomplete (for readers that hold the store open through Zarr)."""
    try:
        phos = dict(root[key].attrs).get("phos")
    except Exception:  # absent, or metadata that cannot be read: not complete
        return None
    if not isinstance(phos, dict) or phos.get("status") != COMPLETE:
        return None
    return phos


def root_document(out: Location) -> dict[str, Any] | None:
    """The `phos` attributes of the store's root group, or None when the store has no root yet."""
    document = out.get_json(METADATA)
    if not isinstance(document, dict):
        return None
    return (document.get("attributes") or {}).get("phos") or {}


class OutputError(PhosError, ValueError):
    """An output that a job must not write into: one line saying why."""


#: What a phos_dask store may hold at its top level besides image groups.
_OWN = {METADATA, "_lease.json", "_index", "_thumbs", STAGING, REPORT, "contact.jpg"}


def check_output(out: Location) -> list[str]:
    """Refuse (OutputError) an output that is neither absent, nor empty, nor a phos_dask store, before
    anything is written: a job only ever creates, replaces or deletes inside a store that is its own.
    One listing (plus one read of the root's zarr.json when there is one); returns the names listed."""
    if out.local:
        if not os.path.lexists(out.root):
            return []
        if not os.path.isdir(out.root):
            raise OutputError(f"the output {out.url!r} exists and is not a folder; choose another --out")
    names = out.names()
    if not set(names) - OS_LITTER:
        return names
    if METADATA not in names:
        if set(names) <= {"_lease.json", "_index"}:  # a run that stopped before writing its root
            return names
        v2 = " (a Zarr v2 store)" if ".zgroup" in names or ".zarray" in names else ""
        raise OutputError(f"the output {out.url!r} is not empty and is not a phos_dask store{v2}; refusing to "
                          "write into it: choose a new or empty --out")
    document = out.get_json(METADATA)
    if not isinstance(document, dict):
        raise OutputError(f"the output {out.url!r} has a zarr.json that is not valid JSON; refusing to write "
                          "into it: repair it or choose another --out")
    if document.get("node_type") != "group" or not isinstance((document.get("attributes") or {}).get("phos"),
                                                                dict):
        what = "a Zarr array" if document.get("node_type") == "array" else "a Zarr group not made by phos_dask"
        raise OutputError(f"the output {out.url!r} is {what}; refusing to write into it: choose another --out")
    return names


def write_root(out: Location, manifest: dict[str, Any]) -> None:
    """The store's root group with the job's manifest (settings, fingerprint: constant size). Only the root's
    own zarr.json is (re)written: the images under it are never touched."""
    out.makedirs()
    out.put(METADATA, group_document({"phos": manifest}))


def staging_path(key: str) -> str:
    return f"{STAGING}/{key}"


def write_json(url: str, name: str, payload: Any, storage_options: dict | None = None) -> None:
    """A JSON document beside the images (e.g. _report.json), replaced atomically where the filesystem
    allows."""
    Location.of(url, storage_options).put_json(name, payload)

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


