"""The store viewers open: sharded levels (one shard per writing task, 256-px inner chunks, no tiny chunk
grids), OME-Zarr 0.5 metadata built with ome-zarr-models (downsampling method, half-pixel translations),
and a root whose listing through Zarr holds only Zarr nodes."""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from phos_dask import Settings
from phos_dask.cluster import connect
from phos_dask.job import JobSpec, run_job
from phos_dask.pyramid import downsample2
from phos_dask.storage import Data, joined
from phos_dask.store import CHUNK, ImageLayout, inner_side
from phos_dask.tiles import MIN_SHARD, TilePlan

MAX_U64 = 2**64 - 1


def _grid(layout: ImageLayout) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return [(layout.shards(k), layout.chunks(k)) for k in range(len(layout.levels))]


def test_shards_are_what_one_task_writes_and_chunks_are_256_px_or_a_whole_levels_equal_parts():
    # a level one task writes: its side in equal chunks of 256–511 px (padded by under a px per chunk)
    whole = ImageLayout("a", 3, (4000, 6000), "uint16", None)
    assert _grid(whole) == [((3, 4005, 6003), (3, 267, 261)), ((3, 2002, 3003), (3, 286, 273)),
                            ((3, 1002, 1500), (3, 334, 300)), ((3, 500, 750), (3, 500, 375))]
    photo = ImageLayout("a", 3, (816, 1224), "uint8", None)
    assert _grid(photo) == [((3, 816, 1224), (3, 272, 306)), ((3, 408, 612), (3, 408, 306))]
    tiled = ImageLayout("a", 3, (4000, 6000), "uint16", TilePlan.build((4000, 6000), 2048, 0))
    assert tiled.tile_levels == 4
    assert _grid(tiled) == [((3, 2048, 2048), (3, 256, 256)), ((3, 1024, 1024), (3, 256, 256)),
                            ((3, 512, 512), (3, 256, 256)), ((3, 256, 256), (3, 256, 256))]
    small = ImageLayout("a", 3, (240, 320), "uint16", None)
    assert _grid(small) == [((3, 240, 320), (3, 240, 320))]  # one chunk: the whole (small) level
    # a tile of 2112 px (a multiple of 64, not of 256): chunks of 264 px, levels down to a 264-px footprint
    odd = ImageLayout("a", 1, (9000, 9000), "uint8", TilePlan.build((9000, 9000), 2112, 0))
    assert [odd.chunks(k)[1] for k in range(odd.tile_levels)] == [264] * 4
    for layout in (whole, photo, tiled, small, odd):
        layout.check()


@pytest.mark.parametrize("tile", [256, 320, 1024, 2048, 2112, 4096])
@pytest.mark.parametrize("shape", [(300, 5000), (1013, 777), (2000, 3001), (15000, 20000)])
def test_no_level_has_chunks_under_256_px_unless_the_level_is_smaller(tile, shape):
    for tiles in (None, TilePlan.build(shape, tile, 0)):
        layout = ImageLayout("a", 3, shape, "uint16", tiles)
        layout.check()
        for k, (h, w) in enumerate(layout.levels):
            _, cy, cx = layout.chunks(k)
            _, sy, sx = layout.shards(k)
            assert (cy >= CHUNK or cy == h) and (cx >= CHUNK or cx == w)
            assert (cy < 2 * CHUNK or cy == h) and (cx < 2 * CHUNK or cx == w)  # 256–511 px
            assert sy % cy == 0 and sx % cx == 0
            if k < layout.tile_levels:
                assert min(tiles.shard_shape(k)) >= MIN_SHARD
            else:
                assert sy >= h and sx >= w  # one shard: the whole level


def test_inner_chunk_sides():
    assert [inner_side(s) for s in (256, 300, 511, 512, 1024, 2048, 2112, 4096)] == [
        256, 300, 511, 256, 256, 256, 264, 256]


