"""Faults: a worker killed mid-job, the `run` process killed mid-job, and two runs on one output.
Nothing finished is lost or redone, nothing half-written is marked complete, outputs equal an undisturbed run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import zarr
from PIL import Image
from processes import kill_worker_running

from phos_dask import lease
from phos_dask.cluster import connect
from phos_dask.job import JobError, JobSpec, run_job
from phos_dask.settings import Settings
from phos_dask.store import image_status
from phos_dask.tasks import JobConfig, process_image

ENV = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
#: Small images run whole; the larger ones (> 0.3 MP) are cut into 256-px tiles.
FLAGS = ["--film", "Portra400", "--whole-limit", "0.3", "--tile", "256", "--dashboard-address", "127.0.0.1:0"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, photo) -> Path:
    """Ten inputs cut from the photograph: six small ones (one task each) and four tiled ones."""
    src = tmp_path_factory.mktemp("faults") / "src"
    src.mkdir()
    base = cv2.resize(photo, (1500, 1000), interpolation=cv2.INTER_AREA)  # whatever photograph is at hand
    for i in range(10):
        w, h = (600, 450) if i < 6 else (1200, 800)
        y, x = (i * 37) % (1000 - h), (i * 53) % (1500 - w)
        Image.fromarray(base[y : y + h, x : x + w]).save(src / f"frame {i:02d}.png")
    return src


def levels(out: Path) -> dict[str, list[np.ndarray]]:
    store = zarr.open_group(str(out), mode="r")
    result = {}
    for key in sorted(store.group_keys()):
        if image_status(store, key) is not None:
            group = store[key]
            result[key] = [group[name][...] for name in sorted(group.array_keys(), key=int)]
    return result


def assert_same(got: dict, want: dict, keys=None) -> None:
    for key in keys if keys is not None else want:
        assert len(got[key]) == len(want[key]), key
        for a, b in zip(got[key], want[key], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=key)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "run", str(source), "--out", str(out), *FLAGS,
                           "--workers", "2"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = levels(out)
    assert len(result) == 10
    return result


def test_a_worker_killed_mid_job_changes_nothing(source, reference, tmp_path):
    """SIGKILL the worker process that is rendering a tile; the nanny starts a new one, Dask reruns the lost
    tasks, and every output is bit-identical to the undisturbed run."""
    out = tmp_path / "out.zarr"
    spec = JobSpec(str(source), str(out), Settings(film="Portra400", dtype="uint16"), tile=256, whole_limit_mp=0.3)
    with connect(workers=2, dashboard_address="127.0.0.1:0") as client:
        pids = client.run(os.getpid)
        report: dict = {}
        job = threading.Thread(target=lambda: report.update(run_job(spec, client)))
        job.start()
        kill_worker_running(client, pids, job, lambda key: key.startswith("film-tile-"), "tile task", poll=0.02)
        job.join(timeout=300)
        assert not job.is_alive()
    assert report["counts"] == {"done": 10, "skipped": 0, "failed": 0}, report
    assert_same(levels(out), reference)


def _children(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_the_run_killed_mid_job_is_finished_by_running_it_again(source, reference, tmp_path):
    """SIGKILL `run` once some images are complete: its workers go with it; the images marked complete
    are exactly right; the same command run again renders only the others and the outputs equal the
    undisturbed run's."""
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "phos_dask", "run", str(source), "--out", str(out), *FLAGS, "--workers", "2",
           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True)
    complete: set[str] = set()
    deadline = time.monotonic() + 300
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        children = _children(proc) or children
        if (out / "zarr.json").exists():
            store = zarr.open_group(str(out), mode="r")
            complete = {k for k in store.group_keys() if image_status(store, k) is not None}
            if len(complete) >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None and 3 <= len(complete) < 10, "the job should be killed mid-way"
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], f"processes left behind: {alive}"

    at_kill = levels(out)
    assert_same(at_kill, reference, keys=list(at_kill))  # nothing half-written is marked complete
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr
    report = json.loads((out / "_phos" / "report.json").read_text())
    skipped = {r["key"] for r in report["images"] if r["status"] == "skipped"}
    done = {r["key"] for r in report["images"] if r["status"] == "done"}
    assert skipped == set(at_kill) and len(done) == 10 - len(at_kill)  # no complete image rendered again
    assert_same(levels(out), reference)
    assert not (out / lease.LEASE).exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_is_alive(source, tmp_path):
    out = tmp_path / "busy.zarr"
    with lease.hold(str(out)):
        proc = subprocess.run([sys.executable, "-m", "phos_dask", "run", str(source), "--out", str(out), *FLAGS,
                               "--workers", "1"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("phos_dask: error: output ")
    assert "in use by another run" in errors[0]
    assert f"pid {os.getpid()}" in errors[0]
    assert not out.exists() or not any(p.name.startswith("frame") for p in out.iterdir())  # it wrote nothing


def _write_record(out: Path, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"token": "feedfacecafebeef", "host": socket.gethostname(), "pid": os.getpid(),
              "pid_started": psutil.Process().create_time(), "started": "2026-01-01T00:00:00+00:00",
              "heartbeat": time.time(), **fields}
    (out / lease.LEASE).write_text(json.dumps(record))


def test_a_lease_left_by_a_dead_process_on_this_machine_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_record(tmp_path / "o.zarr", pid=dead.pid, pid_started=time.time() - 5)
    with lease.hold(str(tmp_path / "o.zarr")) as held:
        assert lease.read_holder(str(tmp_path / "o.zarr"))["token"] == held.token
    assert lease.read_holder(str(tmp_path / "o.zarr")) is None  # released at the end


def test_a_lease_from_another_machine_lives_until_its_heartbeat_is_older_than_the_ttl(tmp_path):
    out = tmp_path / "o.zarr"
    _write_record(out, host="elsewhere", heartbeat=time.time() - lease.TTL / 2)
    with pytest.raises(lease.LeaseError, match=r"in use by another run .* on elsewhere"):
        lease.acquire(str(out))
    _write_record(out, host="elsewhere", heartbeat=time.time() - lease.TTL - 1)
    with lease.hold(str(out)) as held:
        assert lease.read_holder(str(out))["token"] == held.token


def test_a_torn_lease_file_does_not_block_the_output_forever(tmp_path):
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / lease.LEASE).write_text('{"token": "abc", "ho')
    with lease.hold(str(out)) as held:
        assert lease.read_holder(str(out))["token"] == held.token


def test_run_job_refuses_an_output_whose_lease_is_held(source, tmp_path):
    out = tmp_path / "o.zarr"
    with lease.hold(str(out)), pytest.raises(JobError, match="in use by another run"):
        run_job(JobSpec(str(source), str(out), Settings(film="Portra400")), client=None)


def test_tasks_of_a_run_that_lost_its_lease_write_nothing(source, tmp_path):
    """A task left running by a run whose lease was taken over stops before it writes."""
    from phos_dask.sources import discover

    out = tmp_path / "o.zarr"
    item = discover(str(source))[0]
    with lease.hold(str(out)):
        cfg = JobConfig(str(out), Settings(film="Portra400"), lease_token="0123456789abcdef")
        result = process_image(cfg, item)
    assert result.status == "failed" and "lease" in result.error and "taken over" in result.error
    assert not out.exists() or not any(p.name != lease.LEASE for p in out.iterdir())  # nothing written


def test_the_heartbeat_notices_a_lease_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT", 0.05)
    out = tmp_path / "o.zarr"
    held = lease.acquire(str(out))
    try:
        _write_record(out, token="0000000000000000")
        assert held.lost.wait(5)
    finally:
        held.release()
    assert lease.read_holder(str(out))["token"] == "0000000000000000"  # another run's lease is left alone


def test_an_output_that_cannot_be_created_is_one_line_and_exit_1(source, tmp_path):
    (tmp_path / "a file").write_text("not a folder")
    out = tmp_path / "a file" / "o.zarr"
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "run", str(source), "--out", str(out), *FLAGS],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1
    expected = f"phos_dask: error: cannot write the output {str(out)!r}: Not a directory"
    assert proc.stderr.strip().splitlines() == [expected]


