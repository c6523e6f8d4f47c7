"""Which images of an output store are finished: OUT/_index/, newline-delimited JSON parts written by the
job's client in batches, so that planning a rerun reads a few objects instead of one per image.

A part is named `<time ns>-<run token>-<n>.jsonl`; parts are read in name order and later lines win. A line
is {"key", "relpath", "fingerprint", "size", "stamp"} for an image finished with those settings from a
file of that size and stamp (modification time or ETag), or {"key", "removed": true} for an image about to
be replaced (written before any task of the run that replaces it starts). Only the run holding the
output's lease writes parts. At the end of a job the parts are compacted into one.

The index is a cache of the images' own completion markers, never the only record: an image finished after
the last part was written (a killed run) is found by its task, which reads the marker; an image whose
objects are gone (deleted by hand) is not in the store's listing, and is redone.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from phos_dask.storage import Location

INDEX = "_index"
#: A part is written after this many finished images, or this many seconds after the last part.
BATCH_IMAGES = 1000
BATCH_SECONDS = 30.0


def read(out: Location) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({key: entry} of the finished images the index knows, the names of its parts)."""
    parts = [n for n in out.names(INDEX) if n.endswith(".jsonl")]
    entries: dict[str, dict[str, Any]] = {}
    for _, data in sorted(out.get_many(f"{INDEX}/{n}" for n in parts).items()):
        for line in (data or b"").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a torn line (only possible on a store without atomic writes): ignore it
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                continue
            if entry.get("removed"):
                entries.pop(entry["key"], None)
            else:
                entries[entry["key"]] = entry
    return entries, parts


def entry(key: str, relpath: str, fingerprint: str, size: int, stamp: str = "") -> dict[str, Any]:
    return {"key": key, "relpath": relpath, "fingerprint": fingerprint, "size": size, "stamp": stamp}


class Writer:
    """The index parts of one run: `add` finished images, `remove` images about to be replaced; `flush`
    writes what is pending as one part (also done by `add` every BATCH_IMAGES images or BATCH_SECONDS)."""

    def __init__(self, out: Location) -> None:
        self.out = out
        self.token = secrets.token_hex(4)
        self.pending: list[dict[str, Any]] = []
        self.written: list[str] = []
        self.last = time.monotonic()

    def add(self, entry: dict[str, Any]) -> None:
        self.pending.append(entry)
        if len(self.pending) >= BATCH_IMAGES or time.monotonic() - self.last >= BATCH_SECONDS:
            self.flush()

    def remove(self, keys: Iterable[str]) -> None:
        self.pending.extend({"key": k, "removed": True} for k in keys)

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        name = f"{time.time_ns():020d}-{self.token}-{len(self.written):06d}.jsonl"
        self.out.put(f"{INDEX}/{name}", b"".join(json.dumps(e).encode() + b"\n" for e in self.pending))
        self.written.append(name)
        self.pending = []

    def compact(self, earlier_parts: list[str]) -> None:
        """Replace every part (those read when the run started, and this run's) by one."""
        self.flush()
        old = [*earlier_parts, *self.written]
        if len(old) < 2:
            return
        entries, _ = read(self.out)
        name = f"{time.time_ns():020d}-{self.token}-all.jsonl"
        self.out.put(f"{INDEX}/{name}", b"".join(json.dumps(e).encode() + b"\n" for e in entries.values()))
        self.out.delete_many(f"{INDEX}/{part}" for part in old)
