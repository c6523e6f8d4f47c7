"""The work a job's tasks do, as plain functions of (job config, source item, …): read → model → write.

No Dask here: graph.py decides which of these run where. Every function is idempotent, so a retry after a
worker dies writes the same bytes again.

`process_image` is the one task every input starts with: it checks whether the image is already finished
(only when the output already holds something under its key), reads the file, and from its header decides
whether the image runs whole (then it renders and writes it) or in tiles (then it stages the input and
returns the tile grid for the client to expand into `process_tile` tasks and a `finalize`). A small image
in a fresh output costs one GET of the file, at most one GET of the lease, one concurrent batch of PUTs
(chunks, level metadata) and the PUT of its zarr.json, in that order.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from phos_dask import __version__, thumbs
from phos_dask.device import render_on
from phos_dask.engine import output_shape, prepare
from phos_dask.errors import EnvironmentProblem, PhosError, one_line
from phos_dask.film.pipeline import (
    Plan,
    add_grain_sums,
    as_rgb,
    grain_constants,
    grain_k_from_sums,
    grain_sums,
    make_plan,
)
from phos_dask.headers import Header, HeaderError, read_header
from phos_dask.imageio import (
    DEFAULT_MAX_PIXELS,
    RAW_EXTENSIONS,
    ImageReadError,
    check_pixels,
    decode_image_info,
    open_region_reader,
)
from phos_dask.lease import still_held
from phos_dask.pyramid import downsample2
from phos_dask.settings import Settings
from phos_dask.sources import SourceItem, header_shape
from phos_dask.storage import Location, options_for
from phos_dask.store import (
    COMPLETE,
    METADATA,
    ImageLayout,
    fast_compressor,
    image_state,
    staging_path,
)
from phos_dask.tiles import DEFAULT_TILE, TilePlan

#: Images up to this many megapixels (after working size) run as one task: no halo is recomputed and
#: nothing is staged. A 32 MP render peaks near 1.6 GB.
WHOLE_LIMIT_MP = 32.0


@dataclass(frozen=True)
class JobConfig:
    """What every task of a job needs: small and picklable."""

    out_url: str
    settings: Settings
    tile: int = DEFAULT_TILE
    whole_limit_mp: float = WHOLE_LIMIT_MP
    storage_options: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    #: The job's lease on the output (phos_dask.lease); tasks write only while it is still the job's.
    lease_token: str | None = None
    #: "gpu": render on the worker's GPU through CuPy when it has one (else, and after a device
    #: out-of-memory error, on the CPU); "cpu": always the CPU kernels.
    device: str = "cpu"
    #: Replace finished images made with other settings (else such an image fails with one line).
    overwrite: bool = False

    def accelerator(self):
        from phos_dask.device import cupy_accelerator

        return cupy_accelerator() if self.device == "gpu" else None

    def image_settings(self, item: SourceItem) -> Settings:
        return self.settings.replace(image_key=item.relpath)

    def fingerprint(self) -> str:
        return self.settings.fingerprint()

    def runs_whole(self, shape: tuple[int, int]) -> bool:
        """Whether an image of this (working-size) shape is one task rather than staged tiles."""
        plan = TilePlan.build(shape, self.tile, 0)
        return plan.count == 1 or shape[0] * shape[1] <= self.whole_limit_mp * 1e6


class InputError(PhosError, ValueError):
    """An input that cannot be used (unreadable, not an image): the image fails alone, without a traceback."""


class LeaseLost(EnvironmentProblem, RuntimeError):
    """The job's lease on the output was taken over by another run: this task must not write."""


def _guard(cfg: JobConfig) -> None:
    """Raise LeaseLost unless the job still holds the output's lease (checked before every write)."""
    if not still_held(cfg.out_url, cfg.storage_options, cfg.lease_token):
        raise LeaseLost(f"the lease on {cfg.out_url!r} was taken over by another run; stopping")


def _complete(out: Location, cfg: JobConfig, item: SourceItem) -> bool:
    """Whether the image is already complete with this job's settings (a task run again after its result
    was lost with a worker)."""
    state = image_state(out, item.key)
    return state is not None and state.get("status") == COMPLETE and state.get("fingerprint") == cfg.fingerprint()


def limit_kernel_threads() -> None:
    """Inside a Dask worker, run the CPU kernels on `phos_dask.kernel-threads` (Dask's configuration) or
    else PHOS_DASK_KERNEL_THREADS threads (default 1: the cluster's workers are the parallelism); elsewhere,
    unless one of those is set, leave numba's default (every core)."""
    from phos_dask import config

    configured = config.kernel_threads()
    wanted = str(configured) if configured is not None else os.environ.get("PHOS_DASK_KERNEL_THREADS")
    if wanted is None:
        try:
            from distributed import get_worker

            get_worker()
        except (ImportError, ValueError):
            return
        wanted = "1"
    import numba

    numba.set_num_threads(max(1, min(int(wanted), numba.config.NUMBA_NUM_THREADS)))


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


