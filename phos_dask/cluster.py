"""Where a job runs: a local cluster of worker processes, or an existing scheduler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

#: Environment of each local worker process, set before it is spawned (glibc reads MALLOC_* at start).
#: * Single-threaded kernels: the cluster, not numba, provides the parallelism (tasks read
#:   PHOS_DASK_KERNEL_THREADS; NUMBA_NUM_THREADS itself must not differ between processes that share
#:   numba's on-disk cache).
#: * Arrays up to 1 GiB come from one heap that is not trimmed between tasks, so each image reuses the pages
#:   the last one touched. With Dask's default (MALLOC_TRIM_THRESHOLD_=65536) a worker page-faulted
#:   ~165 000 pages per 24 MP render and took 2.5 s instead of 1.9 s. Peak memory is unchanged; an idle
#:   worker keeps its peak RSS.
WORKER_ENV = {
    "PHOS_DASK_KERNEL_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1),
    "MALLOC_ARENA_MAX": "1",  # tasks run in worker threads, whose own arenas would mmap every big array
}


class ClusterError(RuntimeError):
    """The scheduler cannot be reached or the cluster cannot start."""


@contextlib.contextmanager
def connect(scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None,
            dashboard_address: str = "127.0.0.1:8787", timeout: float = 20.0) -> Iterator[Client]:
    """A Client: to `scheduler` (tcp://host:port) or `scheduler_file` if given, else to a new
    LocalCluster of `workers` single-threaded processes (default: one per core) on 127.0.0.1."""
    if scheduler or scheduler_file:
        try:
            client = Client(scheduler, scheduler_file=scheduler_file, timeout=timeout)
        except (OSError, TimeoutError) as e:
            where = scheduler or f"the scheduler file {scheduler_file!r}"
            raise ClusterError(f"cannot reach the Dask scheduler at {where}: {e}") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENV}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=dashboard_address,
    ) as cluster, Client(cluster) as client:
        yield client
