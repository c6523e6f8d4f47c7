"""Object storage through a real S3-protocol server (moto's standalone server on loopback, no patching):
an input bucket → an output Zarr in the bucket, also when the server fails a share of its requests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from conftest import make_photo_bucket
from s3_support import FlakyProxy, MotoServer, set_credentials, storage_options

from phos_dask import Settings
from phos_dask.job import JobSpec, run_job

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3(tmp_path_factory, photo):
    set_credentials()
    server = MotoServer()
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="archive")
        local = make_photo_bucket(tmp_path_factory.mktemp("s3src"), photo)
        fs = s3fs.S3FileSystem(**storage_options(server.endpoint))
        fs.put(str(local) + "/", "archive/photos/", recursive=True)
        yield server, local
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(s3):
    from phos_dask.cluster import connect

    with connect(workers=2, dashboard_address="127.0.0.1:0") as c:
        yield c


def _levels(url: str, so: dict | None) -> dict[str, np.ndarray]:
    root = zarr.open_group(url, mode="r", storage_options=so)
    return {k: root[k]["0"][...] for k in ("odd.jpg", "wide.png", "sub_dir__grey.png")}


def test_bucket_in_bucket_out_equals_a_local_run(s3, client, tmp_path):
    server, local = s3
    so = storage_options(server.endpoint)
    st = Settings(seed=3, dtype="uint16")
    remote = run_job(JobSpec("s3://archive/photos/", "s3://archive/out.zarr", st, tile=512, whole_limit_mp=1.0,
                             storage_options=so), client)
    assert remote["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    run_job(JobSpec(str(local), str(tmp_path / "local.zarr"), st, tile=512, whole_limit_mp=1.0), client)
    a, b = _levels("s3://archive/out.zarr", so), _levels(str(tmp_path / "local.zarr"), None)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    fs = s3fs.S3FileSystem(**so)
    report = json.loads(fs.cat("archive/out.zarr/_phos/report.json"))
    assert report["counts"]["done"] == 3
    assert not fs.exists("archive/out.zarr/_phos/staging/wide.png")
    rerun = run_job(JobSpec("s3://archive/photos/", "s3://archive/out.zarr", st, tile=512, whole_limit_mp=1.0,
                            storage_options=so), client)
    assert rerun["counts"] == {"done": 0, "skipped": 3, "failed": 0}


def test_a_server_failing_a_share_of_requests_still_gives_identical_output(s3, client):
    server, _ = s3
    proxy = FlakyProxy(server.port, every=6)  # 1 request in 6 gets a 503, 1 in 6 a dropped connection
    try:
        st = Settings(seed=3, dtype="uint16")
        flaky = storage_options(proxy.endpoint)
        report = run_job(JobSpec("s3://archive/photos/", "s3://archive/flaky.zarr", st, tile=1024,
                                 whole_limit_mp=1.0, storage_options=flaky), client)
        assert report["counts"] == {"done": 3, "skipped": 0, "failed": 0}
        assert proxy.failed >= 10
        direct = storage_options(server.endpoint)
        steady = run_job(JobSpec("s3://archive/photos/", "s3://archive/steady.zarr", st, tile=1024,
                                 whole_limit_mp=1.0, storage_options=direct), client)
        assert steady["counts"]["done"] == 3
        a, b = _levels("s3://archive/flaky.zarr", direct), _levels("s3://archive/steady.zarr", direct)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    finally:
        proxy.stop()


def test_cli_bucket_to_bucket_then_export_and_a_local_store_from_the_bucket(s3, tmp_path):
    import subprocess
    import sys

    server, _ = s3
    option = f"client_kwargs.endpoint_url={server.endpoint}"
    common = ["--film", "Velvia50", "--storage-option", option, "--workers", "2", "--dashboard-address", "127.0.0.1:0"]
    run = subprocess.run(
        [sys.executable, "-m", "phos_dask", "run", "s3://archive/photos/", "--out", "s3://archive/cli.zarr",
         *common, "--export", "jpeg", "--export-dir", str(tmp_path / "jpegs")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.relative_to(tmp_path / "jpegs").as_posix() for p in (tmp_path / "jpegs").rglob("*.jpg")) == [
        "odd.jpg", "sub dir/grey.jpg", "wide.jpg"]
    fs = s3fs.S3FileSystem(**storage_options(server.endpoint))
    assert fs.exists("archive/cli.zarr/_phos/contact.jpg") and fs.exists("archive/cli.zarr/_phos/report.json")
    local = subprocess.run(
        [sys.executable, "-m", "phos_dask", "run", "s3://archive/photos/", "--out", str(tmp_path / "here.zarr"),
         *common, "--include", "*.jpg"],
        capture_output=True, text=True, timeout=300,
    )
    assert local.returncode == 0, local.stderr
    here = zarr.open_group(str(tmp_path / "here.zarr"), mode="r")
    assert [k for k in here.group_keys() if k[0] != "_"] == ["odd.jpg"]
