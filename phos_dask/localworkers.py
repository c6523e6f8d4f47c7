"""The worker processes of the local clusters `run` starts: their environment, and the fork server they are
forked from.

Dask spawns each local worker as a new interpreter, which imports Dask, NumPy, OpenCV, numba and this
package and then loads the film model's kernels: 1.2-1.7 s of CPU per worker on a 2-core machine, all of it
after the client has imported Dask and planned the job. When a local CPU cluster is likely, `run` instead
starts multiprocessing's fork server before it imports Dask itself (`start_forkserver`). The server imports
all of that once (`phos_dask.worker_boot`) and, when numba's cache holds them, loads the kernels a first
photograph needs, on the core the client leaves idle while it starts; each worker is then a fork of it. After
a fresh install, whose first run compiles the kernels (phos_dask.warmup), the server loads none and lowers its
priority, and its workers', so that the compile keeps the cores. `cluster.connect` uses the server only when
it was started with the very environment the workers would be spawned with (`forked_with`); otherwise, and
for GPU clusters, Dask's own start method stays.

Environment variables a process reads only as it starts (glibc's MALLOC_*, NumPy's huge pages, OpenCV's
decode limit) are the server's, and so every forked worker's: the server is started with `WORKER_ENV`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phos_dask.settings import Settings

#: NumPy asks the kernel for transparent huge pages for every array of 4 MB or more. On VMs that hand
#: freed memory back to their host (virtio-balloon free page reporting, e.g. Firecracker), each huge page
#: is memory the host must back again: touching a render's arrays for the first time took 1.5-5 s per GB
#: there, against 0.35 s with ordinary pages, so a worker's first 24 MP image took 2-8 s instead of 0.8 s
#: (bench/commands.py: `run` of 4 x 24 MP 9.2-11.4 s with them, 5.0-5.2 s without). Once a worker's heap
#: is touched, huge pages render about 7 % faster. The command line and the local clusters it starts turn
#: them off (their workers live for one job); deployed workers (deploy/, WORKER_ENV) keep NumPy's default,
#: as they render many images each. NUMPY_MADVISE_HUGEPAGE=1 in the environment turns them back on.
HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"

#: Environment of each local worker process, set before it is spawned (glibc reads MALLOC_* at start).
#: * Single-threaded kernels: the cluster, not numba, provides the parallelism (tasks read
#:   PHOS_DASK_KERNEL_THREADS; NUMBA_NUM_THREADS itself must not differ between processes that share
#:   numba's on-disk cache).
#: * Arrays up to 1 GiB come from one heap that is not trimmed between tasks, so each image reuses the pages
#:   the last one touched. With Dask's default (MALLOC_TRIM_THRESHOLD_=65536) a worker page-faulted
#:   ~165 000 pages per 24 MP render and took 2.5 s instead of 1.9 s. Peak memory is unchanged; an idle
#:   worker keeps its peak RSS.
#: * OpenCV's own decode limit (2**30 px, read once when cv2 is loaded) lifted: the limit that applies is
#:   the job's `--max-pixels`, checked from each file's header before anything is decoded.
WORKER_ENV = {
    "OPENCV_IO_MAX_IMAGE_PIXELS": str(1 << 40),
    "PHOS_DASK_KERNEL_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1),
    "MALLOC_ARENA_MAX": "1",  # tasks run in worker threads, whose own arenas would mmap every big array
    "PHOS_DASK_SCRATCH_MB": "0",  # the heap above keeps a render's big arrays: no per-thread scratch too
}
#: The environment variable that hands a local worker the job's settings (JSON) to load its kernels for.
WARM_ENV = "PHOS_DASK_WARM"
#: Dask's default `distributed.nanny.pre-spawn-environ`, which the fork server is started with before Dask
#: is imported (`connect` checks it against the configuration).
DASK_PRE_SPAWN = {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                  "OPENBLAS_NUM_THREADS": 1}
#: The module the fork server imports before it forks any worker.
BOOT_MODULE = "phos_dask.worker_boot"

#: The environment the fork server this process started has (None: none was started).
_server_env: dict[str, str] | None = None


def worker_environ(pre_spawn: Mapping[str, Any], warm: Settings | None = None) -> dict[str, str]:
    """What a local CPU worker's environment adds to this process's: Dask's pre-spawn environment
    `pre_spawn`, `WORKER_ENV`, NumPy's huge pages as this process has them, and the job's settings when its
    workers are to load their kernels as they start (`warm`)."""
    environ = {**{k: str(v) for k, v in pre_spawn.items()}, **WORKER_ENV,
               HUGEPAGE_ENV: os.environ.get(HUGEPAGE_ENV, "0")}
    if warm is not None:
        environ[WARM_ENV] = json.dumps(warm.to_dict())
    return environ


def _server_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a fork server for workers with `environ`, as this process's now is: with
    this package's folder on PYTHONPATH (the server imports it before any worker tells it where to look)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **environ, "PYTHONPATH": path}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment set to `values` (for the processes started meanwhile), then restored."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


def start_forkserver(warm: Settings | None = None) -> bool:
    """Start multiprocessing's fork server for this process's local CPU workers, with their environment
    (Dask's default pre-spawn variables and `warm`, see `worker_environ`), importing `BOOT_MODULE`; at once:
    the server works in the background. Returns whether one is running (False where the platform has none).
    Once per process: later calls return whether the first one started it."""
    global _server_env
    if _server_env is not None:
        return True
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    env = _server_environ(worker_environ(DASK_PRE_SPAWN, warm))
    try:
        with _environment(env):
            forkserver.set_forkserver_preload([BOOT_MODULE])
            forkserver.ensure_running()
    except (OSError, ValueError):
        return False
    _server_env = env
    return True


def forked_with(environ: Mapping[str, str]) -> bool:
    """Whether this process started a fork server (`start_forkserver`) whose environment is the one workers
    with `environ` would be spawned with now: only then may they be forked from it."""
    return _server_env is not None and _server_env == _server_environ(environ)


def stop_forkserver() -> None:
    """Stop the fork server this process started, once its workers have gone with their cluster: at once, even
    while it is still importing (a job with nothing to render), and reaped, so that no process outlives the
    command. multiprocessing has no public way to stop its server; without one (another Python) it stops
    when this process exits."""
    global _server_env
    if _server_env is None:
        return
    _server_env = None
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    stop = getattr(server, "_stop", None)
    if pid is None or stop is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        stop()  # closes its pipe and waits for it
