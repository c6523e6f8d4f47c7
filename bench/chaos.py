"""Fault-injection benchmark: does `python -m phos_dask run` lose, corrupt or redo work when its processes die?

Usage (from the repository root):

    .venv/bin/python bench/chaos.py [--runs 30] [--seed 0] [--workers 2] [--attempts 8] [--keep] [--quick]

What it measures:

1. Corpus (once, in a temporary folder): 8 photo-like images (smooth gradients, shapes, highlights, noise;
   fixed RNG seed), JPEG and PNG, 0.5-3 MP, two in a sub-folder. With ``--whole-limit 1 --tile 512`` the
   ones up to 1 MP run as one task each and the others are cut into tiles.
2. Warm-up and reference: the same command twice, undisturbed, as a subprocess,
   ``python -m phos_dask run CORPUS --out OUT --film Portra400 --workers N --whole-limit 1 --tile 512
   --dashboard-address 127.0.0.1:0 --json`` (--json: a progress line per image on stdout). The first fills
   numba's cache; the second is the reference store and its wall time T. The two stores must be equal
   pixel for pixel (else the comparison below means nothing).
3. ``--runs`` runs, each into a fresh store. A run is a sequence of attempts (the same command, same --out,
   own process group) until one exits 0 or ``--attempts`` is reached. During an attempt, faults fire at
   seeded random times: SIGKILL of one Dask worker process (a `multiprocessing.spawn` child of the `run`
   process; its nanny restarts it and the task is retried) or SIGKILL of the `run` process itself (the
   client, which also hosts the scheduler and the nannies). The first fault of each run is stratified so
   that every 6 runs cover worker/client kills early, mid-job and late: due at a uniform time in that third
   of the reference's job (from its dashboard line to T) or, whichever comes first, once the attempt's
   progress lines report a uniform fraction within that third of its megapixels finished (robust to a
   machine busier or idler than during the reference). 0-2 further faults are uniform in [0, 1.2 T]
   (phases "startup" before the dashboard line, "after" past T). Later attempts get a fault with
   probability 1/2, uniform in [0, 1.2 T'] where T' scales the job part of T by the remaining megapixels;
   the last attempt gets none.
4. Checks:
   * after every attempt: none of its processes may outlive it by 10 s (else *orphans*, then killed); the
     images then marked complete (and, after a client kill, those complete at the moment of the kill) must
     equal the reference at every level (else *corrupt*: a half-written image marked complete). An attempt
     that did not exit 0 (client killed; exit 1: some images failed, or a crash; exit 2: refused, e.g. the
     output is in use, retried after 1 s; anything else) is followed by the next;
   * every image complete before an attempt started must be "skipped" in that attempt's ``_report.json``
     (else *recomputed*);
   * after the last attempt: every input present and complete (else *lost*) and equal to the reference
     (else *corrupt*), and the exit status 0.

Prints one line per run and a summary (runs, worker kills, client kills, reruns, lost, corrupt, recomputed,
orphans, seconds) and writes ``bench/results/chaos-<UTC timestamp>.json`` (rewritten after every run, with
"finished": false until the end) with the totals, per-run and per-attempt details (faults with their times
and phases, exit codes, notable stderr lines), the corpus and the machine. Exit status 1 when lost,
corrupt, recomputed or orphans is nonzero.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
FILM = "Portra400"
TILE = 512
WHOLE_LIMIT_MP = 1.0
CORPUS_SEED = 20261127
#: (relative path, width, height): 0.5-3 MP, JPEG and PNG, some up to 1 MP (one task), some tiled.
CORPUS = (
    ("harbour.jpg", 820, 610),
    ("tiles_square.png", 900, 900),
    ("sub/portrait.jpg", 830, 1200),
    ("street.jpg", 1400, 1000),
    ("sub/garden.png", 1700, 1100),
    ("mountain.jpg", 1920, 1280),
    ("night.jpg", 2150, 1390),
    ("sub/beach.png", 2100, 1420),
)
JPEG_QUALITY = 90
#: Seconds to wait for the processes of a finished or killed `run` to go away before they count as orphans.
ORPHAN_GRACE_S = 10.0
POLL_S = 0.1
KINDS = ("worker", "client")
PHASES = ("early", "mid", "late")
#: Lines of a `run`'s stderr worth keeping in the results (the rest is Dask's routine logging).
NOTABLE = re.compile(r"phos_dask:|Traceback|Error|Exception|KilledWorker|CRITICAL|lease|in use", re.IGNORECASE)


# --- corpus ---------------------------------------------------------------------------------------------


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A BGR uint8 picture with a photo's statistics: a smooth two-colour gradient, soft shapes, a few
    bright highlights (bloom and halation have something to act on), a slight blur and sensor-like noise."""
    import cv2

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1.0) / 2.0
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        img[..., c] = c0[c] + (c1[c] - c0[c]) * t
    for _ in range(int(rng.integers(6, 12))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(min(width, height) // 20, min(width, height) // 4))
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), size, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (cx - size, cy - size // 2), (cx + size, cy + size // 2), colour, -1, cv2.LINE_AA)
    for _ in range(3):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(img, (cx, cy), int(rng.integers(4, 16)), (255.0, 255.0, 255.0), -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_corpus(folder: Path) -> list[dict[str, Any]]:
    """Write CORPUS under `folder` (seeded: the same files every time); return their description."""
    import cv2

    rng = np.random.default_rng(CORPUS_SEED)
    files = []
    for relpath, width, height in CORPUS:
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
        if not cv2.imwrite(str(path), photo_like(rng, width, height), params):
            raise OSError(f"cv2.imwrite could not write {path}")
        files.append({"source": relpath, "width": width, "height": height,
                      "megapixels": round(width * height / 1e6, 3), "bytes": path.stat().st_size})
    return files


def describe_plan(corpus: Path, out: Path, files: list[dict[str, Any]]) -> None:
    """Add each file's key, mode (whole / tiled) and tile count from `run --dry-run --json` to `files`."""
    cmd = [*run_command(corpus, out, 1), "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    rows = {r["source"]: r for r in json.loads(proc.stdout)["plan"]}
    for f in files:
        row = rows[f["source"]]
        f.update({"key": row["key"], "mode": row["mode"], "tiles": row.get("tiles"), "tile": row.get("tile")})


# --- the command and its processes ----------------------------------------------------------------------


def run_command(corpus: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "phos_dask", "run", str(corpus), "--out", str(out), "--film", FILM,
            "--whole-limit", str(WHOLE_LIMIT_MP), "--tile", str(TILE),
            "--workers", str(workers), "--dashboard-address", "127.0.0.1:0", "--json"]


def is_worker(proc: psutil.Process) -> bool:
    """A Dask worker process: a multiprocessing `spawn` child (not the resource tracker)."""
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return ("spawn_main" in cmd or "multiprocessing.spawn" in cmd) and "resource_tracker" not in cmd


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes in process group `pgid` (the `run` process's own group: it was started in a session
    of its own, and its children inherit the group unless they move)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.pid != os.getpid():
                members.append(proc)
    return members


def describe_process(proc: psutil.Process) -> dict[str, Any]:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        cmd = "?"
    return {"pid": proc.pid, "cmdline": cmd[:160]}


def reap(tracked: dict[int, psutil.Process], pgid: int, grace: float = ORPHAN_GRACE_S) -> list[dict[str, Any]]:
    """Wait up to `grace` s for every process of a `run` (those seen while it ran, and its process group)
    to end; SIGKILL and return those still alive then (the orphans)."""
    deadline = time.monotonic() + grace
    while True:
        survivors = {p.pid: p for p in [*tracked.values(), *group_members(pgid)] if alive(p)}
        if not survivors or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    orphans = [describe_process(p) for p in survivors.values()]
    for p in survivors.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    return orphans


# --- the store ------------------------------------------------------------------------------------------


Pixels = dict[str, list[np.ndarray]]


def image_state(out: Path, key: str) -> str:
    """"complete", the image's other `phos.status` (e.g. "in-progress"), "absent", or "unreadable: …" (its
    metadata cannot be parsed, e.g. a zarr.json cut short by a kill)."""
    import zarr

    if not (out / key).exists():
        return "absent"
    try:
        phos = dict(zarr.open_group(str(out / key), mode="r").attrs).get("phos")
    except Exception as e:
        return f"unreadable: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    status = phos.get("status") if isinstance(phos, dict) else None
    return str(status or "no status")


def complete_keys(out: Path, keys: list[str]) -> set[str]:
    """The images of `keys` whose `phos.status` is "complete" in the store."""
    return {key for key in keys if image_state(out, key) == "complete"}


def read_levels(out: Path, key: str) -> list[np.ndarray]:
    """Every pyramid level ("0", "1", …) of image `key`, in order."""
    import zarr

    group = zarr.open_group(str(out), mode="r")[key]
    names = sorted((n for n in group.array_keys() if n.isdigit()), key=int)
    return [np.asarray(group[n][...]) for n in names]


def load_pixels(out: Path, keys: list[str]) -> Pixels:
    return {key: read_levels(out, key) for key in keys}


def mismatch(out: Path, key: str, reference: Pixels) -> str | None:
    """None when every level of `key` equals the reference; else what differs."""
    try:
        levels = read_levels(out, key)
    except Exception as e:
        return f"unreadable: {type(e).__name__}: {e}"
    ref = reference[key]
    if len(levels) != len(ref):
        return f"{len(levels)} levels, reference has {len(ref)}"
    for i, (got, want) in enumerate(zip(levels, ref, strict=True)):
        if got.shape != want.shape or got.dtype != want.dtype:
            return f"level {i}: {got.dtype}{list(got.shape)}, reference {want.dtype}{list(want.shape)}"
        if not np.array_equal(got, want):
            diff = got != want
            return f"level {i}: {int(np.count_nonzero(diff))} of {diff.size} samples differ"
    return None


def read_report(out: Path, since: float) -> dict[str, Any] | None:
    """OUT/_report.json when it was written after `since` (time.time()), else None."""
    path = out / "_report.json"
    try:
        if path.stat().st_mtime < since:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- faults and attempts --------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    at_s: float  # due this many seconds after the attempt started …
    kind: str  # "worker" | "client"
    phase: str  # "startup" | "early" | "mid" | "late" | "after" (see Window.phase); "startup" when it fired
    # before the cluster was up
    at_progress: float | None = None  # … or once this fraction of the attempt's megapixels is finished
    outcome: str = "planned"  # "killed" | "moot: exited first"
    fired_s: float | None = None
    progress: float | None = None  # fraction of the attempt's megapixels finished when it fired
    pid: int | None = None


@dataclasses.dataclass
class Attempt:
    index: int
    faults: list[Fault]
    expected_s: float
    end: str = ""  # "exit N" | "client killed" | "timeout"
    returncode: int | None = None
    seconds: float = 0.0
    dashboard_s: float | None = None
    workers_seen: int = 0  # distinct worker processes: more than --workers means the nannies restarted some
    complete_before: list[str] = dataclasses.field(default_factory=list)
    complete_at_kill: list[str] | None = None
    complete_after_reap: list[str] | None = None
    report_counts: dict[str, int] | None = None
    recomputed: list[str] = dataclasses.field(default_factory=list)
    corrupt: dict[str, str] = dataclasses.field(default_factory=dict)
    orphans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reap_s: float | None = None  # seconds until every process of the attempt had gone (or ORPHAN_GRACE_S)
    stderr: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Window:
    """When an attempt is expected to do what: its cluster is up at `startup_s`, its job ends at `end_s`."""

    startup_s: float
    end_s: float

    def phase(self, at_s: float) -> str:
        """"startup" before the cluster is up; "early", "mid", "late" by thirds of the job; then "after"."""
        if at_s < self.startup_s:
            return "startup"
        frac = (at_s - self.startup_s) / max(1e-3, self.end_s - self.startup_s)
        return "after" if frac >= 1.0 else PHASES[min(2, int(frac * 3))]

    def within(self, rng: random.Random, phase: str | None) -> float:
        """A uniform time in `phase` (a third of the job), or in [0, 1.2 × end_s] when None."""
        if phase is None:
            return rng.uniform(0.0, 1.2 * self.end_s)
        i, job = PHASES.index(phase), self.end_s - self.startup_s
        return rng.uniform(self.startup_s + i / 3 * job, self.startup_s + (i + 1) / 3 * job)


def make_fault(rng: random.Random, window: Window, kind: str | None = None, phase: str | None = None,
               client_p: float = 0.35) -> Fault:
    """A fault of `kind` (a client kill with probability `client_p` when None) due at a time in `phase` of
    the job or, whichever comes first, once the job's progress is within that third (so a job that runs
    faster than the reference still gets its late fault); anywhere in [0, 1.2 × the expected wall time]
    when `phase` is None."""
    kind = kind or ("client" if rng.random() < client_p else "worker")
    at = window.within(rng, phase)
    at_progress = None if phase is None else round(rng.uniform(PHASES.index(phase) / 3,
                                                               (PHASES.index(phase) + 1) / 3), 3)
    return Fault(round(at, 3), kind, window.phase(at), at_progress)


def plan_faults(rng: random.Random, attempt: int, attempts: int, window: Window, first: tuple[str, str]
                ) -> list[Fault]:
    """The faults of one attempt, by time: the run's stratified fault plus 0-2 random ones on the first
    attempt (a random client kill due before the stratified fault becomes a worker kill, so the stratified
    one always fires unless the job ends first); one random fault with probability 1/2 on later attempts;
    none on the last."""
    if attempt == attempts - 1:
        return []
    if attempt == 0:
        faults = [make_fault(rng, window, *first)]
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            extra = make_fault(rng, window)
            if extra.kind == "client" and extra.at_s < faults[0].at_s:
                extra.kind = "worker"
            faults.append(extra)
    else:
        faults = [make_fault(rng, window, client_p=0.4)] if rng.random() < 0.5 else []
    return sorted(faults, key=lambda f: f.at_s)


def stratified(rng: random.Random, runs: int) -> list[tuple[str, str]]:
    """(kind, phase) of each run's first fault: every block of 6 runs holds each combination once."""
    combos = [(k, p) for k in KINDS for p in PHASES]
    order: list[tuple[str, str]] = []
    while len(order) < runs:
        block = combos[:]
        rng.shuffle(block)
        order += block
    return order[:runs]


def notable_lines(path: Path, limit: int = 40) -> list[str]:
    """Distinct lines of a stderr log that say something went wrong (phos_dask's own, errors, tracebacks)."""
    seen: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line and NOTABLE.search(line) and line not in seen:
                seen.append(line[:300])
                if len(seen) >= limit:
                    break
    return seen


def fire(fault: Fault, proc: subprocess.Popen, seen: dict[int, psutil.Process], rng: random.Random,
         now: float) -> bool:
    """Fire `fault` if it can be now (a worker kill waits until a worker exists); True when it fired."""
    if fault.kind == "worker":
        workers = sorted((p for p in seen.values() if alive(p) and is_worker(p)), key=lambda p: p.pid)
        if not workers:
            return False
        target = rng.choice(workers)
        with contextlib.suppress(psutil.Error):
            target.send_signal(signal.SIGKILL)
        fault.pid = target.pid
    else:
        os.kill(proc.pid, signal.SIGKILL)
        fault.pid = proc.pid
    fault.outcome, fault.fired_s = "killed", round(now, 3)
    return True


def track(seen: dict[int, psutil.Process], workers: set[int], pid: int) -> None:
    """Add the live descendants of `pid` to `seen`, and the Dask workers among them to `workers`."""
    for p in descendants(pid):
        seen.setdefault(p.pid, p)
        if p.pid not in workers and is_worker(p):
            workers.add(p.pid)


class OutputWatch:
    """Follows a `run`'s stdout and stderr: whether its cluster is up (the "dashboard:" line) and which
    fraction of the attempt's megapixels is finished (the --json progress lines, one per image done or
    failed)."""

    def __init__(self, paths: list[Path], megapixels: dict[str, float], todo: set[str]) -> None:
        self.megapixels = megapixels
        self.todo_mp = sum(megapixels.get(k, 0.0) for k in todo) or 1.0
        self.files = {path: (0, b"") for path in paths}  # path → (bytes read, unfinished last line)
        self.up = False
        self.finished: set[str] = set()

    def poll(self) -> None:
        for path, (offset, partial) in self.files.items():
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(offset)
                data = f.read()
                *lines, rest = (partial + data).split(b"\n")
                self.files[path] = (offset + len(data), rest)
                for line in lines:
                    self._line(line.decode(errors="replace"))

    def _line(self, line: str) -> None:
        if line.startswith("dashboard:"):
            self.up = True
        elif line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "image" and event.get("status") in ("done", "failed"):
                    self.finished.add(str(event.get("key")))

    @property
    def fraction(self) -> float:
        return min(1.0, sum(self.megapixels.get(k, 0.0) for k in self.finished) / self.todo_mp)


def due(fault: Fault, now: float, watch: OutputWatch) -> bool:
    if now >= fault.at_s:
        return True
    return fault.at_progress is not None and watch.up and watch.fraction >= fault.at_progress


def drive(proc: subprocess.Popen, attempt: Attempt, watch: OutputWatch, rng: random.Random, timeout_s: float,
          seen: dict[int, psutil.Process], workers: set[int]) -> list[Fault]:
    """Poll a running attempt every POLL_S: note its processes and progress, fire its faults when due, kill
    its process group past `timeout_s`. Returns when it has exited or was killed; the faults not fired."""
    t0 = time.monotonic()
    pending = list(attempt.faults)
    while proc.poll() is None and not attempt.end:
        now = time.monotonic() - t0
        track(seen, workers, proc.pid)
        watch.poll()
        if attempt.dashboard_s is None and watch.up:
            attempt.dashboard_s = round(now, 3)
        if now > timeout_s:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            attempt.end = "timeout"
        for fault in [f for f in pending if due(f, now, watch)]:
            if attempt.end or not fire(fault, proc, seen, rng, now):
                continue
            pending.remove(fault)
            fault.progress = round(watch.fraction, 3)
            fault.phase = fault.phase if watch.up else "startup"
            if fault.kind == "client":
                attempt.end = "client killed"
        if not attempt.end:
            time.sleep(POLL_S)
    return pending


def run_attempt(cmd: list[str], attempt: Attempt, logs: Path, rng: random.Random, timeout_s: float,
                megapixels: dict[str, float]) -> tuple[int, dict[int, psutil.Process]]:
    """Start `cmd` in its own process group, fire `attempt.faults` when due, and return as soon as it has
    exited (by itself, by a client kill, or killed at `timeout_s`). `megapixels` (image key → MP) measures
    progress. Returns its pid (= its process group) and every descendant process seen while it ran."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / f"attempt{attempt.index}.out", logs / f"attempt{attempt.index}.err"
    with stdout.open("wb") as so, stderr.open("wb") as se:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=so, stderr=se, start_new_session=True)
    t0 = time.monotonic()
    seen: dict[int, psutil.Process] = {}
    workers: set[int] = set()
    watch = OutputWatch([stdout, stderr], megapixels, set(megapixels) - set(attempt.complete_before))
    try:
        pending = drive(proc, attempt, watch, rng, timeout_s, seen, workers)
    except BaseException:  # Ctrl-C (or a bug here): leave nothing of this attempt running
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    proc.wait()
    attempt.seconds = round(time.monotonic() - t0, 3)
    attempt.returncode = proc.returncode
    attempt.end = attempt.end or f"exit {proc.returncode}"
    for fault in pending:
        fault.outcome = "moot: exited first"
    attempt.workers_seen = len(workers)
    attempt.stderr = notable_lines(stderr)
    return proc.pid, seen


# --- a run ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    index: int
    out: str
    first_fault: tuple[str, str]
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    returncode: int | None = None
    lost: dict[str, str] = dataclasses.field(default_factory=dict)
    corrupt: dict[str, str] = dataclasses.field(default_factory=dict)
    recomputed: list[str] = dataclasses.field(default_factory=list)
    orphans: int = 0
    seconds: float = 0.0

    def kills(self, kind: str) -> int:
        return sum(1 for a in self.attempts for f in a.faults if f.kind == kind and f.outcome == "killed")


@dataclasses.dataclass
class Bench:
    """What every run shares: the command's inputs, the reference and its timing."""

    corpus: Path
    files: list[dict[str, Any]]
    reference: Pixels
    ref_s: float
    startup_s: float
    workers: int
    attempts: int

    @property
    def keys(self) -> list[str]:
        return [f["key"] for f in self.files]

    @property
    def megapixels(self) -> dict[str, float]:
        return {f["key"]: f["megapixels"] for f in self.files}

    def window(self, remaining: set[str]) -> Window:
        """The expected timeline of an attempt that still has to render `remaining`: the reference's cluster
        start-up, then its job time scaled by the remaining megapixels."""
        total = sum(f["megapixels"] for f in self.files)
        left = sum(f["megapixels"] for f in self.files if f["key"] in remaining)
        job_s = (self.ref_s - self.startup_s) * left / total
        return Window(self.startup_s, self.startup_s + max(1.0, job_s))


def check_complete(bench: Bench, out: Path, keys: set[str], verified: set[str], run: Run, attempt: Attempt
                   ) -> None:
    """Compare the images of `keys` not yet verified in this run with the reference; record the corrupt."""
    for key in sorted(keys - verified):
        verified.add(key)
        problem = mismatch(out, key, bench.reference)
        if problem:
            attempt.corrupt[key] = problem
            run.corrupt.setdefault(key, f"complete after attempt {attempt.index} ({attempt.end}): {problem}")


def after_attempt(bench: Bench, out: Path, run: Run, attempt: Attempt, seen: dict[int, psutil.Process],
                  pgid: int, started_wall: float, verified: set[str]) -> None:
    """The checks after an attempt: what it recomputed, what is complete and whether it is right, orphans."""
    if attempt.end == "client killed":
        attempt.complete_at_kill = sorted(complete_keys(out, bench.keys))
    t0 = time.monotonic()
    attempt.orphans = reap(seen, pgid)
    attempt.reap_s = round(time.monotonic() - t0, 3)
    run.orphans += len(attempt.orphans)
    report = read_report(out, started_wall)
    if report is not None:
        status = {im["key"]: im["status"] for im in report.get("images", [])}
        attempt.report_counts = report.get("counts")
        attempt.recomputed = [k for k in attempt.complete_before if status.get(k) == "done"]
        run.recomputed += attempt.recomputed
    complete = complete_keys(out, bench.keys)
    attempt.complete_after_reap = sorted(complete)
    check_complete(bench, out, complete | set(attempt.complete_at_kill or ()), verified, run, attempt)


def do_run(bench: Bench, index: int, out: Path, logs: Path, first: tuple[str, str], rng: random.Random) -> Run:
    """One run: attempts with faults until one exits 0 or the cap; then the final verification."""
    run = Run(index, str(out), first)
    cmd = run_command(bench.corpus, out, bench.workers)
    verified: set[str] = set()
    t0 = time.monotonic()
    for i in range(bench.attempts):
        before = complete_keys(out, bench.keys)
        window = bench.window(set(bench.keys) - before)
        attempt = Attempt(i, plan_faults(rng, i, bench.attempts, window, first), round(window.end_s, 3),
                          complete_before=sorted(before))
        run.attempts.append(attempt)
        started_wall = time.time()
        pgid, seen = run_attempt(cmd, attempt, logs, rng, max(180.0, 8 * bench.ref_s), bench.megapixels)
        after_attempt(bench, out, run, attempt, seen, pgid, started_wall, verified)
        if attempt.end == "exit 0":
            break
        if attempt.returncode == 2:
            time.sleep(1.0)
    run.returncode = run.attempts[-1].returncode
    final_check(bench, out, run)
    run.seconds = round(time.monotonic() - t0, 3)
    return run


def final_check(bench: Bench, out: Path, run: Run) -> None:
    """Every input present and complete (else lost) and equal to the reference at every level (else corrupt)."""
    complete = complete_keys(out, bench.keys)
    for key in bench.keys:
        if key not in complete:
            run.lost[key] = image_state(out, key)
            continue
        problem = mismatch(out, key, bench.reference)
        if problem:
            run.corrupt.setdefault(key, f"final store: {problem}")


# --- setup ----------------------------------------------------------------------------------------------


def undisturbed(corpus: Path, out: Path, workers: int, logs: Path) -> Attempt:
    """One attempt without faults; it must exit 0."""
    attempt = Attempt(0, [], 0.0)
    pgid, seen = run_attempt(run_command(corpus, out, workers), attempt, logs, random.Random(0), 1800.0, {})
    attempt.orphans = reap(seen, pgid)
    if attempt.end != "exit 0":
        raise SystemExit(f"chaos: undisturbed run into {out} ended with {attempt.end}: {attempt.stderr[-5:]}")
    return attempt


def prepare(work: Path, workers: int, attempts: int) -> tuple[Bench, dict[str, Any]]:
    """Corpus, warm-up run (numba cache), reference run, determinism check; the shared Bench and its record."""
    corpus = work / "corpus"
    t0 = time.perf_counter()
    files = make_corpus(corpus)
    describe_plan(corpus, work / "plan.zarr", files)
    make_s = time.perf_counter() - t0
    modes = Counter(f["mode"] for f in files)
    print(f"corpus: {len(files)} images, {sum(f['megapixels'] for f in files):.1f} MP "
          f"({modes['whole']} whole, {modes['tiled']} tiled) in {make_s:.1f} s", flush=True)
    warm = undisturbed(corpus, work / "warm.zarr", workers, work / "logs" / "warm")
    ref = undisturbed(corpus, work / "reference.zarr", workers, work / "logs" / "reference")
    keys = [f["key"] for f in files]
    reference = load_pixels(work / "reference.zarr", keys)
    differ = {k: p for k in keys if (p := mismatch(work / "warm.zarr", k, reference))}
    if differ:
        raise SystemExit(f"chaos: two undisturbed runs differ, so nothing can be compared: {differ}")
    shutil.rmtree(work / "warm.zarr")
    startup = ref.dashboard_s or 0.0
    print(f"reference: {ref.seconds:.1f} s wall ({startup:.1f} s to the dashboard line), "
          f"warm-up {warm.seconds:.1f} s, the two stores equal", flush=True)
    bench = Bench(corpus, files, reference, ref.seconds, startup, workers, attempts)
    record = {"warmup_s": warm.seconds, "reference_s": ref.seconds, "reference_startup_s": startup,
              "undisturbed_runs_equal": True, "undisturbed_orphans": len(warm.orphans) + len(ref.orphans),
              "corpus_make_s": round(make_s, 2)}
    return bench, record


# --- report ---------------------------------------------------------------------------------------------


def totals(runs: list[Run], seconds: float) -> dict[str, Any]:
    attempts = [a for r in runs for a in r.attempts]
    faults = [f for a in attempts for f in a.faults]
    by_phase = {k: dict(Counter(f.phase for f in faults if f.kind == k and f.outcome == "killed")) for k in KINDS}
    return {
        "runs": len(runs),
        "worker_kills": sum(r.kills("worker") for r in runs),
        "client_kills": sum(r.kills("client") for r in runs),
        "reruns": sum(len(r.attempts) - 1 for r in runs),
        "lost": sum(len(r.lost) for r in runs),
        "corrupt": sum(len(r.corrupt) for r in runs),
        "recomputed": sum(len(r.recomputed) for r in runs),
        "orphans": sum(r.orphans for r in runs),
        "seconds": round(seconds, 1),
        "runs_not_exit_0": sum(1 for r in runs if r.returncode != 0),
        "attempt_ends": dict(Counter(a.end for a in attempts)),
        "kills_by_phase": by_phase,
        "faults_moot": sum(1 for f in faults if f.outcome != "killed"),
    }


def anomalies(runs: list[Run]) -> list[dict[str, Any]]:
    """Attempts that ended other than by exit 0 or our client kill, or that found something wrong, with the
    faults that preceded them (this attempt's and the previous attempt's end) and their stderr lines."""
    found = []
    for r in runs:
        for a in r.attempts:
            if a.end in ("exit 0", "client killed") and not (a.corrupt or a.recomputed or a.orphans):
                continue
            previous = r.attempts[a.index - 1].end if a.index else None
            found.append({"run": r.index, "attempt": a.index, "end": a.end, "previous_attempt_end": previous,
                          "faults": [f"{f.kind} kill, {f.phase}, at {f.fired_s} s, progress {f.progress}"
                                     for f in a.faults
                                     if f.outcome == "killed"],
                          "report_counts": a.report_counts, "corrupt": a.corrupt, "recomputed": a.recomputed,
                          "orphans": a.orphans, "stderr": a.stderr})
    return found


def run_line(run: Run, total: int) -> str:
    kills = ", ".join(f"{f.kind} {f.phase}@{f.fired_s:.1f}s" for a in run.attempts for f in a.faults
                      if f.outcome == "killed") or "none"
    moot = sum(1 for a in run.attempts for f in a.faults if f.outcome != "killed")
    kills += f" ({moot} moot: exited first)" if moot else ""
    ends = ", ".join(a.end for a in run.attempts)
    return (f"run {run.index + 1:>3}/{total}: {len(run.attempts)} attempt(s) ({ends}); kills: {kills}; "
            f"lost {len(run.lost)}, corrupt {len(run.corrupt)}, recomputed {len(run.recomputed)}, "
            f"orphans {run.orphans}; {run.seconds:.1f} s")


def summary_line(t: dict[str, Any]) -> str:
    return (f"chaos: {t['runs']} runs, {t['worker_kills']} worker kills, {t['client_kills']} client kills, "
            f"{t['reruns']} reruns, lost {t['lost']}, corrupt {t['corrupt']}, recomputed {t['recomputed']}, "
            f"orphans {t['orphans']}, {t['seconds']:.0f} s")


def machine() -> dict[str, Any]:
    """bench/archive.py's machine description (CPU, memory, versions, git revision)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from archive import machine as archive_machine

    return archive_machine()


def write_results(path: Path, header: dict[str, Any], runs: list[Run], seconds: float, finished: bool) -> None:
    payload = {**header, "finished": finished, "totals": totals(runs, seconds), "anomalies": anomalies(runs),
               "runs": [dataclasses.asdict(r) for r in runs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


# --- main -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="phos-chaos-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, metavar="N", help="runs (default 30; 3 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="local cluster workers (default 2)")
    parser.add_argument("--attempts", type=int, default=8, metavar="N",
                        help="attempts per run before what is still wrong counts (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (corpus, stores, logs)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 runs unless --runs is given")
    parser.add_argument("--out-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    n_runs = args.runs if args.runs is not None else (3 if args.quick else 30)
    if n_runs < 1 or args.workers < 1 or args.attempts < 1:
        parser.error("--runs, --workers and --attempts must be at least 1")

    started = dt.datetime.now(dt.UTC)
    path = args.out_dir / f"chaos-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    runs: list[Run] = []
    with workdir(args.keep) as work:
        bench, setup = prepare(work, args.workers, args.attempts)
        header = {
            "benchmark": "chaos: SIGKILL of workers and of the run process during `python -m phos_dask run`",
            "date_utc": started.isoformat(timespec="seconds"),
            "machine": machine(),
            "command": " ".join(run_command(Path("CORPUS"), Path("OUT.zarr"), args.workers)[1:]),
            "options": {"runs": n_runs, "seed": args.seed, "workers": args.workers, "attempts": args.attempts,
                        "orphan_grace_s": ORPHAN_GRACE_S},
            "corpus": {"seed": CORPUS_SEED, "jpeg_quality": JPEG_QUALITY, "tile": TILE,
                       "whole_limit_mp": WHOLE_LIMIT_MP, "files": bench.files,
                       "content": "two-colour gradient, 6-11 soft circles/rectangles, 3 white highlights, "
                                  "Gaussian blur sigma 1.5, Gaussian noise sigma 4"},
            "setup": setup,
        }
        for i, first in enumerate(stratified(rng, n_runs)):
            out = work / "runs" / f"run{i:03d}.zarr"
            run = do_run(bench, i, out, work / "logs" / f"run{i:03d}", first, rng)
            runs.append(run)
            print(run_line(run, n_runs), flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
            write_results(path, header, runs, time.monotonic() - t0, finished=False)
        seconds = time.monotonic() - t0
        header["git_at_end"] = machine()["git"]  # other people may commit while this runs
        write_results(path, header, runs, seconds, finished=True)
    t = totals(runs, seconds)
    print(summary_line(t), flush=True)
    for a in anomalies(runs):
        print(f"  run {a['run'] + 1} attempt {a['attempt']}: {a['end']} after {a['faults'] or 'no kill'} "
              f"(previous: {a['previous_attempt_end']}); stderr: {a['stderr'][-3:]}", flush=True)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
    return 1 if t["lost"] or t["corrupt"] or t["recomputed"] or t["orphans"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
