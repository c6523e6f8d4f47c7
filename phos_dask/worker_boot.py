"""Imported by the fork server `run` starts for its local workers (phos_dask.localworkers), before it forks
any: what every worker would otherwise import and load itself.

* Ctrl-C is ignored here, so neither the server nor the workers forked from it print a traceback when the
  user interrupts `run` (which closes its cluster itself; phos_dask.worker_setup does the same in spawned
  workers). A server that inherited an ignored SIGINT passes it on to its children.
* The modules a worker's tasks use: Dask's worker and nanny, NumPy, OpenCV, the decoders and encoders, the
  storage layer and this package's task modules.
* The kernels a first photograph needs, when numba's cache has them for the job's settings (PHOS_DASK_WARM;
  `warmup.is_warm(settings, "first")`): loaded, serial builds only (`_cpu.serial_only`), without starting
  numba's thread pool, whose threads would not survive the fork. Nothing is compiled here.
* When the cache does not have them (the first run after an install), `run`'s warm-up is compiling them
  (phos_dask.warmup) while this server imports, and a worker can render nothing before that ends. The server
  then lowers its priority first (nice +5), and so does every worker forked from it, for the whole job: the
  imports and the workers' start-up take the CPU the compile leaves, instead of a share of it
  (bench/first_run.py). The workers themselves wait for the kernels and then load them
  (phos_dask.worker_setup).
* The garbage collector is off while all that is made and then frozen out of it, as a spawned worker does
  (phos_dask.worker_setup): the forked workers inherit the frozen objects.

Nothing here may raise: a server whose preload fails forks nothing.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal

#: What a worker imports for its tasks (each skipped if it cannot be imported).
MODULES = (
    "numpy", "cv2", "distributed.nanny", "distributed.worker", "fsspec.implementations.local", "imagecodecs",
    "PIL.JpegImagePlugin", "google_crc32c", "numcodecs", "tifffile", "phos_dask.worker_setup", "phos_dask.tasks",
    "phos_dask.tiled", "phos_dask.thumbs", "phos_dask.warmup",
)


def _boot() -> None:
    chosen = _job_settings()
    if chosen is not None:
        _yield_to_the_compile(chosen)
    for name in MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if chosen is None:
        return
    from phos_dask import warmup
    from phos_dask.film import _cpu

    if warmup.is_warm(chosen, "first"):  # asked again: the warm-up may have cached them during the imports
        with _cpu.serial_only():
            warmup.load_first(chosen)


def _job_settings():
    """The job's settings the server was started with (PHOS_DASK_WARM), or None."""
    from phos_dask.localworkers import WARM_ENV

    settings = os.environ.get(WARM_ENV)
    if not settings:
        return None
    from phos_dask.settings import Settings

    return Settings(**json.loads(settings))


#: How much the server, and the workers forked from it, lower their priority while a cold cache compiles.
COLD_NICE = 5


def _yield_to_the_compile(chosen) -> None:
    """Lower this process's priority by `COLD_NICE` when the first kernels of a job with settings `chosen` are
    not in numba's cache yet (they are being compiled meanwhile)."""
    from phos_dask import warmup

    if not warmup.is_warm(chosen, "first"):
        with contextlib.suppress(OSError):
            os.nice(COLD_NICE)


with contextlib.suppress(ValueError):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
_collecting = gc.isenabled()
gc.disable()
try:
    _boot()
except Exception:
    pass
finally:
    gc.freeze()
    if _collecting:
        gc.enable()
