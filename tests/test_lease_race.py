"""Issue 15 §5: two runs started together on one output: exactly one holds the lease, the other is told the
output is in use, on a real S3-protocol server (moto) as on a local disk; and two runs taking over one dead
lease together: exactly one replaces it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from s3_support import MotoServer, set_credentials, storage_options

from phos_dask import lease

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

ROUNDS = 8


@pytest.fixture(scope="module")
def s3():
    set_credentials()
    server = MotoServer()
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="race")
        yield storage_options(server.endpoint)
    finally:
        server.stop()


def _race(url: str, so: dict | None, runs: int = 2) -> tuple[list[lease.Lease], list[str]]:
    """`runs` threads call lease.acquire on `url` at the same moment; the holders keep the lease until every
    thread is done. Returns (the leases held, the error messages)."""
    start, done = threading.Barrier(runs), threading.Barrier(runs)
    held: list[lease.Lease] = []
    errors: list[str] = []

    def run() -> None:
        start.wait()
        try:
            held.append(lease.acquire(url, so))
        except lease.LeaseError as e:
            errors.append(str(e))
        done.wait()

    threads = [threading.Thread(target=run) for _ in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for h in held:
        h.release()
    return held, errors


def _check_one_winner(held: list[lease.Lease], errors: list[str], runs: int = 2) -> None:
    assert len(held) == 1, (held, errors)
    assert len(errors) == runs - 1
    for message in errors:  # the loser saw the winner's lease (not only lost the read-back after SETTLE)
        assert "\n" not in message
        assert "is in use by another run (pid" in message, message


def test_two_runs_started_together_on_a_fresh_s3_output(s3):
    for i in range(ROUNDS):
        url = f"s3://race/fresh-{i}.zarr"
        held, errors = _race(url, s3)
        _check_one_winner(held, errors)
        assert lease.read_holder(url, s3) is None  # the winner released it


def test_the_exclusive_create_is_a_conditional_put(s3):
    """The second create of the same lease object is refused by the server (If-None-Match: *)."""
    url = "s3://race/conditional.zarr"
    where = lease.Location.of(url, s3)
    assert lease._create(where, b'{"token": "first"}')
    assert not lease._create(where, b'{"token": "second"}')
    assert json.loads(where.get(lease.LEASE))["token"] == "first"


def _dead_record() -> dict:
    return {"token": "dead", "host": "elsewhere", "pid": 1, "pid_started": 0.0, "started": "2026-01-01T00:00:00",
            "heartbeat": time.time() - lease.TTL - 10}


def test_two_runs_taking_over_a_dead_s3_lease_together(s3, monkeypatch):
    monkeypatch.setattr(lease, "CHECK_CACHE", 0.0)
    for i in range(ROUNDS):
        url = f"s3://race/dead-{i}.zarr"
        lease.Location.of(url, s3).put_json(lease.LEASE, _dead_record())
        held, errors = _race(url, s3)
        _check_one_winner(held, errors)


def test_a_takeover_is_refused_when_the_dead_lease_changed_meanwhile(s3):
    """The replace is conditional on the ETag of the lease judged dead."""
    url = "s3://race/changed.zarr"
    where = lease.Location.of(url, s3)
    judged = _dead_record()
    where.put_json(lease.LEASE, {**judged, "token": "newer"})
    with pytest.raises(lease._Changed):
        lease._replace(where, b'{"token": "mine"}', judged)
    assert json.loads(where.get(lease.LEASE))["token"] == "newer"


def test_two_runs_started_together_on_a_local_output(tmp_path: Path):
    for i in range(ROUNDS):
        held, errors = _race(str(tmp_path / f"o{i}.zarr"), None)
        _check_one_winner(held, errors)


def test_a_lease_created_exclusively_on_a_local_disk_is_held_without_the_settle(tmp_path: Path, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(lease.time, "sleep", slept.append)
    held = lease.acquire(str(tmp_path / "o.zarr"), None)
    held.release()
    assert lease.SETTLE not in slept


def test_a_lease_on_object_storage_is_read_back_after_the_settle(s3, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(lease.time, "sleep", slept.append)
    held = lease.acquire("s3://race/settle.zarr", s3)
    held.release()
    assert lease.SETTLE in slept  # a store may ignore If-None-Match: the read-back decides