def _inner_chunks(objects: dict[str, Data], key: str, level: int, layout: ImageLayout) -> dict[tuple, bytes]:
    """{global inner chunk index (c, y, x): its encoded bytes} of a level's shard objects, from each
    shard's index (at its end: per inner chunk an offset and a length, uint64 little-endian; then CRC32C)."""
    shards, chunks = layout.shards(level), layout.chunks(level)
    per = tuple(s // c for s, c in zip(shards, chunks, strict=True))
    found: dict[tuple, bytes] = {}
    prefix = f"{key}/{level}/c/"
    for name, data in objects.items():
        if not name.startswith(prefix):
            continue
        shard = tuple(int(i) for i in name[len(prefix):].split("/"))
        data = joined(data)
        n = math.prod(per)
        index = struct.unpack(f"<{2 * n}Q", data[-(16 * n + 4):-4])
        for flat, local in enumerate(np.ndindex(*per)):
            offset, length = index[2 * flat], index[2 * flat + 1]
            if offset == MAX_U64:
                continue
            found[tuple(s * p + i for s, p, i in zip(shard, per, local, strict=True))] = data[offset:offset + length]
    return found


def _write(objects: dict[str, Data], root) -> None:
    """Store objects as files under `root` (a local store)."""
    for name, data in objects.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(joined(data))


@pytest.mark.parametrize(("shape", "tile"), [((1100, 2600), 512), ((700, 1300), 256), ((2100, 1500), 1024)])
def test_a_tiled_image_has_the_same_inner_chunks_as_the_same_image_whole(shape, tile, tmp_path):
    """Byte for byte, at every level where both use the same inner chunks; decoded equal at every level."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 65535, (3, *shape), dtype=np.uint16, endpoint=True)
    plan = TilePlan.build(shape, tile, 0)
    tiled = ImageLayout("k", 3, shape, "uint16", plan)
    whole = ImageLayout("k", 3, shape, "uint16", None)
    objects = tiled.metadata_objects()
    for t in plan:
        y0, y1, x0, x1 = t.box
        parts = tiled.tile_objects(t, image[:, y0:y1, x0:x1])
        assert len(parts) == tiled.tile_levels  # one shard per tile-written level
        assert not set(parts) & set(objects)  # one writer per shard
        objects.update(parts)
    _write(objects, tmp_path)  # as finalize finds them: the last tile-written level from the store
    last = tiled.tile_levels - 1
    stored = zarr.open_array(str(tmp_path / "k" / str(last)), mode="r")[...]
    rest, _ = tiled.levels_objects(downsample2(stored), first=last + 1)
    objects.update(rest)
    _write(rest, tmp_path)
    reference, _ = whole.levels_objects(image)
    assert sum(1 for n in reference if "/c/" in n) == len(whole.levels)  # whole: one shard per level
    _write(reference, tmp_path / "whole")
    same = 0
    for level in range(len(whole.levels)):
        a = _inner_chunks(objects, "k", level, tiled)
        b = _inner_chunks(reference, "k", level, whole)
        assert a and b
        if tiled.chunks(level) == whole.chunks(level):
            assert a == b, f"level {level}"
            same += 1
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "k" / str(level)), mode="r")[...],
                                      zarr.open_array(str(tmp_path / "whole" / "k" / str(level)), mode="r")[...])
    # the levels past the tiles' own are built whole in both; a whole level's chunks split its side evenly
    assert same >= len(whole.levels) - tiled.tile_levels


def _zarr_written(layout, level: int, box, block) -> dict[str, bytes]:
    """The shard objects Zarr itself writes for a level's region (the encoder `store` does without)."""
    from zarr.storage import MemoryStore

    from phos_dask.store import METADATA, fast_compressor

    objects: dict = {}
    array = zarr.create_array(MemoryStore(objects), shape=(layout.channels, *layout.levels[level]),
                              dtype=layout.dtype, chunks=layout.chunks(level), shards=layout.shards(level),
                              compressors=fast_compressor(layout.compression), dimension_names=("c", "y", "x"),
                              fill_value=0, config={"write_empty_chunks": True})
    y0, y1, x0, x1 = box
    array[:, y0:y1, x0:x1] = block
    return {f"{layout.key}/{level}/{k}": v.to_bytes() for k, v in objects.items() if k != METADATA}


@pytest.mark.parametrize(("channels", "dtype", "shape", "compression"),
                         [(3, "uint8", (700, 900), "lz4"), (1, "uint16", (1500, 530), "lz4"),
                          (3, "float16", (300, 257), "lz4"), (1, "uint8", (1, 1), "lz4"),
                          (3, "uint8", (700, 900), "zstd"), (1, "uint16", (1500, 530), "zstd"),
                          (3, "uint16", (700, 900), "none"), (1, "float16", (300, 257), "none")])
def test_shards_are_the_bytes_zarr_writes_for_a_whole_image(channels, dtype, shape, compression):
    rng = np.random.default_rng(3)
    image = (rng.random((channels, *shape)) * 200).astype(dtype)
    image[:, : shape[0] // 2] = 7  # a compressible half
    layout = ImageLayout("k", channels, shape, dtype, None, compression)
    ours, _ = layout.levels_objects(image)
    level_image = image
    for level in range(len(layout.levels)):
        if level:
            level_image = downsample2(level_image)
        want = _zarr_written(layout, level, (0, *level_image.shape[1:2], 0, level_image.shape[2]), level_image)
        assert want and all(joined(ours[name]) == data for name, data in want.items()), f"level {level}"


@pytest.mark.parametrize(("channels", "dtype", "shape", "tile", "compression"),
                         [(3, "uint16", (4000, 6000), None, "lz4"), (1, "uint8", (250, 375), None, "lz4"),
                          (3, "float16", (511, 3), None, "lz4"), (1, "float32", (1100, 2600), 512, "lz4"),
                          (3, "uint8", (1100, 2600), 512, "lz4"), (3, "uint16", (4000, 6000), None, "zstd"),
                          (3, "uint8", (1100, 2600), 512, "none")])
def test_every_levels_zarr_json_is_the_bytes_zarr_writes_for_it(channels, dtype, shape, tile, compression):
    """The package writes each level's zarr.json itself (neither the job's client nor a worker imports
    Zarr for it); it is byte for byte what zarr.create_array writes for the level's shape, chunks, shards,
    codec, fill value and dimension names."""
    from zarr.storage import MemoryStore

    from phos_dask.store import METADATA, fast_compressor

    layout = ImageLayout("k", channels, shape, dtype, None if tile is None else TilePlan.build(shape, tile, 0),
                         compression)
    for level in range(len(layout.levels)):
        objects: dict = {}
        zarr.create_array(MemoryStore(objects), shape=(channels, *layout.levels[level]), dtype=dtype,
                          chunks=layout.chunks(level), shards=layout.shards(level),
                          compressors=fast_compressor(compression),
                          dimension_names=("c", "y", "x"), fill_value=0)
        assert layout.array_document(level) == objects[METADATA].to_bytes(), f"level {level}"


@pytest.mark.parametrize("grid", [(1, 16, 24), (3, 1, 1), (1, 1, 1), (2, 3, 5), (1, 33, 7), (4, 4, 4), (1, 17, 1)])
def test_a_shards_chunks_are_in_zarrs_morton_order(grid):
    from zarr.core.indexing import morton_order_iter

    from phos_dask.shards import chunk_order

    assert chunk_order(grid) == tuple(tuple(int(v) for v in c) for c in morton_order_iter(grid))


@pytest.mark.parametrize("attributes", [{}, {"phos": {"status": "complete", "note": "é ☃", "n": [1, 2.5, None]}}])
def test_a_groups_zarr_json_is_the_bytes_zarr_writes_for_it(attributes):
    from zarr.storage import MemoryStore

    from phos_dask.store import METADATA, group_document

    objects: dict = {}
    zarr.create_group(MemoryStore(objects), attributes=attributes)
    assert group_document(attributes) == objects[METADATA].to_bytes()


def test_the_job_client_and_a_whole_image_task_run_without_importing_zarr(tmp_path):
    """Zarr costs 0.2-0.3 s of CPU to import; the job's client (planning, lease, root, index, report, the
    contact sheet from the job's thumbnails) and a task rendering an image whole never need it. Checked in a
    fresh interpreter."""
    import subprocess
    import sys

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((60, 90, 3), 120, np.uint8))
    code = f"""
import sys
from distributed import Client, LocalCluster
from phos_dask import Settings
from phos_dask.contact import write_contact_sheet
from phos_dask.job import JobSpec, run_job
spec = JobSpec({str(tmp_path)!r}, {str(tmp_path / "out.zarr")!r}, Settings(film="Portra400"))
pairs = {{}}
with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
    report = run_job(spec, client, sheet_thumbs=pairs)
assert report["counts"]["done"] == 1, report
assert write_contact_sheet(spec.out, keys=["p.png"], pairs=pairs)
print("zarr" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_a_tiles_shards_are_the_bytes_zarr_writes(compression):
    shape = (1100, 2600)
    plan = TilePlan.build(shape, 512, 0)
    layout = ImageLayout("k", 3, shape, "uint8", plan, compression)
    image = np.random.default_rng(4).integers(0, 255, (3, *shape), dtype=np.uint8)
    for t in list(plan)[-3:]:  # the last ones reach the image's edges
        y0, y1, x0, x1 = t.box
        ours = layout.tile_objects(t, image[:, y0:y1, x0:x1])
        block = image[:, y0:y1, x0:x1]
        for level in range(layout.tile_levels):
            if level:
                block = downsample2(block)
            want = _zarr_written(layout, level, plan.level_box(t, level), block)
            assert want and all(joined(ours[name]) == data for name, data in want.items())


@pytest.mark.parametrize(("shape", "dtype"), [((1100, 1300, 3), "uint8"), ((700, 530), "uint16")])
def test_a_staged_inputs_chunks_are_the_bytes_zarr_writes(shape, dtype):
    """The staging area of a tiled image (phos_dask.tiled.prepare_tiles): chunks of half a tile, encoded by
    shards.encode_chunk, interior and edge chunks alike."""
    from zarr.storage import MemoryStore

    from phos_dask.shards import chunk_codec, encode_chunk
    from phos_dask.store import fast_compressor

    side = 512
    chunks = (side, side, 3)[: len(shape)]
    image = np.random.default_rng(5).integers(0, 200, shape).astype(dtype)
    image[: shape[0] // 2] = 9
    objects: dict = {}
    array = zarr.create_array(MemoryStore(objects), shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                              compressors=fast_compressor())
    array[...] = image
    codec = chunk_codec(array.metadata.to_dict()["codecs"])
    names = [k for k in objects if k.startswith("c/")]
    assert len(names) == -(-shape[0] // side) * -(-shape[1] // side)
    for name in names:
        i, j = (int(v) for v in name.split("/")[1:3])
        part = image[i * side : (i + 1) * side, j * side : (j + 1) * side]
        assert encode_chunk(part, chunks, codec) == objects[name].to_bytes(), name


# ------------------------------------------------------------------------------------------------ a job


@pytest.fixture(scope="module")
def client():
    with connect(workers=2, dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory, photo) -> Path:
    """A 2600×1100 PNG (3 pyramid levels) and a 320×240 JPEG."""
    src = tmp_path_factory.mktemp("layout") / "src"
    src.mkdir()
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(src / "pano.png"), cv2.resize(bgr, (2600, 1100), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(src / "small.jpg"), cv2.resize(bgr, (320, 240), interpolation=cv2.INTER_AREA))
    return src


@pytest.fixture(scope="module")
def stores(client, source, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stores")
    out = {}
    for name, whole_limit in (("tiled", 0.0), ("whole", 1e9)):
        out[name] = base / f"{name}.zarr"
        spec = JobSpec(str(source), str(out[name]), Settings(dtype="uint16", seed=3), tile=512,
                       whole_limit_mp=whole_limit)
        assert run_job(spec, client)["counts"]["done"] == 2
    return out


def test_levels_are_sharded_and_tiled_equals_whole(stores):
    tiled = zarr.open_group(str(stores["tiled"]), mode="r")["pano.png"]
    whole = zarr.open_group(str(stores["whole"]), mode="r")["pano.png"]
    assert tiled.attrs["phos"]["tile_plan"]["mode"] == "tiled" and whole.attrs["phos"]["tile_plan"]["mode"] == "whole"
    assert [(tiled[str(k)].shards, tiled[str(k)].chunks) for k in range(3)] == [
        ((3, 512, 512), (3, 256, 256)), ((3, 256, 256), (3, 256, 256)), ((3, 275, 650), (3, 275, 325))]
    assert [(whole[str(k)].shards, whole[str(k)].chunks) for k in range(3)] == [
        ((3, 1100, 2600), (3, 275, 260)), ((3, 550, 1300), (3, 275, 260)), ((3, 275, 650), (3, 275, 325))]
    for k in range(3):
        np.testing.assert_array_equal(tiled[str(k)][...], whole[str(k)][...], err_msg=f"level {k}")
    # whole: one shard object per level; tiled: one per tile at the tile-written levels
    assert [sum(1 for p in (stores["whole"] / "pano.png" / str(k) / "c").rglob("*") if p.is_file())
            for k in range(3)] == [1, 1, 1]
    assert [sum(1 for p in (stores["tiled"] / "pano.png" / str(k) / "c").rglob("*") if p.is_file())
            for k in range(3)] == [3 * 6, 3 * 6, 1]
    small = zarr.open_group(str(stores["whole"]), mode="r")["small.jpg"]["0"]
    assert small.shape == (3, 240, 320) and small.shards == small.chunks == (3, 240, 320)


def test_ome_metadata_records_the_downsampling_and_half_pixel_translations(stores):
    from ome_zarr_models.v05.image import Image

    group = zarr.open_group(str(stores["tiled"]), mode="r")["pano.png"]
    Image.from_zarr(group)
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert multiscale["type"] == "mean" and multiscale["metadata"]["method"] == "phos_dask.pyramid.downsample2"
    assert [d["coordinateTransformations"] for d in multiscale["datasets"]] == [
        [{"type": "scale", "scale": [1.0, f, f]}, {"type": "translation", "translation": [0.0, t, t]}]
        for f, t in ((1.0, 0.0), (2.0, 0.5), (4.0, 1.5))]
    assert group.attrs["ome"]["omero"]["rdefs"]["model"] == "color"


@pytest.mark.parametrize(("channels", "shape", "dtype"), [(3, (4000, 6000), "uint16"), (1, (700, 530), "uint8"),
                                                      (3, (15000, 20000), "float32"), (1, (1, 1), "uint16")])
def test_the_ome_attributes_are_what_ome_zarr_models_builds_key_for_key(channels, shape, dtype):
    """The store writes its OME attributes as plain JSON (no pydantic in a worker); ome-zarr-models' own
    `Image.new`, given the image's arrays, builds the same document, in the same key order, and validates it."""
    import json

    from ome_zarr_models.v05.axes import Axis
    from ome_zarr_models.v05.image import Image
    from pydantic_zarr.v3 import ArraySpec

    from phos_dask.store import DOWNSAMPLING, DOWNSAMPLING_METADATA, ome_attributes

    layout = ImageLayout("photo.jpg", channels, shape, dtype, None)
    arrays = [ArraySpec(**json.loads(layout.array_document(k))) for k in range(len(layout.levels))]
    factors = [float(2**k) for k in range(len(layout.levels))]
    image = Image.new(array_specs=arrays, paths=[str(k) for k in range(len(factors))],
                      axes=[Axis(name="c", type="channel"), Axis(name="y", type="space"), Axis(name="x", type="space")],
                      scales=[[1.0, f, f] for f in factors],
                      translations=[[0.0, (f - 1) / 2, (f - 1) / 2] for f in factors],
                      name="photo.jpg", multiscale_type=DOWNSAMPLING, metadata=DOWNSAMPLING_METADATA)
    theirs = image.attributes.ome.model_dump(mode="json", by_alias=True, exclude_none=True)
    ours = ome_attributes("photo.jpg", channels, shape, dtype)
    omero = ours.pop("omero")
    assert json.dumps(ours) == json.dumps(theirs)
    assert [c["label"] for c in omero["channels"]] == (["red", "green", "blue"] if channels == 3 else ["grey"])
    Image(members=image.members, attributes={"ome": {**ours, "omero": omero}})  # raises if invalid


def test_the_roots_listing_holds_only_zarr_nodes(stores):
    out = stores["tiled"]
    assert (out / "_phos" / "report.json").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(zarr.open_group(str(out), mode="r").members())
    assert set(members) == {"pano.png", "small.jpg", "_phos", "_index"}
    assert not (out / "_phos" / "staging").exists() and not (out / "_lease.json").exists()


def test_one_image_opens_in_ome_zarr_pys_reader(stores):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = list(Reader(parse_url(str(stores["tiled"] / "pano.png")))())
    assert nodes and nodes[0].load(Multiscales) is not None
    pyramid = nodes[0].data
    assert [a.shape for a in pyramid] == [(3, 1100, 2600), (3, 550, 1300), (3, 275, 650)]
    np.testing.assert_array_equal(np.asarray(pyramid[2]),
                                  zarr.open_array(str(stores["tiled"] / "pano.png" / "2"), mode="r")[...])


def test_a_shard_in_pieces_is_written_whole_or_not_at_all(tmp_path):
    """Shards reach a local file as their pieces (chunks, then index), not first joined into one object: the
    file holds the joined bytes, and a write that fails partway leaves neither the file nor its temporary."""
    from phos_dask.storage import write_atomic

    layout = ImageLayout("k", 3, (700, 900), "uint16", None)
    image = np.random.default_rng(2).integers(0, 65535, (3, 700, 900), dtype=np.uint16)
    objects, _ = layout.levels_objects(image)
    pieces = next(d for n, d in objects.items() if "/c/" in n)
    assert isinstance(pieces, list) and len(pieces) > 2
    write_atomic(str(tmp_path / "a" / "shard"), pieces)
    assert (tmp_path / "a" / "shard").read_bytes() == b"".join(pieces)
    with pytest.raises(TypeError):
        write_atomic(str(tmp_path / "b"), [pieces[0], "not bytes", pieces[1]])
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]
