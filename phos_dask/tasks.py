"""The work a job's tasks do, as plain functions of (job config, source item, …): read → model → write.

No Dask here: graph.py decides which of these run where. Every function is idempotent, so a retry after a
worker dies writes the same bytes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np

from phos_dask import __version__
from phos_dask.device import render_on
from phos_dask.film.pipeline import (
    Plan,
    add_grain_sums,
    as_rgb,
    grain_constants,
    grain_k_from_sums,
    grain_sums,
    make_plan,
)
from phos_dask.imageio import DEFAULT_MAX_PIXELS, ImageReadError, check_pixels, decode_image_info, open_region_reader
from phos_dask.lease import still_held
from phos_dask.render import prepare
from phos_dask.settings import Settings
from phos_dask.sources import SourceItem, options_for
from phos_dask.store import (
    create_image,
    fast_compressor,
    finish_pyramid,
    image_status,
    mark_complete,
    open_root,
    staging_path,
    write_tile,
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


class InputError(ValueError):
    """An input that cannot be used (unreadable, not an image): the image fails alone, without a traceback."""


class LeaseLost(RuntimeError):
    """The job's lease on the output was taken over by another run: this task must not write."""


def _guard(cfg: JobConfig) -> None:
    """Raise LeaseLost unless the job still holds the output's lease (checked before every write)."""
    if not still_held(cfg.out_url, cfg.storage_options, cfg.lease_token):
        raise LeaseLost(f"the lease on {cfg.out_url!r} was taken over by another run; stopping")


def _complete(root, cfg: JobConfig, item: SourceItem) -> bool:
    """Whether the image is already complete with this job's settings (a task run again after its result
    was lost with a worker)."""
    status = image_status(root, item.key)
    return status is not None and status.get("fingerprint") == cfg.fingerprint()


def limit_kernel_threads() -> None:
    """Inside a Dask worker, run the CPU kernels on PHOS_DASK_KERNEL_THREADS threads (default 1: the
    cluster's workers are the parallelism); elsewhere leave numba's default (every core)."""
    wanted = os.environ.get("PHOS_DASK_KERNEL_THREADS")
    if wanted is None:
        try:
            from distributed import get_worker

            get_worker()
        except (ImportError, ValueError):
            return
        wanted = "1"
    import numba

    numba.set_num_threads(max(1, min(int(wanted), numba.config.NUMBA_NUM_THREADS)))


#: Waits (s) between attempts at reading a source after a transient storage error (the S3 client also
#: retries each request itself).
READ_BACKOFF = (0.5, 1.0, 2.0, 4.0)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _fetch(url: str, storage_options: dict | None) -> bytes:
    for wait in (*READ_BACKOFF, None):
        try:
            with fsspec.open(url, "rb", **options_for(url, storage_options)) as f:
                return f.read()
        except _PERMANENT:
            raise
        except OSError:
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def _read(item: SourceItem, storage_options: dict | None, max_pixels: int | None
          ) -> tuple[np.ndarray, str, bool]:
    """(pixels, sha256 of the file, whether the pixels are linear light: float data, e.g. float TIFF)."""
    try:
        data = _fetch(item.url, storage_options)
        image, info = decode_image_info(data, item.url, max_pixels)
        return image, hashlib.sha256(data).hexdigest(), bool(info["linear"])
    except ImageReadError as e:
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"cannot read {item.url!r}: {e.strerror or e}") from None


def _failed(item: SourceItem, error: Exception) -> dict[str, Any]:
    return {"key": item.key, "status": "failed", "error": str(error)}


def _chw(out: np.ndarray) -> np.ndarray:
    return out[None] if out.ndim == 2 else np.moveaxis(out, -1, 0)


