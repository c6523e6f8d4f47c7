"""One run at a time per output store: a lease file, OUT/_lease.json, renewed by a heartbeat.

A second run on the same output is refused while the lease is alive. A lease is dead, and taken over by the
next run, when its holder's last heartbeat is older than the time to live (a run that died on another
machine), or at once when its holder ran on this machine and its process is gone (killed, crashed).
Tasks carry the holder's token and check it before they write (`still_held`), so tasks left running by a
run whose lease was taken over stop instead of writing into the new run's images.

Taking a lease: create the file exclusively, or replace a dead holder's file; then read it back after a
moment and hold the lease only if the token read is ours.

* Exclusive create: on local disks a hard link of the written file to the lease's name (it appears whole
  or not at all); on object stores fsspec's mode "xb", which s3fs sends as a
  conditional PUT (If-None-Match: *): of two runs started together exactly one creates the lease, the
  other is told the output is in use. A file system that cannot create exclusively gets a plain write.
* Takeover of a dead (or unreadable) lease: on S3 a conditional replace, the PUT made on the ETag of the
  lease that was judged dead (If-Match), so of two runs taking it over at once only one replaces it; on
  local disks and other stores a plain replace.
* The read-back after SETTLE remains for stores that ignore the conditions: two runs within that moment of
  each other can then both believe they hold it; the heartbeat finds the loser out and it stops (its tasks
  fail with "lease lost"). A lease created exclusively on a local disk (a hard link, or O_EXCL) is read back
  at once: no other run can have created it too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil

from phos_dask.errors import EnvironmentProblem
from phos_dask.storage import Location, retry

LEASE = "_lease.json"
#: Seconds after its last heartbeat that a lease held from another machine is considered dead.
TTL = float(os.environ.get("PHOS_DASK_LEASE_TTL", "60"))
#: Seconds between heartbeats (and between checks that the lease is still ours).
HEARTBEAT = TTL / 6
#: Seconds between writing a new lease and reading it back to see who won.
SETTLE = 0.2
#: Seconds a task may rely on an answer of `still_held` without asking the store again. A run that takes
#: over a dead lease waits this long before it starts, so no task of the dead run can still be acting on
#: an answer given before the takeover.
CHECK_CACHE = float(os.environ.get("PHOS_DASK_LEASE_CACHE", "3"))


class LeaseError(EnvironmentProblem, RuntimeError):
    """The output is in use by another live run (or the lease could not be taken)."""


def read_holder(url: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The lease record of `url`'s store, or None when there is none (or it is unreadable: a torn write).
    Transient storage errors are retried before they propagate."""
    data = Location.of(url, storage_options).get(LEASE)  # transient errors are retried by get
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and "token" in record else None


def _process_alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def is_dead(record: dict[str, Any], now: float | None = None, ttl: float | None = None) -> tuple[bool, str]:
    """(whether the lease `record` may be taken over, why)."""
    now = time.time() if now is None else now
    ttl = TTL if ttl is None else ttl
    age = now - float(record.get("heartbeat", 0))
    if record.get("host") == socket.gethostname() and not _process_alive(int(record.get("pid", -1)),
                                                                          float(record.get("pid_started", 0))):
        return True, f"its process {record.get('pid')} on this machine is gone"
    if age > ttl:
        return True, f"its last heartbeat is {age:.0f} s old (time to live {ttl:.0f} s)"
    return False, f"last heartbeat {max(age, 0):.0f} s ago"


@dataclass
class Lease:
    """A held lease; `token` goes to the tasks, `lost` is set when another run took the lease over."""

    url: str
    storage_options: dict | None
    token: str
    record: dict[str, Any]
    lost: threading.Event = field(default_factory=threading.Event)
    #: set by the job once it submits tasks that carry this lease's token; cleared by `run` once the local
    #: cluster that ran them has closed (its worker processes joined)
    tasks_started: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _write(self) -> None:
        Location.of(self.url, self.storage_options).put_json(LEASE, self.record)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                holder = read_holder(self.url, self.storage_options)
                if holder is not None and holder.get("token") != self.token:
                    self.lost.set()
                    return
                self.record["heartbeat"] = time.time()
                self._write()
            except OSError:  # storage briefly unavailable: try again at the next beat
                continue

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="phos-lease", daemon=True)
        self._thread.start()

    def release(self, settle: bool = False) -> None:
        """Give the lease up. `settle`: the run is ending abnormally and some of its tasks may still be
        running (on an external cluster) with a cached 'still held' (see CHECK_CACHE): wait that long first,
        so that they ask again before their next write, and find no lease of theirs."""
        self._stop.set()
        if settle:
            time.sleep(CHECK_CACHE)
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = read_holder(self.url, self.storage_options)
        if holder is not None and holder.get("token") == self.token:
            Location.of(self.url, self.storage_options).delete(LEASE)


class _Changed(Exception):
    """The lease object is not the one that was judged: another run got there first."""


def _conditional(where: Location) -> bool:
    """Whether `where`'s store takes conditional writes (S3: If-None-Match and If-Match on PUT)."""
    protocols = where.fs.protocol if isinstance(where.fs.protocol, tuple) else (where.fs.protocol,)
    return not where.local and any(p in ("s3", "s3a") for p in protocols)


