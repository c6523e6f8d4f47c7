"""Benchmark of the archive job: `run_job` on a local Dask cluster against the in-process `render()` loop.

Usage (from the repository root):

    .venv/bin/python bench/archive.py [--images 6] [--workers 2] [--repeats 1] [--no-big]
                                      [--workdir DIR] [--image PHOTO] [--out-dir bench/results] [--verbose]

What it does, in one process (the 300 MP job runs in a child process of its own):

1. Bucket: ``--images`` distinct 6000×4000 JPEGs (quality 92) in ``WORKDIR/bucket``, each a different crop
   and flip of the photograph (``../shared/parity/coffee_3000x2000.jpg``, else ``examples/*.jpg``) enlarged
   with ``cv2.INTER_CUBIC``, so they are real-photo-like and no two are the same.
2. In-process loop: one untimed 600×400 warm-up render, then for each file ``read_image`` → ``render`` with
   ``Settings(film="Portra400", dtype="uint16", image_key=<file name>)`` (numba on every core).
3. Job: a local cluster from ``phos_dask.cluster.connect`` (``--workers`` single-threaded worker processes,
   as ``python -m phos_dask run`` starts), warmed by a small job of one 600×400 image per worker plus a
   small render on every worker (numba JIT / cache load excluded from the timing), then
   ``run_job(JobSpec(bucket, WORKDIR/out-R.zarr, Settings(film="Portra400", dtype="uint16")), client)``
   timed end to end (discovery, header probes, decode, model, Zarr writes, report).
   Dask overhead = job seconds per image / loop seconds per image − 1 (negative: the cluster was faster).
4. Correctness: level 0 of the first image in the job's store, moved to (h, w, c), must equal the
   in-process render of the same file bit for bit (PASS/FAIL). The cluster's start (``startup_s``) and
   close (``close_s``: the client and cluster closing, worker processes joined) are timed as well.
5. Big input (``--big``, default on): one 20000×15000 JPEG (quality 90; making it peaks near 2 GB in this
   process: the 900 MB enlargement plus OpenCV's encoder), run as its own job with the default tile size
   and whole-image limit on a fresh cluster in a fresh process. Each worker's peak resident set is read
   inside the worker before the cluster closes, as well as the client process's own.

Peak memory is VmHWM from /proc/self/status: the high-water mark of the process's own address space.
``ru_maxrss`` is recorded too, but on Linux a spawned process's ``ru_maxrss`` starts at its parent's
resident size at spawn time (Dask's workers are spawned from the client), so it overstates workers.

Prints a summary and writes ``bench/results/archive-<UTC timestamp>.json``. Targets: ≤ 2.5 s per 24 MP image
end to end; Dask overhead ≤ 15 %; each worker's peak RSS ≤ 2 GB on the 300 MP input; the 300 MP job done;
the correctness check passes. ``--repeats R`` times R loop passes and R jobs (fresh store each) and keeps
the best. Exit status 0, or 1 when an image failed or the correctness check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distributed import Client

    from phos_dask.progress import Progress
    from phos_dask.settings import Settings

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
DEFAULT_IMAGES = (REPO.parent / "shared" / "parity" / "coffee_3000x2000.jpg",)
FILM = "Portra400"
DTYPE = "uint16"
SIZE = (6000, 4000)
BIG_SIZE = (20000, 15000)
WARM_SIZE = (600, 400)
JPEG_QUALITY = 92
BIG_JPEG_QUALITY = 90
#: Seconds per 24 MP image, end to end through the job.
TARGET_SECONDS_PER_24MP = 2.5
#: Dask overhead: job seconds per image / in-process loop seconds per image − 1.
TARGET_OVERHEAD = 0.15
#: Peak resident set of each worker on the 300 MP input, MB (10**6 bytes).
TARGET_WORKER_PEAK_MB = 2000.0


# --- measurements ---------------------------------------------------------------------------------------


def peak_memory() -> dict[str, float | None]:
    """This process's peak resident set in MB (10**6 bytes): `vmhwm_mb` from /proc/self/status (its own
    address space since exec; None off Linux) and `ru_maxrss_mb` (on Linux it also counts the parent's
    resident size when this process was spawned). Self-contained, so `Client.run` can ship it to workers."""
    import resource
    import sys as _sys

    hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_mb = maxrss / 1e6 if _sys.platform == "darwin" else maxrss * 1024 / 1e6
    return {"vmhwm_mb": hwm, "ru_maxrss_mb": round(maxrss_mb, 1)}


def _peak_mb(m: dict[str, float | None]) -> float:
    """The peak to judge: VmHWM where the OS reports it, else ru_maxrss."""
    value = m["vmhwm_mb"] if m["vmhwm_mb"] is not None else m["ru_maxrss_mb"]
    return float(value or 0.0)


def warm_worker(image: np.ndarray, film: str, dtype: str) -> float:
    """One small render in this process (numba JIT or cache load); returns its seconds. Self-contained."""
    import time as _time

    from phos_dask import Settings, render

    t0 = _time.perf_counter()
    render(image, Settings(film=film, dtype=dtype, image_key="warm"))
    return _time.perf_counter() - t0


def machine() -> dict[str, Any]:
    """bench/engine.py's machine description, plus the Dask, distributed and Zarr versions."""
    import dask
    import distributed
    import zarr

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from engine import machine as engine_machine

    m = engine_machine()
    m.update({"dask": dask.__version__, "distributed": distributed.__version__, "zarr": zarr.__version__})
    return m


