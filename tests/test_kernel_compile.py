"""The CPU kernels: one-thread (serial) and many-thread builds give the same bits; a machine compiles each
kernel once, under a lock its processes share; `run` compiles what its workers need while they start and says
so when that takes a while."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numba
import numpy as np
import pytest

from phos_dask import Settings, render
from phos_dask.film import _cpu

REPO = Path(__file__).resolve().parent.parent


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize(("film", "dtype", "bits"), [("Portra400", "uint8", 8), ("HP5Plus400", "uint16", 16),
                                                     ("Cinestill800T", "float32", 8), ("NC200", "uint16", 16)])
def test_one_thread_and_many_threads_give_the_same_bits(photo, film, dtype, bits):
    image = photo[:300, :420] if bits == 8 else photo[:300, :420].astype(np.uint16) * 257
    settings = Settings(film=film, dtype=dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        serial = render(image, settings)
        numba.set_num_threads(max(2, before))
        parallel = render(image, settings)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(serial, parallel)
    assert _cpu.front_lut.serial.signatures and _cpu.front_lut.parallel.signatures  # both builds ran


def test_kernels_type_their_arguments_only_until_they_have_a_build_for_them(photo, monkeypatch):
    """Kernel.__call__ types each argument with numba (~14 µs each, ~3 ms a render) only for argument kinds it
    has not seen with a build yet: a render of the same kind of image again types nothing; a kernel that has
    forgotten what it has seen types its arguments again (and finds its builds: the same bits)."""
    typed = []
    typeof = numba.typeof

    def counting(value, *args):
        typed.append(type(value))
        return typeof(value, *args)

    settings = Settings(film="Portra400", dtype="uint16")
    image = photo[:120, :160]
    first = render(image, settings)
    monkeypatch.setattr(numba, "typeof", counting)
    np.testing.assert_array_equal(render(image, settings), first)
    assert typed == []
    for k in vars(_cpu).values():
        if isinstance(k, _cpu.Kernel):
            monkeypatch.setattr(k, "built", set())
    np.testing.assert_array_equal(render(image, settings), first)
    assert len(typed) > 50  # every argument of every kernel call of the render (finish alone takes 53)


@pytest.mark.parametrize("kernel", ["k_sums_lut", "front_lut"])  # the grain constant's, then the model's first
def test_a_process_that_needs_a_kernel_waits_while_another_compiles(tmp_path, kernel):
    """The lock is a file in the kernel cache's folder, so it goes when that cache goes. Every kernel a
    photograph needs takes it, the grain constant's too: a local worker that met that one uncompiled after an
    install compiled it itself (about a second of CPU per worker, while the warm-up compiled it as well)."""
    cache = tmp_path / "cache"
    script = ("import sys, numpy as np, numba; numba.set_num_threads(1)\n"
              "from phos_dask import Settings, render\n"
              "print('ready', flush=True)\n"
              "render(np.full((32, 40, 3), 90, np.uint8), Settings(film='HP5Plus400'))\n")
    env = _env(cache)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=300)  # warm
    os.environ["NUMBA_CACHE_DIR"], old = str(cache), os.environ.get("NUMBA_CACHE_DIR")
    numba.config.CACHE_DIR, old_dir = str(cache), numba.config.CACHE_DIR
    try:
        with _cpu.compile_lock(getattr(_cpu, kernel).serial.py_func.__qualname__):
            proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(3.0)  # a warm cache renders this in well under a second: it is waiting for the lock
            assert proc.poll() is None
        assert proc.wait(120) == 0
        assert list(cache.glob("phos_dask-compile-*.lock"))  # the lock went with the cache, not into /tmp
    finally:
        numba.config.CACHE_DIR = old_dir
        if old is None:
            del os.environ["NUMBA_CACHE_DIR"]
        else:
            os.environ["NUMBA_CACHE_DIR"] = old


@pytest.mark.slow
def test_run_on_a_cold_cache_says_it_compiles_and_leaves_the_kernels_cached(tmp_path):
    cache = tmp_path / "cache"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.jpg").write_bytes((REPO / "examples" / "coffee.jpg").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "run", str(photos), "--out", str(tmp_path / "o.zarr"),
                           "--film", "Portra400", "--workers", "1"], env=_env(cache), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "kernels: compiling the film model's kernels" in proc.stderr
    # what a worker does as it starts, once the kernels are cached, puts on record that a first photograph's
    # kernels are there: `run` then forks its workers from a server that loaded them (phos_dask.localworkers)
    settings = json.dumps(Settings(film="Portra400", dtype="uint16", image_key="").to_dict())
    load = f"from phos_dask import worker_setup; worker_setup._load_kernels({settings!r})"
    subprocess.run([sys.executable, "-c", load], env=_env(cache), check=True, timeout=300)
    assert len(list(cache.glob("phos_dask-warm-*.first"))) == 1
    # the same image in a new process, on one thread as a worker renders it: every kernel comes from the cache
    check = ("import cv2, numba; numba.set_num_threads(1)\n"
             "from phos_dask import Settings, render\n"
             "from phos_dask.film import _cpu\n"
             f"image = cv2.imread({str(photos / 'one.jpg')!r})[:, :, ::-1].copy()\n"
             "render(image, Settings(film='Portra400', dtype='uint16', image_key='one.jpg'))\n"
             "kernels = [k for k in vars(_cpu).values() if isinstance(k, _cpu.Kernel)]\n"
             "print(sum(sum(k.serial.stats.cache_misses.values()) for k in kernels),"
             " sum(sum(k.serial.stats.cache_hits.values()) for k in kernels))\n")
    out = subprocess.run([sys.executable, "-c", check], env=_env(cache), capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    misses, hits = int(out[0]), int(out[1])
    assert misses == 0 and hits >= 4, out  # front, cells (of X and of Y), blur, finish


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_the_precompiled_signature_is_the_one_a_small_photo_renders_with(dtype):
    from phos_dask import warmup

    settings = Settings(film="NC200", dtype=dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        render(np.full((48, 64, 3), 90, np.uint8), settings)
    finally:
        numba.set_num_threads(before)
    assert warmup.finish_signature(settings) in _cpu.finish.serial.signatures
    assert warmup.finish_signature(Settings(film="NC200", dtype="float32")) is None


def test_a_finished_warm_up_is_on_record_for_its_settings_and_kernel_sources_only(tmp_path, monkeypatch):
    from phos_dask import warmup

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "kernel_source.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(warmup, "KERNEL_SOURCES", (*warmup.KERNEL_SOURCES, str(source)))
    settings = Settings(film="NC200", dtype="uint8")
    assert not warmup.is_warm(settings)
    monkeypatch.setattr(warmup, "warm", lambda s: None)
    assert warmup.main([json.dumps(settings.to_dict()), "warm"]) == 0
    assert warmup.is_warm(settings)
    assert warmup.is_warm(dataclasses.replace(settings, seed=9, image_key="other.jpg"))  # the same kernels
    assert not warmup.is_warm(Settings(film="NC200", dtype="uint16"))
    source.write_text("x = 12\n")  # a kernel source edited: numba's cache no longer holds its kernels
    assert not warmup.is_warm(settings)


def test_a_warm_up_that_did_not_finish_is_not_on_record(tmp_path, monkeypatch):
    from phos_dask import warmup

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    settings = Settings(film="NC200", dtype="uint8")

    def interrupted(s):
        raise KeyboardInterrupt

    monkeypatch.setattr(warmup, "warm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        warmup.main([json.dumps(settings.to_dict()), "warm"])
    assert not warmup.is_warm(settings)


def test_run_starts_no_warm_up_when_a_finished_one_is_on_record(tmp_path, monkeypatch):
    from phos_dask import warmup
    from phos_dask.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.jpg").write_bytes((REPO / "examples" / "coffee.jpg").read_bytes())
    started = []
    monkeypatch.setattr(warmup, "start", lambda s: started.append(s.film) or [])
    for on_record, out in ((True, "o.zarr"), (False, "p.zarr")):
        monkeypatch.setattr(warmup, "is_warm", lambda s, part="all", on_record=on_record: on_record)
        assert main(["run", str(photos), "--out", str(tmp_path / out), "--film", "Portra400", "--workers", "1",
                     "--dashboard-address", "127.0.0.1:0"]) == 0
    assert started == ["Portra400"]  # the second run only


def test_run_starts_its_warm_up_before_it_imports_dask_and_stops_it_for_a_configured_scheduler(tmp_path):
    """After an install the kernels' compile is what a first `run` waits for: it starts while the command's
    process is still the only one at work, before Dask (0.2 s) and distributed (0.3 s) are imported. A
    scheduler named only in Dask's configuration is found after that, and the warm-up is then stopped."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.jpg").write_bytes((REPO / "examples" / "coffee.jpg").read_bytes())
    code = ("import sys\n"
            "from phos_dask import warmup\n"
            "from phos_dask.cli import main\n"
            "class Started:\n"
            "    def poll(self): return None\n"
            "    def terminate(self): print('stopped')\n"
            "    def wait(self, timeout=None): return 0\n"
            "    def kill(self): pass\n"
            "def start(settings):\n"
            "    print('started', settings.film, 'dask' in sys.modules, 'distributed' in sys.modules)\n"
            "    return [Started()]\n"
            "warmup.start, warmup.is_warm = start, lambda settings, part='all': False\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    local = subprocess.run([sys.executable, "-c", code, "run", str(photos), "--out", str(tmp_path / "a.zarr"),
                            "--film", "Portra400", "--workers", "1", "--dashboard-address", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert local.returncode == 0, local.stderr
    assert local.stdout.splitlines()[0] == "started Portra400 False False"
    nowhere = {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    configured = subprocess.run([sys.executable, "-c", code, "run", str(photos), "--out", str(tmp_path / "b.zarr"),
                                 "--film", "Portra400"], capture_output=True, text=True, timeout=300,
                                env={**env, **nowhere})
    assert configured.stdout.splitlines()[:2] == ["started Portra400 False False", "stopped"], configured.stdout
    assert configured.returncode != 0 and "127.0.0.1:9" in configured.stderr  # no scheduler there


def test_local_workers_given_the_settings_load_a_photos_kernels_before_any_task():
    from phos_dask.cluster import connect

    def loaded() -> int:
        from phos_dask.film import _cpu

        return sum(len(k.serial.signatures) for k in vars(_cpu).values() if isinstance(k, _cpu.Kernel))

    with connect(workers=1, dashboard_address="127.0.0.1:0", warm=Settings(film="Portra400")) as client:
        deadline = time.monotonic() + 120
        while (count := next(iter(client.run(loaded).values()))) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert count >= 4  # front, cells (of X and of Y), blur, finish: loaded (or compiled) with no task submitted


def _huge_pages() -> bool:
    from numpy._core.multiarray import _get_madvise_hugepage

    return _get_madvise_hugepage()


@pytest.mark.parametrize("asked", [None, "1"])
def test_local_workers_use_numpys_huge_pages_only_when_the_environment_asks(asked, monkeypatch):
    from phos_dask.cluster import connect
    from phos_dask.localworkers import HUGEPAGE_ENV

    if asked is None:
        monkeypatch.delenv(HUGEPAGE_ENV, raising=False)
    else:
        monkeypatch.setenv(HUGEPAGE_ENV, asked)
    with connect(workers=1, dashboard_address="127.0.0.1:0") as client:
        assert list(client.run(_huge_pages).values()) == [asked == "1"]


def _hold_objects_and_report_the_unfrozen_at_exit(path: str) -> None:
    """In a worker: keep 50 000 containers alive (what a job leaves behind: plans, caches, compiled kernels)
    and, as the process exits, write how many objects the garbage collector would still walk."""
    import atexit
    import gc

    held = [[] for _ in range(50_000)]
    atexit.register(lambda held=held: Path(path).write_text(str(len(gc.get_objects()))))


def _collector() -> tuple[bool, int]:
    import gc

    return gc.isenabled(), gc.get_freeze_count()


def test_a_local_workers_start_up_and_its_exit_cost_no_garbage_collection(tmp_path):
    """phos_dask.worker_setup: a local worker's process loads its kernels with the collector off, then
    freezes what the start-up made out of it and turns it on again; as the worker closes, what it holds is
    frozen as well, so its exit does not wait on a last collection over numba's and LLVM's objects. A
    worker inside another process (here: the import into the test's) leaves the collector alone."""
    import gc

    from phos_dask import worker_setup
    from phos_dask.cluster import connect

    report = tmp_path / "unfrozen-at-exit"
    with connect(workers=1, dashboard_address="127.0.0.1:0", warm=Settings(film="Portra400")) as client:
        deadline = time.monotonic() + 120
        while not (state := next(iter(client.run(_collector).values())))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        enabled, at_start = state
        assert enabled
        assert at_start > 10_000  # modules, numba's and LLVM's objects
        client.run(_hold_objects_and_report_the_unfrozen_at_exit, str(report))
    deadline = time.monotonic() + 30
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(report.read_text()) < 1000
    assert gc.isenabled()
    before = gc.get_freeze_count()
    worker_setup.dask_teardown(None)
    assert gc.get_freeze_count() == before


def _after_the_command(command: list[str], expression: str, env: dict[str, str] | None = None
                       ) -> tuple[subprocess.CompletedProcess, str]:
    """Run `python -m phos_dask COMMAND` (its __main__, through runpy) in a fresh interpreter and print
    `expression` there once the command is over: the process and that last line."""
    script = ("import runpy, sys\n"
              "sys.argv = ['phos_dask', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('phos_dask', run_name='__main__')\n"
              "except SystemExit:\n    pass\n"
              f"print({expression})\n")
    proc = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True, env=env,
                          timeout=120)
    return proc, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def test_the_command_line_turns_numpys_huge_pages_off_unless_asked():
    huge_pages = "__import__('numpy._core.multiarray', fromlist=['_'])._get_madvise_hugepage()"
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    for asked, expected in ((None, "False"), ("1", "True")):
        run_env = env if asked is None else {**env, "NUMPY_MADVISE_HUGEPAGE": asked}
        proc, last = _after_the_command(["films"], huge_pages, run_env)
        assert proc.returncode == 0, proc.stderr
        assert last == expected


def test_the_processes_the_command_line_starts_run_openblas_on_one_thread_unless_asked():
    """The kernel warm-up's processes inherit OPENBLAS_NUM_THREADS=1 from the command (its one BLAS call is
    small, and a second BLAS thread spins on the core the compiles want); a value the user set stays."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for asked, expected in ((None, "1"), ("4", "4")):
        run_env = env if asked is None else {**env, "OPENBLAS_NUM_THREADS": asked}
        proc, last = _after_the_command(["films"], "__import__('os').environ['OPENBLAS_NUM_THREADS']", run_env)
        assert proc.returncode == 0, proc.stderr
        assert last == expected


def test_only_a_preview_runs_without_the_garbage_collector(small_photo, tmp_path):
    """`python -m phos_dask preview` renders one image and exits: it leaves the collector off (phos_dask's
    __main__); a command that may work through a whole archive (run, export) keeps it on."""
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), cv2.cvtColor(small_photo[:64, :96], cv2.COLOR_RGB2BGR))
    preview = ["preview", str(photo), "-o", str(tmp_path / "p.jpg"), "--film", "NC200"]
    export = ["export", str(tmp_path / "none.zarr"), "--to", str(tmp_path / "x")]
    for command, enabled in ((preview, "False"), (["films"], "True"), (export, "True")):
        proc, last = _after_the_command(command, "__import__('gc').isenabled()")
        assert last == enabled, (command, proc.stdout, proc.stderr)
    assert (tmp_path / "p.jpg").is_file()


def test_the_cpu_kernels_avoid_what_numba_compiles_slowly():
    """Slice assignment, array views and np.zeros/ones/full inside a kernel each cost a first compile up to
    seconds (`_cpu`'s docstring); the kernels copy, clear and read bits in loops instead."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_cpu))
    found = []
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        compiled = any("njit" in ast.unparse(d) or ast.unparse(d) in ("kernel", "serial_kernel", "_helper")
                       for d in fn.decorator_list)
        for node in ast.walk(fn) if compiled else ():
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Subscript) and any(isinstance(s, ast.Slice) for s in ast.walk(t.slice))
                    for t in node.targets):
                found.append(f"{fn.name}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                    node.func.attr == "view" or ast.unparse(node.func) in ("np.zeros", "np.ones", "np.full")):
                found.append(f"{fn.name}: {ast.unparse(node)}")
    assert not found, found


def test_the_jobs_client_imports_no_numba():
    """A job's client plans, submits and reports; numba (about 0.2 s to import, more on a cold disk) and the
    kernels are its workers' business. (phos_dask.graph is what run_job imports as it starts.)"""
    code = ("import sys\n"
            "from phos_dask.runner import run\n"
            "from phos_dask.cluster import connect\n"
            "from phos_dask.device import choose, probe\n"
            "from phos_dask.job import JobSpec, check_spec, plan_job, run_job\n"
            "from phos_dask.graph import Todo, submit_job\n"
            "from phos_dask.store import ImageLayout\n"
            "probe()\n"
            "print(sorted(m for m in ('numba', 'llvmlite', 'phos_dask.film._cpu') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("film", "dtype", "input_dtype"), [("Portra400", "uint8", "uint8"),
                                                             ("HP5Plus400", "uint16", "uint16")])
