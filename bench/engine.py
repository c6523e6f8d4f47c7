"""Benchmark of the whole-image film model: `render()` on a 24 MP (6000×4000) photograph.

Usage (from the repository root):

    .venv/bin/python bench/engine.py [--repeats 3] [--stocks Portra400,Cinestill800T,HP5Plus400]

Each stock runs in a fresh Python process, so its peak resident memory (``ru_maxrss``) is its own. In that
process: load the image, one untimed warm-up render on the full image (numba JIT / cache load, first-touch
page faults), then the best of ``--repeats`` timed renders. Prints a table and writes
``bench/results/engine-<UTC timestamp>.json`` with seconds, MP/s and peak RSS per stock, the machine and
the targets (Portra400 with default grain ≤ 2.0 s per 24 MP; peak RSS ≤ 1.5 GB).

``--baseline REV`` also renders every stock with the package as it was at git revision REV (checked out
into a temporary worktree), alternating with the current code ``--rounds`` times, so both share the
machine's busy and quiet moments; each side's best render counts. The original Phos app cannot run here, so
its time comes from issue 14's calibration: on one machine the original took 27.4 s in-process and
``render()`` at revision ec0ed1b (the code when the issue was filed) 2.08 s, a factor of 13.17; the report's
``vs_original`` is that factor times the speed-up over the baseline, when the baseline is ec0ed1b, for
Portra400 (the stock the issue measured; target ≥ 25×).

The photograph is ``../shared/parity/coffee_3000x2000.jpg`` (or ``examples/coffee.jpg`` when the shared
folder is absent) enlarged with bicubic interpolation; ``--image`` picks another.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = (
    REPO.parent / "shared" / "parity" / "coffee_3000x2000.jpg",
    REPO / "examples" / "coffee.jpg",
)
DEFAULT_STOCKS = ("Portra400", "Cinestill800T", "HP5Plus400")
#: Time target: seconds for a 24 MP render of Portra400 with default grain.
TARGET_SECONDS_PER_24MP = 2.0
TARGET_STOCK = "Portra400"
#: Memory target: peak resident set of the rendering process, MB (10**6 bytes) (issue 14: 1.5 GB).
TARGET_PEAK_RSS_MB = 1500.0
#: Issue 14's calibration: the original app's in-process time over render() at ISSUE_REVISION, one machine.
ISSUE_REVISION = "ec0ed1b"
ORIGINAL_OVER_ISSUE_RENDER = 27.4 / 2.08
#: Target: render() at least this many times faster than the original app (issue 14).
TARGET_VS_ORIGINAL = 25.0


def write_report(out_dir: Path, name: str, started: dt.datetime, report: dict[str, Any]) -> Path:
    """`report` as `out_dir/<name>-<UTC start time>.json` (indented JSON), written atomically
    (phos_dask.storage.write_atomic); returns the path. Every bench script writes its results this way."""
    from phos_dask.storage import write_atomic

    path = out_dir / f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_atomic(str(path), (json.dumps(report, indent=2) + "\n").encode())
    return path


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (10**6 bytes); Linux reports ru_maxrss in KiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 / 1e6 if sys.platform != "darwin" else kib / 1e6


def child(image_path: str, film: str, grain: str, repeats: int) -> dict:
    """Run in the fresh subprocess: warm up, time `repeats` renders, report as a dict."""
    from phos_dask import Settings, render

    image = np.load(image_path)
    rss_loaded = _peak_rss_mb()
    settings = Settings(film=film, grain=grain, image_key="bench")
    t0 = time.perf_counter()
    out = render(image, settings)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        del out
        t0 = time.perf_counter()
        out = render(image, settings)
        times.append(time.perf_counter() - t0)
    h, w = image.shape[:2]
    best = min(times)
    return {
        "film": settings.stock.name,
        "kind": settings.stock.kind,
        "grain": grain,
        "width": w,
        "height": h,
        "megapixels": h * w / 1e6,
        "warmup_s": round(warmup, 4),
        "seconds": [round(t, 4) for t in times],
        "best_s": round(best, 4),
        "seconds_per_24mp": round(best * 24e6 / (h * w), 4),
        "mp_per_s": round(h * w / 1e6 / best, 3),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "output_shape": list(out.shape),
        "output_dtype": str(out.dtype),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("-dirty" if dirty else "")


def machine() -> dict:
    """What the numbers were measured on."""
    import cv2
    import numba

    return {
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "memory_gb": _mem_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "opencv": cv2.__version__,
        "git": _git_revision(),
        "fresh_memory_s_per_gb": fresh_memory_s_per_gb(),
        "fresh_huge_page_memory_s_per_gb": fresh_memory_s_per_gb(huge_pages=True),
        # NumPy's huge pages in the processes timed: "0" off for all of them, "1" on; unset: phos_dask's
        # command line and local workers off, a baseline revision's and in-process renders NumPy's default
        "NUMPY_MADVISE_HUGEPAGE": os.environ.get("NUMPY_MADVISE_HUGEPAGE"),
    }


def fresh_memory_s_per_gb(mb: int = 256, huge_pages: bool = False) -> float:
    """Seconds per GB to touch a new NumPy array's memory, fresh from the kernel, one byte a page; with
    `huge_pages`, with NumPy's transparent huge pages on (its default; phos_dask.localworkers.HUGEPAGE_ENV),
    else off. A physical machine takes about 0.1-0.3 (less with huge pages); a virtual machine whose host
    backs guest memory lazily, or takes freed memory back, can take many times that (with huge pages, 1.5-5
    on this project's VM at times), and then every new process's first allocations and every growth of the
    page cache (files written) pay it: figures from such a machine are noisy, and its fixed costs weigh
    more."""
    from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage

    was = _get_madvise_hugepage()
    _set_madvise_hugepage(huge_pages)
    try:
        pages = np.empty(mb << 20, dtype=np.uint8)
        t0 = time.perf_counter()
        pages[::4096] = 1
        seconds = time.perf_counter() - t0
        del pages
    finally:
        _set_madvise_hugepage(was)
    return round(seconds * 1024 / mb, 3)


def make_image(source: Path, width: int, height: int) -> np.ndarray:
    """The benchmark image: `source` decoded (RGB uint8) and enlarged bicubically to width×height."""
    import cv2

    from phos_dask.imageio import read_image

    return cv2.resize(read_image(source), (width, height), interpolation=cv2.INTER_CUBIC)


@contextlib.contextmanager
def baseline_worktree(rev: str | None, where: Path) -> Iterator[Path | None]:
    """A detached git worktree of `rev` at `where` for the block, removed after it (None when rev is empty):
    the package as it was at that revision, for a bench to time beside the current code."""
    if not rev:
        yield None
        return
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=REPO, check=True,
                   capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=REPO, capture_output=True)


def _run_child(tree: Path, npy: Path, film: str, grain: str, repeats: int) -> dict | None:
    """One stock's timed renders in a fresh process importing the package from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, __file__, "--child", str(npy), film, grain, str(repeats)],
                          capture_output=True, text=True, cwd=tree, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best_of(runs: list[dict]) -> dict:
    """The run with the fastest render, with every run's times and the largest peak RSS."""
    best = dict(min(runs, key=lambda r: r["best_s"]))
    best["seconds"] = [t for r in runs for t in r["seconds"]]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stocks", default=",".join(DEFAULT_STOCKS), help="comma-separated stock names")
    parser.add_argument("--grain", default="default", help="grain style for every stock (default: default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed renders per stock; the best counts")
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the test image")
    parser.add_argument("--image", type=Path, default=None, help="source photograph (default: coffee)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help=f"also time the package at git revision REV (e.g. {ISSUE_REVISION}, issue 14's)")
    parser.add_argument("--rounds", type=int, default=2, help="with --baseline: alternations per stock")
    parser.add_argument("--child", nargs=4, metavar=("NPY", "FILM", "GRAIN", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        npy, film, grain, repeats = args.child
        print(json.dumps(child(npy, film, grain, int(repeats))))
        return 0

    source = args.image or next((p for p in DEFAULT_IMAGES if p.exists()), DEFAULT_IMAGES[-1])
    width, height = (int(v) for v in args.size.lower().split("x"))
    started = dt.datetime.now(dt.UTC)
    results, baseline = [], []
    with tempfile.TemporaryDirectory(prefix="phos-bench-") as tmp:
        npy = Path(tmp) / "image.npy"
        np.save(npy, make_image(source, width, height))
        with baseline_worktree(args.baseline, Path(tmp) / "baseline") as base_tree:
            for film in (s.strip() for s in args.stocks.split(",") if s.strip()):
                runs: dict[str, list[dict]] = {"current": [], "baseline": []}
                for _ in range(args.rounds if base_tree else 1):
                    for side, tree in (("current", REPO), ("baseline", base_tree)):
                        if tree is None:
                            continue
                        r = _run_child(tree, npy, film, args.grain, args.repeats)
                        if r is None:
                            print(f"engine bench: {film} failed ({side})", file=sys.stderr)
                            return 1
                        runs[side].append(r)
                for side, out in (("current", results), ("baseline", baseline)):
                    if not runs[side]:
                        continue
                    r = _best_of(runs[side])
                    out.append(r)
                    print(f"{side + ':':<10}{r['film']:<14} grain={r['grain']:<8} best {r['best_s']:7.3f} s  "
                          f"{r['mp_per_s']:6.2f} MP/s  peak RSS {r['peak_rss_mb']:7.1f} MB  "
                          f"(runs {', '.join(f'{t:.3f}' for t in r['seconds'])})")

    comparison = []
    for cur, base in zip(results, baseline, strict=False):
        speedup = base["best_s"] / cur["best_s"]
        row = {"film": cur["film"], "current_s": cur["best_s"], "baseline_s": base["best_s"],
               "speedup": round(speedup, 3)}
        if args.baseline and args.baseline.startswith(ISSUE_REVISION) and cur["film"] == TARGET_STOCK:
            row["vs_original"] = round(ORIGINAL_OVER_ISSUE_RENDER * speedup, 2)
        comparison.append(row)
        print(f"{cur['film']:<14} {speedup:5.2f}x the baseline ({args.baseline})"
              + (f" = {row['vs_original']:.1f}x the original app (target ≥ {TARGET_VS_ORIGINAL:.0f}x)"
                 if "vs_original" in row else ""))

    targets = {
        "seconds_per_24mp": TARGET_SECONDS_PER_24MP,
        "seconds_stock": TARGET_STOCK,
        "seconds_grain": "default",
        "peak_rss_mb": TARGET_PEAK_RSS_MB,
    }
    timed = [r for r in results if r["film"] == TARGET_STOCK and r["grain"] == "default"]
    verdict = {
        "seconds_met": (all(r["seconds_per_24mp"] <= TARGET_SECONDS_PER_24MP for r in timed)
                        if timed else None),
        "peak_rss_met": all(r["peak_rss_mb"] <= TARGET_PEAK_RSS_MB for r in results),
        "vs_original_met": (all(c["vs_original"] >= TARGET_VS_ORIGINAL for c in comparison
                                if c["film"] == TARGET_STOCK) if any("vs_original" in c for c in comparison)
                            else None),
    }
    report = {
        "benchmark": "engine: whole-image render()",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "image": {"source": str(source.relative_to(REPO.parent)) if source.is_relative_to(REPO.parent)
                  else str(source), "width": width, "height": height, "dtype": "uint8",
                  "resize": "cv2.INTER_CUBIC"},
        "method": f"fresh process per stock; one untimed warm-up render, best of {args.repeats}"
                  + (f"; baseline {args.baseline} alternating with the current code, {args.rounds} rounds"
                     if args.baseline else ""),
        "targets": {**targets, "vs_original": TARGET_VS_ORIGINAL,
                    "original_over_issue_render": round(ORIGINAL_OVER_ISSUE_RENDER, 3)},
        "verdict": verdict,
        "results": results,
        "baseline": {"revision": args.baseline, "results": baseline} if args.baseline else None,
        "comparison": comparison,
    }
    path = write_report(args.out_dir, "engine", started, report)
    m = report["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, {m['memory_gb']} GB, "
          f"python {m['python']}, numpy {m['numpy']}, numba {m['numba']}")
    print(f"targets: {TARGET_STOCK} ≤ {TARGET_SECONDS_PER_24MP} s per 24 MP: {verdict['seconds_met']}; "
          f"peak RSS ≤ {TARGET_PEAK_RSS_MB:.0f} MB: {verdict['peak_rss_met']}")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
