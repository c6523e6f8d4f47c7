"""A job as Dask tasks, submitted through a bounded window so the graph never holds the whole archive.

Per image one `film-image-…` task (tasks.process_image) reads the header and either renders the image whole
(its `ImageResult`) or prepares it for tiles (its `Staged`, with the tile grid); the client then submits one
`film-tile-…` per tile (tiled.process_tile) and a `finalize-…` (tiled.finalize). What tasks return:
phos_dask.taskflow. Task keys start with those prefixes, then an 8-hex-digit token of the image, so the dashboard
groups work by kind. The client does nothing per image but submit and collect: no header, no store read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from distributed import Client, Future, as_completed

from phos_dask import tasks, tiled
from phos_dask.errors import PhosError, one_line
from phos_dask.sources import SourceItem
from phos_dask.taskflow import ImageResult, JobConfig, Staged

ResultCallback = Callable[[SourceItem, ImageResult], None]


class Todo(NamedTuple):
    """An image to submit: `fresh` when the output holds nothing under its key, `thumb` when its task
    should return its contact-sheet thumbnails."""

    item: SourceItem
    fresh: bool = True
    thumb: bool = False


def _token(cfg: JobConfig, item: SourceItem) -> str:
    return hashlib.blake2b(f"{cfg.out_url}|{item.key}|{cfg.fingerprint()}".encode(), digest_size=4).hexdigest()


@dataclass
class _Image:
    todo: Todo
    #: the image's task in flight: its first one (process_image) or its finalize
    task: Literal["image", "finalize"]
    token: str
    started: float = field(default_factory=time.perf_counter)


def submit_job(client: Client, cfg: JobConfig, todos: Iterable[Todo | SourceItem], on_result: ResultCallback,
               window: int | None = None) -> None:
    """Run every image (a bare SourceItem is a fresh Todo); call on_result(item, result) as each image ends,
    in completion order.

    result: an ImageResult, done, skipped (found complete by its task) or failed (error: one line), with its
    wall_seconds.
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

    def finish(image: _Image, result: ImageResult) -> None:
        on_result(image.todo.item,
                  dataclasses.replace(result, wall_seconds=round(time.perf_counter() - image.started, 3)))

    fill()
    for fut in ac:
        image = running.pop(fut.key)
        result = fut.result() if fut.status == "finished" else None
        if result is None:
            finish(image, ImageResult.failed(image.todo.item.key, _one_line(fut)))
        elif image.task == "image" and isinstance(result, Staged):
            item = image.todo.item
            # plain data, not the future: a lost worker never makes the first task run again under
            # tiles that are already writing
            for_tiles = result.for_tiles()
            tiles = [
                client.submit(tiled.process_tile, cfg, item, for_tiles, idx,
                              key=f"film-tile-{image.token}-{idx[0]}-{idx[1]}-{item.key}", pure=False)
                for idx in result.tiles
            ]
            fin = client.submit(tiled.finalize, cfg, item, dataclasses.replace(result, tiles=()), *tiles,
                                key=f"finalize-{image.token}-{item.key}", pure=False)
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
