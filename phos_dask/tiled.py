"""The tiled path of an image too large for one task: prepare it for tiles (`prepare_tiles`,
`prepare_by_region`: the first task's `Staged` result), render each tile (`process_tile`), then
`finalize` (the remaining pyramid levels, thumbnails, metadata and completion marker).

Every function is idempotent, like those of phos_dask.tasks: a retry writes the same bytes again.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from phos_dask import thumbs
from phos_dask.device import render_on
from phos_dask.film.pipeline import add_grain_sums, as_rgb, grain_constants, grain_k_from_sums, grain_sums
from phos_dask.imageio import ImageReadError, check_pixels, open_region_reader
from phos_dask.shards import chunk_codec, encode_chunk, shard_boxes
from phos_dask.sources import SourceItem
from phos_dask.storage import Data, Location, options_for
from phos_dask.store import METADATA, ImageLayout, chunk_key, key_separator, staging_compressor, staging_path
from phos_dask.taskflow import ImageContext, ImageResult, JobConfig, Staged, Stages, TileDone
from phos_dask.taskkit import InputError, as_failure, complete, guard, limit_kernel_threads, provenance
from phos_dask.tiles import staging_chunk


def _staged(item: SourceItem, ctx: ImageContext, digest: str, linear: bool, direct: bool, t0: float,
            thumb: bool, source_thumb: np.ndarray | None, grain_k: list[float]) -> Staged:
    seconds = time.perf_counter() - t0
    return Staged(item.key, ctx.shape, direct, linear, digest, tuple(grain_k), tuple(t.index for t in ctx.tiling),
                  round(seconds, 3), Stages.of(seconds), thumb,
                  None if source_thumb is None else thumbs.encode_pair(source_thumb, source_thumb))


def prepare_by_region(cfg: JobConfig, item: SourceItem, reader, out: Location, t0: float, thumb: bool
                      ) -> Staged | ImageResult:
    """A large tiled TIFF: tiles will read their windows from the file itself, so nothing is staged."""
    with reader:
        shape, linear = reader.shape, bool(reader.info["linear"])
    ctx = ImageContext.build(cfg, item, shape, linear)
    try:
        check_pixels(item.url, shape[1], shape[0], cfg.max_pixels)
        digest = _sha256(item.url, cfg.storage_options)
        grain_k = _grain_k_by_region(item, cfg, ctx)
    except ImageReadError as e:
        return ImageResult.failed(item.key, e)
    except OSError as e:
        return ImageResult.failed(item.key, InputError(f"cannot read {item.url!r}: {e.strerror or e}"))
    _create(cfg, out, _layout(cfg, item, ctx))
    return _staged(item, ctx, digest, linear, True, t0, thumb, None, grain_k)


def _grain_k_by_region(item: SourceItem, cfg: JobConfig, ctx: ImageContext) -> list[float]:
    """K_c of an image read by region, in one streaming pass tile by tile (exact: the integer sums of the
    blocks add up to the whole image's)."""
    if not ctx.model.has_grain:
        return []
    reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
    if reader is None:
        raise OSError(f"{item.url!r} can no longer be read by region")
    parts = []
    with reader:
        for tile in ctx.tiling:
            y0, y1, x0, x1 = tile.box
            parts.append(grain_sums(as_rgb(reader.read(y0, y1, x0, x1)), (y0, x0), ctx.model))
    return list(grain_k_from_sums(add_grain_sums(*parts)))


def prepare_tiles(cfg: JobConfig, item: SourceItem, image: np.ndarray, digest: str, linear: bool, out: Location,
                  t0: float, thumb: bool, source_thumb: np.ndarray | None) -> Staged:
    """Write the decoded (working-size) input once into the staging area, a Zarr array in chunks of half a
    tile (`tiles.staging_chunk`; each chunk encoded here and written whole, several at a time), and create
    the image's (empty) output arrays."""
    import zarr

    ctx = ImageContext.build(cfg, item, image.shape[:2], linear)
    tiling = ctx.tiling
    grain_k = list(grain_constants(image, ctx.model)) if ctx.model.has_grain else []
    guard(cfg)
    side = staging_chunk(tiling.tile)
    chunks = (side, side, 3) if image.ndim == 3 else (side, side)
    staged = zarr.create_array(store=out.url_of(staging_path(item.key)), shape=image.shape, dtype=image.dtype,
                               chunks=chunks, overwrite=True, fill_value=0,
                               compressors=staging_compressor(image.dtype.itemsize),
                               storage_options=options_for(cfg.out_url, cfg.storage_options) or None)
    codec = chunk_codec(staged.metadata.to_dict()["codecs"])
    origins = {f"{staging_path(item.key)}/{staged.metadata.encode_chunk_key(coords)}": origin
               for coords, origin in shard_boxes(tuple((0, n) for n in image.shape), chunks, image.shape)}
    out.put_made(origins, lambda name, image=image: encode_chunk(_part(image, origins[name], chunks), chunks, codec))
    del image
    _create(cfg, out, _layout(cfg, item, ctx))
    return _staged(item, ctx, digest, linear, False, t0, thumb, source_thumb, grain_k)


def _part(image: np.ndarray, origin: tuple[int, ...], chunks: tuple[int, ...]) -> np.ndarray:
    """The chunk at `origin` of `image`: up to `chunks` long on each axis (less at the image's edges)."""
    return image[tuple(slice(o, o + c) for o, c in zip(origin, chunks, strict=True))]


def _layout(cfg: JobConfig, item: SourceItem, ctx: ImageContext) -> ImageLayout:
    """The arrays of a tiled image (its tile plan, the model's channels, the job's codec): what its first task
    creates, each tile writes into and the finalize completes."""
    return ImageLayout(item.key, ctx.model.channels, ctx.shape, ctx.settings.dtype, ctx.tiling, cfg.compression)


def _create(cfg: JobConfig, out: Location, layout: ImageLayout) -> None:
    """Every level's array metadata of a tiled image, before its tiles write their chunks."""
    layout.check()
    guard(cfg)
    out.put_many(layout.metadata_objects())


def _sha256(url: str, storage_options: dict | None) -> str:
    """The file's SHA-256, read in 8 MiB pieces (a gigapixel TIFF is never held whole)."""
    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(url, "rb", **options_for(url, storage_options)) as f:
        while piece := f.read(8 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _window(cfg: JobConfig, item: SourceItem, staged: Staged, out: Location, box) -> np.ndarray:
    wy0, wy1, wx0, wx1 = box
    if staged.direct:
        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is None:
            raise OSError(f"{item.url!r} can no longer be read by region")
        with reader:
            return as_rgb(reader.read(wy0, wy1, wx0, wx1))
    return staged_window(out, item.key, box)


def staged_window(out: Location, key: str, box) -> np.ndarray:
    """Pixels box = (y0, y1, x0, x1) of the image `key`'s staged input, read chunk by chunk: each chunk the
    box touches is fetched (one GET; several at a time from an object store), decoded by its Blosc codec into
    one buffer that every chunk reuses, and its part copied into the window: Zarr's read of the same window in
    about 0.13 s of CPU instead of 0.19-0.26 s for a 300 MP photo's interior tile (Zarr decodes on a thread
    pool of its own). From an object store the window's chunks are fetched together, so their compressed bytes
    are held at once. A chunk that is missing is an error (KeyError), never zeros."""
    name = staging_path(key)
    meta = out.get_json(f"{name}/zarr.json")
    if meta is None:
        raise FileNotFoundError(2, "No staged input", out.url_of(name))
    shape, chunks = tuple(meta["shape"]), tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    sep = key_separator(meta, f"no direct reader of the staged input {out.url_of(name)!r}")
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    codec = chunk_codec(meta["codecs"])
    y0, y1, x0, x1 = box
    ch, cw = chunks[0], chunks[1]
    window = np.empty((y1 - y0, x1 - x0, *shape[2:]), dtype)
    grid = [(i, j) for i in range(y0 // ch, -(-y1 // ch)) for j in range(x0 // cw, -(-x1 // cw))]
    names = [f"{name}/{chunk_key(sep, (i, j, *(0,) * (len(shape) - 2)))}" for i, j in grid]
    fetched = None if out.local else out.get_many(names)
    buffer = np.empty(chunks, dtype)
    for (i, j), chunk in zip(grid, names, strict=True):
        data = out.get(chunk) if fetched is None else fetched[chunk]
        if data is None:
            raise KeyError(f"staged chunk {out.url_of(chunk)!r} is missing")
        codec.decode(data, out=buffer)
        cy0, cx0 = max(y0, i * ch), max(x0, j * cw)
        cy1, cx1 = min(y1, (i + 1) * ch), min(x1, (j + 1) * cw)
        window[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = buffer[cy0 - i * ch : cy1 - i * ch,
                                                                 cx0 - j * cw : cx1 - j * cw]
    return window


def process_tile(cfg: JobConfig, item: SourceItem, staged: Staged, index: tuple[int, int]) -> TileDone:
    """Render one tile from its padded window of the staged input and write its chunks; a failure is
    returned as TileDone(failed=the image's failed result)."""
    try:
        return _process_tile(cfg, item, staged, index)
    except Exception as e:
        return TileDone(failed=as_failure(item, e))


def _process_tile(cfg: JobConfig, item: SourceItem, staged: Staged, index: tuple[int, int]) -> TileDone:
    limit_kernel_threads()
    t0 = time.perf_counter()
    ctx = staged.context(cfg, item)
    tile = next(t for t in ctx.tiling if t.index == tuple(index))
    out = Location.of(cfg.out_url, cfg.storage_options)
    try:
        window = _window(cfg, item, staged, out, tile.window)
    except (OSError, KeyError, ValueError):
        if complete(out, cfg, item):  # run again after the image was finished and its staging removed
            return TileDone()
        raise
    t_model = time.perf_counter()
    rendered, used, fell_back = render_on(cfg.accelerator(), window, tile.window[::2], ctx.shape, tile.box, ctx.model)
    t_write = time.perf_counter()
    objects = _layout(cfg, item, ctx).tile_objects(tile, rendered)
    guard(cfg)
    out.put_many(objects)
    end = time.perf_counter()
    return TileDone(end - t0, used, fell_back, Stages.of(t_model - t0, t_write - t_model, end - t_write))


def finalize(cfg: JobConfig, item: SourceItem, staged: Staged, *tiles: TileDone) -> ImageResult:
    """After every tile: the pyramid levels past the tiles' own (one shard each), the thumbnails, the
    metadata and completion marker; the staged input removed. An image with a failed tile fails (first
    error) and is not marked complete."""
    try:
        failed = next((t.failed for t in tiles if t.failed is not None), None)
        if failed is not None:
            Location.of(cfg.out_url, cfg.storage_options).delete(staging_path(item.key), recursive=True)
            return failed
        return _finalize(cfg, item, staged, *tiles)
    except Exception as e:
        return as_failure(item, e)


def _finalize(cfg: JobConfig, item: SourceItem, staged: Staged, *tiles: TileDone) -> ImageResult:
    import dataclasses

    import zarr

    limit_kernel_threads()
    t0 = time.perf_counter()
    ctx = staged.context(cfg, item)
    out = Location.of(cfg.out_url, cfg.storage_options)
    seconds = staged.seconds + sum(t.seconds for t in tiles) + (time.perf_counter() - t0)
    used = ", ".join(sorted({t.device for t in tiles if t.device})) or "cpu"
    fallbacks = sum(1 for t in tiles if t.gpu_oom_fallback)
    stages = Stages.total(staged.stages, *(t.stages for t in tiles))
    done = ImageResult.done(item.key, ctx.shape, seconds, tiles=ctx.tiling.count, device=used,
                            gpu_oom_fallbacks=fallbacks, stages=stages)
    if complete(out, cfg, item):  # run again after its worker died having finished the image
        out.delete(staging_path(item.key), recursive=True)
        return done
    layout = _layout(cfg, item, ctx)
    so = options_for(cfg.out_url, cfg.storage_options) or None
    last = layout.tile_levels - 1  # the last level the tiles wrote: the next ones are built from it
    objects: dict[str, Data] = {}
    if staged.thumb or last + 1 < len(layout.levels):
        smallest = zarr.open_array(store=out.url_of(f"{item.key}/{last}"), mode="r", storage_options=so)[...]
    if last + 1 < len(layout.levels):
        from phos_dask.pyramid import downsample2  # numba: a worker's, not the job client's (graph imports this)

        objects, smallest = layout.levels_objects(downsample2(smallest), first=last + 1)
    if staged.thumb:
        source_thumb = thumbs.decode_pair(staged.source_thumb)[0] if staged.source_thumb else None
        done = dataclasses.replace(done, thumb=thumbs.encode_pair(source_thumb, thumbs.result_thumb(smallest)))
    guard(cfg)
    out.put_many(objects)
    guard(cfg)
    mode = "tiled, read by region" if staged.direct else "tiled"
    out.put(f"{item.key}/{METADATA}",
            layout.complete_document(provenance(cfg, item, ctx, staged.sha256, mode, seconds, used)))
    out.delete(staging_path(item.key), recursive=True)
    return dataclasses.replace(done, stages=Stages.total(stages, Stages.of(write=time.perf_counter() - t0)))
