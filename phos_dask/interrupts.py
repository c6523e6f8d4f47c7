"""Quiet Ctrl-C for the command line's process: a logging filter for a race inside Dask's interrupt handling.
Kept apart from phos_dask.cluster so that `run` installs it without importing distributed (0.3 s), before its
kernels' warm-up starts."""

from __future__ import annotations

import logging
import os


class CancelBeforeStart(logging.Filter):
    """Drops the error Tornado logs, traceback and all, when Ctrl-C reaches a client call (distributed's
    `sync`) before the call's coroutine has started: its `cancel` callback then reads a variable not yet
    assigned and raises NameError on the event loop. That is a race inside Dask's own interrupt handling,
    not a failure: the command still ends with its one "interrupted" line. Every other error passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, NameError) or error.__traceback__ is None:
            return True
        tb = error.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        return not (code.co_name == "cancel" and code.co_filename.endswith(os.path.join("distributed", "utils.py")))


def quiet_interrupts() -> None:
    """Install `CancelBeforeStart` on Tornado's callback logger (once): for the command line's process."""
    logger = logging.getLogger("tornado.application")
    if not any(isinstance(f, CancelBeforeStart) for f in logger.filters):
        logger.addFilter(CancelBeforeStart())