def _create_local(path: str, data: bytes) -> bool:
    """Create a local file exclusively and whole: written beside it, then hard-linked to its name (which
    fails if the name exists), so no reader ever sees it empty. Where hard links are not supported, O_EXCL
    and a write."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            pass
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def _create(where: Location, data: bytes) -> bool:
    """Create the lease object exclusively: True when created, False when it already exists. A file
    system that cannot create exclusively gets a plain write (the read-back then decides)."""
    path = where.path(LEASE)
    if where.local:
        return _create_local(path, data)

    def create() -> None:
        with where.fs.open(path, "xb") as f:
            f.write(data)

    try:
        retry(create)  # FileExistsError is permanent: never retried
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError):  # a file system without an exclusive mode
        where.put(LEASE, data)
    except OSError as e:
        if e.errno != errno.ENOSYS:  # a store that does not implement conditional writes
            raise
        where.put(LEASE, data)
    return True


def _replace(where: Location, data: bytes, judged: dict[str, Any] | None) -> None:
    """Replace the lease that was judged dead (`judged`: its record, None when unreadable). On S3 the PUT
    is conditional on the ETag of that very object, read again with it; raises _Changed when another run
    replaced or removed it meanwhile. Elsewhere a plain write."""
    if not _conditional(where):
        where.put(LEASE, data)
        return
    path = where.path(LEASE)

    def tagged() -> tuple[bytes, str | None]:
        where.fs.invalidate_cache(path)  # the ETag from a HEAD now, not from an earlier listing
        with where.fs.open(path, "rb") as f:  # the GET is made on the ETag the open's HEAD saw
            return f.read(), f.details.get("ETag")

    try:
        current, etag = retry(tagged)
    except FileNotFoundError:
        raise _Changed from None  # released or removed meanwhile: create it instead
    try:
        record = json.loads(current)
    except ValueError:
        record = None
    if (record or {}).get("token") != (judged or {}).get("token") or etag is None:
        raise _Changed

    def put() -> None:
        try:
            where.fs.pipe_file(path, data, IfMatch=etag)
        except OSError as e:  # 412 Precondition Failed (EINVAL) or gone: replaced or removed meanwhile
            if isinstance(e, FileNotFoundError) or e.errno == errno.EINVAL:
                raise _Changed from None
            raise

    retry(put)  # transient errors only: _Changed is not an OSError


def acquire(url: str, storage_options: dict | None = None) -> Lease:
    """Take the lease of the store at `url` (created if missing) or raise LeaseError naming its holder."""
    where = Location.of(url, storage_options)
    where.makedirs()
    path = where.path(LEASE)
    me = psutil.Process()
    now = time.time()
    token = secrets.token_hex(8)
    record = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "pid_started": me.create_time(),
              "started": datetime.now(UTC).isoformat(timespec="seconds"), "heartbeat": now}
    lease = Lease(url, storage_options, token, record)
    data = json.dumps(record, indent=2).encode()
    took_over = False
    certain = False  # created exclusively on a local disk: no other run can believe it holds the lease
    unreadable = False  # the lease object exists (an exclusive create failed) but may not read as a lease
    for _ in range(4):
        holder = read_holder(url, storage_options)
        if holder is not None and holder.get("token") == token:
            break  # ours: a retried create or replace whose first attempt had gone through
        if holder is not None:
            dead, why = is_dead(holder, now)
            if not dead:
                raise LeaseError(
                    f"output {url!r} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"started {holder.get('started')}, {why}); wait for it to finish or choose another --out "
                    f"(the lease of a run that died expires {TTL:.0f} s after its last heartbeat)"
                )
        if holder is None and not unreadable:
            # a local lease that appeared since the read (another run was quicker) is read again before it is
            # judged torn; otherwise create ours exclusively
            if (where.local and os.path.exists(path)) or not _create(where, data):
                unreadable = True  # another run was quicker: judge its lease (or replace it if it is torn)
                continue
            certain = where.local
            break
        try:
            _replace(where, data, holder)  # dead, or torn
        except _Changed:
            unreadable = False  # replaced or removed meanwhile: judge again
            continue
        took_over = holder is not None
        break
    if not certain:
        time.sleep(SETTLE)
    holder = read_holder(url, storage_options)
    if holder is None or holder.get("token") != token:
        raise LeaseError(f"output {url!r} was claimed by another run starting at the same moment")
    if took_over:
        time.sleep(CHECK_CACHE)
    lease.start()
    return lease


@contextlib.contextmanager
def hold(url: str, storage_options: dict | None = None) -> Iterator[Lease]:
    """The lease of `url` for the duration of the block. A local output folder that the lease created is
    removed again when the block leaves it empty (a job that failed to start leaves nothing behind)."""
    where = Location.of(url, storage_options)
    created = where.local and not os.path.lexists(where.root)
    lease = acquire(url, storage_options)
    ended = False
    try:
        yield lease
        ended = True
    finally:
        lease.release(settle=not ended and lease.tasks_started)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(where.root)  # only when empty


_checked: dict[tuple[str, str], float] = {}


def still_held(url: str, storage_options: dict | None, token: str | None) -> bool:
    """Whether the lease with `token` still governs the store (token None: the job runs without a lease).
    A yes is remembered for CHECK_CACHE seconds in this process (one read of the lease serves all the
    tasks a worker runs meanwhile); a no is final."""
    if token is None:
        return True
    now = time.monotonic()
    if now - _checked.get((url, token), -math.inf) < CHECK_CACHE:
        return True
    holder = read_holder(url, storage_options)
    held = holder is not None and holder.get("token") == token
    if held:
        _checked[(url, token)] = now
    else:
        _checked.pop((url, token), None)
    return held
