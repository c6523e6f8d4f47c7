"""Preloaded into the worker processes of the local clusters `run` starts (Dask's `distributed.worker.preload`).

Ctrl-C in a terminal reaches every process of its foreground group. The `run` process handles it (one line,
exit 130) and closes its cluster, which stops the workers; the workers themselves ignore it, so none prints a
KeyboardInterrupt traceback on the user's terminal.

OpenCV's log is silenced in these processes: its complaints about a bad input file would reach the
terminal, and the job already reports each failed image in one line. (Their environment, including
OPENCV_IO_MAX_IMAGE_PIXELS, is `phos_dask.cluster.WORKER_ENV`.)
"""

from __future__ import annotations

import contextlib
import signal

import cv2

with contextlib.suppress(ValueError):  # only the main thread may set handlers
    signal.signal(signal.SIGINT, signal.SIG_IGN)

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def dask_setup(worker) -> None:  # the hook Dask calls for a preload module; the work is done on import
    return None