# --- inputs ---------------------------------------------------------------------------------------------


def _fraction(i: int, step: float) -> float:
    """A low-discrepancy value in [0, 1) for variant i (0.5 for i == 0, so variant 0 is centred)."""
    return 0.5 if i == 0 else (0.5 + i * step) % 1.0


def variant(src_bgr: np.ndarray, i: int, width: int, height: int) -> np.ndarray:
    """Variant i of a photograph at width×height: a crop with the output's aspect (the largest for i == 0,
    72–97 % of it otherwise, at an offset that depends on i), flipped by i % 4 (none, left-right,
    top-bottom, both), enlarged with bicubic interpolation."""
    import cv2

    sh, sw = src_bgr.shape[:2]
    aspect = width / height
    cw, ch = (sw, round(sw / aspect)) if sw / sh <= aspect else (round(sh * aspect), sh)
    scale = 1.0 if i == 0 else 0.72 + 0.25 * _fraction(i, 0.6180339887)
    cw, ch = max(1, round(cw * scale)), max(1, round(ch * scale))
    x0 = round((sw - cw) * _fraction(i, 0.4142135624))
    y0 = round((sh - ch) * _fraction(i, 0.7320508076))
    crop = src_bgr[y0 : y0 + ch, x0 : x0 + cw]
    flip = (None, 1, 0, -1)[i % 4]
    if flip is not None:
        crop = cv2.flip(crop, flip)
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC)


def write_jpeg(path: Path, bgr: np.ndarray, quality: int) -> None:
    import cv2

    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cv2.imwrite could not write {path}")


