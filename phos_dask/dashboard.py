"""The job on the Dask dashboard: a page at `/phos`, its numbers at `/phos/status.json`, Prometheus series
on `/metrics`.

The client registers `PhosDashboard`, a scheduler plugin, with `install(client)` (works the same for a
local cluster and an external `dask scheduler`, which needs phos_dask importable). On the scheduler the
plugin adds the routes to the dashboard's HTTP server, a scheduler handler (`phos_dashboard`) that the
client's `Publisher` feeds with batches of image results, and a Prometheus collector. It keeps bounded
state: the last KEEP_JOBS jobs, per job counts, megapixels, per-stage seconds, the last KEEP_FAILURES
failures and the last KEEP_THUMBS before/after thumbnails (each at most THUMB_BYTES; they are the contact
sheet's pairs, ~10-30 KB): at most ~12 MB however long the jobs, typically well under 1 MB a job.

Prometheus series (label `phos_job`: the job's name, one series set per name, the newest job's):

* `phos_images_total{phos_job, status="done|skipped|failed"}` (counter)
* `phos_megapixels_total{phos_job}` (counter: megapixels rendered)
* `phos_job_images{phos_job}` (gauge: the job's images in all)

(`phos_job` rather than `job`, which Prometheus sets itself to the scrape job's name.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web

logger = logging.getLogger(__name__)

#: The plugin's name on the scheduler, and the scheduler handler the client sends results to.
NAME = "phos-dashboard"
HANDLER = "phos_dashboard"
#: Bounds of what the scheduler keeps.
KEEP_JOBS = 8
KEEP_FAILURES = 10
KEEP_THUMBS = 12
THUMB_BYTES = 128 << 10
#: The client sends what it has every EVERY s, a heartbeat every HEARTBEAT s, and the rest at the end.
EVERY = 0.5
HEARTBEAT = 10.0
STAGES = ("decode", "model", "write")
STATUSES = ("done", "skipped", "failed")


def job_name(out: str) -> str:
    """A job's name from its output: `…/photos.zarr` → `photos` (letters, digits, `._-`; at most 64)."""
    last = PurePosixPath(out.rstrip("/").replace("\\", "/").split("://", 1)[-1]).name or "job"
    stem = last[:-5] if last.lower().endswith(".zarr") else last
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:64] or "job"


