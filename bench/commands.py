"""Benchmark of the commands a user types, whole (start-up included), against the code of another revision
measured in the same run: ``preview -o x.jpg``, ``preview -o x.tif`` (uint16) on one 24 MP photograph, and
``run`` on a folder of four 24 MP photographs (default local cluster).

Usage (from the repository root):

    .venv/bin/python bench/commands.py [--baseline ec0ed1b] [--rounds 2] [--film Portra400] [--workdir DIR]
                                       [--python PYTHON]

``--python``: the interpreter the commands run with (default: the one running this script). The README's
install (``pip install -e .``, no test extras) has no SciPy; the test extras bring it, and numba then imports
scipy.linalg in every process that loads a kernel (~0.2 s per process on a 2-core machine), so a user's
commands start faster than the same commands run from the test environment. The report records which.

The photographs are bench/archive.py's variants of ``../shared/parity/coffee_3000x2000.jpg`` at 6000×4000,
JPEG quality 92. Each side (the working tree, and the package at ``--baseline`` checked out into a temporary
git worktree) first runs every command once untimed, so numba's kernel cache is warm and Python's bytecode is
written (a first run after install is bench/archive.py's and the README's business; PYTHONDONTWRITEBYTECODE is
dropped from the commands' environment); then each command in turn runs ``--rounds`` times on each side, the
sides alternating and taking turns to go first (so a command follows the same command, never another kind:
see `_alternating`), each timed end to end as a subprocess (``python -m phos_dask …``), and each side's fastest
run of a command counts.

The original Phos app cannot run here. Issue 14 measured it on one machine beside these commands at
revision ec0ed1b: original 27.4 s in-process; ``preview -o x.jpg`` 5.9 s, ``preview -o x.tif`` 8.6 s,
``run`` 5.0 s per image. So with the baseline at ec0ed1b, a command's speed against the original is
(27.4 / that command's issue seconds) × (baseline seconds / current seconds), both measured here in the same
run. Targets (issue 14): ``run`` ≥ 15×, ``preview -o x.jpg`` ≥ 10×.

Prints a table and writes ``bench/results/commands-<UTC timestamp>.json`` with the machine details.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from archive import _default_source, machine, make_bucket  # noqa: E402
from engine import ISSUE_REVISION, baseline_worktree, write_report  # noqa: E402

REPO = BENCH.parent
#: Issue 14's seconds for each command at ISSUE_REVISION, beside the original app's 27.4 s (per image for run).
ISSUE_SECONDS = {"preview_jpg": 5.9, "preview_tif": 8.6, "run_per_image": 5.0}
ORIGINAL_SECONDS = 27.4
TARGETS = {"run_per_image": 15.0, "preview_jpg": 10.0}
IMAGES = 4


def _command(tree: Path, args: list[str], python: str) -> float:
    """Seconds for `python -m phos_dask ARGS` importing the package from `tree`; raises on failure."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # both trees run from cached bytecode, as an installed package does: with PYTHONDONTWRITEBYTECODE set (as
    # in some shells and containers) the freshly checked-out baseline compiled every module from source in
    # every process (the command's and each worker's), and the working tree did so for every changed module
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-m", "phos_dask", *args], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {tree}: {proc.stderr.strip()[-2000:]}")
    return seconds


def _commands(work: Path, film: str) -> dict[str, list[str]]:
    photo = work / "photos" / "photo_000.jpg"
    return {
        "preview_jpg": ["preview", str(photo), "-o", str(work / "x.jpg"), "--film", film],
        "preview_tif": ["preview", str(photo), "-o", str(work / "x.tif"), "--film", film, "--dtype", "uint16"],
        "run": ["run", str(work / "photos"), "--out", str(work / "out.zarr"), "--film", film],
    }


def _one_round(tree: Path, work: Path, film: str, python: str) -> None:
    for name in _commands(work, film):
        _timed(name, tree, work, film, python)


def _timed(name: str, tree: Path, work: Path, film: str, python: str) -> float:
    if name == "run":
        shutil.rmtree(work / "out.zarr", ignore_errors=True)
    return _command(tree, _commands(work, film)[name], python)


