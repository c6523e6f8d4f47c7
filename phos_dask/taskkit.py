"""What every task of a job does around the model, whole image or tile: the lease guard before each write,
the completion check, the kernel threads of a worker, the image's provenance record, and an error turned into
the image's failed result. Shared by phos_dask.tasks (the first task of every input) and phos_dask.tiled."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from phos_dask import __version__
from phos_dask.errors import EnvironmentProblem, PhosError, one_line
from phos_dask.lease import still_held
from phos_dask.sources import SourceItem
from phos_dask.storage import Location
from phos_dask.store import COMPLETE, image_state
from phos_dask.taskflow import ImageContext, ImageResult, JobConfig


class InputError(PhosError, ValueError):
    """An input that cannot be used (unreadable, not an image): the image fails alone, without a traceback."""


class LeaseLost(EnvironmentProblem, RuntimeError):
    """The job's lease on the output was taken over by another run: this task must not write."""


def guard(cfg: JobConfig) -> None:
    """Raise LeaseLost unless the job still holds the output's lease (checked before every write)."""
    if not still_held(cfg.out_url, cfg.storage_options, cfg.lease_token):
        raise LeaseLost(f"the lease on {cfg.out_url!r} was taken over by another run; stopping")


def complete(out: Location, cfg: JobConfig, item: SourceItem) -> bool:
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


def provenance(cfg: JobConfig, item: SourceItem, ctx: ImageContext, digest: str, mode: str, seconds: float,
                used: str = "cpu") -> dict[str, Any]:
    st, plan, tp = ctx.settings, ctx.model, ctx.tiling
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


def as_failure(item: SourceItem, error: BaseException) -> ImageResult:
    """An error of a task as the image's failed result: one line for the user (the job reports it, so Dask
    has no task failure to log); an unexpected error keeps its traceback in the result's "detail"."""
    if isinstance(error, PhosError) and not isinstance(error, OSError):  # ours: the message says it all
        return ImageResult.failed(item.key, one_line(error))
    if isinstance(error, OSError):
        where = f" {error.filename!r}" if getattr(error, "filename", None) else ""
        return ImageResult.failed(item.key, f"storage error{where}: {error.strerror or one_line(error)}")
    import traceback

    return ImageResult.failed(item.key, f"internal error: {type(error).__name__}: {one_line(error)}",
                              traceback.format_exc(limit=20))
