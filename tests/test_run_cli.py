"""`python -m phos_dask run` end to end: a local cluster, an external multi-process cluster, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_photo_bucket
from processes import stop

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phos_dask", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, photo) -> Path:
    return make_photo_bucket(tmp_path_factory.mktemp("cli"), photo)


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory):
    """A real scheduler and two worker processes on loopback, started with Dask's own CLI."""
    tmp = tmp_path_factory.mktemp("cluster")
    sched_file = tmp / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                 "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "3GB"],
                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
            address = c.scheduler.address
        yield address, sched_file
    finally:  # workers first: a worker whose scheduler is already gone waits ~8 s to sign off
        stop(procs[1:])
        stop(procs[:1])
        assert all(p.poll() is not None for p in procs)


def _level0(out: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(out), mode="r")
    return {k: root[k]["0"][...] for k in sorted(root.group_keys()) if not k.startswith("_")}


def test_external_cluster_gives_the_same_outputs_as_a_local_run(bucket, external_cluster, tmp_path):
    address, sched_file = external_cluster
    flags = ["--film", "Cinestill800T", "--seed", "5", "--tile", "512", "--whole-limit", "1", "--compression", "zstd"]
    local = _run("run", str(bucket), "--out", str(tmp_path / "local.zarr"), "--workers", "2",
                 "--dashboard-address", "127.0.0.1:0", *flags)
    assert local.returncode == 0, local.stderr
    remote = _run("run", str(bucket), "--out", str(tmp_path / "remote.zarr"), "--scheduler", address, *flags)
    assert remote.returncode == 0, remote.stderr
    via_file = _run("run", str(bucket), "--out", str(tmp_path / "file.zarr"), "--scheduler-file",
                    str(sched_file), *flags)
    assert via_file.returncode == 0, via_file.stderr
    a, b, c = _level0(tmp_path / "local.zarr"), _level0(tmp_path / "remote.zarr"), _level0(tmp_path / "file.zarr")
    assert set(a) == {"odd.jpg", "wide.png", "sub_dir__grey.png"} == set(b) == set(c)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])
    lines = [json.loads(line) for line in remote.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["key"] for r in lines) == sorted(a) and {r["status"] for r in lines} == {"done"}
    for out in ("local", "remote", "file"):  # --compression reached every worker's writes
        document = json.loads((tmp_path / f"{out}.zarr" / "wide.png" / "0" / "zarr.json").read_text())
        assert document["codecs"][0]["configuration"]["codecs"][-1]["configuration"]["cname"] == "zstd"


def test_relative_paths_reach_an_external_cluster_as_absolute_ones(bucket, external_cluster, tmp_path):
    """Workers run in their own working directory: `run` hands them absolute local paths."""
    address, _ = external_cluster
    rel_source = os.path.relpath(bucket, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "run", rel_source, "--out", "rel.zarr", "--film",
                           "Portra400", "--scheduler", address, "--include", "*.jpg"],
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "rel.zarr" / "_phos" / "report.json").read_text())
    assert report["out"] == str(tmp_path / "rel.zarr") and report["source"] == str(bucket)
    assert report["counts"]["done"] == 1


def test_exit_code_1_when_one_file_is_unreadable_and_the_others_finish(bucket, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(bucket, src)
    (src / "truncated.png").write_bytes((bucket / "wide.png").read_bytes()[:2000])
    out = tmp_path / "out.zarr"
    result = _run("run", str(src), "--out", str(out), "--film", "Portra400", "--workers", "2",
                  "--dashboard-address", "127.0.0.1:0")
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("phos_dask: failed:")]
    assert len(failed) == 1 and "truncated.png" in failed[0]
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert "Traceback" not in result.stderr
    rerun = _run("run", str(src), "--out", str(out), "--film", "Portra400", "--workers", "1",
                 "--dashboard-address", "127.0.0.1:0")
    assert rerun.returncode == 1  # still failing, but nothing redone
    assert json.loads((out / "_phos" / "report.json").read_text())["counts"] == {"done": 0, "skipped": 3, "failed": 1}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "/nonexistent/photos", "--out", "{out}", "--film", "Portra400"], "does not exist"),
        (["run", "{src}", "--out", "{out}", "--film", "Portra400", "--tile", "big"], "--tile"),
        (["run", "{src}", "--out", "{out}", "--film", "Kodachrome"], "unknown film stock"),
        (["run", "{src}", "--out", "{out}", "--film", "Portra400", "--scheduler", "tcp://127.0.0.1:9"],
         "cannot reach the Dask scheduler"),
        (["run", "{empty}", "--out", "{out}", "--film", "Portra400"], "no images found"),
    ],
)
def test_usage_and_configuration_errors_exit_2_with_one_line(args, words, bucket, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.format(src=bucket, out=tmp_path / "o.zarr", empty=tmp_path / "empty") for a in args]
    result = _run(*args, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("phos_dask: error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_prints_the_plan_and_writes_no_pixels(bucket, tmp_path):
    out = tmp_path / "dry.zarr"
    result = _run("run", str(bucket), "--out", str(out), "--film", "Portra400", "--dry-run", "--json",
                  "--whole-limit", "0", "--tile", "1024")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    modes = {r["key"]: r["mode"] for r in plan["plan"]}
    assert modes == {"odd.jpg": "whole", "wide.png": "tiled", "sub_dir__grey.png": "whole"}  # one tile = whole
    assert not out.exists()  # a dry run creates nothing