DIE_ONCE = """import os
marker = os.environ.get("PHOS_TEST_DIE_ONCE")
if marker and os.path.exists(marker):
    os.remove(marker)
    os._exit(3)
"""


def test_a_worker_dying_while_the_local_cluster_starts_is_survived(tmp_path):
    """The first worker process exits at once (a sitecustomize in its PYTHONPATH); the cluster is started
    again and the job goes on. Without the second attempt, the failure is one ClusterError line."""
    import dask

    from phos_dask.cluster import ClusterError, _start_local

    (tmp_path / "sitecustomize.py").write_text(DIE_ONCE)
    marker = tmp_path / "die"
    environ = {"PYTHONPATH": str(tmp_path), "PHOS_TEST_DIE_ONCE": str(marker)}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        marker.touch()
        with pytest.raises(ClusterError, match="the local Dask cluster failed to start"):
            _start_local(1, "127.0.0.1:0", attempts=1)
        assert not marker.exists()
        marker.touch()
        with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
            assert not marker.exists()
            assert client.submit(sum, [1, 2]).result() == 3


def test_a_takeover_waits_until_no_task_can_act_on_an_old_lease_check(tmp_path, monkeypatch):
    """Tasks remember a 'still held' answer for CHECK_CACHE s; a run taking over a dead lease starts only
    after that, so a task of the dead run asks the store again before its next write and stops."""
    monkeypatch.setattr(lease, "CHECK_CACHE", 0.6)
    out = tmp_path / "o.zarr"
    out.mkdir()
    old = "00000000000000aa"
    _write_record(out, token=old, host="elsewhere", heartbeat=time.time() - lease.TTL - 1)
    lease._checked.clear()
    assert lease.still_held(str(out), None, old)  # a task of the old run checked a moment ago
    t0 = time.monotonic()
    with lease.hold(str(out)):
        assert time.monotonic() - t0 >= 0.6
        assert not lease.still_held(str(out), None, old)
