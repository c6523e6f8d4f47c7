"""A job as Dask tasks, submitted through a bounded window so the graph never holds the whole archive.

Per image: `film-image-…` (read → model → write, one task) for images that run whole; otherwise
`decode-…` (stage the decoded input), one `film-tile-…` per tile, then `finalize-…`. Task keys start
with those prefixes, then an 8-hex-digit token of the image, so the dashboard groups work by kind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future, as_completed

from phos_dask import tasks
from phos_dask.render import output_shape
from phos_dask.sources import SourceItem, probe_shape

ResultCallback = Callable[[SourceItem, dict[str, Any]], None]


def _token(cfg: tasks.JobConfig, item: SourceItem) -> str:
    return hashlib.blake2b(f"{cfg.out_url}|{item.key}|{cfg.fingerprint()}".encode(), digest_size=4).hexdigest()


@dataclass
class _Image:
    item: SourceItem
    stage: str  # "whole" | "decode" | "finalize"
    token: str
    started: float = field(default_factory=time.perf_counter)


def plan_mode(cfg: tasks.JobConfig, item: SourceItem) -> tuple[str, tuple[int, int] | None]:
    """("whole" | "tiled", working-size shape or None when the header could not be read)."""
    shape = probe_shape(item.url, cfg.storage_options)
    if shape is None:  # e.g. BigTIFF, which the header reader does not know
        from phos_dask.imageio import open_region_reader
        from phos_dask.sources import options_for

        reader = open_region_reader(item.url, options_for(item.url, cfg.storage_options))
        if reader is None:
            return "whole", None  # the decoder will either manage or report the file
        with reader:
            shape = reader.shape
    shape = output_shape(shape, cfg.settings)
    return ("whole" if cfg.runs_whole(shape) else "tiled"), shape


def submit_job(client: Client, cfg: tasks.JobConfig, items: Iterable[SourceItem], on_result: ResultCallback,
               window: int | None = None) -> None:
    """Run every item; call on_result(item, result) as each image ends, in completion order.

    result: {"status": "done", "seconds" (task time), "wall_seconds", "megapixels", …} or
    {"status": "failed", "error": one line, "wall_seconds"}.
    At most `window` images are in flight (default: 2 × the cluster's threads, at least 4).
    """
    if window is None:
        nthreads = sum(client.nthreads().values()) or 1
        window = max(4, 2 * nthreads)
    pending: Iterator[SourceItem] = iter(items)
    ac = as_completed()
    running: dict[str, _Image] = {}

    def start(item: SourceItem) -> None:
        token = _token(cfg, item)
        mode, _ = plan_mode(cfg, item)
        if mode == "whole":
            fut = client.submit(tasks.process_whole, cfg, item, key=f"film-image-{token}-{item.key}",
                                pure=False, retries=0)
            running[fut.key] = _Image(item, "whole", token)
        else:
            fut = client.submit(tasks.stage, cfg, item, key=f"decode-{token}-{item.key}", pure=False)
            running[fut.key] = _Image(item, "decode", token)
        ac.add(fut)

    def fill() -> None:
        while len(running) < window:
            item = next(pending, None)
            if item is None:
                return
            start(item)

    def finish(image: _Image, result: dict[str, Any]) -> None:
        result = {**result, "wall_seconds": round(time.perf_counter() - image.started, 3)}
        on_result(image.item, result)

    fill()
    for fut in ac:
        image = running.pop(fut.key)
        result = fut.result() if fut.status == "finished" else None
        if result is None:
            finish(image, {"key": image.item.key, "status": "failed", "error": _one_line(fut)})
        elif image.stage == "decode" and result.get("status") == "staged":
            staged = result
            tiles = [
                client.submit(tasks.process_tile, cfg, image.item, fut, tuple(idx),
                              key=f"film-tile-{image.token}-{idx[0]}-{idx[1]}-{image.item.key}", pure=False)
                for idx in staged["tiles"]
            ]
            fin = client.submit(tasks.finalize, cfg, image.item, fut, *tiles,
                                key=f"finalize-{image.token}-{image.item.key}", pure=False)
            running[fin.key] = _Image(image.item, "finalize", image.token, image.started)
            ac.add(fin)
            del tiles
        else:
            finish(image, result)
        fut.release()
        fill()


def _one_line(fut: Future) -> str:
    try:
        exc = fut.exception()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    from phos_dask.imageio import ImageReadError

    return text if isinstance(exc, ImageReadError | ValueError) else f"{type(exc).__name__}: {text}"
