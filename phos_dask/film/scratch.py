"""Scratch arrays that a CPU render reuses from one render to the next in the same thread.

A 24 MP colour render needs a float32 stack of about 300 MB (the exposures X; the bloom stage's output is never
stored, `pipeline._render_fused`). Fresh memory costs a page fault per page on first touch, which on a virtual
machine can take as long as the model's own work on it; `render()` called in a loop keeps it instead. Each
thread keeps its own (renders in different threads never share one), at most `KEEP_BYTES` in all
(PHOS_DASK_SCRATCH_MB, default 1024); anything larger is allocated for the render and freed after it. The
workers of phos_dask's clusters keep none (PHOS_DASK_SCRATCH_MB=0 in `phos_dask.localworkers.WORKER_ENV`): their
allocator already keeps freed memory for the next task (its MALLOC_* settings there), and a worker's threads
would otherwise hold one each.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

#: Most bytes of scratch one thread keeps between renders (a 24 MP colour render needs about 0.3 GB).
KEEP_BYTES = int(os.environ.get("PHOS_DASK_SCRATCH_MB", "1024")) << 20

_local = threading.local()


def array(slot: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape`, backed by this thread's buffer for `slot` (grown when
    too small). It is valid until the next call for the same slot in this thread."""
    kept: dict[str, np.ndarray] = _local.__dict__.setdefault("kept", {})
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    buf = kept.get(slot)
    if buf is None or buf.dtype != dtype or buf.size < n:
        kept.pop(slot, None)  # freed before its successor is allocated
        buf = np.empty(n, dtype)
        if _keepable(kept, slot, buf.nbytes):
            kept[slot] = buf
    return buf[:n].reshape(shape)


def _keepable(kept: dict[str, np.ndarray], slot: str, nbytes: int) -> bool:
    """Whether a buffer of `nbytes` for `slot` stays within KEEP_BYTES beside the thread's other slots."""
    return sum(b.nbytes for name, b in kept.items() if name != slot) + nbytes <= KEEP_BYTES


def touch(slot: str, shape: tuple[int, int], dtype=np.float32) -> bool:
    """Make this thread's buffer for `slot` hold `shape` and write every page of it, so that its first-touch
    page faults are taken now rather than by the render that uses it (about 0.5 s of CPU per GB on a virtual
    machine). Nothing happens when the buffer would be too big to keep; returns whether it is kept."""
    if not _keepable(_local.__dict__.get("kept", {}), slot, math.prod(shape) * np.dtype(dtype).itemsize):
        return False
    array(slot, shape, dtype).fill(0)
    return True


def kept_bytes() -> int:
    """Bytes of scratch this thread keeps."""
    return sum(b.nbytes for b in _local.__dict__.get("kept", {}).values())


def release() -> None:
    """Free this thread's scratch (the next render allocates afresh)."""
    _local.__dict__.pop("kept", None)