def test_a_background_warm_up_loads_every_kernel_the_render_after_it_takes(tmp_path, film, dtype, input_dtype):
    """`preview` loads its kernels in a thread while it decodes the input (warmup.warm_in_background): in a
    fresh interpreter, once that thread is done, rendering a photograph-sized image loads or builds nothing
    more."""
    code = f"""
import numpy as np
from phos_dask.engine import render_image
from phos_dask.film import _cpu
from phos_dask.settings import Settings
from phos_dask.warmup import warm_in_background

settings = Settings(film="{film}", dtype="{dtype}")
warm_in_background(settings, np.{input_dtype}).join()
kernels = [k for k in vars(_cpu).values() if isinstance(k, _cpu.Kernel)]
def builds():
    return sorted((k.__name__, n) for k in kernels for n, d in (("serial", k.serial), ("parallel", k.parallel))
                  for _ in d.overloads)
before = builds()
top = np.iinfo(np.{input_dtype}).max
image = np.random.default_rng(5).integers(0, top, (700, 1000, 3), dtype=np.{input_dtype})
render_image(image, settings)
print(len(before), before == builds())
"""
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded, same = proc.stdout.split()
    assert int(loaded) >= 4 and same == "True", proc.stdout


def test_cached_kernels_load_without_refreshing_numbas_whole_target_and_give_the_same_bits():
    """A kernel found in numba's cache loads with only numba's runtime set up (`_cpu.quick_load`): in a fresh
    interpreter a render imports none of the implementations numba registers for compiling (numba.np.linalg
    stands for them), and gives the same bits as a render in a process that refreshed the whole target first,
    as numba's own loading does. (The first run may compile, which refreshes; the second must not.)"""
    code = """
import hashlib, sys
import numpy as np
if sys.argv[1] == "refresh":
    from numba.core.registry import cpu_target
    cpu_target.target_context.refresh()
from phos_dask import Settings, render
image = np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8)
out = render(image, Settings(film="Portra400", dtype="uint16"))
print(hashlib.sha256(out.tobytes()).hexdigest(), "numba.np.linalg" in sys.modules)
"""
    def render_in_a_fresh_process(mode: str) -> tuple[str, str]:
        proc = subprocess.run([sys.executable, "-c", code, mode], env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        digest, refreshed = proc.stdout.split()
        return digest, refreshed

    render_in_a_fresh_process("load")  # compiles whatever is not cached yet
    quick, refreshed = render_in_a_fresh_process("load")
    assert refreshed == "False"
    full, refreshed = render_in_a_fresh_process("refresh")
    assert refreshed == "True" and full == quick


def test_a_change_to_the_per_pixel_functions_makes_the_cached_kernels_stale(tmp_path):
    """numba stamps a cached build with its own function's file only; the kernels and their row helpers also
    inline `_pixel.py`'s functions, so a change there must not load a kernel built from the old ones (an
    editable install after a pull, or a cache left beside an upgraded package). A copy of the package computes
    the bloom stage's `compose` (kept = s − eta·(s − thr)₊: 0.9 → 0.7), is cached, then gets a `_pixel.kept`
    that keeps everything: the next process must compute 0.9."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(REPO / "phos_dask", root / "phos_dask", ignore=shutil.ignore_patterns("__pycache__"))
    script = """
import numba, numpy as np
numba.set_num_threads(1)
from phos_dask.film import _cpu
out = np.empty((2, 3), np.float32)
rows, cols = (np.zeros(2, np.int64), np.ones(2, np.float32), np.zeros(2, np.float32)), \
    (np.zeros(3, np.int64), np.ones(3, np.float32), np.zeros(3, np.float32))
_cpu.compose(np.full((2, 3), 0.9, np.float32), 0, 0, np.zeros((2, 2), np.float32), False, *rows, *cols,
             np.float32(0.5), np.float32(0.5), out)
print(round(float(out[0, 0]), 4))
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(root)}

    def computed() -> float:
        proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                              timeout=300)  # cwd: `-c` puts it first on the path, before PYTHONPATH
        assert proc.returncode == 0, proc.stderr
        return float(proc.stdout)

    assert computed() == 0.7
    pixel = root / "phos_dask" / "film" / "_pixel.py"
    text = pixel.read_text()
    assert "    return s - eta * max(s - thr, _F0)\n" in text
    pixel.write_text(text.replace("    return s - eta * max(s - thr, _F0)\n", "    return s\n"))
    assert computed() == 0.9


def test_the_first_kernels_load_the_pyramids_before_the_renders(monkeypatch):
    """After an install another process compiles the render's fused kernel (`precompile`); the warm-up's first
    part compiles the pyramid's kernel before it meets the render's and waits, not after, as the workers need
    both for a first photograph."""
    from phos_dask import pyramid, warmup

    order = []
    monkeypatch.setattr(pyramid, "downsample2", lambda a: order.append("pyramid"))
    monkeypatch.setattr(warmup, "render_small", lambda s, dtype=np.uint8: order.append("render"))
    warmup.load_first(Settings(film="Portra400", dtype="uint16"))
    assert order == ["pyramid", "render"]
