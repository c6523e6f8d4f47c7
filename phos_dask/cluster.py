"""Where a job runs: a local cluster of worker processes, or an existing scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dask
from distributed import Client, LocalCluster
from distributed.security import Security
from tornado import web

from phos_dask.errors import EnvironmentProblem
from phos_dask.localworkers import forked_with, worker_environ

if TYPE_CHECKING:
    from phos_dask.settings import Settings



class ClusterError(EnvironmentProblem, RuntimeError):
    """The scheduler cannot be reached or the cluster cannot start."""


def tls_security(ca_file: str | None, cert: str | None, key: str | None) -> Security | None:
    """A client Security for `tls://` schedulers from PEM files, or None (Dask's configuration then applies:
    `distributed.comm.tls.ca-file`, `.client.cert`, `.client.key`, e.g. from DASK_DISTRIBUTED__COMM__TLS__*)."""
    if not (ca_file or cert or key):
        return None
    if not (ca_file and cert):
        raise ClusterError("TLS needs at least --tls-ca-file and --tls-cert (and --tls-key unless the "
                           "certificate file holds the key)")
    for path in (ca_file, cert, key):
        if path and not os.path.isfile(path):
            raise ClusterError(f"TLS file {path!r} does not exist")
    return Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def local_address(address: str) -> str:
    """A dashboard address with the host made explicit: a bare ':PORT' (or 'PORT') binds to 127.0.0.1;
    all interfaces only when asked for by name ('0.0.0.0:PORT')."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "", address
    return f"{host or '127.0.0.1'}:{port or '8787'}"


#: Threads per local worker process when the job reads or writes object storage: a task spends most of
#: its time waiting on requests (tens of ms each), so a few run at once per core. Dask pauses a worker
#: whose memory passes its limit's pause fraction, so big images do not pile up.
STORAGE_THREADS = 4


def threads_for(*urls: str) -> int:
    """Threads per local worker for a job on these sources/outputs: STORAGE_THREADS when any is remote."""
    from phos_dask.storage import is_remote

    return STORAGE_THREADS if any(is_remote(u) for u in urls) else 1


@contextlib.contextmanager
def connect(scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None,
            dashboard_address: str = "127.0.0.1:8787", timeout: float = 20.0,
            security: Security | None = None, device: str = "cpu",
            rmm_pool_size: str | None = None, threads: int = 1, warm: Settings | None = None) -> Iterator[Client]:
    """A Client: to `scheduler` (tcp:// or tls://host:port) or `scheduler_file` if given, else to a new
    LocalCluster of `workers` processes (default: one per core) of `threads` threads each on 127.0.0.1, its dashboard
    on `dashboard_address` (127.0.0.1 unless another host is named). `security` (see tls_security) is
    for tls:// schedulers; without it Dask's own TLS configuration is used. With device "gpu" the local
    cluster is dask-cuda's LocalCUDACluster: one worker per GPU (`workers` is then ignored), with an RMM
    pool of `rmm_pool_size` (e.g. "24GB") when given. `warm`: a local CPU cluster's workers load (or compile)
    the kernels a photograph with these settings needs as they start (phos_dask.worker_setup)."""
    if scheduler or scheduler_file:
        where = scheduler or f"the scheduler file {scheduler_file!r}"
        try:
            client = Client(scheduler, scheduler_file=scheduler_file, timeout=timeout, security=security)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {where}: {e}") from None
        except TypeError:
            # distributed raises TypeError for a tls:// address when no TLS context is configured at all
            if (security or Security()).get_connection_args("client")["ssl_context"] is not None:
                raise
            raise ClusterError(f"the Dask scheduler at {where} needs TLS but no certificate is configured: give "
                               "--tls-ca-file, --tls-cert and --tls-key (or Dask's distributed.comm.tls.* "
                               "configuration)") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    environ = worker_environ(dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                             warm if device != "gpu" else None)
    preload = [*dask.config.get("distributed.worker.preload", []), "phos_dask.worker_setup"]
    config: dict[str, object] = {"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.preload": preload}
    if device != "gpu" and dask.config.get("distributed.worker.multiprocessing-method") == "spawn" \
            and forked_with(environ):
        config["distributed.worker.multiprocessing-method"] = "forkserver"
        _no_dask_preload()
    with dask.config.set(config):
        if device == "gpu":
            cluster = _start_cuda(local_address(dashboard_address), rmm_pool_size)
        else:
            cluster = _start_local(n, local_address(dashboard_address), threads)
        with cluster, Client(cluster) as client:
            yield client