def _provenance(cfg: JobConfig, item: SourceItem, st: Settings, plan: Plan, tp: TilePlan, digest: str,
                mode: str, seconds: float, used: str = "cpu") -> dict[str, Any]:
    return {
        "source": {"url": item.url, "relpath": item.relpath, "size": item.size, "sha256": digest},
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


def _result(item: SourceItem, shape: tuple[int, int], seconds: float, **extra: Any) -> dict[str, Any]:
    return {"key": item.key, "status": "done", "seconds": round(seconds, 3),
            "megapixels": round(shape[0] * shape[1] / 1e6, 3), **extra}


def _ingest(cfg: JobConfig, item: SourceItem):
    """Read and decode an input, then apply its working size: (settings, pixels, sha256, linear, model plan,
    tile plan). Raises InputError for an unusable input."""
    image, digest, linear = _read(item, cfg.storage_options, cfg.max_pixels)
    st = cfg.image_settings(item)
    st = st.replace(linear_input=st.linear_input or linear)
    image = prepare(image, st)
    plan = make_plan(st, image.shape[:2])
    return st, image, digest, linear, plan, TilePlan.build(image.shape[:2], cfg.tile, plan.halo)


def process_whole(cfg: JobConfig, item: SourceItem) -> dict[str, Any]:
    """One task for the whole image: read, render, write every chunk and level, mark complete."""
    limit_kernel_threads()
    t0 = time.perf_counter()
    try:
        st, image, digest, _, plan, tp = _ingest(cfg, item)
    except InputError as e:
        return _failed(item, e)
    shape = image.shape[:2]
    if plan.has_grain:
        plan = plan.with_grain_k(grain_constants(image, plan))
    rendered, used, fell_back = render_on(cfg.accelerator(), image, (0, 0), shape, (0, shape[0], 0, shape[1]), plan)
    out = _chw(rendered)
    del image, rendered
    root = open_root(cfg.out_url, cfg.storage_options)
    _guard(cfg)
    create_image(root, item.key, out.shape[0], shape, st.dtype, tp)
    for tile in tp:
        y0, y1, x0, x1 = tile.box
        write_tile(root, item.key, tp, tile, out[:, y0:y1, x0:x1])
    finish_pyramid(root, item.key, shape)
    seconds = time.perf_counter() - t0
    _guard(cfg)
    mark_complete(root, item.key, out.shape[0], shape, st.dtype,
                  _provenance(cfg, item, st, plan, tp, digest, "whole", seconds, used))
    return _result(item, shape, seconds, device=used, gpu_oom_fallbacks=int(fell_back))


def stage(cfg: JobConfig, item: SourceItem) -> dict[str, Any]:
    """Decode a large image once into the staging area and create its (empty) output arrays.
    Returns {"status": "failed", …} instead for an unusable input."""
    limit_kernel_threads()
    t0 = time.perf_counter()
    st = cfg.image_settings(item)
    if st.working_size is None:
        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is not None:  # tiles will read their windows from the file itself: nothing to stage
            with reader:
                shape, linear = reader.shape, bool(reader.info["linear"])
            try:
                check_pixels(item.url, shape[1], shape[0], cfg.max_pixels)
            except ImageReadError as e:
                return _failed(item, e)
            st = st.replace(linear_input=st.linear_input or linear)
            plan = make_plan(st, shape)
            tp = TilePlan.build(shape, cfg.tile, plan.halo)
            try:
                digest = _sha256(item.url, cfg.storage_options)
                grain_k = _grain_k_by_region(item, cfg, plan, tp)
            except OSError as e:
                return _failed(item, InputError(f"cannot read {item.url!r}: {e.strerror or e}"))
            root = open_root(cfg.out_url, cfg.storage_options)
            _guard(cfg)
            create_image(root, item.key, plan.channels, shape, st.dtype, tp)
            return {"status": "staged", "direct": True, "linear": linear, "shape": list(shape), "sha256": digest,
                    "grain_k": grain_k, "tiles": [t.index for t in tp],
                    "seconds": round(time.perf_counter() - t0, 3)}
    try:
        st, image, digest, linear, plan, tp = _ingest(cfg, item)
    except InputError as e:
        return _failed(item, e)
    shape = image.shape[:2]
    grain_k = list(grain_constants(image, plan))  # the per-image grain constants every tile renders with
    root = open_root(cfg.out_url, cfg.storage_options)
    _guard(cfg)
    staged = _staging_array(root, item.key, image, tp.tile)
    if dict(staged.attrs).get("staged") != digest:
        for tile in tp:  # whole chunks, one at a time: one writer, small temporaries
            y0, y1, x0, x1 = tile.box
            staged[y0:y1, x0:x1] = image[y0:y1, x0:x1]
        staged.attrs["staged"] = digest
    del image
    create_image(root, item.key, plan.channels, shape, st.dtype, tp)
    return {"status": "staged", "direct": False, "linear": linear, "shape": list(shape), "sha256": digest,
            "grain_k": grain_k, "tiles": [t.index for t in tp],
            "seconds": round(time.perf_counter() - t0, 3)}


def _staging_array(root, key: str, image: np.ndarray, tile: int):
    """The staging array for `image`: the existing one when its layout matches (a stage task run again
    after its worker died must not wipe chunks that running tile tasks are reading; it writes the same
    bytes), else a new one."""
    chunks = (tile, tile, 3) if image.ndim == 3 else (tile, tile)
    try:
        staged = root[staging_path(key)]
        if staged.shape == image.shape and staged.dtype == image.dtype and staged.chunks == chunks:
            return staged
    except KeyError:
        pass
    return root.create_array(staging_path(key), shape=image.shape, dtype=image.dtype, chunks=chunks,
                             overwrite=True, fill_value=0, compressors=fast_compressor())


def _grain_k_by_region(item: SourceItem, cfg: JobConfig, plan: Plan, tp: TilePlan) -> list[float]:
    """K_c of an image read by region, tile by tile (exact: the integer sums add up to the whole image's)."""
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


def _sha256(url: str, storage_options: dict | None) -> str:
    """The file's SHA-256, read in 8 MiB pieces (a gigapixel TIFF is never held whole)."""
    digest = hashlib.sha256()
    with fsspec.open(url, "rb", **options_for(url, storage_options)) as f:
        while piece := f.read(8 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _tile_context(cfg: JobConfig, item: SourceItem, shape: tuple[int, int], linear: bool = False,
                  grain_k: list[float] | None = None):
    st = cfg.image_settings(item)
    st = st.replace(linear_input=st.linear_input or linear)
    plan = make_plan(st, shape, grain_k=grain_k if st.grain_style > 0 else None)
    return st, plan, TilePlan.build(shape, cfg.tile, plan.halo)


def process_tile(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], index: tuple[int, int]
                 ) -> dict[str, Any]:
    """Render one tile from its padded window of the staged input and write its chunks; returns
    {"seconds", "device" (where it ran), "fallback" (a GPU out-of-memory error made it run on the CPU)}."""
    limit_kernel_threads()
    t0 = time.perf_counter()
    shape = tuple(staged["shape"])
    _, plan, tp = _tile_context(cfg, item, shape, staged["linear"], staged.get("grain_k"))
    tile = next(t for t in tp if t.index == tuple(index))
    root = open_root(cfg.out_url, cfg.storage_options)
    if _complete(root, cfg, item):  # run again after the image was finished (its staging may be gone)
        return {"seconds": 0.0, "device": "", "fallback": False}
    wy0, wy1, wx0, wx1 = tile.window
    if staged["direct"]:
        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is None:
            raise OSError(f"{item.url!r} can no longer be read by region")
        with reader:
            window = as_rgb(reader.read(wy0, wy1, wx0, wx1))
    else:
        window = root[staging_path(item.key)][wy0:wy1, wx0:wx1]
    rendered, used, fell_back = render_on(cfg.accelerator(), window, (wy0, wx0), shape, tile.box, plan)
    out = _chw(rendered)
    _guard(cfg)
    write_tile(root, item.key, tp, tile, out)
    return {"seconds": time.perf_counter() - t0, "device": used, "fallback": fell_back}


def finalize(cfg: JobConfig, item: SourceItem, staged: dict[str, Any], *tiles: dict[str, Any]) -> dict[str, Any]:
    """After every tile: the remaining pyramid levels, metadata and completion marker; staging removed."""
    limit_kernel_threads()
    t0 = time.perf_counter()
    shape = tuple(staged["shape"])
    st, plan, tp = _tile_context(cfg, item, shape, staged["linear"], staged.get("grain_k"))
    root = open_root(cfg.out_url, cfg.storage_options)
    seconds = staged["seconds"] + sum(t["seconds"] for t in tiles) + (time.perf_counter() - t0)
    used = ", ".join(sorted({t["device"] for t in tiles if t["device"]})) or "cpu"
    fallbacks = sum(1 for t in tiles if t["fallback"])
    if _complete(root, cfg, item):  # run again after its worker died having finished the image
        with contextlib.suppress(KeyError):
            del root[staging_path(item.key)]
        return _result(item, shape, seconds, tiles=tp.count, device=used, gpu_oom_fallbacks=fallbacks)
    _guard(cfg)
    finish_pyramid(root, item.key, shape)
    _guard(cfg)
    mark_complete(root, item.key, plan.channels, shape, st.dtype,
                  _provenance(cfg, item, st, plan, tp, staged["sha256"],
                              "tiled, read by region" if staged["direct"] else "tiled", seconds, used))
    with contextlib.suppress(KeyError):
        del root[staging_path(item.key)]
    return _result(item, shape, seconds, tiles=tp.count, device=used, gpu_oom_fallbacks=fallbacks)
