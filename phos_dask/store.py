"""The output store: a Zarr v3 group holding one OME-Zarr 0.5 image per input, written so that a crash or
a rerun never loses finished work, in as few requests as an object store allows.

Layout: OUT/zarr.json (the job's settings and fingerprint: constant size), OUT/<key>/ one image per input
(levels 0, 1, … as sharded arrays, and the image's zarr.json: OME metadata, and `attributes.phos`, whose
`status == "complete"` is the completion marker), OUT/_index/ (which images are finished: see
phos_dask.index) and OUT/_phos/ (the job's own files: report.json, contact.jpg, thumbs/ contact-sheet
thumbnails, staging/ decoded large inputs while they are rendered in tiles). `_index` and `_phos` are Zarr
groups (a zarr.json each, without images), so listing the root through Zarr finds only Zarr nodes and warns of
nothing; while a job runs the root also holds its lease, `_lease.json`.

Tasks never open the store through Zarr to write: they make each level's metadata with Zarr in memory and
encode its shards with the same codecs (`ImageLayout`, `phos_dask.shards`: the bytes Zarr itself would
write, tests/test_store_layout.py compares them) and put the objects
straight into the store through `phos_dask.storage`, all of a task's objects at once, then the image's
zarr.json last. Rules kept: one writer per shard (tiles own whole shards of every level they write); the
image's metadata and completion marker after all its pixels; nothing is read back after it is written.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from phos_dask.errors import PhosError
from phos_dask.film.params import CODE_MAX
from phos_dask.index import INDEX
from phos_dask.lease import LEASE
from phos_dask.shards import chunk_codec, encode_shard, shard_boxes
from phos_dask.storage import Data, Location
from phos_dask.tiles import Tile, TilePlan, assert_one_writer_per_chunk, pyramid_shapes

if TYPE_CHECKING:
    import zarr
    from zarr.codecs import BloscCodec

OME_VERSION = "0.5"
#: The job's own files, in one Zarr group beside the images.
JOB_FILES = "_phos"
STAGING = f"{JOB_FILES}/staging"
THUMBS = f"{JOB_FILES}/thumbs"
REPORT = f"{JOB_FILES}/report.json"
COMPLETE = "complete"
METADATA = "zarr.json"
#: The pyramid's downsampling method (`phos_dask.pyramid.downsample2`, imported where levels are made: it
#: brings numba, which the job's client does not need), as OME-Zarr's multiscales "type" and "metadata"
#: record it.
DOWNSAMPLING = "mean"
DOWNSAMPLING_METADATA = {
    "description": "each level is the 2x2 box mean of the level above (ceil-halved: odd edges average the "
                   "pixels there; integer codes round half up)",
    "method": "phos_dask.pyramid.downsample2",
    "kwargs": {"factor": 2},
}
#: Names an image key never is (nor does it start with '_' or '.'): the root's zarr.json, and the contact
#: sheet's name in stores of earlier versions, which kept it there (so that keys never change).
RESERVED_NAMES = frozenset({METADATA, "contact.jpg"})
#: Files an operating system leaves in folders: an output folder holding only these counts as empty.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})


#: The output's codecs by name (`run --compression`, Dask configuration `phos_dask.compression`), as Zarr's
#: BloscCodec configurations (`typesize` is the array's item size, set per array); every Zarr v3 reader
#: decodes all three. Level 0 of a grainy 24 MP render, one core (encode seconds, stored/raw size):
#: * "lz4" (default), LZ4 with bit shuffle: GB/s both ways, so storage hardly paces the model. uint16 0.18 s,
#:   0.88; uint8 0.14 s, 0.76. (Byte shuffle took longer to encode for no smaller size.)
#: * "zstd", Zstandard level 1 with bit shuffle: the smallest store for more than twice the encode time.
#:   uint16 0.43 s, 0.81; uint8 0.30 s, 0.60 (level 3: 1.0 s for 0.80 and 0.55).
#: * "none", Blosc without compression (a copy in Blosc's frame): uint16 0.08 s, 1.00; uint8 0.07 s, 1.00.
#: The whole `run` of four such photos (bench/compression.py): uint8, zstd 1.11× lz4's time for 0.80 of its
#: bytes, none 0.88× for 1.32×; uint16, zstd 1.11-1.26× for 0.92, none 1.04-1.09× (no faster: the extra
#: bytes cost what the encode saved) for 1.13×.
OUTPUT_CODECS = {
    "lz4": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle", "blocksize": 0},
    "zstd": {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 0},
    "none": {"cname": "lz4", "clevel": 0, "shuffle": "noshuffle", "blocksize": 0},
}
DEFAULT_COMPRESSION = "lz4"


def fast_compressor(compression: str = DEFAULT_COMPRESSION) -> BloscCodec:
    """The output's codec `compression` (OUTPUT_CODECS) as Zarr's BloscCodec."""
    from zarr.codecs import BloscCodec

    return BloscCodec(**OUTPUT_CODECS[compression])


def staging_compressor(itemsize: int = 1) -> BloscCodec:
    """The staged input's codec for samples of `itemsize` bytes: LZ4, with byte shuffle for 16- and 32-bit
    samples (a decoded photograph's bytes are smooth, and tiles decode each staged chunk up to nine times
    (their windows overlap), where byte shuffle decodes twice as fast as bit shuffle), without for 8-bit ones
    (shuffling single bytes changes nothing but costs a pass: the same bytes stored, decoded 7 % faster for
    a noisy photograph's chunk and 70 % for a smooth one)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle" if itemsize > 1 else "noshuffle")


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


def _json(document: dict[str, Any]) -> bytes:
    """A zarr.json's bytes as Zarr writes them (its default `json_indent` of 2)."""
    return json.dumps(document, indent=2, allow_nan=True).encode()


def group_document(attributes: dict[str, Any]) -> bytes:
    """A Zarr v3 group's zarr.json with these attributes, byte for byte what `zarr.create_group` writes
    (written here so that neither the job's client nor a worker imports Zarr for it: 0.2-0.3 s of CPU
    each, at the start of every `run`)."""
    return _json({"attributes": attributes, "zarr_format": 3, "node_type": "group"})


#: Inner chunk side, px: what a viewer fetches at a time. 256 px: a colour uint16 chunk is 384 KiB before
#: compression (512 px would be 1.5 MiB, slow to a first picture over a network), and it is the smallest a
#: level's chunks may be (MIN_SHARD), so tiles of power-of-two sides and whole levels share one chunk grid.
CHUNK = 256


def inner_side(shard: int) -> int:
    """The inner chunk side (px) of shards `shard` px long: halved while it is 512 px or more (and even), so
    256 px for a power-of-two tile and 256–511 px for any other tile up to 16384 px (tiles are multiples of
    64 px). A shard under 512 px is one chunk."""
    side = shard
    while side >= 2 * CHUNK and side % 2 == 0:
        side //= 2
    return side


def _axis(side: int, footprint: int | None) -> tuple[int, int]:
    """(shard, inner chunk) in px along one axis of a level `side` px long. `footprint`: a tile's footprint
    at that level (each tile writes one shard), or None when one task writes the whole level (one shard).
    A level under 512 px that one shard spans is one chunk along the axis; a longer one that one task writes
    is split into as many equal chunks of at least CHUNK px as fit (256–511 px), so its last chunk is
    padded by less than one px per chunk (816 px: 3 × 272 instead of 4 × 256, a quarter of them padding)."""
    if footprint is None:
        if side < 2 * CHUNK:
            return side, side
        chunk = -(-side // (side // CHUNK))
        return math.ceil(side / chunk) * chunk, chunk
    if side <= footprint and side < 2 * CHUNK:
        return side, side
    return footprint, inner_side(footprint)


@functools.lru_cache(maxsize=256)
def _array_document(channels: int, shape: tuple[int, int], dtype: str, chunks: tuple[int, int, int],
                    shards: tuple[int, int, int], compression: str = DEFAULT_COMPRESSION) -> bytes:
    """The zarr.json of a level's array: sharded (c, y, x) in `shards`, inner `chunks` of little-endian
    `dtype` under OUTPUT_CODECS[compression], index little-endian with CRC32C at the shard's end, fill value 0; byte for
    byte what `zarr.create_array` writes for the same arguments (tests/test_store_layout.py holds them
    equal)."""
    dt = np.dtype(dtype)
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    blosc = {"name": "blosc", "configuration": {"typesize": dt.itemsize, **OUTPUT_CODECS[compression]}}
    sharding = {"name": "sharding_indexed",
                "configuration": {"chunk_shape": list(chunks),
                                  "codecs": [{"name": "bytes"} if dt.itemsize == 1 else little, blosc],
                                  "index_codecs": [little, {"name": "crc32c"}], "index_location": "end"}}
    return _json({
        "shape": [channels, *shape],
        "data_type": dt.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shards)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if dt.kind == "f" else 0,
        "codecs": [sharding],
        "attributes": {},
        "dimension_names": ["c", "y", "x"],
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    })


@functools.lru_cache(maxsize=64)
def _shard_codec(document: bytes):
    """(the inner chunks' Blosc, the chunk key separator) of a sharded array's zarr.json, as written by
    `_array_document`: codecs [sharding_indexed: [bytes, blosc]] with the default chunk key encoding."""
    doc = json.loads(document)
    (sharding,) = doc["codecs"]
    if sharding["name"] != "sharding_indexed":
        raise ValueError(f"no direct shard encoder for the codecs {doc['codecs']}")
    return chunk_codec(sharding["configuration"]["codecs"]), key_separator(doc, "no direct shard encoder")


def key_separator(doc: dict, what: str) -> str:
    """The separator of the default chunk key encoding of the array whose zarr.json is `doc`; any other
    encoding is a ValueError that starts with `what`."""
    encoding = doc.get("chunk_key_encoding", {})
    if encoding.get("name", "default") != "default":
        raise ValueError(f"{what} for the chunk key encoding {encoding}")
    return encoding.get("configuration", {}).get("separator", "/")


def chunk_key(separator: str, coords) -> str:
    """The name of the chunk (or shard) at grid `coords` under the default chunk key encoding."""
    return separator.join(["c", *(str(i) for i in coords)])


@dataclass(frozen=True)
class ImageLayout:
    """The pyramid arrays of one output image, Zarr v3 sharded arrays (c, y, x): level shapes, shards (one
    per writing task), inner chunks (what viewers fetch), dtype and codecs; and the store objects (name →
    bytes, names relative to the store's root) that hold them.

    Shards: a tiled image's first `tile_levels` levels have one shard per tile (its footprint there, at
    least MIN_SHARD px); every other level, and every level of an image rendered whole, is one shard
    written by one task. Inner chunks of tile-written levels are CHUNK px (256–511 px for tiles whose
    footprint is not a multiple of 256); a level one task writes has its side split into equal chunks of
    256–511 px (the level's whole side where that is under 512 px)."""

    key: str
    channels: int
    shape: tuple[int, int]
    dtype: str
    #: the tile plan when tiles write the leading levels (a staged image); None when one task writes them all
    tiles: TilePlan | None
    #: the codec of every level (OUTPUT_CODECS)
    compression: str = DEFAULT_COMPRESSION

    @property
    def levels(self) -> list[tuple[int, int]]:
        return pyramid_shapes(self.shape)

    @property
    def tile_levels(self) -> int:
        """How many leading levels tiles write (0 for an image rendered whole)."""
        return 0 if self.tiles is None else self.tiles.tile_levels

    def shards(self, level: int) -> tuple[int, int, int]:
        """Shard shape (c, y, x) of a level's array, px."""
        return self._grid(level)[0]

    def chunks(self, level: int) -> tuple[int, int, int]:
        """Inner chunk shape (c, y, x) of a level's array, px."""
        return self._grid(level)[1]

    def _grid(self, level: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        h, w = self.levels[level]
        fy, fx = self.tiles.shard_shape(level) if self.tiles is not None and level < self.tile_levels else (None, None)
        (sy, cy), (sx, cx) = _axis(h, fy), _axis(w, fx)
        return (self.channels, sy, sx), (self.channels, cy, cx)

    def check(self) -> None:
        """One writer per shard of every tile-written level; no inner chunk under CHUNK px unless it spans
        its level's whole side."""
        if self.tiles is not None:
            assert_one_writer_per_chunk(self.tiles, [self.shards(k)[1:] for k in range(self.tile_levels)])
        for level, side in enumerate(self.levels):
            for chunk, length in zip(self.chunks(level)[1:], side, strict=True):
                assert chunk >= CHUNK or chunk == length, f"level {level}: chunks of {chunk} px"

    def array_document(self, level: int) -> bytes:
        """A level's array zarr.json."""
        return _array_document(self.channels, self.levels[level], self.dtype, self.chunks(level), self.shards(level),
                               self.compression)

    def metadata_objects(self) -> dict[str, bytes]:
        """Every level's array zarr.json (written before any tile of a tiled image)."""
        return {f"{self.key}/{level}/{METADATA}": self.array_document(level) for level in range(len(self.levels))}

    def tile_objects(self, tile: Tile, block: np.ndarray) -> dict[str, Data]:
        """The shards a tile owns: its (C, h, w) output at level 0 and its block of each next tile-written
        level (each the 2×2 mean of the one before): one object per level."""
        from phos_dask.pyramid import downsample2

        out: dict[str, Data] = {}
        for level in range(self.tile_levels):
            if level:
                block = downsample2(block)
            box = self.tiles.level_box(tile, level)  # type: ignore[union-attr]
            out.update(self._shard_objects(level, box, block))
        return out

    def _shard_objects(self, level: int, box: tuple[int, int, int, int], block: np.ndarray) -> dict[str, Data]:
        """The shard objects of a level's region (y0, y1, x0, x1), which covers whole shards, from its pixels
        block (C, y1-y0, x1-x0): encoded as Zarr encodes them (`phos_dask.shards`), with this level's codecs."""
        shape = (self.channels, *self.levels[level])
        shards, chunks = self._grid(level)
        codec, separator = _shard_codec(self.array_document(level))
        y0, y1, x0, x1 = box
        out = {}
        for coords, origin in shard_boxes(((0, self.channels), (y0, y1), (x0, x1)), shards, shape):
            part = block[:, origin[1] - y0 : min(origin[1] + shards[1], y1) - y0,
                         origin[2] - x0 : min(origin[2] + shards[2], x1) - x0]
            name = f"{self.key}/{level}/{chunk_key(separator, coords)}"
            out[name] = encode_shard(part, origin, shape, shards, chunks, codec)
        return out

    def levels_objects(self, image: np.ndarray, first: int = 0) -> tuple[dict[str, Data], np.ndarray]:
        """Levels `first`, first + 1, … of a pyramid whose level `first` is `image` (C, h, w), each one
        shard: its object and its metadata; and the smallest level. Level k + 1 is the 2×2 mean of level k,
        exactly what the tiles of a tiled render write for the levels they own."""
        from phos_dask.pyramid import downsample2

        out: dict[str, Data] = {}
        for level in range(first, len(self.levels)):
            if level > first:
                image = downsample2(image)
            out[f"{self.key}/{level}/{METADATA}"] = self.array_document(level)
            out.update(self._shard_objects(level, (0, image.shape[1], 0, image.shape[2]), image))
        return out, image

    def in_progress_document(self) -> bytes:
        return group_document({"phos": {"status": "in-progress"}})

    def complete_document(self, provenance: dict[str, Any]) -> bytes:
        """The image's zarr.json: OME metadata (`ome_attributes`) and the completion marker (written after every
        pixel)."""
        return group_document({"ome": ome_attributes(self.key, self.channels, self.shape, self.dtype),
                               "phos": {**provenance, "status": COMPLETE}})


def image_state(out: Location, key: str) -> dict[str, Any] | None:
    """The image's `phos` attributes (whatever its status), or None when it has no metadata. One GET."""
    document = out.get_json(f"{key}/{METADATA}")
    if not isinstance(document, dict):
        return None
    phos = (document.get("attributes") or {}).get("phos")
    return phos if isinstance(phos, dict) else {}


def complete_image(root: zarr.Group, key: str) -> tuple[zarr.Group, dict[str, Any]] | None:
    """(the image's group, its `phos` attributes) of a finished image in an opened store, or None when the
    image is absent or incomplete (for readers that hold the store open through Zarr)."""
    import zarr

    try:
        group = root[key]
        phos = dict(group.attrs).get("phos")
    except Exception:  # absent, or metadata that cannot be read: not complete
        return None
    if not isinstance(group, zarr.Group) or not isinstance(phos, dict) or phos.get("status") != COMPLETE:
        return None
    return group, phos


def image_status(root: zarr.Group, key: str) -> dict | None:
    """The `phos` attributes of a finished image in an opened group, or None (see `complete_image`)."""
    found = complete_image(root, key)
    return None if found is None else found[1]


def root_document(out: Location) -> dict[str, Any] | None:
    """The `phos` attributes of the store's root group, or None when the store has no root yet."""
    document = out.get_json(METADATA)
    if not isinstance(document, dict):
        return None
    return (document.get("attributes") or {}).get("phos") or {}


class OutputError(PhosError, ValueError):
    """An output that a job must not write into: one line saying why."""


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
        if set(names) <= {LEASE, INDEX, JOB_FILES}:  # a run that stopped before writing its root
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
    """The store's root group with the job's manifest (settings, fingerprint: constant size), and the groups
    of the job's own folders, _phos and _index (saying what they hold), all at once. Only these zarr.json
    objects are (re)written: the images, and the files in those folders, are never touched."""
    out.makedirs()
    out.put_many({
        METADATA: group_document({"phos": manifest}),
        f"{JOB_FILES}/{METADATA}": group_document({"phos": {"contents": "the job's own files: report.json, "
                                                                       "contact.jpg, thumbs/, staging/"}}),
        f"{INDEX}/{METADATA}": group_document({"phos": {"contents": "which images are finished: see "
                                                                    "phos_dask.index"}}),
    })


def staging_path(key: str) -> str:
    return f"{STAGING}/{key}"


def write_json(url: str, name: str, payload: Any, storage_options: dict | None = None) -> None:
    """A JSON document in the store (e.g. REPORT), replaced atomically where the filesystem allows."""
    Location.of(url, storage_options).put_json(name, payload)


def ome_attributes(key: str, channels: int, shape: tuple[int, int], dtype: str) -> dict[str, Any]:
    """The image's `ome` attributes (OME-Zarr 0.5): axes (c, y, x); per level k a scale of 2^k px and a
    translation of (2^k − 1)/2 px on y and x (a level-k pixel is the mean of a 2^k-px block, centred on that
    block's middle); the pyramid's downsampling method; and omero channel hints. Built as plain JSON, key
    for key what ome-zarr-models' `Image.new` makes of the same arguments: the tests hold the two equal and
    validate every written image with ome-zarr-models, which a worker then never imports (pydantic and the
    models took 0.3 s of each worker's first image)."""
    factors = [float(2**level) for level in range(len(pyramid_shapes(shape)))]
    datasets = [{"path": str(level),
                 "coordinateTransformations": [{"type": "scale", "scale": [1.0, f, f]},
                                               {"type": "translation", "translation": [0.0, (f - 1) / 2, (f - 1) / 2]}]}
                for level, f in enumerate(factors)]
    names = ["red", "green", "blue"] if channels == 3 else ["grey"]
    colors = ["FF0000", "00FF00", "0000FF"] if channels == 3 else ["FFFFFF"]
    vmax = CODE_MAX.get(dtype, 1)
    return {
        "version": OME_VERSION,
        "multiscales": [{
            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": datasets,
            "metadata": copy.deepcopy(DOWNSAMPLING_METADATA),
            "name": key,
            "type": DOWNSAMPLING,
        }],
        "omero": {
            "channels": [
                {"label": n, "color": c, "active": True, "window": {"min": 0, "max": vmax, "start": 0, "end": vmax}}
                for n, c in zip(names, colors, strict=True)
            ],
            "rdefs": {"model": "color" if channels == 3 else "greyscale"},
        },
    }
