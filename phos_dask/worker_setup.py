"""Preloaded into the worker processes of the local clusters `run` starts (Dask's `distributed.worker.preload`).

Ctrl-C in a terminal reaches every process of its foreground group. The `run` process handles it (one line,
exit 130) and closes its cluster, which stops the workers; the workers themselves ignore it, so none prints a
KeyboardInterrupt traceback on the user's terminal. Imported into any other process (a test's), this module
leaves its signals alone: an ignored SIGINT would be inherited by every program that process starts.

OpenCV's log is silenced in these processes: its complaints about a bad input file would reach the
terminal, and the job already reports each failed image in one line. (Their environment, including
OPENCV_IO_MAX_IMAGE_PIXELS, is `phos_dask.localworkers.WORKER_ENV`.)

When `run` hands the job's settings over (PHOS_DASK_WARM), a worker loads the kernels a first photograph
needs in a background thread as it starts, while the client plans the job, instead of in its first task
(`phos_dask.warmup.warm_first`; after a fresh install it waits for their compile like a task would).

The garbage collector: a worker's own process starts with it off, and once its kernels are loaded, what
the start-up made (modules, numba's and LLVM's objects: ~170 000, and fewer than a thousand of them
garbage) is frozen out of it and it is turned on again. Loading the kernels then takes 0.56-0.70 s instead of
0.75-0.84, and every full collection during the job skips those objects (0.09-0.12 s each before). As the
worker closes, everything it holds is frozen too (`dask_teardown`): the process then exits without the
collector walking its objects one last time, which took about 0.45 s of each worker's exit and so of every
local cluster's close. A worker forked from `run`'s fork server (phos_dask.worker_boot, which does the same for
what it imports) turns the collector off as it starts, until its kernels are loaded or compiled. A worker
inside another process (a test's) leaves the collector alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
import signal
import threading


def _own_process() -> bool:
    """Whether this is a worker's own process (its nanny spawned it), which ends with the worker."""
    return multiprocessing.parent_process() is not None


#: Whether this module turned the collector off for the start-up (`_started` turns it on again).
_HELD = False


def _hold_collector() -> None:
    """In a worker's own process, the collector off until its start-up is over (`_started`): from this
    module's import in a spawned worker, from `dask_setup` in one forked from a server that imported it."""
    global _HELD
    if _own_process() and not _HELD and gc.isenabled():
        gc.disable()
        _HELD = True


_hold_collector()

import cv2  # noqa: E402  (after the collector is off: OpenCV's import is part of the start-up)

if _own_process():  # ignored signals are inherited: a test's process importing this must keep its Ctrl-C
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def dask_setup(worker) -> None:  # the hook Dask calls for a preload module
    from phos_dask.localworkers import WARM_ENV

    _hold_collector()
    logging.getLogger("distributed.worker").addFilter(ClosingHeartbeat(worker))
    settings = os.environ.get(WARM_ENV)
    if settings:
        threading.Thread(target=_load_kernels, args=(settings,), name="phos-kernel-load", daemon=True).start()
    else:
        _started()


def dask_teardown(worker) -> None:  # Dask calls it as the worker closes
    if _own_process():  # it exits after the worker
        gc.freeze()


def _load_kernels(settings: str) -> None:
    from phos_dask.settings import Settings
    from phos_dask.warmup import mark, warm_first

    try:
        with contextlib.suppress(Exception):  # only a head start: a task that needs a kernel loads it anyway
            chosen = Settings(**json.loads(settings))
            warm_first(chosen)
            mark(chosen, "first")  # they are cached now: the next run's workers can be forked with them loaded
    finally:
        _started()


def _started() -> None:
    """The start-up is over: what it made is frozen out of the garbage collector, which is turned on again."""
    global _HELD
    if _HELD:
        _HELD = False
        gc.freeze()
        gc.enable()


class ClosingHeartbeat(logging.Filter):
    """Drops the error a worker logs, traceback and all, when a heartbeat is still in flight as the worker
    closes its own connections: a race inside Dask's Worker.close that a Ctrl-C'd run hits now and then. It
    is part of shutting down, not a failure; the same message from a worker that is running passes."""

    MESSAGE = "Failed to communicate with scheduler during heartbeat"

    def __init__(self, worker) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.core import Status

        closing = self.worker.status in (Status.closing, Status.closing_gracefully, Status.closed)
        return not (closing and str(record.msg).startswith(self.MESSAGE))