class JobBoard:
    """One job's numbers as the scheduler keeps them (bounded), and its status document."""

    def __init__(self, job_id: str, name: str, total: int, source: str = "", out: str = "",
                 started: float | None = None) -> None:
        self.id, self.name, self.total, self.source, self.out = job_id, name, int(total), source, out
        self.started = time.time() if started is None else started
        self.updated = self.started
        self.ended: float | None = None
        self.outcome = "running"
        self.counts = dict.fromkeys(STATUSES, 0)
        #: images that went through a task (not skipped or refused up front): the ETA's rate
        self.worked = 0
        self.megapixels = 0.0
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.failures: deque[dict[str, str]] = deque(maxlen=KEEP_FAILURES)
        self.thumbs: deque[tuple[int, str, bytes]] = deque(maxlen=KEEP_THUMBS)
        self._seq = 0

    def apply(self, batch: dict[str, Any], now: float | None = None) -> None:
        """Add a batch from the client's Publisher (see Publisher._take)."""
        self.updated = time.time() if now is None else now
        for status in STATUSES:
            self.counts[status] += int(batch.get(status, 0))
        self.worked += int(batch.get("worked", 0))
        self.megapixels += float(batch.get("megapixels", 0.0))
        for stage in STAGES:
            self.stages[stage] += float(batch.get("stages", {}).get(stage, 0.0))
        for failure in batch.get("failures", ())[-KEEP_FAILURES:]:
            self.failures.append({"source": str(failure.get("source", ""))[:500],
                                  "error": str(failure.get("error", ""))[:500]})
        for source, jpeg in batch.get("thumbs", ())[-KEEP_THUMBS:]:
            if isinstance(jpeg, bytes | bytearray | memoryview) and len(jpeg) <= THUMB_BYTES:
                self._seq += 1
                self.thumbs.append((self._seq, str(source)[:500], bytes(jpeg)))

    def end(self, outcome: str, now: float | None = None) -> None:
        self.ended = time.time() if now is None else now
        self.outcome = outcome

    def thumb(self, seq: int) -> bytes | None:
        return next((jpeg for s, _, jpeg in self.thumbs if s == seq), None)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The job's numbers: counts of the total, MP, MP/s, ETA (s), per-stage seconds, last failures and
        the ids of the last thumbnails (served at thumb/<id>.jpg)."""
        now = time.time() if now is None else now
        elapsed = max((self.ended or now) - self.started, 1e-9)
        finished = sum(self.counts.values())
        remaining = max(self.total - finished, 0)
        if self.ended is not None or remaining == 0:
            eta: float | None = 0.0
        else:
            eta = remaining * elapsed / self.worked if self.worked else None
        timed = sum(self.stages.values())
        return {
            "job": self.id, "name": self.name, "source": self.source, "out": self.out,
            "state": self.outcome, "total": self.total, **self.counts, "finished": finished,
            "megapixels": round(self.megapixels, 3),
            "mp_per_s": round(self.megapixels / elapsed, 3),
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "updated_s_ago": round(max(now - self.updated, 0.0), 1),
            "stages": {s: {"seconds": round(v, 3), "share": round(v / timed, 3) if timed else 0.0}
                       for s, v in self.stages.items()},
            "failures": list(self.failures)[::-1],
            "thumbs": [{"id": seq, "source": source} for seq, source, _ in reversed(self.thumbs)],
        }


class PhosDashboard(SchedulerPlugin):
    """Scheduler plugin: the job pages and series. Registered once per scheduler (idempotent): a later
    registration keeps the first plugin and its jobs."""

    idempotent = True
    name = NAME

    def __init__(self) -> None:
        self.jobs: OrderedDict[str, JobBoard] = OrderedDict()
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers[HANDLER] = self.update
        app = getattr(scheduler, "http_application", None)
        if app is not None:
            prefix = _prefix(app)
            routes = [
                (rf"{prefix}phos/?", _PageHandler, {"plugin": self}),
                (rf"{prefix}phos/status\.json", _StatusHandler, {"plugin": self}),
                (rf"{prefix}phos/thumb/(\d+)\.jpg", _ThumbHandler, {"plugin": self}),
            ]
            app.add_handlers(r".*", routes)
        _COLLECTOR.plugins.add(self)
        _COLLECTOR.register()

    async def close(self) -> None:
        _COLLECTOR.plugins.discard(self)

    def update(self, job: str, batch: dict[str, Any] | None = None, begin: dict[str, Any] | None = None,
               end: str | None = None) -> None:
        """The `phos_dashboard` handler: `begin` a job ({name, total, source, out}), add a `batch`, `end` it."""
        if begin is not None:
            self.jobs[job] = JobBoard(job, job_name(str(begin.get("name", "job"))), int(begin.get("total", 0)),
                                      str(begin.get("source", "")), str(begin.get("out", "")))
            while len(self.jobs) > KEEP_JOBS:
                self.jobs.popitem(last=False)
        board = self.jobs.get(job)
        if board is None:
            return
        if batch:
            board.apply(batch)
        if end is not None:
            board.end(end)

    def latest(self, job: str | None = None) -> JobBoard | None:
        if job:
            return self.jobs.get(job)
        return next(reversed(self.jobs.values()), None)

    def status(self, job: str | None = None) -> dict[str, Any]:
        board = self.latest(job)
        doc: dict[str, Any] = board.status() if board else {"job": None, "state": "no job yet"}
        doc["jobs"] = [{"job": b.id, "name": b.name, "state": b.outcome} for b in reversed(self.jobs.values())]
        return doc


def _prefix(app: Any) -> str:
    """The dashboard's URL prefix (`dask scheduler --dashboard-prefix`), read off its /health route."""
    stack = [app.wildcard_router, app.default_router]
    while stack:
        router = stack.pop()
        for rule in getattr(router, "rules", ()):
            pattern = getattr(getattr(rule.matcher, "regex", None), "pattern", "")
            if pattern.endswith("health$"):
                return pattern[: -len("health$")]
            if hasattr(rule.target, "rules"):
                stack.append(rule.target)
    return "/"


