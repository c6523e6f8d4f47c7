"""Benchmark of the archive job against object storage: a bucket of small photos → a Zarr store in a bucket,
through an S3 server with a fixed per-request latency, against the same job on local folders.

Usage (from the repository root):

    .venv/bin/python bench/archive_s3.py [--images 300] [--latency 0.020] [--workers 2] [--size 320x240]
                                         [--workdir DIR] [--out-dir bench/results]

What it does:

1. Photos: ``--images`` distinct ``--size`` JPEGs (quality 92) in ``WORKDIR/photos``, each a different crop
   and flip of ``../shared/parity/coffee_3000x2000.jpg`` (else ``examples/*.jpg``), made by
   ``bench/archive.py``'s ``make_bucket``.
2. Object store: moto's standalone server on 127.0.0.1 (tests/s3_support.MotoServer) with buckets
   ``archive`` and ``out``; the photos uploaded to ``s3://archive/photos/`` directly. In front of it a
   tests/s3_support.CountingProxy with ``--latency`` seconds per request (an in-region object store), run in
   a child process of its own so its forwarding threads do not count as CPU time of this (the client)
   process. Every S3 access of the jobs goes through the proxy.
3. Cluster: per phase an external cluster — a ``dask scheduler`` process and ``dask worker --nworkers W
   --nthreads T`` — with T what ``run`` gives its local workers for that storage (``cluster.threads_for``:
   1 for local folders, 4 for object storage), warmed by a small untimed job on the same storage so numba's
   kernels and s3fs are loaded in every worker. The scheduler runs in its own process, as on a real
   cluster, so this process's CPU is the client's alone.
4. Timed, each with ``Settings(film="Portra400", dtype="uint16")``:
   (a) ``run_job``: ``WORKDIR/photos`` → ``WORKDIR/local.zarr``;
   (b) ``run_job``: ``s3://archive/photos/`` → ``s3://out/run.zarr``;
   (c) ``dry_run`` of the S3 job with a fresh output (``s3://out/dry.zarr``), in this process only.
   Before each, the listings cached by this process's S3FileSystem instances are dropped (a fresh CLI
   process has none), so (c) does not reuse (b)'s listing of the photos; the workers keep their
   filesystems from the warm-up, as long-lived workers do.
   For each: wall seconds per image; proxy requests per image, by kind and by object name (zarr.json,
   _lease.json, chunks, .jpg, …) and by bucket; client CPU per image = ``time.process_time()`` of this
   process during the call / N, also split by thread (MainThread: phos_dask's own code; the IO loop thread:
   Dask client comms and — with a LocalCluster — the scheduler, which runs in this process; fsspecIO: s3fs
   calls made from this process); and the wall seconds from calling ``run_job`` to its first
   ``client.submit``/``map``/``compute``/``persist`` (seen by wrapping those methods on the Client instance;
   null when none of them was called). Before each timed phase the process's idle CPU is measured over 3 s
   with the cluster up, and each job's client CPU is also given less that idle rate × its wall time ("less
   idle"); the dry run runs after the clusters are closed. One GET through the proxy is timed too (20
   sequential GETs: the latency plus moto's own time plus the proxy's forwarding).
5. Correctness: every image's level 0 in the S3 store must equal the local store's, bit for bit, and both
   stores must hold exactly the N images (read directly from moto, not through the proxy). PASS/FAIL.

Prints a table and writes ``bench/results/archive-s3-<UTC timestamp>.json`` with the machine details.
Targets: S3 ≤ 2× local s/image; ≤ 8 requests/image on S3; client CPU ≤ 5 ms/image on S3; dry run
≤ 10 ms/image (wall). Exit status 0, or 1 when the correctness check failed or an image failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
TESTS = REPO / "tests"
for _p in (TESTS, BENCH):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from archive import _default_source, _size, _workdir, make_bucket  # noqa: E402
from s3_support import CountingProxy, MotoServer, set_credentials, storage_options, summarize  # noqa: E402

FILM = "Portra400"
DTYPE = "uint16"
#: S3 seconds per image ÷ local seconds per image
TARGET_S3_RATIO = 2.0
#: proxy requests per image on the S3 job
TARGET_REQUESTS_PER_IMAGE = 8.0
#: client-process CPU seconds per image on the S3 job
TARGET_CLIENT_S_PER_IMAGE = 0.005
#: dry run wall seconds per image on the S3 job
TARGET_DRY_RUN_S_PER_IMAGE = 0.010
SUBMIT_METHODS = ("submit", "map", "compute", "persist")


# --- the proxy in a child process -----------------------------------------------------------------------


def child_proxy(upstream_port: int, latency: float) -> int:
    """Run a CountingProxy; print its endpoint, then answer one JSON line per command line on stdin:
    "reset" → {"ok": true}; "snapshot" → [[method, path, query], …]; "count" → n. EOF stops it."""
    proxy = CountingProxy(upstream_port, latency=latency)
    print(json.dumps({"endpoint": proxy.endpoint}), flush=True)
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "reset":
                proxy.reset()
                answer: Any = {"ok": True}
            elif cmd == "snapshot":
                answer = proxy.snapshot()
            elif cmd == "count":
                answer = proxy.count
            else:
                answer = {"error": f"unknown command {cmd!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        proxy.stop()
    return 0


class ProxyProcess:
    """A CountingProxy in a child process (bench/archive_s3.py --child-proxy), driven over its stdin/stdout."""

    def __init__(self, upstream_port: int, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child-proxy", str(upstream_port), repr(latency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        self.lock = threading.Lock()
        first = self.proc.stdout.readline() if self.proc.stdout else ""
        if not first:
            self.stop()
            raise RuntimeError("the proxy process did not start")
        self.endpoint = json.loads(first)["endpoint"]

    def _ask(self, cmd: str) -> Any:
        assert self.proc.stdin and self.proc.stdout
        with self.lock:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def reset(self) -> None:
        self._ask("reset")

    def snapshot(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self._ask("snapshot")]

    def stop(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- measurements ---------------------------------------------------------------------------------------


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of this process, by native thread id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _thread_names() -> dict[int, str]:
    names = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            names[t.native_id] = t.name
    return names


@contextlib.contextmanager
def first_submit(client) -> Iterator[dict[str, float | None]]:
    """Wraps the Client instance's submission methods; the yielded dict's "at" is the perf_counter time of
    the first call to any of them (None if none was called)."""
    seen: dict[str, float | None] = {"at": None}
    wrapped = []
    for name in SUBMIT_METHODS:
        original = getattr(client, name, None)
        if original is None:
            continue

        def make(orig: Callable) -> Callable:
            def call(*args, **kwargs):
                if seen["at"] is None:
                    seen["at"] = time.perf_counter()
                return orig(*args, **kwargs)
            return call

        setattr(client, name, make(original))
        wrapped.append(name)
    try:
        yield seen
    finally:
        for name in wrapped:
            with contextlib.suppress(AttributeError):
                delattr(client, name)


def forget_listings() -> None:
    """Drop the listings (dircache) of this process's cached S3FileSystem instances, so a phase does not
    reuse what an earlier one listed; the instances and their open connections stay (closing the
    asynchronous ones zarr made would need zarr's event loop)."""
    import s3fs

    for fs in list(s3fs.S3FileSystem._cache.values()):
        fs.invalidate_cache()


def _per_bucket(rows: list[tuple[str, str, str]]) -> dict[str, int]:
    return dict(Counter(path.strip("/").split("/", 1)[0] for _, path, _ in rows).most_common())


#: The S3 server's and the proxy's processes: their CPU during a phase is reported apart (on this 2-core
#: machine the object store runs beside the job and takes its share of the cores).
HARNESS_PIDS: list[int] = []
#: The `dask worker` launcher of the current external cluster; its descendants are the workers.
WORKER_ROOTS: list[int] = []


def _harness_cpu() -> float:
    import psutil

    total = 0.0
    for pid in HARNESS_PIDS:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _workers_cpu() -> float:
    """CPU seconds (user + system) so far of every process under WORKER_ROOTS (nannies and workers)."""
    import psutil

    total = 0.0
    for pid in WORKER_ROOTS:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(label: str, n: int, fn: Callable[[], Any], proxy: ProxyProcess, client=None,
            idle: dict[str, Any] | None = None) -> tuple[dict, Any]:
    """Run fn() once and measure it: wall, proxy requests, this process's CPU (total and by thread; with
    `idle` from idle_cpu() also less what the process spends idle over the same wall time), and the time to
    the first task submission on `client`."""
    forget_listings()
    proxy.reset()
    names_before = _thread_names()
    threads0 = _thread_cpu()
    cpu0 = time.process_time()
    harness0 = _harness_cpu()
    workers0 = _workers_cpu()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        seen = stack.enter_context(first_submit(client)) if client is not None else {"at": None}
        result = fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    harness = _harness_cpu() - harness0
    workers = _workers_cpu() - workers0
    threads1 = _thread_cpu()
    names = {**names_before, **_thread_names()}
    rows = proxy.snapshot()
    by_thread: Counter[str] = Counter()
    for tid, after in threads1.items():
        delta = after - threads0.get(tid, 0.0)
        if delta > 0:
            by_thread[names.get(tid, f"thread {tid}")] += delta
    ended = cpu - sum(by_thread.values())
    if abs(ended) >= 0.01:
        by_thread["(threads that ended, rounding)"] += ended
    s = summarize(rows)
    per = {
        "label": label,
        "images": n,
        "wall_s": round(wall, 4),
        "seconds_per_image": round(wall / n, 5),
        "client_cpu_s": round(cpu, 4),
        "s3_server_and_proxy_cpu_s_per_image": round(harness / n, 5),
        "client_cpu_s_per_image": round(cpu / n, 6),
        "workers_cpu_s_per_image": round(workers / n, 5),
        "client_cpu_by_thread_s": {k: round(v, 3) for k, v in by_thread.most_common()},
        "client_cpu_s_per_image_less_idle": (round(max(0.0, cpu - idle["cpu_s_per_s"] * wall) / n, 6)
                                             if idle else None),
        "first_submit_s": round(seen["at"] - t0, 4) if seen["at"] is not None else None,
        "requests": s["total"],
        "requests_per_image": round(s["total"] / n, 3),
        "requests_by_kind": s["kinds"],
        "requests_by_kind_per_image": {k: round(v / n, 3) for k, v in s["kinds"].items()},
        "requests_by_object": s["paths"],
        "requests_by_object_per_image": {k: round(v / n, 3) for k, v in s["paths"].items()},
        "requests_by_kind_and_object": s["kind_paths"],
        "requests_by_bucket": _per_bucket(rows),
    }
    return per, result


def idle_cpu(seconds: float) -> dict[str, Any]:
    """This process's CPU while nothing runs (the LocalCluster's scheduler and the client's periodic
    work: heartbeats, system monitor, dashboard), per wall second, in total and on the IO loop thread."""
    names = _thread_names()
    threads0, cpu0, t0 = _thread_cpu(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    threads1, cpu, wall = _thread_cpu(), time.process_time() - cpu0, time.perf_counter() - t0
    loop = sum(v - threads0.get(tid, 0.0) for tid, v in threads1.items() if names.get(tid) == "IO loop")
    return {"wall_s": round(wall, 3), "cpu_s_per_s": round(cpu / wall, 5), "io_loop_cpu_s_per_s": round(loop / wall, 5)}


def round_trip(paths: list[str], so: dict) -> dict[str, Any]:
    """Seconds per request through the proxy, sequentially: one GET of each of `paths` (the proxy's latency
    plus moto's own time plus the proxy's forwarding)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, max_concurrency=1, **so)
    fs.cat_file(paths[0])  # connect
    t0 = time.perf_counter()
    for p in paths:
        fs.cat_file(p)
    wall = time.perf_counter() - t0
    return {"requests": len(paths), "seconds_per_request": round(wall / len(paths), 5)}


def machine() -> dict[str, Any]:
    """bench/archive.py's machine description (cpu, cores, memory, python, numpy, dask, distributed,
    zarr, …) plus the versions of the S3 stack."""
    from importlib.metadata import PackageNotFoundError, version

    from archive import machine as archive_machine

    m = archive_machine()
    for pkg in ("s3fs", "fsspec", "aiobotocore", "botocore", "moto"):
        try:
            m[pkg] = version(pkg)
        except PackageNotFoundError:
            m[pkg] = None
    return m


# --- phases ---------------------------------------------------------------------------------------------


def _quiet():
    from phos_dask.progress import Progress

    return Progress(0, stream=io.StringIO(), tty=False)


def _spec(source: str, out: str, so: dict | None):
    from phos_dask.job import JobSpec
    from phos_dask.settings import Settings

    return JobSpec(source, out, Settings(film=FILM, dtype=DTYPE), storage_options=so)


def upload(folder: Path, url: str, so: dict) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
    fs.put(str(folder) + "/", url.removeprefix("s3://"), recursive=True)


def image_keys(url: str, so: dict | None) -> list[str]:
    """The image groups of a job's store (its own files, _report.json, contact.jpg, are not groups)."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
        return sorted(k for k in zarr.open_group(url, mode="r", storage_options=so).group_keys()
                      if not k.startswith("_"))


def check_stores(local: str, remote: str, so: dict, n: int) -> dict[str, Any]:
    """Level 0 of every image in the S3 store against the local store's; both must hold n images."""
    import numpy as np
    import zarr

    a_keys, b_keys = image_keys(local, None), image_keys(remote, so)
    a = zarr.open_group(local, mode="r")
    b = zarr.open_group(remote, mode="r", storage_options=so)
    differing = []
    for key in sorted(set(a_keys) & set(b_keys)):
        x, y = a[key]["0"][...], b[key]["0"][...]
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
            differing.append(key)
    ok = a_keys == b_keys and len(a_keys) == n and not differing
    return {"equal": ok, "images_local": len(a_keys), "images_s3": len(b_keys),
            "only_local": sorted(set(a_keys) - set(b_keys))[:10], "only_s3": sorted(set(b_keys) - set(a_keys))[:10],
            "differing": differing[:10], "compared": len(set(a_keys) & set(b_keys))}


# --- main -----------------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.1f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'phase':<26}{'wall s':>8}{'s/image':>9}{'req/img':>9}{'client ms/img':>15}{'less idle':>11}"
            f"{'1st submit s':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        first = "—" if r["first_submit_s"] is None else f"{r['first_submit_s']:.3f}"
        print(f"{r['label']:<26}{r['wall_s']:>8.2f}{r['seconds_per_image']:>9.4f}{r['requests_per_image']:>9.2f}"
              f"{_ms(r['client_cpu_s_per_image']):>15}{_ms(r['client_cpu_s_per_image_less_idle']):>11}{first:>14}")


def _describe(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v:g}" for k, v in r["requests_by_kind_per_image"].items() if v)
    objects = ", ".join(f"{k} {v:g}" for k, v in r["requests_by_object_per_image"].items())
    threads = ", ".join(f"{k} {v:.2f}" for k, v in r["client_cpu_by_thread_s"].items())
    return (f"  {r['label']}: per image by kind: {kinds or 'none'}\n"
            f"  {' ' * len(r['label'])}  per image by object: {objects or 'none'}\n"
            f"  {' ' * len(r['label'])}  client CPU s by thread: {threads or 'none'}\n"
            f"  {' ' * len(r['label'])}  S3 server + proxy CPU per image: "
            f"{r['s3_server_and_proxy_cpu_s_per_image'] * 1000:.1f} ms; workers' CPU per image: "
            f"{r['workers_cpu_s_per_image'] * 1000:.1f} ms")


@contextlib.contextmanager
def external_cluster(workdir: Path, workers: int, threads: int) -> Iterator[Any]:
    """A Dask scheduler and `workers` worker processes of `threads` threads, each its own process (as on a
    real cluster, so this process's CPU is the client's alone), with the worker environment `run` gives
    its local workers; a Client to it."""
    from distributed import Client

    from phos_dask.localworkers import WORKER_ENV

    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": str(REPO)}
    sched_file = workdir / f"scheduler-{time.time_ns()}.json"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", str(workers), "--nthreads", str(threads), "--no-dashboard",
                                       "--host", "127.0.0.1"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        WORKER_ROOTS[:] = [procs[-1].pid]
        with Client(scheduler_file=str(sched_file), timeout=30) as client:
            client.wait_for_workers(workers, timeout=120)
            yield client
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, metavar="N", help="photos in the bucket (300)")
    parser.add_argument("--latency", type=float, default=0.020, metavar="SECONDS",
                        help="added to every S3 request by the proxy (0.020)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="local cluster worker processes, one thread each (2)")
    parser.add_argument("--size", type=_size, default=(320, 240), metavar="WxH", help="photo size (320x240)")
    parser.add_argument("--repeats", type=int, default=1, metavar="R",
                        help="jobs per phase, each into a fresh output; the fastest counts (1)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="make the photos and the local stores here and leave them; default: a temporary "
                             "folder, removed at the end")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--child-proxy", nargs=2, metavar=("PORT", "LATENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_proxy:
        return child_proxy(int(args.child_proxy[0]), float(args.child_proxy[1]))
    if args.images < 1 or args.workers < 1 or args.latency < 0:
        parser.error("--images and --workers must be at least 1, --latency at least 0")

    import boto3

    from phos_dask.cluster import threads_for
    from phos_dask.job import dry_run, run_job

    source = _default_source()
    width, height = args.size
    n = args.images
    started = dt.datetime.now(dt.UTC)
    set_credentials()
    with _workdir(args.workdir) as workdir:
        t0 = time.perf_counter()
        paths = make_bucket(source, workdir / "photos", n, width, height)
        warm_paths = make_bucket(source, workdir / "warm", args.workers, width, height, first=5000)
        make_s = time.perf_counter() - t0
        jpeg_bytes = sum(p.stat().st_size for p in paths)
        print(f"photos: {n} × {width}×{height} JPEG from {source.name} in {make_s:.1f} s "
              f"({jpeg_bytes / 1e6:.1f} MB)", flush=True)

        server = MotoServer()
        proxy = None
        try:
            direct = storage_options(server.endpoint)
            s3 = boto3.client("s3", endpoint_url=server.endpoint)
            for bucket in ("archive", "out"):
                s3.create_bucket(Bucket=bucket)
            t0 = time.perf_counter()
            upload(workdir / "photos", "s3://archive/photos/", direct)
            upload(workdir / "warm", "s3://archive/warm/", direct)
            print(f"upload: {len(paths) + len(warm_paths)} objects to moto in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            proxy = ProxyProcess(server.port, args.latency)
            HARNESS_PIDS[:] = [server.proc.pid, proxy.proc.pid]
            so = storage_options(proxy.endpoint)

            local_out = str(workdir / "local.zarr")
            shutil.rmtree(local_out, ignore_errors=True)
            phases = [("local → local", str(workdir / "photos"), local_out, None, str(workdir / "warm"),
                       str(workdir / "warm.zarr")),
                      ("s3 → s3 (proxy)", "s3://archive/photos/", "s3://out/run.zarr", so, "s3://archive/warm/",
                       "s3://out/warm.zarr")]
            measured = []
            for label, src, out, options, warm_src, warm_out in phases:
                threads = threads_for(src, out)
                t0 = time.perf_counter()
                with external_cluster(workdir, args.workers, threads) as client:
                    startup = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    run_job(_spec(warm_src, warm_out, options), client, _quiet())
                    print(f"cluster: {args.workers} workers × {threads} threads up in {startup:.1f} s, warmed in "
                          f"{time.perf_counter() - t0:.1f} s", flush=True)
                    idle = idle_cpu(3.0)
                    runs = []
                    for r in range(args.repeats):  # each into a fresh output; the first is the one checked
                        out_r = out if r == 0 else out.replace(".zarr", f"-{r}.zarr")
                        runs.append(measure(label, n, lambda s=src, o=out_r, so_=options: run_job(
                            _spec(s, o, so_), client, _quiet()), proxy, client, idle))
                        print(f"{label}: {runs[-1][0]['seconds_per_image']:.4f} s/image, "
                              f"{runs[-1][0]['requests_per_image']:.1f} requests/image", flush=True)
                    best = min(runs, key=lambda m: m[0]["seconds_per_image"])
                    best[0]["threads_per_worker"] = threads
                    best[0]["runs_seconds_per_image"] = [m[0]["seconds_per_image"] for m in runs]
                    measured.append(best)
            (local, local_report), (remote, remote_report) = measured
            rtt = round_trip([f"archive/photos/{p.name}" for p in paths[:20]], so)
            print(f"idle:   {idle['cpu_s_per_s'] * 1000:.1f} ms CPU per s in this process; one GET through the "
                  f"proxy {rtt['seconds_per_request'] * 1000:.1f} ms", flush=True)
            dry, dry_report = measure("dry run s3 (client)", n,
                                      lambda: dry_run(_spec("s3://archive/photos/", "s3://out/dry.zarr", so)),
                                      proxy)
            print(f"dry:    {dry['seconds_per_image']:.4f} s/image, {dry['requests_per_image']:.1f} requests/image",
                  flush=True)
            t0 = time.perf_counter()
            check = check_stores(local_out, "s3://out/run.zarr", direct, n)
            check["seconds"] = round(time.perf_counter() - t0, 2)
        finally:
            if proxy is not None:
                proxy.stop()
            server.stop()

    jobs_ok = all(r["counts"] == {"done": n, "skipped": 0, "failed": 0} for r in (local_report, remote_report))
    dry_ok = dry_report["images"] == n and not dry_report["problems"]
    ratio = remote["seconds_per_image"] / local["seconds_per_image"]
    verdict = {
        "s3_ratio_met": ratio <= TARGET_S3_RATIO,
        "requests_per_image_met": remote["requests_per_image"] <= TARGET_REQUESTS_PER_IMAGE,
        "client_cpu_met": remote["client_cpu_s_per_image"] <= TARGET_CLIENT_S_PER_IMAGE,
        "dry_run_met": dry["seconds_per_image"] <= TARGET_DRY_RUN_S_PER_IMAGE,
        "correct": bool(check["equal"]),
        "all_images_done": jobs_ok,
        "dry_run_planned_all": dry_ok,
        "default_settings": n == 300 and (width, height) == (320, 240) and args.latency == 0.020,
    }
    report = {
        "benchmark": "archive over S3: bucket → bucket Zarr through a latency proxy vs local → local",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "inputs": {"source": str(source), "images": n, "width": width, "height": height,
                   "jpeg_bytes_total": jpeg_bytes, "make_s": round(make_s, 2)},
        "settings": {"film": FILM, "dtype": DTYPE, "tile": "JobSpec default", "whole_limit_mp": "JobSpec default"},
        "s3": {"server": "moto_server on 127.0.0.1",
               "proxy": "tests/s3_support.CountingProxy in a child process",
               "latency_s": args.latency, "round_trip": rtt},
        "idle_cpu": idle,
        "cluster": {"workers": args.workers, "threads_per_worker": {"local": local["threads_per_worker"],
                                                                    "s3": remote["threads_per_worker"]}},
        "method": ("per phase an external cluster (a `dask scheduler` and `dask worker --nworkers W --nthreads T` "
                   "processes, T as `run` gives its local workers for that storage: phos_dask.cluster.threads_for), "
                   "warmed by a small job on the same storage; "
                   "then run_job local → local, run_job s3 → s3 through the proxy (each `repeats` times into "
                   "fresh outputs, the fastest kept), dry_run of the S3 job into a "
                   "fresh output; wall from perf_counter around each call; client CPU is time.process_time() of "
                   "the bench process (which also runs the LocalCluster's scheduler; the proxy runs in a child "
                   "process); requests are those the proxy saw during the call"),
        "repeats": args.repeats,
        "targets": {"s3_over_local": TARGET_S3_RATIO, "requests_per_image": TARGET_REQUESTS_PER_IMAGE,
                    "client_cpu_s_per_image": TARGET_CLIENT_S_PER_IMAGE,
                    "dry_run_s_per_image": TARGET_DRY_RUN_S_PER_IMAGE},
        "verdict": verdict,
        "s3_over_local": round(ratio, 3),
        "local": {**local, "counts": local_report["counts"], "report_s": local_report["seconds"]},
        "s3_job": {**remote, "counts": remote_report["counts"], "report_s": remote_report["seconds"]},
        "dry_run": {**dry, "planned": dry_report["images"], "problems": len(dry_report["problems"])},
        "check": check,
    }
    from engine import write_report  # bench/ is on sys.path: machine() put it there

    path = write_report(args.out_dir, "archive-s3", started, report)

    print()
    print_table([local, remote, dry])
    for r in (local, remote, dry):
        print(_describe(r))
    m = report["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, {m['memory_gb']} GB, python {m['python']}, "
          f"numpy {m['numpy']}, dask {m['dask']}, distributed {m['distributed']}, zarr {m['zarr']}, "
          f"s3fs {m['s3fs']}, git {m['git']}")
    if not verdict["default_settings"]:
        print("note: non-default --images/--size/--latency; the targets are for 300 × 320×240 at 20 ms")

    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"target S3 ≤ {TARGET_S3_RATIO:g}× local s/image: {ratio:.2f}× ({remote['seconds_per_image']:.4f} vs "
          f"{local['seconds_per_image']:.4f}; {met(verdict['s3_ratio_met'])})")
    print(f"target ≤ {TARGET_REQUESTS_PER_IMAGE:g} requests/image: {remote['requests_per_image']:.2f} "
          f"({met(verdict['requests_per_image_met'])})")
    print(f"target client ≤ {TARGET_CLIENT_S_PER_IMAGE * 1000:g} ms/image: "
          f"{remote['client_cpu_s_per_image'] * 1000:.2f} ms ({met(verdict['client_cpu_met'])}; "
          f"{_ms(remote['client_cpu_s_per_image_less_idle'])} ms less the process's idle CPU over the same time)")
    print(f"target dry run ≤ {TARGET_DRY_RUN_S_PER_IMAGE * 1000:g} ms/image: {dry['seconds_per_image'] * 1000:.2f} ms "
          f"({met(verdict['dry_run_met'])})")
    print(f"images: local {local_report['counts']}, s3 {remote_report['counts']}, dry run planned "
          f"{dry_report['images']} ({'ok' if jobs_ok and dry_ok else 'FAILED'})")
    print(f"correctness: {'PASS' if check['equal'] else 'FAIL'} ({check['compared']} images compared, "
          f"level 0, S3 store vs local store)")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if check["equal"] and jobs_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