def _failed(item: SourceItem, error: Exception | str) -> dict[str, Any]:
    return {"key": item.key, "status": "failed", "error": str(error)}


def _chw(out: np.ndarray) -> np.ndarray:
    return out[None] if out.ndim == 2 else np.moveaxis(out, -1, 0)


def _provenance(cfg: JobConfig, item: SourceItem, st: Settings, plan: Plan, tp: TilePlan, digest: str,
                mode: str, seconds: float, used: str = "cpu") -> dict[str, Any]:
    return {
        "source": {"url": item.url, "relpath": item.relpath, "size": item.size, "stamp": item.stamp,
                   "sha256": digest},
        "stock": plan.stock.name,
        "settings": st.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "image_seed": str(st.image_seed()),
        "scale": plan.s,
        "halo": plan.halo,
        "grain_k": list(plan.grain_k) if plan.has_grain and plan.grain_k is not None else None,
        "shape": list(tp.shape),
        "tile_plan": {"mode": mode, "tile": tp.tile, "grid": list(tp.grid), "tiles": tp.count},
        "software": {"phos_dask": __version__},
        "device": f"{used} on {socket.gethostname()}",
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


#: The stages a task's time is split into (result["stages"], seconds each): reading and decoding the input
#: (for a tiled image also staging it and reading each tile's window), the film model, and encoding and
#: writing the output (chunks, pyramid levels, thumbnails, metadata).
STAGES = ("decode", "model", "write")


def _stages(decode: float = 0.0, model: float = 0.0, write: float = 0.0) -> dict[str, float]:
    return {"decode": round(decode, 4), "model": round(model, 4), "write": round(write, 4)}


def _add_stages(*parts: dict[str, float] | None) -> dict[str, float]:
    return _stages(*(sum((p or {}).get(s, 0.0) for p in parts) for s in STAGES))


def _result(item: SourceItem, shape: tuple[int, int], seconds: float, **extra: Any) -> dict[str, Any]:
    return {"key": item.key, "status": "done", "seconds": round(seconds, 3),
            "megapixels": round(shape[0] * shape[1] / 1e6, 3), **extra}


def _previous(cfg: JobConfig, out: Location, item: SourceItem) -> dict[str, Any] | None:
    """For an image the output already holds something of: {"status": "skipped"} when it is complete with
    this job's settings from its file as it is now (same size and stamp), a failure when it was made with
    other settings and the job does not overwrite; else None, after removing what is there (a half-written
    image, one whose input changed, or one replaced with --overwrite): its marker is removed first."""
    state = image_state(out, item.key)
    if state is not None and state.get("status") == COMPLETE:
        source = state.get("source") or {}
        if state.get("fingerprint") != cfg.fingerprint():
            if not cfg.overwrite:
                return _failed(item, f"{item.relpath!r} in {cfg.out_url!r} was made with other settings; rerun "
                                     "with --overwrite to replace it")
        elif source.get("size") == item.size and source.get("stamp", "") == item.stamp:
            return {"key": item.key, "status": "skipped"}
    _guard(cfg)
    # the marker goes (the image stops counting as finished); its chunks stay, every one of them is written
    # again (a second attempt of this task may be writing them right now); the job's client has marked its
    # thumbnails stale
    out.delete(f"{item.key}/{METADATA}")
    return None


def _as_failure(item: SourceItem, error: BaseException) -> dict[str, Any]:
    """An error of a task as the image's failed result: one line for the user (the job reports it, so Dask
    has no task failure to log); an unexpected error keeps its traceback in the result's "detail"."""
    if isinstance(error, PhosError) and not isinstance(error, OSError):  # ours: the message says it all
        return _failed(item, one_line(error))
    if isinstance(error, OSError):
        where = f" {error.filename!r}" if getattr(error, "filename", None) else ""
        return _failed(item, f"storage error{where}: {error.strerror or one_line(error)}")
    import traceback

    return {**_failed(item, f"internal error: {type(error).__name__}: {one_line(error)}"),
            "detail": traceback.format_exc(limit=20)}


def process_image(cfg: JobConfig, item: SourceItem, fresh: bool = True, thumb: bool = False) -> dict[str, Any]:
    """The first task of every input: `_process_image`, its errors reported as the image's result."""
    try:
        return _process_image(cfg, item, fresh, thumb)
    except Exception as e:
        return _as_failure(item, e)


def _process_image(cfg: JobConfig, item: SourceItem, fresh: bool = True, thumb: bool = False) -> dict[str, Any]:
    """The first task of every input. `fresh`: the output holds nothing under the image's key (the client
    listed it), so nothing needs checking or clearing. Returns the image's result ({"status": "done" |
    "skipped" | "failed", …}) when it ran whole, or {"status": "staged", …, "tiles": [(row, col), …]} when
    it is to be rendered in tiles. `thumb`: the image is on the contact sheet: return its thumbnails (input
    and result, one small JPEG; the job's client stores them, see phos_dask.thumbs)."""
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
            return _failed(item, f"cannot decode image {item.url!r}: {e.reason}")
        except (InputError, ImageReadError) as e:
            return _failed(item, e)
    if item.size > FETCH_WHOLE_BYTES and st.working_size is None:
        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is not None:
            return _stage_direct(cfg, item, reader, out, t0)
    try:
        data = _read_file(item, cfg.storage_options)
        shape = header_shape(data)
        if shape is not None and not cfg.runs_whole(output_shape(shape, st)):
            return _stage(cfg, item, data, out, t0, thumb)
        image, digest, linear = _decode(item, data, cfg.max_pixels)
    except InputError as e:
        return _failed(item, e)
    del data
    st = st.replace(linear_input=st.linear_input or linear)
    source_thumb = thumbs.source_thumb(image) if thumb else None
    image = prepare(image, st)
    shape = image.shape[:2]
    if not cfg.runs_whole(shape):  # the header could not tell: stage the decoded pixels
        return _stage_pixels(cfg, item, st, image, digest, linear, out, t0, source_thumb)
    t_model = time.perf_counter()
    plan = make_plan(st, shape)
    if plan.has_grain:
        plan = plan.with_grain_k(grain_constants(image, plan))
    tp = TilePlan.build(shape, cfg.tile, plan.halo)
    rendered, used, fell_back = render_on(cfg.accelerator(), image, (0, 0), shape, (0, shape[0], 0, shape[1]), plan)
    del image
    t_write = time.perf_counter()
    layout = ImageLayout(item.key, 1 if rendered.ndim == 2 else rendered.shape[2], shape, st.dtype, None)
    layout.check()
    objects, smallest = layout.levels_objects(_chw(rendered))
    del rendered
    extra = {"thumb": thumbs.encode_pair(source_thumb, thumbs.result_thumb(smallest))} if thumb else {}
    _guard(cfg)
    out.put_many(objects)
    seconds = time.perf_counter() - t0
    _guard(cfg)
    out.put(f"{item.key}/{METADATA}",
            layout.complete_document(_provenance(cfg, item, st, plan, tp, digest, "whole", seconds, used)))
    stages = _stages(t_model - t0, t_write - t_model, time.perf_counter() - t_write)
    return _result(item, shape, seconds, device=used, gpu_oom_fallbacks=int(fell_back), stages=stages, **extra)


def _staged(item: SourceItem, shape: tuple[int, int], tp: TilePlan, digest: str, linear: bool, direct: bool,
            t0: float, source_thumb: np.ndarray | None, grain_k: list[float]) -> dict[str, Any]:
    """What the tiles and finalize of a staged image need: its shape, how to read it, and its grain
    constants K_c (computed once from the whole image, so every tile renders with the whole image's)."""
    return {"key": item.key, "status": "staged", "direct": direct, "linear": linear, "shape": list(shape),
            "sha256": digest, "grain_k": grain_k, "tiles": [t.index for t in tp],
            "seconds": round(time.perf_counter() - t0, 3), "stages": _stages(time.perf_counter() - t0),
            "source_thumb": None if source_thumb is None else thumbs.encode_pair(source_thumb, source_thumb)}


def _stage_direct(cfg: JobConfig, item: SourceItem, reader, out: Location, t0: float) -> dict[str, Any]:
    """A large tiled TIFF: tiles will read their windows from the file itself, so nothing is staged."""
    with reader:
        shape, linear = reader.shape, bool(reader.info["linear"])
    st = cfg.image_settings(item)
    st = st.replace(linear_input=st.linear_input or linear)
    plan = make_plan(st, shape)
    tp = TilePlan.build(shape, cfg.tile, plan.halo)
    try:
        check_pixels(item.url, shape[1], shape[0], cfg.max_pixels)
        digest = _sha256(item.url, cfg.storage_options)
        grain_k = _grain_k_by_region(item, cfg, plan, tp)
    except ImageReadError as e:
        return _failed(item, e)
    except OSError as e:
        return _failed(item, InputError(f"cannot read {item.url!r}: {e.strerror or e}"))
    _create(cfg, out, ImageLayout(item.key, plan.channels, shape, st.dtype, tp))
    return _staged(item, shape, tp, digest, linear, True, t0, None, grain_k)


def _grain_k_by_region(item: SourceItem, cfg: JobConfig, plan: Plan, tp: TilePlan) -> list[float]:
    """K_c of an image read by region, in one streaming pass tile by tile (exact: the integer sums of the
    blocks add up to the whole image's)."""
    if not plan.has_grain:
        return []
    reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
    if reader is None:
        raise OSError(f"{item.url!r} can no longer be read by region")
    parts = []
    with reader:
        for tile in tp:
            y0, y1, x0, x1 = tile.box
            parts.append(grain_sums(as_rgb(reader.read(y0, y1, x0, x1)), (y0, x0), plan))
    return list(grain_k_from_sums(add_grain_sums(*parts)))


def _stage(cfg: JobConfig, item: SourceItem, data: bytes, out: Location, t0: float, thumb: bool
           ) -> dict[str, Any]:
    image, digest, linear = _decode(item, data, cfg.max_pixels)
    del data
    st = cfg.image_settings(item)
    st = st.replace(linear_input=st.linear_input or linear)
    source_thumb = thumbs.source_thumb(image) if thumb else None
    return _stage_pixels(cfg, item, st, prepare(image, st), digest, linear, out, t0, source_thumb)


def _stage_pixels(cfg: JobConfig, item: SourceItem, st: Settings, image: np.ndarray, digest: str, linear: bool,
                  out: Location, t0: float, source_thumb: np.ndarray | None) -> dict[str, Any]:
    """Write the decoded (working-size) input once into the staging area, whole chunks one at a time, and
    create the image's (empty) output arrays."""
    import zarr

    shape = image.shape[:2]
    plan = make_plan(st, shape)
    tp = TilePlan.build(shape, cfg.tile, plan.halo)
    grain_k = list(grain_constants(image, plan)) if plan.has_grain else []
    _guard(cfg)
    chunks = (tp.tile, tp.tile, 3) if image.ndim == 3 else (tp.tile, tp.tile)
    staged = zarr.create_array(store=out.url_of(staging_path(item.key)), shape=image.shape, dtype=image.dtype,
                               chunks=chunks, overwrite=True, fill_value=0, compressors=fast_compressor(),
                               storage_options=options_for(cfg.out_url, cfg.storage_options) or None)
    for tile in tp:
        y0, y1, x0, x1 = tile.box
        staged[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    del image
    _create(cfg, out, ImageLayout(item.key, plan.channels, shape, st.dtype, tp))
    return _staged(item, shape, tp, digest, linear, False, t0, source_thumb, grain_k)


def _create(cfg: JobConfig, out: Location, layout: ImageLayout) -> None:
    """Every level's array metadata of a tiled image, before its tiles write their chunks."""
    layout.check()
    _guard(cfg)
    out.put_many(layout.metadata_objects())


def _sha256(url: str, storage_options: dict | None) -> str:
    """The file's SHA-256, read in 8 MiB pieces (a gigapixel TIFF is never held whole)."""
    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(url, "rb", **options_for(url, storage_options)) as f:
        while piece := f.read(8 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _tile_context(cfg: JobConfig, item: SourceItem, staged: dict[str, Any]):
    """(settings, model plan with the image's grain constants, tile plan) of a staged image."""
    shape = tuple(staged["shape"])
    st = cfg.image_settings(item)
    st = st.replace(linear_input=st.linear_input or staged["linear"])
    plan = make_plan(st, shape)
    if plan.has_grain:
        plan = plan.with_grain_k(tuple(staged["grain_k"]))
    return st, plan, TilePlan.build(shape, cfg.tile, plan.halo)


def _window(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], out: Location, box) -> np.ndarray:
    wy0, wy1, wx0, wx1 = box
    if staged["direct"]:
        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is None:
            raise OSError(f"{item.url!r} can no longer be read by region")
        with reader:
            return as_rgb(reader.read(wy0, wy1, wx0, wx1))
    import zarr

    array = zarr.open_array(store=out.url_of(staging_path(item.key)), mode="r",
                            storage_options=options_for(cfg.out_url, cfg.storage_options) or None)
    return array[wy0:wy1, wx0:wx1]


def process_tile(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], index: tuple[int, int]
                 ) -> dict[str, Any]:
    """Render one tile from its padded window of the staged input and write its chunks; returns
    {"seconds", "device" (where it ran), "fallback" (a GPU out-of-memory error made it run on the CPU)},
    or {"failed": the image's failed result} (finalize then reports the image as failed)."""
    try:
        return _process_tile(cfg, item, staged, index)
    except Exception as e:
        return {"failed": _as_failure(item, e), "seconds": 0.0, "device": "", "fallback": False, "stages": _stages()}


def _process_tile(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], index: tuple[int, int]
                  ) -> dict[str, Any]:
    limit_kernel_threads()
    t0 = time.perf_counter()
    shape = tuple(staged["shape"])
    st, plan, tp = _tile_context(cfg, item, staged)
    tile = next(t for t in tp if t.index == tuple(index))
    out = Location.of(cfg.out_url, cfg.storage_options)
    try:
        window = _window(cfg, item, staged, out, tile.window)
    except (OSError, KeyError, ValueError):
        if _complete(out, cfg, item):  # run again after the image was finished and its staging removed
            return {"seconds": 0.0, "device": "", "fallback": False, "stages": _stages()}
        raise
    t_model = time.perf_counter()
    rendered, used, fell_back = render_on(cfg.accelerator(), window, tile.window[::2], shape, tile.box, plan)
    t_write = time.perf_counter()
    out_block = _chw(rendered)
    layout = ImageLayout(item.key, out_block.shape[0], shape, st.dtype, tp)
    objects = layout.tile_objects(tile, out_block)
    _guard(cfg)
    out.put_many(objects)
    end = time.perf_counter()
    return {"seconds": end - t0, "device": used, "fallback": fell_back,
            "stages": _stages(t_model - t0, t_write - t_model, end - t_write)}


