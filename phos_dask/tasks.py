"""The work a job's tasks do, as plain functions of (job config, source item, …): read → model → write.

No Dask here: graph.py decides which of these run where. Every function is idempotent, so a retry after a
worker dies writes the same bytes again.

`process_image` is the one task every input starts with (small files several to a task:
`process_images`): it checks whether the image is already finished (only when the output already holds
something under its key), reads the file, and from its header decides whether the image runs whole (then it
renders and writes it and returns its `ImageResult`) or in tiles (then it prepares them, phos_dask.tiled, and
returns a `Staged` with the tile grid for the client to expand into `tiled.process_tile` tasks and a
`tiled.finalize`). What tasks return: phos_dask.taskflow. A small image in a fresh output costs one GET of
the file, at most one GET of the lease, one concurrent batch of PUTs (chunks, level metadata) and the PUT of
its zarr.json, in that order.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence

import numpy as np

from phos_dask import thumbs
from phos_dask.device import render_on
from phos_dask.engine import output_shape, prepare
from phos_dask.film.pipeline import grain_constants
from phos_dask.headers import Header, HeaderError, read_header
from phos_dask.imageio import (
    RAW_EXTENSIONS,
    ImageReadError,
    check_pixels,
    decode_image_info,
    open_region_reader,
)
from phos_dask.sources import SourceItem, header_shape
from phos_dask.storage import Location, options_for
from phos_dask.store import COMPLETE, METADATA, ImageLayout, image_state
from phos_dask.taskflow import WHOLE_LIMIT_MP, ImageContext, ImageResult, JobConfig, Staged, Stages
from phos_dask.taskkit import InputError, LeaseLost, as_failure, guard, limit_kernel_threads, provenance

__all__ = ["WHOLE_LIMIT_MP", "InputError", "JobConfig", "LeaseLost", "limit_kernel_threads", "process_image",
           "process_images"]


#: Inputs up to this size (bytes) are fetched whole in one request by the task that reads their header;
#: larger ones are first tried as tiled TIFFs read by region (environment: PHOS_DASK_FETCH_WHOLE_BYTES).
FETCH_WHOLE_BYTES = int(os.environ.get("PHOS_DASK_FETCH_WHOLE_BYTES", 64 << 20))


def _fetch(url: str, storage_options: dict | None, size: int | None = None) -> bytes:
    """The whole file, in one GET (several concurrent ones for a large file), retried on transient errors."""
    data = Location.of(url, storage_options).get("", size=size)
    if data is None:
        raise FileNotFoundError(2, "No such file or directory", url)
    return bytes(data)


def _decode(item: SourceItem, data: bytes, max_pixels: int | None) -> tuple[np.ndarray, str, bool]:
    """(pixels, sha256 of the file, whether the pixels are linear light: float data, e.g. float TIFF)."""
    try:
        image, info = decode_image_info(data, item.url, max_pixels)
        return image, hashlib.sha256(data).hexdigest(), bool(info["linear"])
    except ImageReadError as e:
        raise InputError(str(e)) from None


def _read_file(item: SourceItem, storage_options: dict | None) -> bytes:
    try:
        return _fetch(item.url, storage_options, item.size)
    except OSError as e:
        raise InputError(f"cannot read {item.url!r}: {e.strerror or e}") from None


#: A file may hold at most this many bytes per pixel its header declares, plus FILE_SLACK_BYTES (metadata,
#: previews): float32 RGBA uncompressed is 16 bytes a pixel.
FILE_BYTES_PER_PIXEL = 16
FILE_SLACK_BYTES = 64 << 20


def _check_file(item: SourceItem, header: Header, cfg: JobConfig) -> None:
    """Refuse, before reading it, a file whose header claims more pixels than allowed, or that is far
    larger than its pixels can explain (a sparse or padded file would be read whole for nothing)."""
    check_pixels(item.url, header.width, header.height, cfg.max_pixels)
    limit = header.pixels * FILE_BYTES_PER_PIXEL + FILE_SLACK_BYTES
    if item.size > limit and header.format not in ("TIFF", "BigTIFF"):  # a TIFF may hold more pages
        raise InputError(f"cannot read {item.url!r}: the file is {item.size / 1e6:.0f} MB but its header "
                         f"declares {header.width}×{header.height} px (at most {limit / 1e6:.0f} MB); not read")


def _previous(cfg: JobConfig, out: Location, item: SourceItem) -> ImageResult | None:
    """For an image the output already holds something of: skipped when it is complete with
    this job's settings from its file as it is now (same size and stamp), a failure when it was made with
    other settings and the job does not overwrite; else None, after removing what is there (a half-written
    image, one whose input changed, or one replaced with --overwrite): its marker is removed first."""
    state = image_state(out, item.key)
    if state is not None and state.get("status") == COMPLETE:
        source = state.get("source") or {}
        if state.get("fingerprint") != cfg.fingerprint():
            if not cfg.overwrite:
                return ImageResult.failed(item.key, f"{item.relpath!r} in {cfg.out_url!r} was made with other "
                                                    "settings; rerun with --overwrite to replace it")
        elif source.get("size") == item.size and source.get("stamp", "") == item.stamp:
            return ImageResult.skipped(item.key)
    guard(cfg)
    # the marker goes (the image stops counting as finished); its chunks stay, every one of them is written
    # again (a second attempt of this task may be writing them right now); the job's client has marked its
    # thumbnails stale
    out.delete(f"{item.key}/{METADATA}")
    return None


def process_image(cfg: JobConfig, item: SourceItem, fresh: bool = True, thumb: bool = False
                  ) -> ImageResult | Staged:
    """The first task of every input: `_process_image`, its errors reported as the image's result."""
    try:
        return _process_image(cfg, item, fresh, thumb)
    except Exception as e:
        return as_failure(item, e)


