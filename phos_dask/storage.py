"""Every file and object-store access of the package: a URL becomes a `Location` (filesystem + root path),
and a location reads, writes, lists and deletes named objects under its root.

Built for object stores, where each request is a round trip of tens of milliseconds:

* one request per operation: `get` is one GET (no HEAD first), `put` one PUT, `names` one paginated
  listing; nothing here lists a bucket to answer an existence question;
* independent requests go out together: `get_many` and `put_many` run concurrently (the S3 client's event
  loop on object stores, a thread pool on local disks);
* local writes are atomic (a temporary file beside the target, then a rename), so a reader never sees half
  an object and a crash leaves the old object or the new one;
* transient errors (5xx, dropped connections) are retried with backoff (`retry`); a missing object is an
  answer (None), not an error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from phos_dask.errors import PhosError

T = TypeVar("T")
#: An object's bytes: whole, or in pieces that follow one another (a shard, `phos_dask.shards.encode_shard`).
Data = bytes | Sequence[bytes]

#: Waits (s) between attempts after a transient storage error (the S3 client also retries each request).
BACKOFF = (0.5, 1.0, 2.0, 4.0)


class NotARegularFile(PhosError, OSError):
    """A path that is a FIFO, a device or a socket: never read (a read could block or never end)."""


#: Errors that no retry can cure.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
             NotARegularFile)


def special_kind(mode: int) -> str | None:
    """'a FIFO', 'a device', 'a socket' for a special file's st_mode; None for a regular file or folder."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def read_local(path: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes [start, end) of a local regular file (all of it by default). A FIFO, device or socket is refused
    before anything is read (NotARegularFile): opening is non-blocking and the type is checked on the open
    file, so a file swapped for a FIFO after discovery cannot hang the reader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        kind = special_kind(st.st_mode)
        if kind is not None:
            raise NotARegularFile(95, f"not a regular file (it is {kind})", path)
        begin = start or 0
        stop = st.st_size if end is None else min(end, st.st_size)
        return os.pread(fd, max(0, stop - begin), begin) if stop > begin else b""
    finally:
        os.close(fd)
#: Requests a location keeps in flight at once.
CONCURRENCY = 32
#: Objects larger than this are read with several concurrent ranged GETs.
SPLIT_BYTES = 32 << 20


def is_remote(url: str) -> bool:
    """Whether `url` names an fsspec protocol other than the local file system. (A plain path is answered
    without importing fsspec, which `preview` of a local file does not need.)"""
    if "://" not in str(url) and "::" not in str(url):
        return False
    return _protocol(url) not in ("file", "local")


def _protocol(url: str) -> str:
    import fsspec.utils

    return fsspec.utils.get_protocol(str(url))


def options_for(url: str, storage_options: dict | None) -> dict:
    """The job's storage options where `url` is remote; none for local paths (one job may read a bucket
    and write a local store, or the reverse)."""
    return dict(storage_options or {}) if is_remote(url) else {}


def relative_inside(outer: str, inner: str) -> str | None:
    """The path of `inner` relative to `outer` when `inner` is `outer` ("") or lies under it, else None.
    Local paths are compared resolved (links followed); URLs by protocol and path."""
    remote = is_remote(outer)
    if remote != is_remote(inner) or (remote and _protocol(outer) != _protocol(inner)):
        return None
    if remote:
        a = str(outer).split("://", 1)[-1].rstrip("/")
        b = str(inner).split("://", 1)[-1].rstrip("/")
    else:
        a = os.path.realpath(str(outer).removeprefix("file://"))
        b = os.path.realpath(str(inner).removeprefix("file://"))
    if a == b:
        return ""
    return b[len(a) + 1:] if b.startswith(a.rstrip("/") + "/") else None


