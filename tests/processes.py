"""Helpers for tests that start real processes (schedulers, workers)."""

from __future__ import annotations

import subprocess


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
