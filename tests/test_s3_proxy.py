"""tests/s3_support.CountingProxy: it forwards to a real S3-protocol server (moto on loopback), counts each
request by kind and by the object it touched, and its latency does not serialise concurrent requests."""

from __future__ import annotations

import time

import pytest
from s3_support import CountingProxy, MotoServer, path_class, request_kind, set_credentials, storage_options

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")

LATENCY = 0.05


@pytest.fixture(scope="module")
def server():
    set_credentials()
    srv = MotoServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def proxy(server):
    p = CountingProxy(server.port, latency=LATENCY)
    try:
        yield p
    finally:
        p.stop()


def _fs(endpoint: str):
    # max_concurrency=1: cat_file is then one GET (no HEAD first to size a concurrent ranged read);
    # no listings cache, no shared instance: every call below goes over the wire
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, max_concurrency=1,
                             **storage_options(endpoint))


def test_request_kinds_and_path_classes():
    assert request_kind("GET", "/b/photos/a.jpg", "") == "GET object"
    assert request_kind("GET", "/b/photos/a.jpg", "partNumber=1") == "GET object"
    assert request_kind("GET", "/b/photos/a.jpg", "tagging") == "other"
    assert request_kind("PUT", "/b/out.zarr/zarr.json", "") == "PUT object"
    assert request_kind("HEAD", "/b/x", "") == "HEAD object"
    assert request_kind("GET", "/b", "list-type=2&prefix=photos%2F") == "list"
    assert request_kind("GET", "/b/", "prefix=a&delimiter=%2F") == "list"
    assert request_kind("GET", "/b", "location") == "other"
    assert request_kind("PUT", "/b", "") == "other"
    assert request_kind("HEAD", "/b", "") == "other"
    assert request_kind("DELETE", "/b/x", "") == "DELETE"
    assert request_kind("POST", "/b", "delete") == "DELETE"
    assert request_kind("POST", "/b/x", "uploads") == "other"
    assert path_class("/b/out.zarr/img.jpg/zarr.json") == "zarr.json"
    assert path_class("/b/out.zarr/_lease.json") == "_lease.json"
    assert path_class("/b/out.zarr/img.jpg/0/c/0/0/0") == "chunk"
    assert path_class("/b/photos/a.JPG") == ".jpg"
    assert path_class("/b") == "bucket"


def test_counts_each_kind_exactly(proxy):
    fs = _fs(proxy.endpoint)
    fs.call_s3("create_bucket", Bucket="counted")
    for name in ("a.jpg", "b.jpg", "store.zarr/zarr.json"):
        fs.pipe_file(f"counted/in/{name}", b"x" * 1000)
    assert fs.cat_file("counted/in/a.jpg") == b"x" * 1000
    assert fs.cat_file("counted/in/store.zarr/zarr.json") == b"x" * 1000
    assert sorted(fs.ls("counted/in", detail=False)) == ["counted/in/a.jpg", "counted/in/b.jpg",
                                                         "counted/in/store.zarr"]
    assert fs.info("counted/in/b.jpg")["size"] == 1000
    fs.rm("counted/in/b.jpg")

    s = proxy.summary()
    assert s["kinds"] == {"GET object": 2, "PUT object": 3, "HEAD object": 1, "list": 1, "DELETE": 1, "other": 1}
    assert s["total"] == proxy.count == 9 == len(proxy.requests)
    assert s["paths"] == {".jpg": 4, "bucket": 3, "zarr.json": 2}
    assert s["kind_paths"]["PUT object"] == {".jpg": 2, "zarr.json": 1}
    assert proxy.count_of(suffix="zarr.json") == 2
    assert proxy.count_of("GET object", "zarr.json") == 1
    assert proxy.count_of("HEAD object") == 1
    method, path, query = proxy.snapshot()[0]
    assert (method, path, query) == ("PUT", "/counted", "")
    listing = next(r for r in proxy.requests if request_kind(*r) == "list")
    assert listing[1] == "/counted" and "list-type=2" in listing[2]

    proxy.reset()
    assert proxy.count == 0 and proxy.summary()["total"] == 0


def test_latency_does_not_serialise_concurrent_requests(proxy):
    fs = _fs(proxy.endpoint)
    fs.call_s3("create_bucket", Bucket="timed")
    paths = [f"timed/obj{i}" for i in range(8)]
    fs.pipe({p: bytes([i]) * 100 for i, p in enumerate(paths)})
    proxy.reset()

    t0 = time.perf_counter()
    sequential = [fs.cat_file(p) for p in paths]
    seq_s = time.perf_counter() - t0
    assert proxy.summary()["kinds"]["GET object"] == proxy.count == 8
    assert seq_s >= 8 * LATENCY

    proxy.reset()
    t0 = time.perf_counter()
    concurrent = fs.cat(paths)  # one asyncio.gather of 8 GETs
    conc_s = time.perf_counter() - t0
    assert proxy.summary()["kinds"]["GET object"] == proxy.count == 8
    assert [concurrent[p] for p in paths] == sequential
    assert conc_s >= LATENCY
    assert conc_s < 0.5 * seq_s, (conc_s, seq_s)


def test_the_proxy_adds_no_delay_of_its_own(server):
    """Without latency a GET through the proxy costs about what it costs direct: pins TCP_NODELAY on the
    proxy's answers (with Nagle's algorithm each GET waited ~40 ms for the client's delayed ACK)."""
    import statistics

    bare = CountingProxy(server.port, latency=0.0)
    try:
        direct, proxied = _fs(server.endpoint), _fs(bare.endpoint)
        direct.call_s3("create_bucket", Bucket="bare")
        direct.pipe_file("bare/photo.jpg", b"x" * 20_000)

        def median_get(fs) -> float:
            fs.cat_file("bare/photo.jpg")  # connect
            times = []
            for _ in range(9):
                t0 = time.perf_counter()
                fs.cat_file("bare/photo.jpg")
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        d, p = median_get(direct), median_get(proxied)
        assert bare.count == 10
        assert p - d < 0.025, (p, d)
    finally:
        bare.stop()