def retry(call: Callable[[], T], backoff: Iterable[float] = BACKOFF) -> T:
    """call() again after each wait in `backoff` while it raises a transient OSError; a permanent one
    (missing, forbidden) and the last transient one propagate."""
    for wait in (*backoff, None):
        try:
            return call()
        except PERMANENT:
            raise
        except OSError:
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Location:
    """A folder or bucket prefix: `url` as given, `fs` its filesystem, `root` the path under it."""

    url: str
    fs: Any
    root: str
    local: bool

    @staticmethod
    def of(url: str, storage_options: dict | None = None) -> Location:
        """The location of `url` (remote URLs use `storage_options`); cheap to call again (cached)."""
        options = options_for(url, storage_options)
        return _location(str(url), json.dumps(options, sort_keys=True, default=str))

    def path(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    def url_of(self, name: str = "") -> str:
        """A URL for `name` that fsspec (and zarr) open with the same storage options."""
        return self.path(name) if self.local else self.fs.unstrip_protocol(self.path(name))

    def child(self, name: str) -> Location:
        return Location(self.url_of(name), self.fs, self.path(name), self.local)

    # ------------------------------------------------------------------------------------------ reads

    def _one_request(self, size: int | None = None) -> dict[str, Any]:
        """cat_file options that make a read one GET: s3fs asks for the size first (a HEAD, and a listing
        when the object is missing) to split large reads; objects under SPLIT_BYTES are not split."""
        if not self.local and hasattr(self.fs, "max_concurrency") and (size is None or size <= SPLIT_BYTES):
            return {"max_concurrency": 1}
        return {}

    def get(self, name: str, start: int | None = None, end: int | None = None, size: int | None = None
            ) -> bytes | None:
        """The object's bytes (or bytes [start, end)), or None when there is no such object. One request
        (objects larger than SPLIT_BYTES, when `size` says so: several concurrent ranged GETs)."""
        options = self._one_request(size)
        try:
            if self.local:
                return retry(lambda: read_local(self.path(name), start, end))
            return retry(lambda: self.fs.cat_file(self.path(name), start=start, end=end, **options))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def reader(self, name: str = "", block: int = 64 << 10):
        """read(offset, size) → bytes over the object `name`, fetching aligned blocks of `block` bytes (one
        request each) and keeping them, for header parsers that hop through a file."""
        blocks: dict[int, bytes] = {}

        def read(offset: int, size: int) -> bytes:
            out = []
            while size > 0:
                index = offset // block
                if index not in blocks:
                    data = self.get(name, index * block, (index + 1) * block)
                    if data is None:
                        raise FileNotFoundError(2, "No such file or directory", self.url_of(name))
                    if len(blocks) >= 4:  # a header parser moves forward: keep the last few blocks only
                        del blocks[min(blocks)]
                    blocks[index] = bytes(data)
                piece = blocks[index][offset - index * block:offset - index * block + size]
                if not piece:
                    break
                out.append(piece)
                offset, size = offset + len(piece), size - len(piece)
            return b"".join(out)

        return read

    def get_json(self, name: str) -> Any | None:
        """A JSON object, or None when it is absent or not JSON (a torn write on a store without atomic
        writes)."""
        data = self.get(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    def get_many(self, names: Iterable[str]) -> dict[str, bytes | None]:
        """{name: bytes or None when absent} for every name, fetched concurrently."""
        names = list(names)
        if self.local or len(names) < 2:
            return dict(zip(names, _map(self.get, names), strict=True))
        paths = [self.path(n) for n in names]
        found = retry(lambda: self.fs.cat(paths, on_error="return", batch_size=CONCURRENCY, **self._one_request()))
        out: dict[str, bytes | None] = {}
        for name, path in zip(names, paths, strict=True):
            value = found.get(path)
            if isinstance(value, FileNotFoundError) or value is None:
                out[name] = None
            elif isinstance(value, BaseException):
                out[name] = self.get(name)  # one more try, alone, with the usual retries
            else:
                out[name] = value
        return out

    def names(self, prefix: str = "") -> list[str]:
        """The names directly under `prefix` (objects and sub-folders, without the prefix), from one
        paginated listing; [] when there is nothing there."""
        path = self.path(prefix.rstrip("/"))
        try:
            entries = retry(lambda: self.fs.ls(path, detail=False, **({} if self.local else {"refresh": True})))
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = path.rstrip("/") + "/"
        return sorted({e[len(base):].split("/", 1)[0] if e.startswith(base) else e.rsplit("/", 1)[-1]
                       for e in entries} - {""})

    # ----------------------------------------------------------------------------------------- writes

    def put(self, name: str, data: Data) -> None:
        """Write the object `name` whole: atomically on local disks, one PUT on object stores."""
        if self.local:
            write_atomic(self.path(name), data)
        else:
            whole = joined(data)
            retry(lambda: self.fs.pipe_file(self.path(name), whole))

    def put_many(self, objects: Mapping[str, Data]) -> None:
        """Write every object, concurrently; returns when all are written (raises if one could not be)."""
        if not objects:
            return
        if self.local or len(objects) == 1:
            for _ in _map(lambda item: self.put(*item), list(objects.items())):
                pass
            return
        whole = {self.path(k): joined(v) for k, v in objects.items()}
        retry(lambda: self.fs.pipe(whole, batch_size=CONCURRENCY))

    def put_made(self, names: Iterable[str], make: Callable[[str], bytes]) -> None:
        """Write the object `name` = make(name) for every name, several at a time (each made just before it is
        written, so only a few are in memory at once; local I/O and most encoders release the GIL)."""
        for _ in _map(lambda name: self.put(name, make(name)), list(names)):
            pass

    def put_json(self, name: str, payload: Any, indent: int | None = 2) -> None:
        self.put(name, json.dumps(payload, indent=indent, default=str).encode())

    def delete(self, name: str, recursive: bool = False) -> None:
        """Remove an object (or, `recursive`, everything under a prefix); absent is fine."""
        path = self.path(name)
        try:
            if self.local and recursive and os.path.isdir(path):
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            elif recursive:
                retry(lambda: self.fs.rm(path, recursive=True))
            else:
                retry(lambda: self.fs.rm_file(path))
        except FileNotFoundError:
            pass

    def delete_many(self, names: Iterable[str]) -> None:
        """Remove these objects (absent ones are fine): one bulk request per thousand on object stores."""
        paths = [self.path(n) for n in names]
        if not paths:
            return
        if self.local:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            return
        with contextlib.suppress(FileNotFoundError):
            retry(lambda: self.fs.rm(paths))

    def makedirs(self) -> None:
        """Create the root folder where the file system has folders (object stores have none)."""
        if self.local:
            os.makedirs(self.root, exist_ok=True)


@functools.lru_cache(maxsize=256)
def _location(url: str, options_json: str) -> Location:
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(url, **json.loads(options_json))
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    local = protocol in ("file", "local")
    root = root.rstrip("/") if root not in ("/", "") else root
    return Location(url, fs, os.path.abspath(root) if local else root, local)


_POOL: ThreadPoolExecutor | None = None


def _map(fn: Callable[[Any], T], items: list[Any]) -> list[T]:
    """fn over items, on a shared thread pool when there is more than one (local I/O releases the GIL)."""
    global _POOL
    if len(items) < 2:
        return [fn(i) for i in items]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="phos-io")
    return list(_POOL.map(fn, items))


def close_pool() -> None:
    """Stop the shared I/O threads (idle ones; a call waits for work in flight). Used before exiting."""
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=True)
        _POOL = None


#: What `Data` is when it is whole rather than pieces.
_WHOLE = (bytes, bytearray, memoryview)


def joined(data: Data) -> bytes:
    """An object's bytes whole (pieces joined)."""
    return data if isinstance(data, _WHOLE) else b"".join(data)


def _write_to(f, data: Data) -> None:
    if isinstance(data, _WHOLE):
        f.write(data)
    else:
        f.writelines(data)


def write_atomic(path: str, data: Data) -> None:
    """Write a local file whole or not at all: a temporary file beside it (folders created), then a rename;
    the temporary file is removed if anything fails. `data`: the bytes, or pieces written one after another."""
    folder = os.path.dirname(path)
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            with open(tmp, "wb") as f:
                _write_to(f, data)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                _write_to(f, data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interruption: leave no temporary file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
