"""Object storage is paid per request: what a task and the client ask the store for, counted by a proxy in
front of a real S3-protocol server (moto on loopback)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from s3_support import CountingProxy, MotoServer, set_credentials, storage_options, summarize

from phos_dask import Settings, lease
from phos_dask.job import JobSpec, plan_job, run_job
from phos_dask.sources import discover
from phos_dask.tasks import JobConfig, process_image
from phos_dask.tiles import TilePlan

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

V2_NAMES = (".zgroup", ".zattrs", ".zarray", ".zmetadata")


def _jpeg(photo: np.ndarray, i: int, size: tuple[int, int]) -> bytes:
    crop = photo[i * 7:, i * 11:]
    return cv2.imencode(".jpg", cv2.resize(crop, size, interpolation=cv2.INTER_AREA))[1].tobytes()


@pytest.fixture(scope="module")
def s3(photo):
    """A moto server with s3://archive/small/ (12 JPEGs of 320×240), s3://archive/few/ (3 of them) and
    s3://archive/big/one.jpg (1400×1000), and a counting proxy in front of it."""
    set_credentials()
    server = MotoServer()
    proxy = CountingProxy(server.port)
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="archive")
        fs = s3fs.S3FileSystem(**storage_options(server.endpoint))
        bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
        fs.pipe({f"archive/small/p{i:02d}.jpg": _jpeg(bgr, i, (320, 240)) for i in range(12)})
        fs.pipe({f"archive/few/p{i:02d}.jpg": _jpeg(bgr, i, (320, 240)) for i in range(3)})
        fs.pipe("archive/big/one.jpg", _jpeg(bgr, 1, (1400, 1000)))
        yield proxy, storage_options(proxy.endpoint)
    finally:
        proxy.stop()
        server.stop()


def _task(s3, source: str, out: str, tile: int = 2048, thumb: bool = False):
    """Run the first task of the first image under `source` with a held lease, as a worker would; returns
    (result, the requests it made)."""
    proxy, so = s3
    item = discover(source, so)[0]
    with lease.hold(out, so) as held:
        lease._checked.clear()  # a worker that has not checked the lease yet
        cfg = JobConfig(out, Settings(film="Portra400", dtype="uint16"), tile=tile, storage_options=so,
                        lease_token=held.token)
        proxy.reset()
        result = process_image(cfg, item, fresh=True, thumb=thumb)
        made = proxy.snapshot()
    return result, made


def _no_waste(made: list[tuple[str, str, str]], key: str) -> None:
    summary = summarize(made)
    assert summary["kinds"]["list"] == 0 and summary["kinds"]["HEAD object"] == 0, summary
    assert not any(p.endswith(V2_NAMES) for _, p, _ in made), "v2 metadata probed on a v3 store"
    assert not [p for m, p, _ in made if m == "GET" and f"/{key}/" in p], "read back what the task wrote"


@pytest.mark.parametrize("on_the_sheet", [False, True])
def test_a_small_image_in_a_fresh_output_costs_at_most_8_requests(s3, on_the_sheet):
    out = f"s3://archive/t-small-{on_the_sheet}.zarr"
    result, made = _task(s3, "s3://archive/small/p00.jpg", out, thumb=on_the_sheet)
    assert result.status == "done"
    _no_waste(made, "p00.jpg")
    kinds = summarize(made)["kinds"]
    assert len(made) <= 8, made
    # the photo once, the lease once; the level's chunk and metadata, then the marker; an image on the contact
    # sheet returns its thumbnails to the job's client, which stores them in packs (no request of the task)
    assert kinds["GET object"] == 2 and kinds["PUT object"] == 3, made
    assert made[-1][0] == "PUT" and made[-1][1].endswith("/p00.jpg/zarr.json")  # the marker comes last
    assert (result.thumb is not None) == on_the_sheet


def test_each_additional_chunk_costs_at_most_3_requests(s3):
    result, made = _task(s3, "s3://archive/big/one.jpg", "s3://archive/t-big.zarr", tile=256)
    assert result.status == "done"
    _no_waste(made, "one.jpg")
    plan = TilePlan.build((1000, 1400), 256, 0)
    chunks = math.prod(plan.grid)
    assert chunks >= 20
    assert len(made) <= 8 + 3 * (chunks - 1), (len(made), chunks)