def finalize(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], *tiles: dict[str, Any]) -> dict[str, Any]:
    """After every tile: the pyramid levels past the tiles' own (one shard each), the thumbnails, the
    metadata and completion marker; the staged input removed. An image with a failed tile fails (first
    error) and is not marked complete."""
    try:
        failed = next((t["failed"] for t in tiles if "failed" in t), None)
        if failed is not None:
            Location.of(cfg.out_url, cfg.storage_options).delete(staging_path(item.key), recursive=True)
            return failed
        return _finalize(cfg, item, staged, *tiles)
    except Exception as e:
        return _as_failure(item, e)


def _finalize(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], *tiles: dict[str, Any]) -> dict[str, Any]:
    import zarr

    limit_kernel_threads()
    t0 = time.perf_counter()
    shape = tuple(staged["shape"])
    st, plan, tp = _tile_context(cfg, item, staged)
    out = Location.of(cfg.out_url, cfg.storage_options)
    seconds = staged["seconds"] + sum(t["seconds"] for t in tiles) + (time.perf_counter() - t0)
    used = ", ".join(sorted({t["device"] for t in tiles if t["device"]})) or "cpu"
    fallbacks = sum(1 for t in tiles if t["fallback"])
    stages = _add_stages(staged.get("stages"), *(t.get("stages") for t in tiles))
    done = _result(item, shape, seconds, tiles=tp.count, device=used, gpu_oom_fallbacks=fallbacks, stages=stages)
    if _complete(out, cfg, item):  # run again after its worker died having finished the image
        out.delete(staging_path(item.key), recursive=True)
        return done
    layout = ImageLayout(item.key, plan.channels, shape, st.dtype, tp)
    so = options_for(cfg.out_url, cfg.storage_options) or None
    last = layout.tile_levels - 1  # the last level the tiles wrote: the next ones are built from it
    objects: dict[str, bytes] = {}
    if staged.get("thumb") or last + 1 < len(layout.levels):
        smallest = zarr.open_array(store=out.url_of(f"{item.key}/{last}"), mode="r", storage_options=so)[...]
    if last + 1 < len(layout.levels):
        objects, smallest = layout.levels_objects(downsample2(smallest), first=last + 1)
    if staged.get("thumb"):
        source_thumb = thumbs.decode_pair(staged["source_thumb"])[0] if staged.get("source_thumb") else None
        done["thumb"] = thumbs.encode_pair(source_thumb, thumbs.result_thumb(smallest))
    _guard(cfg)
    out.put_many(objects)
    _guard(cfg)
    out.put(f"{item.key}/{METADATA}", layout.complete_document(
        _provenance(cfg, item, st, plan, tp, staged["sha256"], "tiled, read by region" if staged["direct"] else "tiled",
                    seconds, used)))
    out.delete(staging_path(item.key), recursive=True)
    done["stages"] = _add_stages(stages, _stages(write=time.perf_counter() - t0))
    return done
