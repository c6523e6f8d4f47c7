"""The job on the Dask dashboard (/phos, /phos/status.json, phos_* series on /metrics, the job's span), on a
real external `dask scheduler` with its dashboard, and in a real browser (headless Chromium) when one is
installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_photo_bucket
from processes import stop

from phos_dask import thumbs
from phos_dask.dashboard import KEEP_FAILURES, KEEP_THUMBS, THUMB_BYTES, JobBoard, PhosDashboard, job_name

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
for _name in [k for k in ENV if k == "DASK_SCHEDULER_ADDRESS" or k.startswith("DASK_PHOS_DASK__")]:
    del ENV[_name]  # the tests name their scheduler and settings themselves


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def _status(base: str) -> dict:
    return json.loads(_get(f"{base}/phos/status.json")[2])


# ---- the scheduler's state, alone -------------------------------------------------------------------------


def test_job_names_come_from_the_output():
    assert job_name("/data/photos.zarr") == "photos"
    assert job_name("s3://bucket/archive/2024 scans.zarr/") == "2024_scans"
    assert job_name("out") == "out"
    assert job_name("/") == "job"


def test_the_board_counts_estimates_and_keeps_bounded_memory():
    board = JobBoard("j1", "photos", total=40, started=1000.0)
    board.apply({"skipped": 10}, now=1000.0)  # skipped while planning: no rate yet
    assert board.status(now=1001.0)["eta_s"] is None
    thumbs = [(f"img{i}.jpg", b"\xff\xd8" + bytes([i]) * 100) for i in range(30)]
    failures = [{"source": f"bad{i}.jpg", "error": f"cannot decode {i}"} for i in range(25)]
    board.apply({"done": 8, "failed": 2, "worked": 10, "megapixels": 48.0,
                 "stages": {"decode": 2.0, "model": 6.0, "write": 2.0}, "thumbs": thumbs, "failures": failures},
                now=1010.0)
    board.apply({"thumbs": [("huge.jpg", b"x" * (THUMB_BYTES + 1))]}, now=1010.0)
    st = board.status(now=1010.0)
    assert (st["total"], st["done"], st["skipped"], st["failed"], st["finished"]) == (40, 8, 10, 2, 20)
    assert st["megapixels"] == 48.0 and st["mp_per_s"] == pytest.approx(4.8)
    assert st["eta_s"] == pytest.approx(20 * 10 / 10)  # 20 left at 10 images per 10 s of work
    assert st["stages"]["model"] == {"seconds": 6.0, "share": 0.6}
    assert len(st["thumbs"]) == KEEP_THUMBS and st["thumbs"][0]["source"] == "img29.jpg"
    assert "huge.jpg" not in [t["source"] for t in st["thumbs"]]
    assert len(st["failures"]) == KEEP_FAILURES and st["failures"][0]["source"] == "bad24.jpg"
    newest = st["thumbs"][0]["id"]
    assert board.thumb(newest) == thumbs[-1][1] and board.thumb(newest - KEEP_THUMBS) is None
    board.end("finished", now=1020.0)
    assert board.status(now=5000.0)["eta_s"] == 0.0 and board.status(now=5000.0)["elapsed_s"] == 20.0


def test_the_prometheus_series_follow_the_newest_job_of_each_name():
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families

    from phos_dask.dashboard import _Collector

    plugin = PhosDashboard()
    plugin.update("a", begin={"name": "photos", "total": 5}, batch={"done": 5, "megapixels": 10.0})
    plugin.update("b", begin={"name": "photos", "total": 7}, batch={"done": 2, "failed": 1, "megapixels": 3.5})
    plugin.update("c", begin={"name": "scans", "total": 1}, batch={"skipped": 1})
    collector = _Collector()
    collector.plugins.add(plugin)
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode())
               for s in f.samples}
    assert samples[("phos_images_total", (("phos_job", "photos"), ("status", "done")))] == 2
    assert samples[("phos_images_total", (("phos_job", "photos"), ("status", "failed")))] == 1
    assert samples[("phos_megapixels_total", (("phos_job", "photos"),))] == 3.5
    assert samples[("phos_job_images", (("phos_job", "photos"),))] == 7
    assert samples[("phos_images_total", (("phos_job", "scans"), ("status", "skipped")))] == 1


def test_a_scheduler_that_cannot_take_the_plugin_never_fails_the_job(caplog):
    """E.g. phos_dask not importable on the scheduler: one warning, and the publisher does nothing."""
    from phos_dask.dashboard import Publisher

    class NoPlugins:
        def register_plugin(self, plugin):
            raise ModuleNotFoundError("No module named 'phos_dask'")

    with caplog.at_level("WARNING", logger="phos_dask.dashboard"):
        board = Publisher(NoPlugins(), "photos", 3)
    assert not board.enabled and "not available on this scheduler" in caplog.text
    board.add({"status": "done", "megapixels": 1.0}, thumb=b"jpeg")
    board.close()  # nothing sent, nothing raised


# ---- a real external scheduler with its dashboard -----------------------------------------------------------


@pytest.fixture(scope="module")
def dash_cluster(tmp_path_factory):
    """`dask scheduler` with its dashboard on a free port and one single-threaded worker, on loopback.
    Yields (scheduler address, scheduler file, dashboard base URL)."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dash-cluster")
    sched_file = tmp / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "scheduler did not start"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "3GB"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        with Client(scheduler_file=str(sched_file), timeout=30) as c:
            c.wait_for_workers(1, timeout=60)
            address, base = c.scheduler.address, c.dashboard_link.rsplit("/", 1)[0]
        yield address, sched_file, base
    finally:  # the worker first: a worker whose scheduler is already gone waits ~8 s to sign off
        stop(procs[1:])
        stop(procs[:1])


