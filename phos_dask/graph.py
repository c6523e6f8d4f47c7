"""A job as Dask tasks, submitted through a bounded window so the graph never holds the whole archive.

Per image one `film-image-…` task (tasks.process_image) reads the header and either renders the image whole
or stages it and returns its tile grid; the client then submits one `film-tile-…` per tile and a
`finalize-…`. Task keys start with those prefixes, then an 8-hex-digit token of the image, so the dashboard
groups work by kind. The client does nothing per image but submit and collect: no header, no store read.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from distributed import Client, Future, as_completed

from phos_dask import tasks
from phos_dask.errors import PhosError, one_line
from phos_dask.sources import SourceItem

ResultCallback = Callable[[SourceItem, dict[str, Any]], None]


class Todo(NamedTuple):
    """An image to submit: `fresh` when the output holds nothing under its key, `thumb` when its task
    should return its contact-sheet thumbnails."""

    item: SourceItem
    fresh: bool = True
    thumb: bool = False


def _token(cfg: tasks.JobConfig, item: SourceItem) -> str:
    return hashlib.blake2b(f"{cfg.out_url}|{item.key}|{cfg.fingerprint()}".encode(), digest_size=4).hexdigest()


@dataclass
class _Image:
    todo: Todo
    stage: str  # "image" | "finalize"
    token: str
    started: float = field(default_factory=time.perf_counter)


def submit_job(client: Client, cfg: tasks.JobConfig, todos: Iterable[Todo | SourceItem], on_result: ResultCallback,
               window: int | None = None) -> None:
    """Run every image (a bare SourceItem is a fresh Todo); call on_result(item, result) as each image ends,
    in completion order.

    result: {"status": "done", "seconds" (task time), "wall_seconds", "megapixels", …}, {"status":
    "skipped"} (found complete by its task), or {"status": "failed", "error": one line, "wall_seconds"}.
    At most `window` images are in flight (default: 2 × the cluster's threads, at least 4).
    """
    if window is None:
        nthreads = sum(client.nthreads().values()) or 1
        window = max(4, 2 * nthreads)
    pending: Iterator[Todo] = (t if isinstance(t, Todo) else Todo(t) for t in todos)
    ac = as_completed()
    running: dict[str, _Image] = {}

    def start(todo: Todo) -> None:
        token = _token(cfg, todo.item)
        fut = client.submit(tasks.process_image, cfg, todo.item, todo.fresh, todo.thumb,
                            key=f"film-image-{token}-{todo.item.key}", pure=False, retries=0)
        running[fut.key] = _Image(todo, "image", token)
        ac.add(fut)

    def fill() -> None:
        while len(running) < window:
            todo = next(pending, None)
            if todo is None:
                return
            start(todo)

    def finish(image: _Image, result: dict[str, Any]) -> None:
        result = {**result, "wall_seconds": round(time.perf_counter() - image.started, 3)}
        on_result(image.todo.item, result)

    fill()
    for fut in ac:
        image = running.pop(fut.key)
        result = fut.result() if fut.status == "finished" else None
        if result is None:
            finish(image, {"key": image.todo.item.key, "status": "failed", "error": _one_line(fut)})
        elif image.stage == "image" and result.get("status") == "staged":
            item = image.todo.item
            # plain data, not the future: a lost worker never makes the staging task run again under
            # tiles that are already writing
            staged = {k: v for k, v in result.items() if k not in ("tiles", "source_thumb")}
            tiles = [
                client.submit(tasks.process_tile, cfg, item, staged, tuple(idx),
                              key=f"film-tile-{image.token}-{idx[0]}-{idx[1]}-{item.key}", pure=False)
                for idx in result["tiles"]
            ]
            fin = client.submit(tasks.finalize, cfg, item,
                                {**staged, "source_thumb": result.get("source_thumb"), "thumb": image.todo.thumb},
                                *tiles, key=f"finalize-{image.token}-{item.key}", pure=False)
            running[fin.key] = _Image(image.todo, "finalize", image.token, image.started)
            ac.add(fin)
            del tiles
        else:
            finish(image, result)
        fut.release()
        fill()


def _one_line(fut: Future) -> str:
    """A failed task's error as one line: ours and ValueErrors as they stand, others with their type."""
    try:
        exc = fut.exception()
    except Exception as e:
        return one_line(f"{type(e).__name__}: {e}")
    text = one_line(exc)
    return text if isinstance(exc, PhosError | ValueError) else f"{type(exc).__name__}: {text}"
