"""Benchmark: is a job's cost linear in pixels? Seconds per megapixel of `run_job` at 1, 24 and 300 MP.

Usage (from the repository root):

    .venv/bin/python bench/linearity.py [--sizes 1,24,300] [--no-big] [--workers 2] [--repeats 2]
                                        [--workdir DIR] [--image PHOTO] [--out-dir bench/results] [--verbose]

As a user sees it: for each size a folder of JPEGs of that size (distinct crops and flips of the photograph,
``../shared/parity/coffee_3000x2000.jpg``, enlarged with ``cv2.INTER_CUBIC``; bench/archive.py's
`make_bucket`), rendered by one `run_job` (Portra400, uint16, default grain, tile and whole-image limit) on
the default local cluster (`phos_dask.cluster.connect(workers=2)`: single-threaded worker processes, as
``python -m phos_dask run`` starts), warmed first by bench/archive.py's small job and a render on every
worker, so kernel compile or cache load is not timed. The sizes and folders:

* ``1``: 24 × 1224×816 (1.0 MP each), quality 92;
* ``24``: 4 × 6000×4000, quality 92;
* ``300``: 1 × 20000×15000, quality 90, rendered in tiles by the job (making it peaks near 2 GB in this
  process, before the cluster starts); ``--no-big`` leaves it out.

Each job is timed end to end (discovery, lease, header probes, tasks, report): seconds per MP = wall
seconds / megapixels rendered. ``--repeats`` rounds (default 2) run one job of every size each, so the sizes
share the machine's busy and quiet minutes; each size's fastest job counts. The spread is max/min of the
sizes' seconds per MP; the target (issue 14) is every size within ±20 % of every other, read here as
max/min ≤ 1.2. To say where a size's time goes,
each job also records (a) the sum over its images of the per-image ``stages`` of its report (decode —
for a tiled image also staging and tile windows —, model, write; task seconds, summed over workers),
(b) Dask's task stream: per kind of task (``film-image``, ``film-tile``, ``finalize``) how many, their
compute seconds and the span from the first start to the last end, and (c) the workers' idle share:
1 − Σ task compute seconds / (wall × workers). For reference the in-process ``read_image`` → ``render``
(numba on every core) seconds per MP at 1 and 24 MP (best of three, after a warm-up) are measured after
the cluster has closed.

Prints a table and writes ``bench/results/linearity-<UTC timestamp>.json`` with the machine and a verdict.
Exit status 0, or 1 when an image failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import archive  # noqa: E402  (bench/archive.py: the bucket, warm-up and machine helpers)
from archive import _default_source, _quiet_progress, _workdir, machine, make_bucket, warm_cluster  # noqa: E402

if TYPE_CHECKING:
    from distributed import Client

REPO = BENCH.parent
FILM, DTYPE = archive.FILM, archive.DTYPE
#: Size label (MP) → (width, height, images in the folder, JPEG quality).
SIZES: dict[str, tuple[int, int, int, int]] = {
    "1": (1224, 816, 24, archive.JPEG_QUALITY),
    "24": (6000, 4000, 4, archive.JPEG_QUALITY),
    "300": (20000, 15000, 1, archive.BIG_JPEG_QUALITY),
}
BIG = "300"
#: Target: the largest seconds per MP over the smallest (±20 % of each other).
TARGET_SPREAD = 1.2
#: Sizes whose in-process render() is measured for reference.
RENDER_REFERENCE = ("1", "24")
TASK_KINDS = ("film-image", "film-tile", "finalize")


def task_stream_summary(records: list[dict[str, Any]], wall: float, workers: int) -> dict[str, Any]:
    """Per kind of task (key prefix): count, compute seconds, span (first start → last end, seconds); and
    the workers' idle share over the job's wall time."""
    kinds: dict[str, dict[str, Any]] = {}
    busy = 0.0
    for rec in records:
        key = str(rec.get("key", ""))
        kind = next((k for k in TASK_KINDS if key.startswith(k)), "other")
        computes = [s for s in rec.get("startstops", ()) if s.get("action") == "compute"]
        if not computes:
            continue
        k = kinds.setdefault(kind, {"tasks": 0, "compute_s": 0.0, "first_start": None, "last_stop": None})
        k["tasks"] += 1
        for s in computes:
            k["compute_s"] += s["stop"] - s["start"]
            busy += s["stop"] - s["start"]
            k["first_start"] = s["start"] if k["first_start"] is None else min(k["first_start"], s["start"])
            k["last_stop"] = s["stop"] if k["last_stop"] is None else max(k["last_stop"], s["stop"])
    t0 = min((k["first_start"] for k in kinds.values()), default=0.0)
    out = {kind: {"tasks": k["tasks"], "compute_s": round(k["compute_s"], 3),
                  "starts_at_s": round(k["first_start"] - t0, 3), "span_s": round(k["last_stop"] - k["first_start"], 3)}
           for kind, k in kinds.items()}
    return {"kinds": out, "compute_s": round(busy, 3),
            "idle_share": round(1.0 - busy / (wall * workers), 4) if wall > 0 else None}


def run_size(client: Client, bucket: Path, store: Path, workers: int, verbose: bool) -> dict[str, Any]:
    """One job over `bucket` into a fresh `store` (removed after): its timings and breakdowns."""
    from distributed import get_task_stream

    from phos_dask.job import JobSpec, run_job
    from phos_dask.settings import Settings

    shutil.rmtree(store, ignore_errors=True)
    spec = JobSpec(source=str(bucket), out=str(store), settings=Settings(film=FILM, dtype=DTYPE))
    with get_task_stream(client) as ts:
        t0 = time.perf_counter()
        report = run_job(spec, client, _quiet_progress(verbose))
        wall = time.perf_counter() - t0
    shutil.rmtree(store, ignore_errors=True)
    mp = report["megapixels"]
    stages = {s: round(sum(float((im.get("stages") or {}).get(s, 0.0)) for im in report["images"]), 3)
              for s in ("decode", "model", "write")}
    task_s = sum(float(im.get("seconds", 0.0)) for im in report["images"])
    return {
        "wall_s": round(wall, 3), "report_s": report["seconds"], "counts": report["counts"], "megapixels": mp,
        "s_per_mp": round(wall / mp, 5) if mp else None,
        "stages_s": stages,
        "stages_s_per_mp": {s: round(v / mp, 5) for s, v in stages.items()} if mp else None,
        "task_seconds_per_mp": round(task_s / mp, 5) if mp else None,
        "tasks": task_stream_summary(ts.data, wall, workers),
        "images": [{k: im.get(k) for k in ("source", "status", "seconds", "wall_seconds", "tiles", "stages", "error")
                    if k in im} for im in report["images"]],
    }


def render_reference(path: Path, warm: Path, repeats: int = 3) -> dict[str, Any]:
    """In-process read_image → render of one file (numba on every core): best of `repeats`, after a warm-up
    render of `warm`."""
    from phos_dask import Settings, render
    from phos_dask.imageio import read_image

    render(read_image(warm), Settings(film=FILM, dtype=DTYPE, image_key="warm"))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = render(read_image(path), Settings(film=FILM, dtype=DTYPE, image_key=path.name))
        times.append(time.perf_counter() - t0)
        mp = out.shape[0] * out.shape[1] / 1e6
        del out
    best = min(times)
    return {"source": path.name, "megapixels": mp, "seconds": [round(t, 4) for t in times],
            "best_s": round(best, 4), "s_per_mp": round(best / mp, 5)}


def _sizes(text: str) -> list[str]:
    labels = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in labels if s not in SIZES]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(f"sizes are among {', '.join(SIZES)}; got {text!r}")
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=list(SIZES), help="comma-separated among 1,24,300 (all)")
    parser.add_argument("--big", action=argparse.BooleanOptionalAction, default=True,
                        help="include the 300 MP job (default: on; --no-big leaves it out)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="local cluster worker processes (2)")
    parser.add_argument("--repeats", type=int, default=2, metavar="R",
                        help="rounds of one job per size; each size's fastest counts (2)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="make the folders here and leave them; default: a temporary folder, removed")
    parser.add_argument("--image", type=Path, default=None, help="source photograph (default: coffee)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--verbose", action="store_true", help="the jobs' per-image JSON progress lines on stderr")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeats < 1:
        parser.error("--workers and --repeats must be at least 1")
    labels = [s for s in args.sizes if args.big or s != BIG]
    if not labels:
        parser.error("no size left to run")

    import cloudpickle

    cloudpickle.register_pickle_by_value(archive)  # Client.run ships archive's warm_worker by value

    from phos_dask.cluster import connect

    source = args.image or _default_source()
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {}
    references: dict[str, Any] = {}
    with _workdir(args.workdir) as workdir:
        buckets: dict[str, list[Path]] = {}
        for label in labels:  # every input first: the 300 MP one peaks near 2 GB in this process
            w, h, count, quality = SIZES[label]
            t0 = time.perf_counter()
            buckets[label] = make_bucket(source, workdir / f"in-{label}mp", count, w, h, first=100 * len(buckets),
                                         quality=quality)
            print(f"inputs {label:>3s} MP: {count} × {w}×{h} JPEG q{quality} in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        t0 = time.perf_counter()
        with connect(workers=args.workers, dashboard_address="127.0.0.1:0") as client:
            startup = time.perf_counter() - t0
            warm = warm_cluster(client, workdir, source, args.workers, args.verbose)
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            for _ in range(args.repeats):  # rounds over every size, so each size sees the same minutes
                for label in labels:
                    r = run_size(client, workdir / f"in-{label}mp", workdir / f"out-{label}mp.zarr", args.workers,
                                 args.verbose)
                    runs[label].append(r)
                    st = r["stages_s_per_mp"] or {}
                    print(f"job {label:>3s} MP: {r['megapixels']:.1f} MP in {r['wall_s']:.2f} s = "
                          f"{r['s_per_mp']:.4f} s/MP (stages s/MP: decode {st.get('decode', 0):.4f}, model "
                          f"{st.get('model', 0):.4f}, write {st.get('write', 0):.4f}; workers idle "
                          f"{r['tasks']['idle_share']:.0%}; counts {r['counts']})", flush=True)
            for label, rs in runs.items():
                best = min(rs, key=lambda r: r["wall_s"])
                results[label] = {"label": label, "repeats": len(rs), "all_s_per_mp": [r["s_per_mp"] for r in rs],
                                  **best}
        warm_image = workdir / "warm" / sorted(os.listdir(workdir / "warm"))[0]
        for label in (s for s in RENDER_REFERENCE if s in buckets):
            references[label] = render_reference(buckets[label][0], warm_image)
            print(f"render() {label:>3s} MP in-process: {references[label]['s_per_mp']:.4f} s/MP", flush=True)

    per_mp = {label: r["s_per_mp"] for label, r in results.items() if r["s_per_mp"]}
    spread = max(per_mp.values()) / min(per_mp.values()) if len(per_mp) > 1 else 1.0
    geo = float(np.exp(np.mean(np.log(list(per_mp.values()))))) if per_mp else 0.0
    all_done = all(r["counts"]["failed"] == 0 and r["counts"]["done"] == SIZES[label][2]
                   for label, r in results.items())
    verdict = {
        "spread_max_over_min": round(spread, 4),
        "linear_within_20pct": spread <= TARGET_SPREAD,
        "deviation_from_geometric_mean": {label: round(v / geo - 1, 4) for label, v in per_mp.items()},
        "all_images_done": all_done,
        "all_sizes": labels == list(SIZES),
    }
    report = {
        "benchmark": "linearity: run_job seconds per MP at 1, 24 and 300 MP on the default local cluster",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_at_end": list(os.getloadavg())},
        "inputs": {"source": str(source), "sizes": {label: dict(zip(("width", "height", "images", "jpeg_quality"),
                                                                   SIZES[label], strict=True)) for label in labels}},
        "settings": {"film": FILM, "dtype": DTYPE, "grain": "default", "tile": "JobSpec default",
                     "whole_limit_mp": "JobSpec default"},
        "method": (f"{args.workers}-worker local cluster from phos_dask.cluster.connect (1 thread each), started "
                   f"in {startup:.1f} s, warmed by a small job and a render on every worker; one run_job per size "
                   f"(best of {args.repeats} rounds over the sizes), timed end to end; s/MP = wall / megapixels; "
                   "stages from the report's per-image rows; task kinds and idle share from Dask's task stream; "
                   "render() reference in-process after the cluster closed"),
        "targets": {"spread_max_over_min": TARGET_SPREAD},
        "verdict": verdict,
        "warmup": warm,
        "jobs": results,
        "render_reference": references,
    }
    from engine import write_report  # bench/ is on sys.path: machine() put it there

    path = write_report(args.out_dir, "linearity", started, report)

    m = report["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, {m['memory_gb']} GB, load at end "
          f"{m['load_average_at_end'][0]:.1f}, python {m['python']}, dask {m['dask']}, git {m['git']}")
    print(f"{'size':>6s} {'MP':>7s} {'wall s':>8s} {'s/MP':>8s} {'decode':>8s} {'model':>8s} {'write':>8s} "
          f"{'idle':>6s}")
    for label, r in results.items():
        st = r["stages_s_per_mp"] or {}
        print(f"{label:>4s}MP {r['megapixels']:7.1f} {r['wall_s']:8.2f} {r['s_per_mp']:8.4f} "
              f"{st.get('decode', 0):8.4f} {st.get('model', 0):8.4f} {st.get('write', 0):8.4f} "
              f"{r['tasks']['idle_share']:6.0%}")
    if not verdict["all_sizes"]:
        print("note: not every size ran; the target is for 1, 24 and 300 MP together")
    print(f"target: s/MP within ±20 % (max/min ≤ {TARGET_SPREAD}): max/min {spread:.2f} "
          f"({'met' if verdict['linear_within_20pct'] else 'MISSED'})")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if all_done else 1


if __name__ == "__main__":
    raise SystemExit(main())