def _run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phos_dask", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def _metrics(base: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(f"{base}/metrics")[2].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("phos_")}


def test_status_json_and_metrics_match_the_report_on_an_external_scheduler(dash_cluster, tmp_path, photo):
    from distributed import Client

    _, sched_file, base = dash_cluster
    src = make_photo_bucket(tmp_path, photo)
    (src / "bad.jpg").write_bytes(b"this is no JPEG")
    out = tmp_path / "archive.zarr"
    perf = tmp_path / "perf.html"
    result = _run("run", str(src), "--out", str(out), "--scheduler-file", str(sched_file), "--json",
                  "--performance-report", str(perf))
    assert result.returncode == 1, result.stderr  # bad.jpg failed, the others finished
    assert f"job page: {base}/phos" in result.stderr
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert all(set(r["stages"]) == {"decode", "model", "write"} for r in report["images"] if r["status"] == "done")

    st = _status(base)
    assert (st["name"], st["state"], st["out"]) == ("archive", "finished", str(out))
    assert {k: st[k] for k in ("done", "skipped", "failed")} == report["counts"]
    assert st["total"] == st["finished"] == len(report["images"]) == 4
    assert st["megapixels"] == pytest.approx(report["megapixels"], abs=1e-3)
    assert st["mp_per_s"] > 0 and st["eta_s"] == 0.0
    assert st["stages"]["model"]["seconds"] > 0
    assert sum(s["share"] for s in st["stages"].values()) == pytest.approx(1.0, abs=0.01)
    assert [f["source"] for f in st["failures"]] == ["bad.jpg"] and "\n" not in st["failures"][0]["error"]
    assert sorted(t["source"] for t in st["thumbs"]) == ["odd.jpg", "sub dir/grey.png", "wide.png"]
    code, kind, jpeg = _get(f"{base}/phos/thumb/{st['thumbs'][0]['id']}.jpg")
    assert code == 200 and kind == "image/jpeg"
    assert thumbs.decode_pair(jpeg) is not None  # before | after, as the contact sheet stores them

    code, kind, page = _get(f"{base}/phos")
    assert code == 200 and kind.startswith("text/html")
    assert b"status.json" in page and b"<script src" not in page  # works offline: no scripts from elsewhere

    metrics = _metrics(base)
    for status, n in report["counts"].items():
        assert metrics[("phos_images_total", (("phos_job", "archive"), ("status", status)))] == n
    assert metrics[("phos_megapixels_total", (("phos_job", "archive"),))] == pytest.approx(report["megapixels"])
    assert metrics[("phos_job_images", (("phos_job", "archive"),))] == 4

    assert perf.exists() and b"Dask Performance Report" in perf.read_bytes()

    def span_metrics(dask_scheduler, name: str) -> dict:  # local: pickled by value for the scheduler
        spans = dask_scheduler.extensions["spans"].spans_search_by_name.get((name,), [])
        prefixes = {k[1] for s in spans for k in s.cumulative_worker_metrics if k[0] == "execute"}
        return {"spans": len(spans), "prefixes": sorted(str(p) for p in prefixes)}

    with Client(scheduler_file=str(sched_file), timeout=30) as client:  # fine metrics grouped by the job's span
        deadline = time.monotonic() + 20
        while True:
            found = client.run_on_scheduler(span_metrics, name="phos-archive")
            if "film-image" in found["prefixes"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert found["spans"] == 1 and "film-image" in found["prefixes"]


# ---- in a real browser ------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class _DevTools:
    """Headless Chromium driven through its DevTools protocol (one page, over tornado's websocket client)."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.ws = None
        self.n = 0
        try:
            self.ws_url = self._page(profile / "DevToolsActivePort")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _page(active: Path) -> str:
        """The websocket URL of the browser's page, once its DevTools port is open."""
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        while True:
            targets = json.loads(_get(f"http://127.0.0.1:{port}/json/list")[2])
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)

    async def call(self, method: str, **params) -> dict:
        from tornado.websocket import websocket_connect

        if self.ws is None:
            self.ws = await websocket_connect(self.ws_url, max_message_size=64 << 20)
        self.n += 1
        await self.ws.write_message(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.read_message())
            if reply.get("id") == self.n:
                assert "error" not in reply, reply
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def disconnect(self) -> None:
        """Close the websocket (inside the event loop that opened it)."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def close(self) -> None:
        stop([self.proc], timeout=10)


READ_PAGE = """JSON.stringify({
  where: document.getElementById("where").textContent,
  state: document.getElementById("state").textContent,
  finished: document.getElementById("finished").textContent,
  total: document.getElementById("total").textContent,
  done: document.getElementById("done").textContent,
  thumbs: Array.from(document.querySelectorAll("#thumbs img")).filter(i => i.complete && i.naturalWidth > 0).length
})"""


@pytest.mark.skipif(_chromium() is None, reason="no Chromium (apt-get install chromium)")
def test_the_job_page_moves_in_a_real_browser(dash_cluster, tmp_path, photo):
    """Headless Chromium shows /phos while `run` renders 8 images on one worker: the counts it displays
    (written by the page's own script from /phos/status.json) rise while the job runs and end at the total."""
    _, sched_file, base = dash_cluster
    src = tmp_path / "many"
    src.mkdir()
    frame = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), (1500, 1000), interpolation=cv2.INTER_AREA)
    for i in range(8):
        cv2.imwrite(str(src / f"frame{i}.jpg"), np.roll(frame, 97 * i, axis=1))
    out = tmp_path / "browser.zarr"
    browser = _DevTools(_chromium(), tmp_path / "profile")
    job = subprocess.Popen([sys.executable, "-m", "phos_dask", "run", str(src), "--out", str(out),
                            "--scheduler-file", str(sched_file), "--json"],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[dict] = []

    async def watch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until the scheduler has begun this job
            try:
                if _status(base).get("out") == str(out):
                    break
            except OSError:  # /phos is there once the job registered the plugin
                pass
            await asyncio.sleep(0.1)
        try:
            await browser.call("Page.navigate", url=f"{base}/phos")
            while time.monotonic() < deadline:
                page = json.loads(await browser.evaluate(READ_PAGE) or "{}")
                if page.get("where", "").endswith(str(out)):
                    seen.append(page)
                    if page["state"] == "(finished)" and page["thumbs"] >= 8:
                        return
                await asyncio.sleep(0.25)
        finally:
            browser.disconnect()

    try:
        asyncio.run(watch())
        assert job.wait(timeout=240) == 0, job.stderr.read()
    finally:
        browser.close()
        if job.poll() is None:
            job.kill()
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert report["counts"] == {"done": 8, "skipped": 0, "failed": 0}
    finished = [int(p["finished"]) for p in seen]
    assert finished == sorted(finished), finished  # never backwards
    assert len(set(finished)) >= 3, finished  # it moved while the job ran, not only start and end
    assert seen[-1]["finished"] == seen[-1]["total"] == seen[-1]["done"] == "8"
    assert seen[-1]["thumbs"] == 8  # the before/after strip loaded every JPEG
