"""Benchmark of the first run after an install: ``python -m phos_dask run examples`` (the job of the README's
quick-start command (a)) with an empty kernel cache, whole command and the job time it prints, against the
package at another revision in the same run.

Usage (from the repository root):

    .venv/bin/python bench/first_run.py [--baseline REV] [--rounds 5] [--python PYTHON] [--out-dir DIR]

``--python``: the interpreter the command runs with (default: this one). The README's install
(``pip install -e .``) has no SciPy, which the test extras bring and numba then imports in every process that
compiles or loads a kernel; bench/commands.py says more. A virtual environment made as the README makes it is
the fair one.

Each round runs the command once per side (the working tree as it is, committed or not, and ``--baseline``),
the sides taking turns to go first. Before each run the side's package is copied afresh into a temporary
folder (its tracked and untracked files, ``git ls-files``; the baseline's from a temporary git worktree,
bench/engine.py's `baseline_worktree`), so numba's cache, which lives beside the kernels' sources, is empty
and no bytecode is written, as after ``pip install`` of a fresh clone; NUMBA_CACHE_DIR and
PYTHONDONTWRITEBYTECODE are dropped from the environment, and the copy is imported through PYTHONPATH. Per
run: the whole command's seconds, the job seconds its last line reports (``N done, … in S s;``) and the busy
CPU seconds of the whole machine meanwhile (/proc/stat: every process of the run, the warm-up's compiles
included, and whatever else ran). The machine is shared and noisy, the CPU seconds of the same run vary by a
fifth from one minute to the next, so the report gives each side's median and its range.

Targets (issue 14): job ≤ 5 s and whole command ≤ 10 s. Prints a table and writes
``bench/results/first-run-<UTC timestamp>.json`` with the machine details.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from archive import machine  # noqa: E402
from engine import baseline_worktree, write_report  # noqa: E402

REPO = BENCH.parent
TARGETS = {"job_s": 5.0, "whole_s": 10.0}
JOB_LINE = re.compile(r"(\d+) done, (\d+) skipped, (\d+) failed; .* in ([0-9.]+) s;")


def copy_tree(source: Path, dest: Path) -> Path:
    """The files of the git working tree `source` (tracked and untracked, not ignored) into `dest`."""
    dest.mkdir(parents=True)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    return dest


def busy_cpu_seconds() -> float:
    """CPU seconds the machine has spent busy since boot (user, nice, system, irq, softirq; /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / ticks


def first_run(source: Path, work: Path, python: str) -> dict[str, Any]:
    """One first run of `run examples` from a fresh copy of the working tree `source`."""
    tree = copy_tree(source, work / "tree")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(tree)
    try:
        cpu0, t0 = busy_cpu_seconds(), time.perf_counter()
        proc = subprocess.run([python, "-m", "phos_dask", "run", "examples"], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=600)
        whole, cpu = time.perf_counter() - t0, busy_cpu_seconds() - cpu0
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    out = proc.stdout + proc.stderr
    found = JOB_LINE.search(out)
    if proc.returncode != 0 or found is None or int(found.group(3)) or int(found.group(1)) == 0:
        raise RuntimeError(f"run examples failed ({source}): {out.strip()[-2000:]}")
    return {"whole_s": round(whole, 3), "job_s": float(found.group(4)), "machine_busy_cpu_s": round(cpu, 2),
            "said_compiling": "kernels: compiling" in out}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("job_s", "whole_s", "machine_busy_cpu_s"):
        values = [r[key] for r in runs]
        out[key] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="", help="git revision to compare with ('' for none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter the command runs with (default: this one); e.g. a virtual environment "
                             "made as the README's quick start makes it")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="phos-first-run-", dir=args.workdir))
    try:
        with baseline_worktree(args.baseline, work / "baseline") as base_tree:
            sides = {"current": REPO, **({"baseline": base_tree} if base_tree else {})}
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for k in range(args.rounds):
                for side in list(sides) if k % 2 == 0 else list(sides)[::-1]:
                    run = first_run(sides[side], work, args.python)
                    runs[side].append(run)
                    print(f"{side:<9} round {k + 1}: job {run['job_s']:.1f} s, whole {run['whole_s']:.2f} s, "
                          f"machine CPU {run['machine_busy_cpu_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {side: summary(rs) for side, rs in runs.items()}
    current = result["current"]
    verdict = {key: {"median": current[key]["median"], "target": target, "met": current[key]["median"] <= target}
               for key, target in TARGETS.items()}
    for side, s in result.items():
        print(f"{side:<9} median job {s['job_s']['median']:.2f} s ({s['job_s']['min']}–{s['job_s']['max']}), "
              f"whole {s['whole_s']['median']:.2f} s ({s['whole_s']['min']}–{s['whole_s']['max']}), "
              f"machine CPU {s['machine_busy_cpu_s']['median']:.1f} s")
    print("targets: " + ", ".join(f"{k} ≤ {v['target']} s: {'met' if v['met'] else 'not met'}"
                                  for k, v in verdict.items()))
    report = {
        "benchmark": "first run after an install: run examples with an empty kernel cache, against a baseline",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "python -m phos_dask run examples (fresh copy of the package per run, empty numba cache)",
        "method": (f"{args.rounds} rounds, one run per side each, the sides taking turns to go first; medians "
                   "and ranges per side; machine_busy_cpu_s from /proc/stat over the run"),
        "python": args.python,
        "baseline": args.baseline or None,
        "runs": runs,
        "summary": result,
        "targets": verdict,
    }
    path = write_report(args.out_dir, "first-run", started, report)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
