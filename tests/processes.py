"""Helpers for tests that start real processes (schedulers, workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable


def stop(procs: list[subprocess.Popen], timeout: float = 20) -> None:
    """Terminate the processes and wait for them; kill any that does not exit within `timeout` s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


def kill_worker_running(client, pids: dict[str, int], job: threading.Thread, matches: Callable[[str], bool],
                        what: str, poll: float, timeout: float = 120.0) -> None:
    """SIGKILL the worker process (`pids`: address → pid) first seen processing a task whose key `matches`,
    polling every `poll` s while `job` runs; the test fails, naming `what`, if none is seen within `timeout` s."""
    victim, deadline = None, time.monotonic() + timeout
    while victim is None and time.monotonic() < deadline and job.is_alive():
        for addr, keys in client.processing().items():
            if any(matches(str(k)) for k in keys) and addr in pids:
                victim = addr
                break
        time.sleep(poll)
    assert victim is not None, f"no {what} was seen running"
    os.kill(pids[victim], signal.SIGKILL)
