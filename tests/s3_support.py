"""A real S3-protocol server for tests: moto's standalone server on loopback, and proxies in front of it:
FlakyProxy fails a share of requests (HTTP 503 SlowDown, or a dropped connection) the way object stores do;
CountingProxy adds a fixed latency to every request and records each one (for request counts in benches)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto_server in its own process on 127.0.0.1; stopped by stop()."""

    def __init__(self) -> None:
        self.port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class _ForwardingProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that forwards each request to 127.0.0.1:`upstream_port` (one upstream
    connection per request; chunked request bodies are de-chunked and sent with a Content-Length).
    Subclasses override `intercept`, which sees every request before it is forwarded. A ThreadingHTTPServer:
    every client connection has its own handler thread, so work done in `intercept` (a sleep) runs
    concurrently across connections."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY: the answer goes out as two writes (headers, then body); with Nagle's algorithm the
            # body waited for the client's delayed ACK of the headers, ~40 ms on every GET
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                if proxy.intercept(self):
                    return
                proxy.forward(self, body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def intercept(self, handler: BaseHTTPRequestHandler) -> bool:
        """Called in the handler's thread once the request body is read; True when it has answered (or
        dropped) the request itself, so it is not forwarded."""
        return False

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """Send the request upstream and relay the answer (status, headers, body) to the client."""
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("transfer-encoding",)}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            handler.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                    handler.send_header(k, v)
            length = resp.getheader("Content-Length") if handler.command == "HEAD" else None
            handler.send_header("Content-Length", length or str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            conn.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FlakyProxy(_ForwardingProxy):
    """Forwards HTTP to `upstream`; every `every`-th request gets a 503 SlowDown and every
    `every`-th one after that (offset by half) has its connection dropped unanswered."""

    def __init__(self, upstream_port: int, every: int = 5) -> None:
        self.every = every
        self.count = 0
        self.failed = 0
        super().__init__(upstream_port)

    def intercept(self, handler: BaseHTTPRequestHandler) -> bool:
        with self.lock:
            self.count += 1
            n = self.count
        if n % self.every == 0:
            with self.lock:
                self.failed += 1
            handler.send_response(503)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(SLOW_DOWN)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(SLOW_DOWN)
            return True
        if n % self.every == self.every // 2:
            with self.lock:
                self.failed += 1
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return True
        return False


#: Object names whose requests CountingProxy.summary() counts by name (the last path component).
METADATA_NAMES = ("zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata", "_lease.json", "report.json")
#: Query keys that make a GET on a bucket a listing (ListObjectsV2, or V1 with a prefix / delimiter).
_LIST_KEYS = ("list-type", "prefix", "delimiter")
#: Query keys of an object request that still reads or writes the object's data (versions, multipart parts).
_OBJECT_KEYS = frozenset({"versionId", "partNumber", "uploadId", "x-id"})

KINDS = ("GET object", "PUT object", "HEAD object", "list", "DELETE", "other")


def request_kind(method: str, path: str, query: str) -> str:
    """The kind of a path-style S3 request: "GET object", "PUT object", "HEAD object", "list" (a GET on a
    bucket whose query has list-type, prefix or delimiter), "DELETE" (DeleteObject, DeleteBucket, and the
    bulk DeleteObjects POST ?delete), or "other" (bucket creation, multipart start/complete, ACLs, …)."""
    keys = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    is_object = "/" in path.strip("/")
    method = method.upper()
    if method == "DELETE" or (method == "POST" and "delete" in keys):
        return "DELETE"
    if not is_object:
        return "list" if method == "GET" and keys & set(_LIST_KEYS) else "other"
    if keys - _OBJECT_KEYS:
        return "other"  # a sub-resource: ?acl, ?tagging, ?uploads, …
    return {"GET": "GET object", "PUT": "PUT object", "HEAD": "HEAD object"}.get(method, "other")


def path_class(path: str) -> str:
    """What a request touched, for counting: the object's name when it is one of METADATA_NAMES, "chunk"
    for a Zarr v3 chunk (a path with a /c/ component), the extension for other objects (".jpg"),
    "bucket" for a bucket itself."""
    parts = path.strip("/").split("/")
    if len(parts) < 2:
        return "bucket"
    name = parts[-1]
    if name in METADATA_NAMES:
        return name
    if "c" in parts[1:-1]:
        return "chunk"
    ext = os.path.splitext(name)[1].lower()
    return ext or "(no extension)"


def summarize(requests: list[tuple[str, str, str]]) -> dict:
    """{"total", "kinds": {kind: n} (every kind of KINDS, zeros included), "paths": {path_class: n},
    "kind_paths": {kind: {path_class: n}}} over (method, path, query) rows; e.g. summarize(rows)["paths"]
    .get("zarr.json", 0) requests touched a zarr.json."""
    kinds = dict.fromkeys(KINDS, 0)
    paths: Counter[str] = Counter()
    kind_paths: dict[str, Counter[str]] = {}
    for method, path, query in requests:
        kind, cls = request_kind(method, path, query), path_class(path)
        kinds[kind] += 1
        paths[cls] += 1
        kind_paths.setdefault(kind, Counter())[cls] += 1
    return {"total": len(requests), "kinds": kinds, "paths": dict(paths.most_common()),
            "kind_paths": {k: dict(v.most_common()) for k, v in kind_paths.items()}}


class _RequestLog:
    """What a counting proxy offers its readers: the requests it forwarded, each (method, path without the
    query, percent-decoded; query), in arrival order, kept in `self.requests` under `self.lock`."""

    requests: list[tuple[str, str, str]]
    lock: threading.Lock

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def snapshot(self) -> list[tuple[str, str, str]]:
        """A copy of the requests so far (method, path, query), in arrival order."""
        with self.lock:
            return list(self.requests)

    def summary(self, requests: list[tuple[str, str, str]] | None = None) -> dict:
        """summarize() over `requests` (default: all so far)."""
        return summarize(self.snapshot() if requests is None else requests)

    def count_of(self, kind: str | None = None, suffix: str | None = None) -> int:
        """Requests so far of `kind` (one of KINDS; any if None) whose path ends with `suffix` (any if None)."""
        return sum(1 for m, p, q in self.snapshot()
                   if (kind is None or request_kind(m, p, q) == kind) and (suffix is None or p.endswith(suffix)))


class CountingProxy(_RequestLog, _ForwardingProxy):
    """Forwards HTTP to `upstream` and never fails; sleeps `latency` seconds before forwarding each request
    (in that request's handler thread, so concurrent requests overlap their waits as they would against a
    remote store) and records each one as (method, path without the query, percent-decoded; query)."""

    def __init__(self, upstream_port: int, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[tuple[str, str, str]] = []
        #: requests being handled right now, and the most there were at once since the last reset()
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__(upstream_port)

    def intercept(self, handler: BaseHTTPRequestHandler) -> bool:
        parts = urlsplit(handler.path)
        with self.lock:
            self.requests.append((handler.command, unquote(parts.path), parts.query))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.latency > 0:
            time.sleep(self.latency)
        return False

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            super().forward(handler, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.max_in_flight = self.in_flight


def storage_options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}, "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


def set_credentials() -> None:
    os.environ.update(CREDENTIALS)