class _Handler(web.RequestHandler):
    def initialize(self, plugin: PhosDashboard) -> None:
        self.plugin = plugin


class _StatusHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(self.plugin.status(self.get_argument("job", None))))


class _ThumbHandler(_Handler):
    def get(self, seq: str) -> None:
        board = self.plugin.latest(self.get_argument("job", None))
        jpeg = board.thumb(int(seq)) if board else None
        if jpeg is None:
            raise web.HTTPError(404)
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "max-age=3600")
        self.write(jpeg)


class _PageHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(PAGE)


class _Collector:
    """The Prometheus collector of every PhosDashboard in this process, registered once in
    prometheus_client's default registry (the one the scheduler's /metrics serves)."""

    def __init__(self) -> None:
        self.plugins: weakref.WeakSet[PhosDashboard] = weakref.WeakSet()
        self.registered = False

    def register(self) -> None:
        if self.registered:
            return
        import prometheus_client

        prometheus_client.REGISTRY.register(self)
        self.registered = True

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        images, megapixels, totals = self._families()
        seen: set[str] = set()
        for plugin in list(self.plugins):
            for board in reversed(plugin.jobs.values()):  # the newest job of each name
                if board.name in seen:
                    continue
                seen.add(board.name)
                for status in STATUSES:
                    images.add_metric([board.name, status], board.counts[status])
                megapixels.add_metric([board.name], board.megapixels)
                totals.add_metric([board.name], board.total)
        return iter((images, megapixels, totals))

    @staticmethod
    def _families() -> tuple[Any, Any, Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        return (CounterMetricFamily("phos_images", "Images of a phos_dask job by outcome",
                                    labels=["phos_job", "status"]),
                CounterMetricFamily("phos_megapixels", "Megapixels a phos_dask job rendered", labels=["phos_job"]),
                GaugeMetricFamily("phos_job_images", "Images of a phos_dask job in all", labels=["phos_job"]))


_COLLECTOR = _Collector()


def install(client: Any) -> str | None:
    """Register PhosDashboard on the client's scheduler (once per scheduler); return the job page's URL
    (None when the scheduler has no dashboard). Raises what the registration raises (e.g. phos_dask is
    not importable on the scheduler)."""
    client.register_plugin(PhosDashboard())
    link = getattr(client, "dashboard_link", None)
    return f"{link.rsplit('/', 1)[0]}/phos" if link else None


class Publisher:
    """The client's side: sums image results and sends them to the scheduler's PhosDashboard from a
    background thread every EVERY s (a heartbeat every HEARTBEAT s when nothing happened), without waiting
    for the answer, so the job never waits on the dashboard; `add` only adds numbers. When the dashboard
    cannot be installed the publisher does nothing."""

    def __init__(self, client: Any, name: str, total: int, source: str = "", out: str = "",
                 every: float = EVERY) -> None:
        self.client, self.every = client, every
        self.job = uuid.uuid4().hex[:8]
        self.enabled = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: concurrent.futures.Future | None = None
        self._last = 0.0
        self._batch = self._empty()
        try:
            install(client)
        except Exception as e:
            self.enabled = False
            logger.warning("phos_dask: the job page is not available on this scheduler (%s: %s)",
                           type(e).__name__, " ".join(str(e).split())[:200])
            return
        self._send({"begin": {"name": name, "total": int(total), "source": source, "out": out}}, wait=True)
        self._thread = threading.Thread(target=self._tick, name="phos-dashboard", daemon=True)
        self._thread.start()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {**dict.fromkeys(STATUSES, 0), "worked": 0, "megapixels": 0.0, "stages": dict.fromkeys(STAGES, 0.0),
                "failures": [], "thumbs": []}

    def add(self, row: dict[str, Any], thumb: bytes | None = None, task: bool = True) -> None:
        """One image's result row (status, megapixels, stages, source, error); `thumb`: its before/after
        JPEG; `task`: it went through a task (not skipped or refused while planning)."""
        if not self.enabled:
            return
        status = row.get("status")
        status = status if status in STATUSES else "failed"
        with self._lock:
            b = self._batch
            b[status] += 1
            b["worked"] += int(task)
            if status == "done":
                b["megapixels"] += float(row.get("megapixels", 0.0))
            for stage, seconds in (row.get("stages") or {}).items():
                if stage in b["stages"]:
                    b["stages"][stage] += float(seconds)
            if status == "failed":
                b["failures"] = [*b["failures"][-(KEEP_FAILURES - 1):],
                                 {"source": str(row.get("source", "")), "error": str(row.get("error", ""))}]
            if thumb is not None:
                b["thumbs"] = [*b["thumbs"][-(KEEP_THUMBS - 1):], (str(row.get("source", "")), thumb)]

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.flush()

    def flush(self) -> None:
        """Send what has been added, unless the last send is still in flight (it then goes with the next)."""
        if not self.enabled or (self._pending is not None and not self._pending.done()):
            return
        with self._lock:
            batch = self._batch
            if batch == self._empty() and time.monotonic() - self._last < HEARTBEAT:
                return
            self._batch = self._empty()
        self._send({"batch": batch})

    def close(self, outcome: str = "finished", timeout: float = 5.0) -> None:
        """Send the rest and end the job (`outcome`: finished, or e.g. interrupted)."""
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(timeout=timeout)
        if self._pending is not None:
            concurrent.futures.wait([self._pending], timeout=timeout)
        with self._lock:
            batch, self._batch = self._batch, self._empty()
        self._send({"batch": batch, "end": outcome}, wait=True, timeout=timeout)
        self.enabled = False

    def _send(self, msg: dict[str, Any], wait: bool = False, timeout: float = 5.0) -> None:
        self._last = time.monotonic()
        rpc = self.client.scheduler

        async def send() -> None:
            await getattr(rpc, HANDLER)(job=self.job, **msg)

        try:
            pending = asyncio.run_coroutine_threadsafe(send(), self.client.loop.asyncio_loop)
            self._pending = pending
            pending.add_done_callback(self._done)
            if wait:
                pending.result(timeout=timeout)
        except Exception as e:  # the dashboard is a view: a failure to update it never fails the job
            logger.debug("phos_dask: dashboard update failed: %s", e)

    @staticmethod
    def _done(fut: concurrent.futures.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            logger.debug("phos_dask: dashboard update failed: %s", fut.exception())


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>phos_dask job</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} .sub{color:#666;margin-bottom:1em;word-break:break-all}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(9em,1fr));gap:.6em;margin:1em 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .7em}
.card b{display:block;font-size:1.5em} .card span{color:#666}
.bar{height:14px;background:#e4e4e4;border-radius:7px;overflow:hidden;display:flex}
.bar i{display:block;height:100%} .d{background:#3a7} .s{background:#8ab} .f{background:#c44}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
#thumbs{display:flex;gap:.5em;overflow-x:auto;padding-bottom:.3em}
#thumbs figure{margin:0;flex:none;background:#fff;border:1px solid #ddd;
padding:.3em} #thumbs img{height:120px;display:block} #thumbs figcaption{font-size:.8em;color:#555;
max-width:240px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
#failures li{margin:.2em 0} .err{color:#a22} #conn{color:#a22}
</style></head><body>
<h1>phos_dask job <span id="name"></span> <small id="state"></small> <small id="conn"></small></h1>
<div class="sub" id="where"></div>
<div class="bar"><i class="d" id="bar-done"></i><i class="s" id="bar-skipped"></i>
<i class="f" id="bar-failed"></i></div>
<div class="grid">
<div class="card"><b id="finished">-</b><span>of <span id="total">-</span> images</span></div>
<div class="card"><b id="done">-</b><span>done</span></div>
<div class="card"><b id="skipped">-</b><span>skipped</span></div>
<div class="card"><b id="failed">-</b><span>failed</span></div>
<div class="card"><b id="megapixels">-</b><span>MP done</span></div>
<div class="card"><b id="mp_per_s">-</b><span>MP/s</span></div>
<div class="card"><b id="eta">-</b><span>time left</span></div>
<div class="card"><b id="elapsed">-</b><span>elapsed</span></div>
</div>
<h2>Time per stage</h2>
<table><tr><th>stage</th><th>task seconds</th><th>share</th></tr>
<tr><td>decode</td><td id="decode-s">-</td><td id="decode-p">-</td></tr>
<tr><td>model</td><td id="model-s">-</td><td id="model-p">-</td></tr>
<tr><td>write</td><td id="write-s">-</td><td id="write-p">-</td></tr></table>
<h2>Latest images (before | after)</h2><div id="thumbs"></div>
<h2>Last failures</h2><ul id="failures"></ul>
<script>
"use strict";
const base = location.pathname.replace(/\\/?$/, "/");
const $ = (id) => document.getElementById(id);
const dur = (s) => s == null ? "-" : s < 90 ? s.toFixed(0) + " s" : s < 5400 ? (s / 60).toFixed(1) + " min"
  : (s / 3600).toFixed(1) + " h";
let shown = "";
function put(id, text) { $(id).textContent = text; }
function render(st) {
  put("conn", "");
  if (!st.job) { put("state", st.state); return; }
  put("name", st.name); put("state", "(" + st.state + ")");
  put("where", st.source + " \\u2192 " + st.out);
  for (const k of ["total", "finished", "done", "skipped", "failed"]) put(k, String(st[k]));
  put("megapixels", st.megapixels.toFixed(1)); put("mp_per_s", st.mp_per_s.toFixed(2));
  put("eta", dur(st.eta_s)); put("elapsed", dur(st.elapsed_s));
  for (const k of ["done", "skipped", "failed"])
    $("bar-" + k).style.width = (st.total ? 100 * st[k] / st.total : 0) + "%";
  for (const k of ["decode", "model", "write"]) {
    const sec = st.stages[k].seconds; put(k + "-s", sec.toFixed(sec < 10 ? 2 : 1));
    put(k + "-p", (100 * st.stages[k].share).toFixed(0) + " %");
  }
  const ul = $("failures"); ul.replaceChildren();
  for (const f of st.failures) {
    const li = document.createElement("li"); const e = document.createElement("span");
    e.className = "err"; e.textContent = f.error; li.append(f.source + ": ", e); ul.append(li);
  }
  const ids = st.job + ":" + st.thumbs.map((t) => t.id).join(",");
  if (ids !== shown) {
    shown = ids;
    const strip = $("thumbs"); strip.replaceChildren();
    for (const t of st.thumbs) {
      const fig = document.createElement("figure"); const img = document.createElement("img");
      img.src = base + "thumb/" + t.id + ".jpg?job=" + st.job; img.alt = t.source;
      const cap = document.createElement("figcaption"); cap.textContent = t.source; cap.title = t.source;
      fig.append(img, cap); strip.append(fig);
    }
  }
}
async function poll() {
  try {
    const r = await fetch(base + "status.json" + location.search, {cache: "no-store"});
    render(await r.json());
  } catch (e) { put("conn", "(no answer from the scheduler)"); }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""
