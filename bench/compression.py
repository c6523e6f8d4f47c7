"""Benchmark of `run --compression`: the whole command on four 24 MP photographs (default local cluster) with
each output codec, in one sitting, and the bytes each store holds.

Usage (from the repository root):

    .venv/bin/python bench/compression.py [--rounds 4] [--dtype uint16] [--python PYTHON] [--out-dir DIR]

One untimed warm-up run, then `rounds` rounds of one run per codec, the codecs taking turns to go first. Per
run: the whole command's seconds and the job seconds its last line reports. Per codec: the median of each and
the image arrays' bytes (every level's shard files, not the job's own files). The pixels are the same under
every codec (tests/test_job.py holds them equal); only time and bytes differ. The machine is shared and noisy:
compare the codecs by the ratios of one sitting. Prints a table and writes
``bench/results/compression-<UTC timestamp>.json`` with the machine details.
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

from archive import _default_source, machine, make_bucket  # noqa: E402
from engine import write_report  # noqa: E402

REPO = BENCH.parent
CODECS = ("lz4", "zstd", "none")
IMAGES = 4
JOB_LINE = re.compile(r"MP in ([0-9.]+) s;")


def _run(work: Path, codec: str, dtype: str, python: str) -> tuple[float, float, int]:
    """(whole command s, job s, bytes of the images' arrays) of one `run` into a new store."""
    out = work / f"{codec}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-m", "phos_dask", "run", str(work / "photos"), "--out", str(out), "--film",
                           "Portra400", "--dtype", dtype, "--compression", codec],
                          cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run --compression {codec} failed: {proc.stderr.strip()[-2000:]}")
    job = JOB_LINE.search(proc.stderr + proc.stdout)
    stored = sum(p.stat().st_size for p in out.rglob("*")
                 if p.is_file() and not p.relative_to(out).parts[0].startswith("_") and p.name != "zarr.json")
    return seconds, float(job[1]) if job else float("nan"), stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtype", default="uint16", choices=["uint8", "uint16"])
    parser.add_argument("--python", default=sys.executable, help="interpreter the commands run with")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out-dir", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    started = dt.datetime.now(dt.UTC)
    source = _default_source()
    work = Path(tempfile.mkdtemp(prefix="phos-compression-", dir=args.workdir))
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in CODECS}
    stored: dict[str, int] = {}
    try:
        make_bucket(source, work / "photos", IMAGES, 6000, 4000)
        _run(work, CODECS[0], args.dtype, args.python)  # warm-up: kernels loaded into the cache's state
        for k in range(args.rounds):
            order = CODECS[k % len(CODECS):] + CODECS[:k % len(CODECS)]
            for codec in order:
                seconds, job, stored[codec] = _run(work, codec, args.dtype, args.python)
                runs[codec].append({"whole_s": round(seconds, 3), "job_s": job})
                print(f"{codec:<5} round {k + 1}: whole {seconds:.2f} s, job {job:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, Any] = {}
    for codec in CODECS:
        whole = statistics.median(r["whole_s"] for r in runs[codec])
        job = statistics.median(r["job_s"] for r in runs[codec])
        summary[codec] = {"whole_median_s": round(whole, 3), "job_median_s": round(job, 3),
                          "stored_bytes": stored[codec]}
    base = summary["lz4"]
    for codec, row in summary.items():
        row["whole_vs_lz4"] = round(row["whole_median_s"] / base["whole_median_s"], 3)
        row["job_vs_lz4"] = round(row["job_median_s"] / base["job_median_s"], 3)
        row["bytes_vs_lz4"] = round(row["stored_bytes"] / base["stored_bytes"], 3)
        print(f"{codec:<5} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    report = {
        "benchmark": "compression: run on four 24 MP photos with each output codec, whole command and job",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "inputs": {"source": str(source), "size": "6000x4000", "images": IMAGES, "film": "Portra400",
                   "dtype": args.dtype},
        "method": (f"subprocess per run, one untimed warm-up, then {args.rounds} rounds of one run per codec, "
                   "the codecs taking turns to go first; medians; bytes of the images' level arrays"),
        "python": args.python,
        "runs": runs,
        "summary": summary,
    }
    path = write_report(Path(args.out_dir), "compression", started, report)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
