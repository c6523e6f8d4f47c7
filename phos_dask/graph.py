"""A job as Dask tasks, submitted through a bounded window so the graph never holds the whole archive.

Per image one `film-image-…` task (tasks.process_image) reads the header and either renders the image whole
(its `ImageResult`) or prepares it for tiles (its `Staged`, with the tile grid); the client then submits one
`film-tile-…` per tile (tiled.process_tile) and a `finalize-…` (tiled.finalize). What tasks return:
phos_dask.taskflow. Task keys start with those prefixes, then an 8-hex-digit token of the image, so the dashboard
groups work by kind. Small files go several to one `film-image-…` task (tasks.process_images) when a job has
many more of them than the cluster has threads, so Dask's cost per task (the scheduler's, the client's and the
worker's, a few ms each) is not paid per photo. The client does nothing per image but submit and collect: no
header, no store read.
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


#: Files under this many bytes may share a task (a 1 MP JPEG is about 0.3 MB, a 24 MP one about 10 MB).
SMALL_FILE = 2 << 20
#: A shared task holds at most this many images and this many bytes of files.
MAX_BATCH = 8
BATCH_BYTES = 6 << 20
#: Images are shared out so that every thread of the cluster still gets at least this many tasks.
TASKS_PER_THREAD = 4


def batch_size(images: int, threads: int) -> int:
    """How many small files one task takes in a job of `images` images on `threads` threads: 1 (a task each)
    unless there are enough for TASKS_PER_THREAD tasks per thread of that size, at most MAX_BATCH."""
    return max(1, min(MAX_BATCH, images // (TASKS_PER_THREAD * max(1, threads))))


def _batches(todos: Iterable[Todo], size: int) -> Iterator[tuple[Todo, ...]]:
    """The todos in order, as tasks: consecutive small files (under SMALL_FILE bytes) up to `size` of them
    and BATCH_BYTES together, any other file alone."""
    group: list[Todo] = []
    held = 0
    for todo in todos:
        nbytes = max(0, int(todo.item.size))
        if size <= 1 or nbytes >= SMALL_FILE:
            if group:
                yield tuple(group)
                group, held = [], 0
            yield (todo,)
            continue
        if group and (len(group) >= size or held + nbytes > BATCH_BYTES):
            yield tuple(group)
            group, held = [], 0
        group.append(todo)
        held += nbytes
    if group:
        yield tuple(group)


def _token(cfg: JobConfig, item: SourceItem) -> str:
    return hashlib.blake2b(f"{cfg.out_url}|{item.key}|{cfg.fingerprint()}".encode(), digest_size=4).hexdigest()


@dataclass
class _Image:
    todo: Todo
    #: the image's task in flight: its first one (process_image) or its finalize
    task: Literal["image", "finalize"]
    token: str
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Batch:
    """Several small images' first tasks in one (tasks.process_images)."""

    todos: tuple[Todo, ...]
    started: float = field(default_factory=time.perf_counter)


def submit_job(client: Client, cfg: JobConfig, todos: Iterable[Todo | SourceItem], on_result: ResultCallback,
               window: int | None = None, images: int = 0) -> None:
    """Run every image (a bare SourceItem is a fresh Todo); call on_result(item, result) as each image ends,
    in completion order.

    result: an ImageResult, done, skipped (found complete by its task) or failed (error: one line), with its
    wall_seconds.
    At most `window` tasks of images' first steps or finalizes are in flight (default: 2 × the cluster's
    threads, at least 4). `images`: how many todos there are, if known: small files then share tasks
    (`batch_size`); a shared task that fails as a whole (its worker died) is submitted again image by image,
    so an image that kills its worker fails alone.
    """
    nthreads = sum(client.nthreads().values()) or 1
    if window is None:
        window = max(4, 2 * nthreads)
    plain: Iterator[Todo] = (t if isinstance(t, Todo) else Todo(t) for t in todos)
    pending: Iterator[tuple[Todo, ...]] = _batches(plain, batch_size(images, nthreads))
    retry: list[Todo] = []  # the images of shared tasks that failed, each to run again alone
    ac = as_completed()
    running: dict[str, _Image | _Batch] = {}

    def start(todo: Todo) -> None:
        token = _token(cfg, todo.item)
        fut = client.submit(tasks.process_image, cfg, todo.item, todo.fresh, todo.thumb,
                            key=f"film-image-{token}-{todo.item.key}", pure=False, retries=0)
        running[fut.key] = _Image(todo, "image", token)
        ac.add(fut)

    def start_batch(group: tuple[Todo, ...]) -> None:
        token = _token(cfg, group[0].item)
        fut = client.submit(tasks.process_images, cfg, [(t.item, t.fresh, t.thumb) for t in group],
                            key=f"film-image-{token}-{len(group)}-images-from-{group[0].item.key}", pure=False,
                            retries=0)
        running[fut.key] = _Batch(group)
        ac.add(fut)

    def fill() -> None:
        while len(running) < window:
            if retry:
                start(retry.pop(0))
                continue
            group = next(pending, None)
            if group is None:
                return
            if len(group) == 1:
                start(group[0])
            else:
                start_batch(group)

    def finish(image: _Image, result: ImageResult) -> None:
        on_result(image.todo.item,
                  dataclasses.replace(result, wall_seconds=round(time.perf_counter() - image.started, 3)))

    def first_done(image: _Image, result: ImageResult | Staged) -> None:
        if image.task == "image" and isinstance(result, Staged):
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

    fill()
    for fut in ac:
        task = running.pop(fut.key)
        results = fut.result() if fut.status == "finished" else None
        if isinstance(task, _Batch):
            if results is None:
                retry.extend(task.todos)
            else:
                for todo, result in zip(task.todos, results, strict=True):
                    first_done(_Image(todo, "image", _token(cfg, todo.item), task.started), result)
        elif results is None:
            finish(task, ImageResult.failed(task.todo.item.key, _one_line(fut)))
        else:
            first_done(task, results)
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
