"""Benchmark: planning a big archive. How long `run` takes from start to its first submitted task, and how
much memory the client holds then, for a source of N images (default 100 000).

Usage (from the repository root):

    .venv/bin/python bench/plan_scale.py [--images 100000] [--workdir DIR] [--out-dir bench/results]

The source is a local folder of N copies of one ~1 KB JPEG in folders of 1000 (made once and kept in
WORKDIR, default /tmp/phos-plan-scale): listing and planning never read an image, so their content does
not matter. Two plans are timed, each in a fresh child process so its memory is its own:

* fresh: the output does not exist;
* rerun: the output holds a finished job of every image (its index written as the job would, with a
  fraction of the images present as folders): the plan reads the index and lists the output once.

For each: seconds to scan the source, seconds to plan, seconds until the first task is submitted (a real
local Dask cluster of one worker; the job is stopped at its first submit), and the client's resident set
then and at its peak (VmHWM). Prints a table and writes bench/results/plan-scale-<UTC>.json.
Targets: first submit ≤ 30 s, client RSS ≤ 600 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
TARGET_SECONDS = 30.0
TARGET_RSS_MB = 600.0


def _tiny_jpeg() -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    ok, data = cv2.imencode(".jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def make_source(folder: Path, n: int) -> None:
    marker = folder / f".complete-{n}"
    if marker.exists():
        return
    data = _tiny_jpeg()
    for i in range(n):
        sub = folder / f"roll{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"frame{i:07d}.jpg").write_bytes(data)
    marker.write_text("")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024 * 1.048576
    return float("nan")


class _FirstSubmit(Exception):
    pass


def child(source: str, out: str, mode: str) -> dict[str, Any]:
    """In a fresh process: plan the job and run it up to its first submitted task."""
    from phos_dask import Settings, index
    from phos_dask.cluster import connect
    from phos_dask.job import JobSpec, plan_job, run_job
    from phos_dask.sources import scan
    from phos_dask.storage import Location

    spec = JobSpec(source, out, Settings(film="Portra400"))
    t0 = time.perf_counter()
    items, _ = scan(source)
    scan_s = time.perf_counter() - t0
    if mode == "rerun" and not Path(out, "zarr.json").exists():  # an earlier job's traces, as it leaves them
        from phos_dask.job import _manifest
        from phos_dask.store import write_root

        where = Location.of(out)
        write_root(where, _manifest(spec))
        writer = index.Writer(where)
        fingerprint = spec.config().fingerprint()
        for it in items:
            writer.pending.append(index.entry(it.key, it.relpath, fingerprint, it.size, it.stamp))
        writer.flush()
        for it in items[::10]:
            Path(out, it.key).mkdir()  # a tenth present as folders; the rest will be redone
    del items
    with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
        t1 = time.perf_counter()
        plan = plan_job(spec)
        plan_s = time.perf_counter() - t1
        todo, skipped = len(plan.todo), len(plan.skipped)
        first: dict[str, float] = {}

        class Client:
            def __getattr__(self, name: str) -> Any:
                return getattr(client, name)

            def submit(self, *args: Any, **kwargs: Any) -> Any:
                first["seconds"] = time.perf_counter() - t1
                first["rss_mb"] = _status_mb("VmRSS")
                raise _FirstSubmit

        with contextlib.suppress(_FirstSubmit):
            run_job(spec, Client(), plan=plan)
    return {"mode": mode, "images": todo + skipped, "todo": todo, "skipped": skipped,
            "scan_seconds": round(scan_s, 3), "plan_seconds": round(plan_s, 3),
            "first_submit_seconds": round(first.get("seconds", float("nan")), 3),
            "rss_at_first_submit_mb": round(first.get("rss_mb", float("nan")), 1),
            "peak_rss_mb": round(_status_mb("VmHWM"), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/phos-plan-scale"))
    parser.add_argument("--out-dir", type=Path, default=BENCH / "results")
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    source = args.workdir / f"source-{args.images}"
    t0 = time.perf_counter()
    make_source(source, args.images)
    print(f"source: {args.images} files in {source} (made in {time.perf_counter() - t0:.1f} s)")
    rows = []
    for mode in ("fresh", "rerun"):
        out = args.workdir / f"out-{mode}-{args.images}.zarr"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(source), str(out), mode],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{mode:>5}: {row['images']} images ({row['todo']} to do, {row['skipped']} skipped): scan "
              f"{row['scan_seconds']:.2f} s, plan {row['plan_seconds']:.2f} s, first task submitted after "
              f"{row['first_submit_seconds']:.2f} s, client RSS {row['rss_at_first_submit_mb']:.0f} MB "
              f"(peak {row['peak_rss_mb']:.0f} MB)")
    ok = all(r["first_submit_seconds"] <= TARGET_SECONDS and r["peak_rss_mb"] <= TARGET_RSS_MB for r in rows)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from engine import machine

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"plan-scale-{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), "images": args.images, "runs": rows,
                                "targets": {"first_submit_seconds": TARGET_SECONDS, "client_rss_mb": TARGET_RSS_MB},
                                "pass": ok}, indent=2))
    print(f"{'PASS' if ok else 'FAIL'}: targets first submit ≤ {TARGET_SECONDS:.0f} s, client RSS ≤ "
          f"{TARGET_RSS_MB:.0f} MB; wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
