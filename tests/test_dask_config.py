"""Dask's conventions: the `phos_dask` section of Dask's configuration for the job defaults (flags win),
`scheduler-address` / DASK_SCHEDULER_ADDRESS for `run`, and run_job on the current client."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import dask
import pytest
from test_dashboard import ENV, _status, dash_cluster  # noqa: F401  (the external cluster fixture)

from phos_dask import Settings, config
from phos_dask.flags import build_parser
from phos_dask.imageio import DEFAULT_MAX_PIXELS
from phos_dask.job import JobError, JobSpec, run_job
from phos_dask.runner import apply_config_defaults, lease_ttl
from phos_dask.store import DEFAULT_COMPRESSION, OUTPUT_CODECS
from phos_dask.tasks import WHOLE_LIMIT_MP, limit_kernel_threads
from phos_dask.tiles import DEFAULT_TILE


def _args(*flags: str):
    return build_parser().parse_args(["run", "SRC", *flags])


def _run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phos_dask", *args], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})})


def test_the_package_defaults_are_the_code_defaults():
    assert config.tile() == DEFAULT_TILE
    assert config.whole_limit() == WHOLE_LIMIT_MP
    assert config.max_pixels() == DEFAULT_MAX_PIXELS
    assert config.compression() == DEFAULT_COMPRESSION == JobSpec("s", "o").compression
    assert config.lease_ttl() is None and config.kernel_threads() is None
    args = _args()
    apply_config_defaults(args)
    assert (args.tile, args.whole_limit, args.max_pixels, args.lease_ttl) == (DEFAULT_TILE, WHOLE_LIMIT_MP,
                                                                               DEFAULT_MAX_PIXELS, None)
    assert args.compression == DEFAULT_COMPRESSION


def test_runs_compression_choices_are_the_stores_codecs():
    from phos_dask.flags import COMPRESSIONS

    assert tuple(OUTPUT_CODECS) == COMPRESSIONS


def test_runs_help_shows_the_configured_defaults_as_they_are_when_it_is_shown():
    from phos_dask.flags import build_parsers

    run = build_parsers(["run", "SRC"]).run  # built before the configuration changes
    with dask.config.set({"phos_dask.tile": 1536, "phos_dask.max-pixels": 12345}):
        text = " ".join(run.format_help().split())
    assert "phos_dask.tile in Dask's configuration, now 1536" in text
    assert "phos_dask.max-pixels in Dask's configuration, now 12345" in text
    assert f"phos_dask.whole-limit in Dask's configuration, now {config.whole_limit()}" in text
    assert "<configured" not in text


def test_the_configuration_fills_what_flags_leave_unset():
    cfg = {"phos_dask.tile": 1024, "phos_dask.whole_limit": 0, "phos_dask.max-pixels": 5e6,
           "phos_dask.lease-ttl": 30, "phos_dask.compression": "zstd", "scheduler-address": "tcp://127.0.0.1:8786"}
    with dask.config.set(cfg):
        args = _args()
        apply_config_defaults(args)
        assert (args.tile, args.whole_limit, args.max_pixels, args.lease_ttl) == (1024, 0.0, 5_000_000, 30.0)
        assert args.compression == "zstd"
        assert args.scheduler == "tcp://127.0.0.1:8786"
        flagged = _args("--tile", "512", "--whole-limit", "8", "--max-pixels", "0", "--scheduler-file", "s.json",
                        "--compression", "none")
        apply_config_defaults(flagged)
        assert (flagged.tile, flagged.whole_limit, flagged.max_pixels, flagged.compression) == (512, 8.0, 0, "none")
        assert flagged.scheduler is None  # a scheduler named by flag (here a file) wins too


def test_a_configured_lease_ttl_governs_the_lease_for_the_run():
    import socket

    from phos_dask import lease

    other = {"token": "x", "host": socket.gethostname() + "-elsewhere", "heartbeat": time.time() - 20}
    assert not lease.is_dead(other)[0]  # 20 s old: alive under the default 60 s
    with lease_ttl(10.0):
        assert lease.is_dead(other)[0]
        assert abs(lease.HEARTBEAT - 10 / 6) < 1e-9
    assert not lease.is_dead(other)[0]


def test_kernel_threads_come_from_the_configuration(monkeypatch):
    with dask.config.set({"phos_dask.kernel-threads": 0}), pytest.raises(config.ConfigError, match="at least 1"):
        config.kernel_threads()
    import numba

    monkeypatch.delenv("PHOS_DASK_KERNEL_THREADS", raising=False)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        limit_kernel_threads()  # outside a worker, nothing configured: numba's own default
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        with dask.config.set({"phos_dask.kernel-threads": 1}):
            limit_kernel_threads()
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize(("key", "value"), [("TILE", "big"), ("WHOLE_LIMIT", "-1"), ("MAX_PIXELS", "1.5"),
                                            ("COMPRESSION", "gzip")])
def test_a_bad_configuration_value_is_one_line_and_exit_2(key, value, tmp_path, small_photo):
    cv2.imwrite(str(tmp_path / "a.jpg"), small_photo)
    result = _run("run", str(tmp_path / "a.jpg"), "--out", str(tmp_path / "o.zarr"), "--dry-run",
                  env={f"DASK_PHOS_DASK__{key}": value})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("phos_dask: error:")]
    assert len(errors) == 1 and f"phos_dask.{key.lower().replace('_', '-')}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_dask_yaml_files_set_the_defaults(tmp_path, small_photo):
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "big.png"), np.tile(small_photo, (4, 4, 1)))  # 1800×1200: one tile, whole by default
    (tmp_path / "dask").mkdir()
    (tmp_path / "dask" / "phos.yaml").write_text("phos_dask:\n  whole-limit: 0\n  tile: 512\n")
    default = json.loads(_run("run", str(src), "--dry-run", "--json").stdout)
    configured = _run("run", str(src), "--dry-run", "--json", env={"DASK_CONFIG": str(tmp_path / "dask")})
    assert configured.returncode == 0, configured.stderr
    assert default["plan"][0]["mode"] == "whole"
    assert json.loads(configured.stdout)["plan"][0]["mode"] == "tiled"


def test_run_job_without_a_client_and_none_current_says_so(tmp_path):
    with pytest.raises(JobError, match="no Dask client"):
        run_job(JobSpec(str(tmp_path), str(tmp_path / "o.zarr")))


def test_run_follows_dask_scheduler_address_and_the_configured_tile(dash_cluster, tmp_path, small_photo):  # noqa: F811
    address, _, base = dash_cluster
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), cv2.resize(small_photo, (900, 600))[..., ::-1])
    env = {"DASK_SCHEDULER_ADDRESS": address, "DASK_PHOS_DASK__TILE": "1024"}
    out = tmp_path / "configured.zarr"
    result = _run("run", str(src), "--out", str(out), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert f"scheduler: {address}" in result.stderr
    assert _status(base)["out"] == str(out)  # the job ran on that scheduler: its dashboard shows it
    report = json.loads((out / "_phos" / "report.json").read_text())
    assert report["tile"] == 1024 and report["counts"]["done"] == 1

    flagged = tmp_path / "flagged.zarr"
    result = _run("run", str(src), "--out", str(flagged), "--json", "--tile", "512", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((flagged / "_phos" / "report.json").read_text())["tile"] == 512


def test_run_job_uses_the_current_client(dash_cluster, tmp_path, small_photo):  # noqa: F811
    from distributed import Client

    address, _, base = dash_cluster
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), small_photo[..., ::-1])
    out = tmp_path / "current.zarr"
    with Client(address, timeout=30):
        report = run_job(JobSpec(str(src), str(out), Settings()))
    assert report["counts"] == {"done": 1, "skipped": 0, "failed": 0}
    assert _status(base)["out"] == str(out)