def test_a_tasks_writes_go_out_together(s3):
    """With 0.1 s per request, a task's objects (each level's shard and metadata) are in flight together;
    only its marker waits for them."""
    proxy, _ = s3
    proxy.latency = 0.1
    try:
        result, made = _task(s3, "s3://archive/big/one.jpg", "s3://archive/t-together.zarr", tile=256)
        assert result.status == "done"
    finally:
        proxy.latency = 0.0
    puts = sum(1 for m, _, _ in made if m == "PUT")
    assert puts == 2 * 2 + 1  # 1400×1000 px: 2 levels, one shard each
    assert proxy.max_in_flight >= puts - 1, proxy.max_in_flight


def test_planning_reads_nothing_per_image(s3):
    """The client's requests to plan a job do not grow with the number of images: a listing of the
    source, and for an existing output its root, its index and one listing of it."""
    proxy, so = s3
    counts = {}
    for source, out in (("few", "t-plan-few.zarr"), ("small", "t-plan-small.zarr")):
        for state in ("fresh", "existing"):
            if state == "existing":
                s3fs.S3FileSystem(**so).pipe(f"archive/{out}/zarr.json",
                                             b'{"zarr_format": 3, "node_type": "group", "attributes": {"phos": {}}}')
            proxy.reset()
            plan = plan_job(JobSpec(f"s3://archive/{source}/", f"s3://archive/{out}", Settings(), storage_options=so))
            counts[source, state] = proxy.count
            assert len(plan.todo) == (3 if source == "few" else 12)
    # the source's listing; for an output that does not exist yet the store answers "nothing" with two listings
    # (the prefix, then its parent), and its root is read (absent)
    assert counts["few", "fresh"] == counts["small", "fresh"] <= 4, counts
    # the source's listing, the output's listing, its root, its index's listing and parts
    assert counts["few", "existing"] == counts["small", "existing"] <= 6, counts


def test_a_job_on_a_bucket_costs_at_most_8_requests_per_image_and_a_rerun_reads_no_image(s3, client):
    proxy, so = s3
    spec = JobSpec("s3://archive/small/", "s3://archive/t-job.zarr", Settings(film="Portra400"), storage_options=so)
    proxy.reset()
    report = run_job(spec, client)
    assert report["counts"] == {"done": 12, "skipped": 0, "failed": 0}
    assert proxy.count / 12 <= 8, proxy.summary()
    assert summarize(proxy.snapshot())["kinds"]["list"] <= 3
    # the 12 images' thumbnails: one pack, one PUT
    assert [p for m, p, _ in proxy.snapshot() if m == "PUT" and "/_phos/thumbs/" in p] == [
        p for m, p, _ in proxy.snapshot() if m == "PUT" and p.endswith(".zip")]
    assert len([p for m, p, _ in proxy.snapshot() if "/_phos/thumbs/" in p and m == "PUT"]) == 1
    proxy.reset()
    again = run_job(spec, client)
    assert again["counts"] == {"done": 0, "skipped": 12, "failed": 0}
    assert not [p for m, p, _ in proxy.snapshot() if p.endswith(".jpg")]  # no image, source or output, touched
    assert proxy.count <= 16, proxy.summary()


def test_the_lease_is_read_once_for_the_tasks_of_a_few_seconds(s3, monkeypatch):
    proxy, so = s3
    out = "s3://archive/t-lease.zarr"
    with lease.hold(out, so) as held:
        lease._checked.clear()
        proxy.reset()
        assert all(lease.still_held(out, so, held.token) for _ in range(5))
        assert proxy.count_of("GET object", "_lease.json") == 1
        monkeypatch.setattr(lease, "CHECK_CACHE", 0.0)
        s3fs.S3FileSystem(**so).pipe("archive/t-lease.zarr/_lease.json", b'{"token": "someone else"}')
        assert not lease.still_held(out, so, held.token)  # once the cache runs out, a takeover is seen


@pytest.fixture(scope="module")
def client(s3):
    from phos_dask.cluster import connect

    with connect(workers=2, dashboard_address="127.0.0.1:0") as c:
        yield c