def _alternating(sides: dict[str, Path], rounds: int, work: Path, film: str, python: str
                 ) -> dict[str, list[dict[str, float]]]:
    """Each command `rounds` times on each side, the sides alternating and taking turns to go first, one
    command after another: a command follows the same command (of the other side or its own), never another
    kind. Rounds of every command, one side after the other, had timed the current code's `preview` right
    after the baseline's `run`, whose workers use NumPy's huge pages: memory the VM has handed back costs more
    to touch again, and a `preview` took 1.40-1.43 s there against 1.31 s after the current code's `run`."""
    runs: dict[str, list[dict[str, float]]] = {side: [{} for _ in range(rounds)] for side in sides}
    for name in _commands(work, film):
        for k in range(rounds):
            for side in list(sides) if k % 2 == 0 else list(sides)[::-1]:
                runs[side][k][name] = _timed(name, sides[side], work, film, python)
                print(f"{side:<9} {name} round {k + 1}: {runs[side][k][name]:.2f} s", flush=True)
    for rs in runs.values():
        for r in rs:
            r["run_per_image"] = r.pop("run") / IMAGES
    return runs


def _environment(python: str) -> dict[str, Any]:
    """What in the commands' environment changes their start-up: whether SciPy is installed (numba imports
    scipy.linalg, ~0.2 s, in every process that loads a kernel when it is; a `pip install` of this package
    does not bring it, its test extras do) and how many packages there are."""
    code = ("import importlib.util, importlib.metadata as m; "
            "print(importlib.util.find_spec('scipy') is not None, len(list(m.distributions())))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"scipy_installed": out[0] == "True", "distributions": int(out[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=ISSUE_REVISION, help="git revision to compare with ('' for none)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--film", default="Portra400")
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter the commands run with (default: this one); e.g. a virtual environment "
                             "made as the README's quick start makes it, without the test extras")
    args = parser.parse_args(argv)
    environment = _environment(args.python)
    print(f"commands run with {args.python}: {environment}")

    started = dt.datetime.now(dt.UTC)
    source = args.image or _default_source()
    tmp = Path(tempfile.mkdtemp(prefix="phos-commands-", dir=args.workdir))
    try:
        make_bucket(source, tmp / "photos", IMAGES, 6000, 4000)
        with baseline_worktree(args.baseline, tmp / "baseline") as base_tree:
            sides = {"current": REPO, **({"baseline": base_tree} if base_tree else {})}
            for tree in sides.values():  # warm-up: kernels compiled or loaded into each tree's cache
                _one_round(tree, tmp, args.film, args.python)
            runs = _alternating(sides, args.rounds, tmp, args.film, args.python)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    best = {side: {k: min(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    comparison: dict[str, Any] = {}
    for name in best["current"]:
        row: dict[str, Any] = {"current_s": round(best["current"][name], 3)}
        if "baseline" in best:
            row["baseline_s"] = round(best["baseline"][name], 3)
            row["speedup"] = round(best["baseline"][name] / best["current"][name], 3)
            if args.baseline.startswith(ISSUE_REVISION):
                row["vs_original"] = round(ORIGINAL_SECONDS / ISSUE_SECONDS[name] * row["speedup"], 2)
                if name in TARGETS:
                    row["target_vs_original"] = TARGETS[name]
                    row["met"] = row["vs_original"] >= TARGETS[name]
        comparison[name] = row
        print(f"{name:<14} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    report = {
        "benchmark": "commands: preview and run, whole commands, against a baseline revision in the same run",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "inputs": {"source": str(source), "size": "6000x4000", "images_for_run": IMAGES, "film": args.film},
        "method": (f"subprocess per command, one untimed warm-up round per side, then each command {args.rounds} "
                   "times per side, the sides alternating and taking turns to go first; "
                   "fastest per side counts; vs_original = 27.4 s / issue 14's seconds at ec0ed1b × speed-up"),
        "issue_seconds_at_baseline": ISSUE_SECONDS,
        "baseline": args.baseline or None,
        "python": args.python,
        "environment": environment,
        "runs": runs,
        "comparison": comparison,
    }
    path = write_report(args.out_dir, "commands", started, report)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
