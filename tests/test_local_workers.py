"""`run`'s local CPU workers are forks of one server that imported and loaded what they need before the job
was planned (phos_dask.localworkers, phos_dask.worker_boot): they have the workers' environment, ignore
Ctrl-C, render the same bits as a render in this process, and a server forks only for workers of the very
environment it was started with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phos_dask import localworkers
from phos_dask.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SETTINGS = Settings(film="Portra400", dtype="uint16", image_key="")

pytestmark = pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                                reason="no fork server on this platform")


def _python(script: str, env: dict[str, str] | None = None, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**(env or os.environ), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _server_env() -> dict[str, str]:
    """The environment `run` starts its fork server with for a job with SETTINGS."""
    return localworkers._server_environ(localworkers.worker_environ(localworkers.DASK_PRE_SPAWN, SETTINGS))


def test_the_servers_preload_loads_the_first_kernels_and_leaves_it_one_thread():
    """A fork must not copy a process with threads (numba's pool, OpenBLAS's, OpenCV's would not survive it):
    after the preload the server has exactly one, and the kernels a first photograph needs are loaded (their
    serial builds), from the cache a finished warm-up left."""
    warm = subprocess.run([sys.executable, "-m", "phos_dask.warmup", json.dumps(SETTINGS.to_dict())],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert warm.returncode == 0, warm.stderr[-3000:]
    server_env = _server_env()
    seen = _python(
        "import gc, json, os, signal, threading\n"
        "import phos_dask.worker_boot\n"
        "from phos_dask.film import _cpu\n"
        "print(json.dumps({'tasks': len(os.listdir('/proc/self/task')), 'threads': threading.active_count(),\n"
        "  'nice': os.nice(0),\n"
        "  'serial': len(_cpu.finish.serial.overloads), 'parallel': len(_cpu.finish.parallel.overloads),\n"
        "  'misses': sum(_cpu.finish.serial.stats.cache_misses.values()),\n"
        "  'sigint_ignored': signal.getsignal(signal.SIGINT) == signal.SIG_IGN,\n"
        "  'collecting': gc.isenabled(), 'frozen': gc.get_freeze_count()}))\n", server_env)
    assert seen["tasks"] == 1 and seen["threads"] == 1
    assert seen["serial"] == 1 and seen["parallel"] == 0 and seen["misses"] == 0
    assert seen["sigint_ignored"] and seen["collecting"] and seen["frozen"] > 10_000
    assert seen["nice"] == os.nice(0)  # nothing is being compiled: the server keeps the command's priority


def test_on_a_cold_cache_the_server_loads_nothing_and_yields_the_cpu_to_the_compile(tmp_path):
    """After an install `run`'s warm-up compiles the kernels while the server imports: the server (and so
    every worker forked from it) lowers its priority, and loads no kernel, as none is cached to load."""
    from phos_dask.worker_boot import COLD_NICE

    server_env = _server_env()
    seen = _python(
        "import json, os\n"
        "import phos_dask.worker_boot\n"
        "from phos_dask.film import _cpu\n"
        "print(json.dumps({'nice': os.nice(0), 'builds': sum(len(k.serial.overloads) + len(k.parallel.overloads)\n"
        "  for k in vars(_cpu).values() if isinstance(k, _cpu.Kernel))}))\n",
        {**server_env, "NUMBA_CACHE_DIR": str(tmp_path / "empty")})
    assert seen["nice"] == min(19, os.nice(0) + COLD_NICE)
    assert seen["builds"] == 0


def test_workers_are_forked_from_the_server_and_render_the_same_bits():
    """Forked workers have the workers' environment, ignore Ctrl-C and render what this process renders;
    workers of another environment are spawned; the server is stopped and reaped when asked (`run` does so
    as it ends)."""
    seen = _python(
        "import json, os, signal\n"
        "import numpy as np\n"
        "from phos_dask import localworkers, render\n"
        "from phos_dask.settings import Settings\n"
        f"st = Settings(**{SETTINGS.to_dict()!r})\n"
        "assert localworkers.start_forkserver(st)\n"
        "from phos_dask.cluster import connect\n"
        "def look():\n"
        "    return {'ppid': os.getppid(), 'env': {k: os.environ.get(k) for k in localworkers.WORKER_ENV},\n"
        "            'sigint_ignored': signal.getsignal(signal.SIGINT) == signal.SIG_IGN}\n"
        "image = np.random.default_rng(3).integers(0, 255, (150, 200, 3), dtype=np.uint8)\n"
        "photo = Settings(film='Portra400', dtype='uint16', image_key='a.jpg')\n"
        "if __name__ == '__main__':\n"
        "    with connect(workers=2, dashboard_address='127.0.0.1:0', warm=st) as client:\n"
        "        forked = list(client.run(look).values())\n"
        "        remote = client.submit(render, image, photo).result()\n"
        "    with connect(workers=1, dashboard_address='127.0.0.1:0') as client:  # no settings: not the server's\n"
        "        spawned = list(client.run(os.getppid).values())\n"
        "    from multiprocessing import forkserver\n"
        "    server = forkserver._forkserver._forkserver_pid\n"
        "    localworkers.stop_forkserver()\n"
        "    try:\n"
        "        os.kill(server, 0)\n"
        "        gone = False\n"
        "    except ProcessLookupError:\n"
        "        gone = True\n"
        "    print(json.dumps({'pid': os.getpid(), 'forked': forked, 'spawned': spawned, 'server_gone': gone,\n"
        "                      'same': bool(np.array_equal(remote, render(image, photo)))}))\n")
    assert len(seen["forked"]) == 2
    for worker in seen["forked"]:
        assert worker["ppid"] != seen["pid"]  # the fork server's child, not this process's
        assert worker["env"] == localworkers.WORKER_ENV
        assert worker["sigint_ignored"]
    assert seen["spawned"] == [seen["pid"]]
    assert seen["same"]
    assert seen["server_gone"]  # stopped and reaped once the job is over (runner.run does it)


def test_the_command_lines_run_forks_its_workers(tmp_path):
    """`python -m phos_dask run`, as users run it: the fork server is started before Dask is imported, and the
    environment the workers would be spawned with is still the server's when the cluster starts, so they are
    forked. (OpenCV's import adds LD_LIBRARY_PATH to the environment: the command line loads it before the
    server starts; one loaded later would make every worker a spawned one, silently.)"""
    out = tmp_path / "examples.zarr"
    seen = _python(
        "import json, runpy, sys\n"
        "from phos_dask import localworkers\n"
        "seen = {}\n"
        "start = localworkers.start_forkserver\n"
        "def starting(*args, **kwargs):\n"
        "    seen['started'] = start(*args, **kwargs)\n"
        "    import phos_dask.cluster as cluster  # what runner imports next\n"
        "    check = cluster.forked_with\n"
        "    def forked_with(environ):\n"
        "        seen['forked'] = check(environ)\n"
        "        return seen['forked']\n"
        "    cluster.forked_with = forked_with\n"
        "    return seen['started']\n"
        "localworkers.start_forkserver = starting\n"
        f"sys.argv = ['phos_dask', 'run', {str(REPO / 'examples')!r}, '--out', {str(out)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('phos_dask', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    seen['code'] = e.code\n"
        "print(json.dumps(seen))\n")
    assert seen == {"started": True, "forked": True, "code": 0}
    assert (out / "_phos" / "report.json").exists()


def test_the_server_is_used_only_for_the_environment_it_has(monkeypatch):
    # a cluster started in this process leaves its pre-spawn variables in os.environ (Dask sets them there)
    monkeypatch.delenv(localworkers.WARM_ENV, raising=False)
    monkeypatch.setattr(localworkers, "_server_env", None)
    environ = localworkers.worker_environ(localworkers.DASK_PRE_SPAWN, SETTINGS)
    assert not localworkers.forked_with(environ)  # none started
    monkeypatch.setattr(localworkers, "_server_env", localworkers._server_environ(environ))
    assert localworkers.forked_with(environ)
    assert not localworkers.forked_with(localworkers.worker_environ(localworkers.DASK_PRE_SPAWN, None))
    assert not localworkers.forked_with({**environ, "OMP_NUM_THREADS": "4"})  # Dask configured otherwise
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/elsewhere")  # this process's environment changed since
    assert not localworkers.forked_with(environ)