def _no_dask_preload() -> None:
    """Keep Distributed from importing pandas, lz4 and the like into this process to have a fork server it
    starts preload them (distributed.utils.get_mp_context): the running server (phos_dask.localworkers)
    preloads what the workers need, and a server that is running is not started again."""
    import distributed.utils

    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True


def _start_cuda(dashboard_address: str, rmm_pool_size: str | None):
    """dask-cuda's LocalCUDACluster on 127.0.0.1: one single-threaded worker process per visible GPU."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as e:
        raise ClusterError(f"dask-cuda cannot be imported: {e}") from None
    try:
        return LocalCUDACluster(host="127.0.0.1", dashboard_address=dashboard_address, threads_per_worker=1,
                                rmm_pool_size=rmm_pool_size)
    except (RuntimeError, ValueError) as e:
        raise ClusterError(f"the local CUDA cluster failed to start: {e.__cause__ or e}") from None


def _start_local(workers: int, dashboard_address: str, threads: int = 1, attempts: int = 2) -> LocalCluster:
    """A LocalCluster, started again once if a worker process dies while it starts (e.g. killed).

    Its scheduler starts without Dask's Bokeh dashboard, whose import costs this process 0.9-1.5 s of CPU on a
    2-core machine, taken from the workers' start and their first images: the dashboard is attached to the
    scheduler's HTTP server (same address, same pages) when its first page is asked for (`defer_dashboard`).
    The scheduler's plain routes (/phos, /metrics, /health, /info, …) are there from the start."""
    from distributed.worker_memory import parse_memory_limit

    memory = parse_memory_limit("auto", 1, workers, logger=logging.getLogger("distributed.deploy.local"))
    for attempt in range(1, attempts + 1):
        try:
            return _local_cluster(workers, dashboard_address, threads, memory)
        except RuntimeError as e:  # "Nanny failed to start."
            if attempt == attempts:
                cause = e.__cause__ or e
                raise ClusterError(f"the local Dask cluster failed to start: {cause}") from None
    raise AssertionError("unreachable")


def _local_cluster(workers: int, dashboard_address: str, threads: int, memory: int | None) -> LocalCluster:
    # silence_logs: only errors reach the terminal; the job reports each failed image itself
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                           silence_logs=logging.ERROR, dashboard_address=dashboard_address, memory_limit=memory,
                           scheduler_kwargs={"dashboard": False})
    defer_dashboard(cluster.scheduler)
    return cluster


class _AttachDashboard(web.RequestHandler):
    """Any path the scheduler's own routes do not serve, until Dask's dashboard is attached: attach it, then
    send the browser back to the same address, which the dashboard now serves (or 404 without Bokeh)."""

    def initialize(self, attach) -> None:
        self.attach = attach

    async def get(self, *_: str) -> None:
        if not await self.attach():
            raise web.HTTPError(404, reason="Dask's dashboard needs Bokeh (pip install bokeh)")
        self.redirect(self.request.uri)

    head = get


def defer_dashboard(scheduler) -> None:
    """Serve Dask's Bokeh dashboard on `scheduler`'s HTTP server from the first request for a path its own
    routes do not serve: Bokeh is imported then (in a thread, so the scheduler keeps running), and
    distributed.dashboard.scheduler.connect adds its pages as the scheduler would have at start-up. Only the
    placeholder route is added here (from any thread); the import and attachment run on the scheduler's event
    loop, where the first request arrives."""
    application = scheduler.http_application
    attached: asyncio.Future | None = None

    async def connect() -> bool:
        try:
            board = await asyncio.to_thread(importlib.import_module, "distributed.dashboard.scheduler")
        except ImportError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                application.applications.remove(placeholder)
        board.connect(application, scheduler.http_server, scheduler, prefix="/")
        return True

    async def attach() -> bool:
        nonlocal attached
        if attached is None:
            attached = asyncio.ensure_future(connect())
        return await asyncio.shield(attached)

    placeholder = web.Application([(r"/(.*)", _AttachDashboard, {"attach": attach})])
    application.add_application(placeholder)
