"""Compile the CPU kernels a job needs once per machine, while its local workers start.

The film model's kernels are compiled by numba on first use and cached on disk. After a fresh install
nothing is cached, and every worker's first task would wait for the same compile. `run` therefore starts
`python -m phos_dask.warmup SETTINGS_JSON` in the background before it starts its local cluster: that
process renders a few tiny images with the job's settings, which compiles (or loads) every kernel the job's
tasks use, one kernel at a time under `_cpu.compile_lock`. A worker that needs a kernel meanwhile waits for
the lock and then loads the kernel from the cache, so each kernel is compiled once on the machine, and the
compile overlaps the cluster's start-up. When a kernel has to be compiled (not only loaded) it says so on stderr.

A warm-up that ran to its end leaves a marker beside numba's cache (`marker`); while it is there (same
kernel sources, numba, machine and settings) `run` starts none, since loading cached kernels in two more
processes would only take CPU from the start-up. The local workers themselves load the kernels a first
photograph needs as they start (`warm_first`, from phos_dask.worker_setup), while the job is planned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np

#: The files (under phos_dask/) whose numba kernels the warm-up compiles: a change to one makes it warm again.
KERNEL_SOURCES = ("film/_cpu.py", "film/_pixel.py", "pyramid.py")
#: Seconds between looks at whether a kernel had to be compiled (not just loaded from the cache).
NOTICE_EVERY = 0.2


def warm(settings) -> None:
    """Render what makes every kernel of a job with `settings` compile or load: whole images with scale
    s < 1 (the grain-blend path) and a small region of an image with s > 1, from 8- and 16-bit input, the
    pyramid of the output dtype and, last, the thumbnails of large inputs and levels; on one kernel thread, as a
    worker runs them."""
    from phos_dask import thumbs
    from phos_dask.engine import render_window
    from phos_dask.film.pipeline import make_plan, source_box

    warm_first(settings)
    mark(settings, "first")
    # the rest (16-bit input, large images) may not be needed soon: yield the cores to the workers' renders
    # (a worker that needs one of these kernels meanwhile waits on the compile lock and uses no CPU), at the
    # lowest priority there is: the workers of a first run run at nice 5 (phos_dask.worker_boot), against
    # which nice 10 still took a quarter of a core
    with contextlib.suppress(OSError):
        os.nice(19)
    render_small(settings, np.uint16)
    rng = np.random.default_rng(1)
    big = (4000, 6000)
    out_box = (2000, 2016, 3000, 3016)
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        plan = make_plan(settings, big)
        k = (1.0,) * plan.grain_planes if plan.has_grain else None
        y0, y1, x0, x1 = source_box(plan, out_box, big)
        window = rng.integers(0, top, (y1 - y0, x1 - x0, 3), dtype=dtype)
        render_window(window, (y0, x0), big, out_box, settings, grain_k=k)
    # last: thumbnails of inputs and levels as large as those the kernel shrinks (smaller ones take OpenCV)
    side = math.isqrt(thumbs.KERNEL_MIN_PX) + 1
    for dtype in (np.uint8, np.uint16):
        thumbs.source_thumb(np.zeros((side, side, 3), dtype))
    thumbs.result_thumb(np.zeros((3, side, side), settings.dtype))


def warm_first(settings) -> None:
    """Compile or load what most photographs need first, on one kernel thread: the kernels of a whole 8-bit
    image and the pyramid of the output dtype."""
    import numba

    numba.set_num_threads(1)
    load_first(settings)


def load_first(settings) -> None:
    """`warm_first`'s renders, in the calling thread's kernel-thread setting. The pyramid's kernel comes
    first: after an install the render's fused kernel is being compiled by another process (`precompile`),
    which this one would otherwise wait for before it compiled the pyramid's, while the workers wait for both."""
    from phos_dask.pyramid import downsample2

    if np.dtype(settings.dtype).kind in "ui":
        downsample2(np.zeros((3, 5, 5), settings.dtype))
    render_small(settings, np.uint8)


def render_small(settings, input_dtype=np.uint8) -> None:
    """Render a small whole image of random `input_dtype` codes with `settings`: what loads (or compiles) the
    kernels a whole image of that input type takes, in the calling thread's kernel-thread setting."""
    from phos_dask.engine import render_image

    top = np.iinfo(input_dtype).max
    render_image(np.random.default_rng(0).integers(0, top, (48, 64, 3), dtype=input_dtype), settings)


def warm_in_background(settings, input_dtype=np.uint8) -> threading.Thread:
    """Load (or compile) the kernels a render with `settings` of an `input_dtype` image takes, in a daemon
    thread with this process's kernel threads, so that numba's import and its first kernel loads (about a
    second of CPU) overlap what the caller does meanwhile: `preview` decodes its input, and OpenCV's
    decoders release the GIL. A render that needs a kernel the thread is still loading waits for numba's
    compile lock; a failure here is left for that render to meet."""
    def load() -> None:
        with contextlib.suppress(Exception):
            render_small(settings, input_dtype)

    thread = threading.Thread(target=load, name="phos-warm", daemon=True)
    thread.start()
    return thread