def process_images(cfg: JobConfig, todos: Sequence[tuple[SourceItem, bool, bool]]) -> list[ImageResult | Staged]:
    """Several small images' first tasks in one (`process_image` on each (item, fresh, thumb), in turn): their
    results in the same order. Each image's errors are its own result, as in `process_image`."""
    return [process_image(cfg, item, fresh, thumb) for item, fresh, thumb in todos]


def _process_image(cfg: JobConfig, item: SourceItem, fresh: bool = True, thumb: bool = False
                   ) -> ImageResult | Staged:
    """The first task of every input. `fresh`: the output holds nothing under the image's key (the client
    listed it), so nothing needs checking or clearing. Returns the image's ImageResult (done, skipped or
    failed) when it ran whole, or its Staged (with the tile grid) when it is to be rendered in tiles.
    `thumb`: the image is on the contact sheet: return its thumbnails (input and result, one small JPEG;
    the job's client stores them, see phos_dask.thumbs)."""
    from phos_dask import tiled

    limit_kernel_threads()
    t0 = time.perf_counter()
    out = Location.of(cfg.out_url, cfg.storage_options)
    if not fresh and (previous := _previous(cfg, out, item)) is not None:
        return previous
    st = cfg.image_settings(item)
    if item.size > FETCH_WHOLE_BYTES and os.path.splitext(item.relpath)[1].lower() not in RAW_EXTENSIONS:
        try:  # a big file: its header first, so nothing is read that the header does not account for
            _check_file(item, read_header(Location.of(item.url, cfg.storage_options).reader(), item.url), cfg)
        except HeaderError as e:
            return ImageResult.failed(item.key, f"cannot decode image {item.url!r}: {e.reason}")
        except (InputError, ImageReadError) as e:
            return ImageResult.failed(item.key, e)
    if item.size > FETCH_WHOLE_BYTES and st.working_size is None:
        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is not None:
            return tiled.prepare_by_region(cfg, item, reader, out, t0, thumb)
    try:
        data = _read_file(item, cfg.storage_options)
        shape = header_shape(data)
        # the header tells the image is to be tiled (else, when it cannot tell, the decoded pixels do)
        in_tiles = shape is not None and not cfg.runs_whole(output_shape(shape, st))
        image, digest, linear = _decode(item, data, cfg.max_pixels)
    except InputError as e:
        return ImageResult.failed(item.key, e)
    del data
    st = cfg.image_settings(item, linear)
    source_thumb = thumbs.source_thumb(image) if thumb else None
    image = prepare(image, st)
    shape = image.shape[:2]
    if in_tiles or not cfg.runs_whole(shape):
        return tiled.prepare_tiles(cfg, item, image, digest, linear, out, t0, thumb, source_thumb)
    t_model = time.perf_counter()
    ctx = ImageContext.build(cfg, item, shape, linear)
    if ctx.model.has_grain:
        ctx = ctx.with_grain_k(grain_constants(image, ctx.model))
    rendered, used, fell_back = render_on(cfg.accelerator(), image, (0, 0), shape, (0, shape[0], 0, shape[1]),
                                          ctx.model)
    del image
    t_write = time.perf_counter()
    layout = ImageLayout(item.key, rendered.shape[0], shape, st.dtype, None, cfg.compression)
    layout.check()
    objects, smallest = layout.levels_objects(rendered)
    del rendered
    pair = thumbs.encode_pair(source_thumb, thumbs.result_thumb(smallest)) if thumb else None
    guard(cfg)
    out.put_many(objects)
    seconds = time.perf_counter() - t0
    guard(cfg)
    out.put(f"{item.key}/{METADATA}",
            layout.complete_document(provenance(cfg, item, ctx, digest, "whole", seconds, used)))
    stages = Stages.of(t_model - t0, t_write - t_model, time.perf_counter() - t_write)
    return ImageResult.done(item.key, shape, seconds, device=used, gpu_oom_fallbacks=int(fell_back), stages=stages,
                            thumb=pair)