def make_bucket(source: Path, folder: Path, count: int, width: int, height: int, first: int = 0,
                quality: int = JPEG_QUALITY) -> list[Path]:
    """`count` distinct JPEG variants of `source` in `folder` (replaced if present), one at a time."""
    import cv2

    src = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if src is None:
        raise OSError(f"cannot decode {source}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths, digests = [], set()
    for i in range(first, first + count):
        bgr = variant(src, i, width, height)
        digest = hashlib.blake2b(bgr.tobytes(), digest_size=16).hexdigest()
        if digest in digests:
            raise RuntimeError(f"variant {i} of {source} repeats an earlier one")
        digests.add(digest)
        path = folder / f"photo_{i:03d}.jpg"
        write_jpeg(path, bgr, quality)
        paths.append(path)
    return paths


# --- phases ---------------------------------------------------------------------------------------------


def _settings(image_key: str) -> Settings:
    from phos_dask import Settings

    return Settings(film=FILM, dtype=DTYPE, image_key=image_key)


def run_loop(paths: list[Path], warm: np.ndarray, repeats: int) -> tuple[dict[str, Any], np.ndarray]:
    """The in-process loop: warm up once, then `repeats` passes of read_image → render over `paths`.
    Returns the timings and the render of paths[0] (for the correctness check)."""
    from phos_dask import render
    from phos_dask.imageio import read_image

    t0 = time.perf_counter()
    render(warm, _settings("warm"))
    warmup = time.perf_counter() - t0
    passes, reference = [], None
    for _ in range(repeats):
        per_image = []
        for k, path in enumerate(paths):
            t0 = time.perf_counter()
            out = render(read_image(path), _settings(path.name))
            per_image.append(time.perf_counter() - t0)
            if k == 0 and reference is None:
                reference = out
            del out
        passes.append(per_image)
    totals = [sum(p) for p in passes]
    best = int(np.argmin(totals))
    assert reference is not None
    return {
        "warmup_s": round(warmup, 4),
        "pass_seconds": [round(t, 4) for t in totals],
        "best_pass_per_image_s": [round(t, 4) for t in passes[best]],
        "best_s": round(totals[best], 4),
        "seconds_per_image": round(totals[best] / len(paths), 4),
    }, reference


def run_write_loop(bucket: Path, store: Path) -> dict[str, Any]:
    """The same work as the job, in-process with every core: for each image read → render → write its
    Zarr chunks, pyramid and metadata (phos_dask.tasks.process_image), one after another."""
    from phos_dask.sources import discover
    from phos_dask.tasks import JobConfig, process_image

    shutil.rmtree(store, ignore_errors=True)
    cfg = JobConfig(str(store), _settings(""))
    items = discover(str(bucket))
    t0 = time.perf_counter()
    for item in items:
        assert process_image(cfg, item).status == "done"
    total = time.perf_counter() - t0
    shutil.rmtree(store, ignore_errors=True)
    return {"total_s": round(total, 4), "seconds_per_image": round(total / len(items), 4)}


def _quiet_progress(verbose: bool) -> Progress:
    from phos_dask.progress import Progress

    return Progress(0, stream=sys.stderr if verbose else io.StringIO(), tty=False)


def warm_cluster(client: Client, workdir: Path, source: Path, workers: int, verbose: bool) -> dict[str, Any]:
    """A small job (one 600×400 image per worker) into its own store, then a small render on every worker
    (Client.run), so each worker process has loaded numba's kernels before anything is timed."""
    import cv2

    from phos_dask.job import JobSpec, run_job
    from phos_dask.settings import Settings

    warm_dir = workdir / "warm"
    paths = make_bucket(source, warm_dir, max(1, workers), *WARM_SIZE, first=1000)
    store = workdir / "warm.zarr"
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    report = run_job(JobSpec(source=str(warm_dir), out=str(store), settings=Settings(film=FILM, dtype=DTYPE)),
                     client, _quiet_progress(verbose))
    job_s = time.perf_counter() - t0
    small = cv2.cvtColor(cv2.imread(str(paths[0]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    per_worker = client.run(warm_worker, small, FILM, DTYPE)
    shutil.rmtree(store, ignore_errors=True)
    return {"job_s": round(job_s, 3), "job_counts": report["counts"],
            "render_s_per_worker": {k: round(v, 4) for k, v in per_worker.items()}}


def check_store(store: Path, key: str, reference: np.ndarray) -> dict[str, Any]:
    """Level 0 of `key` in the store, as (h, w, c), against the in-process render."""
    import zarr

    level0 = np.asarray(zarr.open_group(str(store), mode="r")[key]["0"][...])
    got = level0[0] if reference.ndim == 2 else np.moveaxis(level0, 0, -1)
    equal = got.shape == reference.shape and got.dtype == reference.dtype and np.array_equal(got, reference)
    result: dict[str, Any] = {"key": key, "shape": list(got.shape), "dtype": str(got.dtype), "equal": bool(equal)}
    if not equal and got.shape == reference.shape:
        diff = np.abs(got.astype(np.int64) - reference.astype(np.int64))
        result.update({"max_abs_diff": int(diff.max()), "differing_samples": int(np.count_nonzero(diff))})
    return result


def run_jobs(bucket: Path, workdir: Path, source: Path, workers: int, repeats: int, reference: np.ndarray,
             reference_name: str, verbose: bool, keep: bool) -> dict[str, Any]:
    """Start the cluster, warm it, time `repeats` jobs over the bucket (fresh store each), check the first
    store's `reference_name` against its in-process render `reference`, and read each worker's peak memory.
    `keep` leaves the last store in place."""
    from phos_dask.cluster import connect
    from phos_dask.job import JobSpec, run_job
    from phos_dask.settings import Settings

    t0 = time.perf_counter()
    with connect(workers=workers, dashboard_address="127.0.0.1:0") as client:
        startup = time.perf_counter() - t0
        warm = warm_cluster(client, workdir, source, workers, verbose)
        runs, check = [], None
        for r in range(repeats):
            store = workdir / f"out-{r}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            spec = JobSpec(source=str(bucket), out=str(store), settings=Settings(film=FILM, dtype=DTYPE))
            t0 = time.perf_counter()
            report = run_job(spec, client, _quiet_progress(verbose))
            wall = time.perf_counter() - t0
            runs.append({"wall_s": round(wall, 4), "report_s": report["seconds"], "counts": report["counts"],
                         "megapixels": report["megapixels"],
                         "images": [{k: im.get(k) for k in ("source", "status", "seconds", "error") if k in im}
                                    for im in report["images"]]})
            if check is None:
                first = next(im for im in report["images"] if im["source"] == reference_name)
                check = {"source": reference_name, **check_store(store, first["key"], reference)}
            if r < repeats - 1 or not keep:
                shutil.rmtree(store, ignore_errors=True)
        workers_mem = client.run(peak_memory)
        t0 = time.perf_counter()
    close = time.perf_counter() - t0
    best = min(runs, key=lambda run: run["wall_s"])
    n = max(1, len(best["images"]))
    return {
        "cluster": {"workers": workers, "threads_per_worker": 1, "startup_s": round(startup, 3),
                    "close_s": round(close, 3)},
        "warmup": warm,
        "runs": runs,
        "best_s": best["wall_s"],
        "seconds_per_image": round(best["wall_s"] / n, 4),
        "mp_per_s": round(best["megapixels"] / best["wall_s"], 3),
        "counts": best["counts"],
        "worker_peak_memory": workers_mem,
        "check": check,
    }


def child_big(big_dir: str, store: str, workers: int, warm_image: str) -> dict[str, Any]:
    """Run in a fresh process: a fresh cluster, warmed, runs the big job; report timings and peaks."""
    import cv2

    from phos_dask.cluster import connect
    from phos_dask.job import JobSpec, run_job
    from phos_dask.settings import Settings

    small = cv2.cvtColor(cv2.imread(warm_image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    t0 = time.perf_counter()
    with connect(workers=workers, dashboard_address="127.0.0.1:0") as client:
        startup = time.perf_counter() - t0
        warm = client.run(warm_worker, small, FILM, DTYPE)
        spec = JobSpec(source=big_dir, out=store, settings=Settings(film=FILM, dtype=DTYPE))
        t0 = time.perf_counter()
        report = run_job(spec, client, _quiet_progress(False))
        wall = time.perf_counter() - t0
        workers_mem = client.run(peak_memory)
    return {
        "cluster": {"workers": workers, "threads_per_worker": 1, "startup_s": round(startup, 3)},
        "warmup_render_s_per_worker": {k: round(v, 4) for k, v in warm.items()},
        "tile": spec.tile,
        "whole_limit_mp": spec.whole_limit_mp,
        "wall_s": round(wall, 4),
        "report_s": report["seconds"],
        "counts": report["counts"],
        "megapixels": report["megapixels"],
        "mp_per_s": round(report["megapixels"] / wall, 3) if wall else None,
        "images": [{k: im.get(k) for k in ("source", "status", "seconds", "tiles", "error") if k in im}
                   for im in report["images"]],
        "worker_peak_memory": workers_mem,
        "client_peak_memory": peak_memory(),
    }


def run_big(workdir: Path, source: Path, width: int, height: int, workers: int, warm_image: Path, keep: bool
            ) -> dict[str, Any]:
    """Make the big JPEG here, then run its job in a fresh process (so the client's peak is its own).
    `keep` leaves its store in place."""
    big_dir = workdir / "big"
    t0 = time.perf_counter()
    path = make_bucket(source, big_dir, 1, width, height, quality=BIG_JPEG_QUALITY)[0]
    make_s = time.perf_counter() - t0
    store = workdir / "big.zarr"
    shutil.rmtree(store, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child-big", str(big_dir), str(store), str(workers), str(warm_image)],
        capture_output=True, text=True, cwd=REPO,
    )
    if not keep:
        shutil.rmtree(store, ignore_errors=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"big job process failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"width": width, "height": height, "megapixels": width * height / 1e6, "jpeg_quality": BIG_JPEG_QUALITY,
            "jpeg_bytes": path.stat().st_size, "make_s": round(make_s, 2), **result}


# --- main -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="phos-archive-bench-") as tmp:
        yield Path(tmp)


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def _default_source() -> Path:
    for p in DEFAULT_IMAGES:
        if p.exists():
            return p
    examples = sorted((REPO / "examples").glob("*.jpg"))
    if not examples:
        raise SystemExit("archive bench: no source photograph (shared/parity or examples/*.jpg); use --image")
    return examples[0]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO.parent)) if path.is_relative_to(REPO.parent) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6, metavar="N", help="24 MP images in the bucket (6)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="local cluster worker processes, one thread each (2)")
    parser.add_argument("--repeats", type=int, default=1, metavar="R",
                        help="timed passes of the loop and timed jobs (fresh store each); the best counts (1)")
    parser.add_argument("--big", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the 300 MP memory job (default: on)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="make the bucket and stores here and leave them (the last job's store, the big "
                             "input and its store) in place; default: a temporary folder, removed at the end")
    parser.add_argument("--image", type=Path, default=None, help="source photograph (default: coffee)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--verbose", action="store_true",
                        help="the jobs' per-image JSON progress lines on stderr")
    parser.add_argument("--size", type=_size, default=SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--big-size", type=_size, default=BIG_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--child-big", nargs=4, metavar=("DIR", "STORE", "WORKERS", "WARM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if __name__ != "__main__":  # imported: Client.run must ship this module's functions by value
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if args.child_big:
        big_dir, store, workers, warm = args.child_big
        print(json.dumps(child_big(big_dir, store, int(workers), warm)))
        return 0
    if args.images < 1 or args.workers < 1 or args.repeats < 1:
        parser.error("--images, --workers and --repeats must be at least 1")

    source = args.image or _default_source()
    width, height = args.size
    started = dt.datetime.now(dt.UTC)
    with _workdir(args.workdir) as workdir:
        t0 = time.perf_counter()
        paths = make_bucket(source, workdir / "bucket", args.images, width, height)
        make_s = time.perf_counter() - t0
        jpeg_bytes = [p.stat().st_size for p in paths]
        print(f"bucket: {len(paths)} × {width}×{height} JPEG q{JPEG_QUALITY} from {source.name} "
              f"in {make_s:.1f} s ({sum(jpeg_bytes) / 1e6:.1f} MB)", flush=True)

        from phos_dask.imageio import read_image

        warm_image = make_bucket(source, workdir / "warm-loop", 1, *WARM_SIZE, first=2000)[0]
        loop, reference = run_loop(paths, read_image(warm_image), args.repeats)
        print(f"loop:   {loop['seconds_per_image']:.3f} s/image (read_image → render, in-process)", flush=True)
        write_loop = run_write_loop(workdir / "bucket", workdir / "loop.zarr")
        print(f"loop+:  {write_loop['seconds_per_image']:.3f} s/image (read → render → write Zarr, in-process)",
              flush=True)
        keep = args.workdir is not None
        job = run_jobs(workdir / "bucket", workdir, source, args.workers, args.repeats, reference, paths[0].name,
                       args.verbose, keep)
        del reference
        overhead = job["seconds_per_image"] / loop["seconds_per_image"] - 1
        overhead_same_work = job["seconds_per_image"] / write_loop["seconds_per_image"] - 1
        print(f"job:    {job['seconds_per_image']:.3f} s/image, {job['mp_per_s']:.2f} MP/s; "
              f"Dask overhead {overhead:+.1%} vs the model loop, {overhead_same_work:+.1%} vs the same work "
              "in-process", flush=True)
        print(f"cluster: started in {job['cluster']['startup_s']:.2f} s, closed in {job['cluster']['close_s']:.2f} s",
              flush=True)
        check = job["check"]
        print(f"check:  {'PASS' if check['equal'] else 'FAIL'} ({check['source']}: store level 0 vs in-process)",
              flush=True)
        big = None
        if args.big:
            big = run_big(workdir, source, *args.big_size, args.workers, warm_image, keep)
            worst = max(_peak_mb(m) for m in big["worker_peak_memory"].values())
            print(f"big:    {big['width']}×{big['height']} in {big['wall_s']:.1f} s, counts {big['counts']}, "
                  f"worker peak {worst:.0f} MB", flush=True)

    mp = width * height / 1e6
    job_per_24mp = job["seconds_per_image"] * 24.0 / mp
    worker_peaks = {k: _peak_mb(m) for k, m in big["worker_peak_memory"].items()} if big else {}
    job_ok = job["counts"]["failed"] == 0 and job["counts"]["done"] == len(paths)
    verdict = {
        "seconds_per_24mp_met": job_per_24mp <= TARGET_SECONDS_PER_24MP,
        "overhead_met": overhead <= TARGET_OVERHEAD,
        "worker_peak_rss_met": (max(worker_peaks.values()) <= TARGET_WORKER_PEAK_MB) if worker_peaks else None,
        "big_done": (big["counts"]["done"] == 1 and big["counts"]["failed"] == 0) if big else None,
        "correct": bool(check["equal"]),
        "all_images_done": job_ok,
        "default_sizes": (width, height) == SIZE and (big is None or args.big_size == BIG_SIZE),
    }
    report = {
        "benchmark": "archive: run_job on a local Dask cluster vs in-process render loop",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "inputs": {"source": _rel(source), "images": len(paths), "width": width, "height": height,
                   "megapixels_each": mp, "jpeg_quality": JPEG_QUALITY,
                   "variants": "crop (largest for the first, 72-97 % otherwise) + flip by index, cv2.INTER_CUBIC",
                   "jpeg_bytes": jpeg_bytes,
                   "make_s": round(make_s, 2)},
        "settings": {"film": FILM, "dtype": DTYPE, "grain": "default", "tile": "JobSpec default",
                     "whole_limit_mp": "JobSpec default"},
        "method": (f"one process: in-process loop (600×400 warm-up render, then read_image → render per file, "
                   f"best of {args.repeats} passes), then a {args.workers}-worker local cluster from "
                   f"phos_dask.cluster.connect warmed by a small job and a render on every worker, then "
                   f"run_job timed end to end (best of {args.repeats}, fresh store each); the big job in a fresh "
                   f"process on a fresh cluster; peak memory is /proc/self/status VmHWM read in each process"),
        "targets": {"seconds_per_24mp": TARGET_SECONDS_PER_24MP, "overhead": TARGET_OVERHEAD,
                    "worker_peak_rss_mb": TARGET_WORKER_PEAK_MB},
        "verdict": verdict,
        "loop": loop,
        "write_loop": write_loop,
        "dask_overhead_same_work": round(overhead_same_work, 4),
        "job": {**job, "seconds_per_24mp": round(job_per_24mp, 4)},
        "dask_overhead": round(overhead, 4),
        "big": big,
        "bench_process_peak_memory": peak_memory(),
    }
    from engine import write_report  # bench/ is on sys.path: machine() put it there

    path = write_report(args.out_dir, "archive", started, report)

    m = report["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, {m['memory_gb']} GB, python {m['python']}, "
          f"numpy {m['numpy']}, numba {m['numba']}, dask {m['dask']}, distributed {m['distributed']}, "
          f"zarr {m['zarr']}, git {m['git']}")
    if not verdict["default_sizes"]:
        print("note: non-default sizes; the targets are for 6000×4000 and 20000×15000")
    print(f"target ≤ {TARGET_SECONDS_PER_24MP} s per 24 MP end to end: {job_per_24mp:.3f} s "
          f"({'met' if verdict['seconds_per_24mp_met'] else 'MISSED'})")
    print(f"target Dask overhead ≤ {TARGET_OVERHEAD:.0%}: {overhead:+.1%} (job {job['seconds_per_image']:.3f} "
          f"vs loop {loop['seconds_per_image']:.3f} s/image; {'met' if verdict['overhead_met'] else 'MISSED'}); "
          f"against the same work in-process (loop+, which also writes the Zarr output) {overhead_same_work:+.1%}")
    if big:
        peaks = ", ".join(f"{v:.0f}" for v in worker_peaks.values())
        client_peak = _peak_mb(big["client_peak_memory"])
        print(f"target worker peak RSS ≤ {TARGET_WORKER_PEAK_MB:.0f} MB on {big['megapixels']:.0f} MP: "
              f"workers {peaks} MB, client {client_peak:.0f} MB "
              f"({'met' if verdict['worker_peak_rss_met'] else 'MISSED'}); big job {big['wall_s']:.1f} s, "
              f"done={big['counts']['done']} ({'ok' if verdict['big_done'] else 'FAILED'})")
    print(f"correctness: {'PASS' if verdict['correct'] else 'FAIL'}")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if verdict["correct"] and job_ok and verdict["big_done"] is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