#: What a marker says is in numba's cache: every kernel a job with its settings needs (`warm` ran to its
#: end), or the first ones (`warm_first`'s, which a local worker loads as it starts).
PARTS = {"all": "done", "first": "first"}


def marker(settings, part: str = "all") -> str:
    """The file that says `warm(settings)` ran to its end (part "all"), or at least its first renders
    (`warm_first`, part "first"), on this machine with this numba and these kernel sources, so numba's cache
    holds those kernels for a job with these settings (it lives beside that cache: NUMBA_CACHE_DIR, else the
    kernels' own __pycache__, and goes when the cache is cleared)."""
    import importlib.metadata
    import platform

    package = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for name in KERNEL_SOURCES:
        st = os.stat(os.path.join(package, name))
        stamps.append((name, st.st_mtime_ns, st.st_size))
    chosen = {k: v for k, v in settings.to_dict().items() if k not in ("image_key", "seed")}
    key = json.dumps([stamps, chosen, importlib.metadata.version("numba"), sys.version, platform.node(),
                      platform.machine()], sort_keys=True, default=str)
    where = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(package, "film", "__pycache__")
    return os.path.join(where, f"phos_dask-warm-{hashlib.sha256(key.encode()).hexdigest()[:20]}.{PARTS[part]}")


def is_warm(settings, part: str = "all") -> bool:
    """Whether a finished warm-up with these settings is on record (then `run` starts none); with part "first",
    whether its first renders are (then `run`'s workers are forked from a server that loaded them)."""
    try:
        return os.path.exists(marker(settings, part))
    except (OSError, ImportError):
        return False


def mark(settings, part: str = "all") -> None:
    """Put on record that numba's cache holds `part` of the kernels of a job with `settings` (see `marker`)."""
    with contextlib.suppress(OSError):
        path = marker(settings, part)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(settings.to_dict()) + "\n")


def finish_signature(settings):
    """The argument types of the largest kernel a photograph needs (`_cpu.finish`: the last blur stage, grain
    and encode fused, for integer output), known without running the stages before it; None for float
    output."""
    from numba import types as nt

    if np.dtype(settings.dtype).kind != "u":
        return None
    f32, i64 = nt.float32, nt.int64

    def array(dtype, ndim=1):
        return nt.Array(dtype, ndim, "C")

    out = nt.uint8 if np.dtype(settings.dtype) == np.uint8 else nt.uint16
    interp = (array(i64), array(f32), array(f32))
    return (array(f32, 3), i64, i64, array(f32, 3), array(nt.boolean), *interp, *interp, f32, array(f32),
            nt.boolean, array(f32, 3), array(nt.boolean), *interp, *interp, f32, array(f32),
            array(f32, 3), i64, i64, array(i64), array(i64), i64, i64, array(nt.uint64),
            nt.Array(f32, 2, "C", readonly=True),  # grain.normal_pairs
            array(f32), array(f32, 2), array(f32), array(f32), array(f32), i64, array(f32, 2), f32,
            array(f32), i64, i64, f32, array(f32), array(f32, 2), array(nt.int32, 2), i64, i64, i64,
            nt.boolean, array(out, 3))


def precompile(settings) -> None:
    """Compile the largest kernel ahead of the render that needs it (in a second process, at the same time
    as `warm`, which reaches it last and then loads it from the cache)."""
    import numba

    from phos_dask.film import _cpu

    numba.set_num_threads(1)
    sig = finish_signature(settings)
    if sig is not None:
        kernel = _cpu.finish.serial
        with _cpu.compile_lock(kernel.py_func.__qualname__):
            kernel.compile(sig)


def start(settings) -> list[subprocess.Popen]:
    """Start the warm-up in the background, in two processes (its notices go to this process's stderr)."""
    procs = []
    for mode in ("warm", "precompile"):
        with contextlib.suppress(OSError):
            procs.append(subprocess.Popen([sys.executable, "-m", "phos_dask.warmup", json.dumps(settings.to_dict()),
                                           mode], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
    return procs


def _compiled() -> int:
    """Kernel builds this process has compiled so far (cache misses; loads from the cache are hits)."""
    from phos_dask import pyramid
    from phos_dask.film import _cpu

    kernels = [k for module in (_cpu, pyramid) for k in vars(module).values() if isinstance(k, _cpu.Kernel)]
    return sum(sum(d.stats.cache_misses.values()) for k in kernels for d in (k.serial, k.parallel))


def main(argv: list[str]) -> int:
    from phos_dask.settings import Settings

    settings = Settings(**json.loads(argv[0]))
    if argv[1:] == ["precompile"]:
        precompile(settings)
        return 0
    t0 = time.perf_counter()
    done = threading.Event()
    told = threading.Event()

    def notice() -> None:
        while not done.wait(NOTICE_EVERY):
            if _compiled():
                told.set()
                print("kernels: compiling the film model's kernels for this machine (once after an install or "
                      "upgrade; the workers wait for it and then share them)…", file=sys.stderr, flush=True)
                return

    threading.Thread(target=notice, daemon=True).start()
    try:
        warm(settings)
    finally:
        done.set()
    mark(settings)
    if told.is_set() or _compiled():
        print(f"kernels: compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
