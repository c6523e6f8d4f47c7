"""deploy/: running phos_dask on a cluster.

* deploy/local: start.sh starts a real scheduler and workers, a real job runs through them, stop.sh leaves no
  process behind;
* deploy/slurm: the dask-jobqueue configuration gives job scripts with the expected resources and worker
  commands, and submit.sh runs a real job through worker "jobs" that a stand-in sbatch starts on this machine;
* deploy/kubernetes: the operator manifests name images, resources, the right commands, the scheduler
  Service and a Secret for the credentials, consistently with each other and with the package;
* deploy/docker: the images install extras the package declares, pin the Dask the GPU extra pins, and share
  one ENTRYPOINT.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import cv2
import psutil
import pytest
import yaml  # the manifests are YAML; only this test reads them
import zarr
from dask.utils import parse_bytes

from phos_dask.localworkers import WORKER_ENV

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
START, STOP = DEPLOY / "local" / "start.sh", DEPLOY / "local" / "stop.sh"
JOBQUEUE_YAML = DEPLOY / "slurm" / "jobqueue.yaml"
SUBMIT = DEPLOY / "slurm" / "submit.sh"
K8S = DEPLOY / "kubernetes"
DOCKER = DEPLOY / "docker"
PRE_SPAWN = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


@pytest.fixture(scope="module")
def small_bucket(tmp_path_factory, small_photo) -> Path:
    """Three small inputs (450×300 JPEG and PNG, a grey PNG in a subfolder): a job of a few seconds."""
    src = tmp_path_factory.mktemp("deploy") / "bucket"
    (src / "sub").mkdir(parents=True)
    bgr = cv2.cvtColor(small_photo, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(src / "a.jpg"), bgr)
    cv2.imwrite(str(src / "b.png"), bgr[:, ::-1])
    cv2.imwrite(str(src / "sub" / "c.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    return src


def _image_status(out: Path) -> dict[str, str]:
    root = zarr.open_group(str(out), mode="r")
    return {k: root[k].attrs["phos"]["status"] for k in root.group_keys() if not k.startswith("_")}


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(text in part for part in p.info["cmdline"] or ()):
            found.append(p)
    return found


# --- shell scripts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(DEPLOY.rglob("*.sh")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shell_scripts_are_strict_executable_bash_that_parses(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, *map(str, sorted(DEPLOY.rglob("*.sh")))], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- deploy/local ---------------------------------------------------------------------------------------------


def test_local_scripts_run_a_job_on_two_workers_and_stop_leaves_no_process(small_bucket, tmp_path):
    run_dir = (tmp_path / "cluster").resolve()
    sched_file = run_dir / "scheduler.json"
    family: list[psutil.Process] = []
    try:
        start = subprocess.run([str(START), "--workers", "2", "--dir", str(run_dir),
                                "--dashboard-address", "127.0.0.1:0"],
                               capture_output=True, text=True, env=ENV, timeout=180)
        assert start.returncode == 0, start.stdout + start.stderr
        pid_files = sorted(p.name for p in run_dir.glob("*.pid"))
        assert pid_files == ["scheduler.pid", "worker-1.pid", "worker-2.pid"]
        for pid_file in run_dir.glob("*.pid"):
            leader = psutil.Process(int(pid_file.read_text()))
            family += [leader, *leader.children(recursive=True)]
        assert json.loads(sched_file.read_text())["address"].startswith("tcp://127.0.0.1:")

        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=30) as client:
            workers = client.scheduler_info()["workers"].values()
            assert sorted(w["name"] for w in workers) == ["worker-1", "worker-2"]
            assert all(w["nthreads"] == 1 and w["host"] == "127.0.0.1" for w in workers)
            # each worker process has phos_dask's worker environment, through Dask's nanny
            seen = client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENV})
            assert list(seen.values()) == [WORKER_ENV, WORKER_ENV]

        again = subprocess.run([str(START), "--dir", str(run_dir)], capture_output=True, text=True, env=ENV,
                               timeout=60)
        assert again.returncode == 2 and "already running" in again.stderr

        out = tmp_path / "out.zarr"
        job = subprocess.run([sys.executable, "-m", "phos_dask", "run", str(small_bucket), "--out", str(out),
                              "--film", "Portra400", "--scheduler-file", str(sched_file), "--json"],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert job.returncode == 0, job.stderr
        assert _image_status(out) == {"a.jpg": "complete", "b.png": "complete", "sub__c.png": "complete"}
    finally:
        stop = subprocess.run([str(STOP), "--dir", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert "stopped 3 process(es)" in stop.stdout
    assert not list(run_dir.glob("*.pid")) and not sched_file.exists()
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
    assert not _processes_mentioning(str(sched_file))


def test_stop_does_not_signal_a_process_that_reused_a_pid_from_a_pid_file(tmp_path):
    run_dir = tmp_path / "cluster"
    run_dir.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / "worker-1.pid").write_text(f"{bystander.pid}\n")
        stop = subprocess.run([str(STOP), "--dir", str(run_dir), "--timeout", "1"], capture_output=True, text=True,
                              timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert bystander.poll() is None  # not one of the cluster's processes: left alone
        assert not (run_dir / "worker-1.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_start_says_so_when_python_cannot_import_phos_dask_and_starts_nothing(tmp_path):
    no_site = tmp_path / "python-without-site"
    no_site.write_text(f"#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} -S \"$@\"\n")
    no_site.chmod(0o755)
    run_dir = tmp_path / "cluster"
    start = subprocess.run([str(START), "--workers", "1", "--dir", str(run_dir)], capture_output=True, text=True,
                           env={**ENV, "PYTHON": str(no_site)}, cwd=tmp_path, timeout=60)
    assert start.returncode == 2
    assert "cannot import phos_dask" in start.stderr and "set PYTHON" in start.stderr
    assert not list(run_dir.glob("*.pid"))


# --- deploy/slurm ---------------------------------------------------------------------------------------------


def _sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def _worker_command(script: str) -> list[str]:
    return shlex.split(script.strip().splitlines()[-1])


def _flag_values(tokens: list[str]) -> dict[str, str]:
    """Each `--flag` of a command line with the token after it."""
    return {tok: nxt for tok, nxt in itertools.pairwise(tokens) if tok.startswith("--")}


def _test_cluster_options(tmp_path: Path) -> dict:
    """Only what must differ on a test machine: where files go, and the scheduler on loopback."""
    return {"shared_temp_directory": str(tmp_path / "shared"), "log_directory": str(tmp_path / "logs"),
            "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}


@pytest.fixture
def no_sbatch(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("sbatch") is None


def test_cpu_job_script_asks_slurm_for_the_configured_resources_and_runs_single_threaded_workers(tmp_path,
                                                                                                  no_sbatch):
    pytest.importorskip("dask_jobqueue")
    from distributed.cli.dask_worker import main as dask_worker

    from phos_dask.jobqueue import slurm_cluster

    with slurm_cluster(JOBQUEUE_YAML, "cpu", **_test_cluster_options(tmp_path)) as cluster:
        assert cluster.workers == {} and cluster.worker_spec == {}  # nothing submitted, no sbatch needed
        script = cluster.job_script()
        sbatch = _sbatch_lines(script)
        assert {"-J phos-dask-worker", "-p cpu", "-n 1", "--cpus-per-task=16", "--mem=64G", "-t 04:00:00"} <= set(
            sbatch)
        assert not any("gres" in line for line in sbatch)
        command = _worker_command(script)
        assert command[:3] == [sys.executable, "-m", "distributed.cli.dask_worker"]
        assert command[3] == cluster.scheduler_address and command[3].startswith("tls://")
        flags = _flag_values(command)
        assert flags["--nthreads"] == "1" and flags["--nworkers"] == "16" and "--nanny" in command
        assert parse_bytes(flags["--memory-limit"]) == parse_bytes("4GiB")
        assert {"--tls-ca-file", "--tls-cert", "--tls-key"} <= set(command)
        # the line is one dask worker accepts (its TLS files exist while the cluster lives)
        dask_worker.make_context("dask-worker", command[3:])
    assert _worker_environment(script) == WORKER_ENV


def _worker_environment(script: str) -> dict[str, str]:
    exports = [shlex.split(line)[1] for line in script.splitlines() if line.startswith(f"export {PRE_SPAWN}=")]
    assert len(exports) == 1
    return json.loads(exports[0].partition("=")[2])


def test_gpu_job_script_asks_for_one_gpu_and_runs_dask_cuda_worker(tmp_path, no_sbatch):
    pytest.importorskip("dask_jobqueue")
    from phos_dask.jobqueue import slurm_cluster

    with slurm_cluster(JOBQUEUE_YAML, "gpu", **_test_cluster_options(tmp_path)) as cluster:
        script = cluster.job_script()
    sbatch = _sbatch_lines(script)
    assert "--gres=gpu:1" in sbatch and "-p gpu" in sbatch and "--cpus-per-task=8" in sbatch
    assert "-t 04:00:00" in sbatch  # inherited from the CPU section
    command = _worker_command(script)
    assert command[:5] == [sys.executable, "-m", "dask", "cuda", "worker"]
    flags = _flag_values(command)
    assert flags["--nthreads"] == "1" and parse_bytes(flags["--memory-limit"]) == parse_bytes("64GiB")
    assert "--nworkers" not in command and "--nanny" not in command  # options of `dask worker` only
    assert _worker_environment(script) == WORKER_ENV


def test_job_script_can_be_printed_from_the_command_line_without_sbatch(tmp_path):
    pytest.importorskip("dask_jobqueue")
    result = subprocess.run(
        [sys.executable, "-m", "phos_dask.jobqueue", "--config", str(JOBQUEUE_YAML), "--kind", "gpu",
         "--print-job-script", "--set", f"shared-temp-directory={tmp_path}", "--set", "queue=debug",
         "--set", f"log-directory={tmp_path / 'logs'}",
         "--set", 'scheduler-options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}'],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**ENV, "PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "#SBATCH -p debug" in result.stdout and "#SBATCH --gres=gpu:1" in result.stdout
    assert " -m dask cuda worker tls://127.0.0.1:" in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "kind", "words"),
    [
        ("jobqueue:\n  slurm:\n    cores: 4\n    walltme: '01:00'\n", "cpu", "`slurm: walltme` is not a dask-jobqueue"),
        ("jobqueue:\n  slurm:\n    cores: 4\n    env-extra: []\n", "cpu", "use `job-script-prologue`"),
        ("jobqueue:\n  slurm:\n    cores: 4\n    memory: 8GiB\n", "gpu", "no `jobqueue: slurm-gpu:` section"),
        ("jobqueue: [1, 2]\n", "cpu", "no `jobqueue:` mapping"),
        ("jobqueue:\n  slurm: {cores: 4\n", "cpu", "malformed"),
    ],
)
def test_configuration_mistakes_are_one_line_errors_that_name_them(yaml_text, kind, words, tmp_path, capsys):
    pytest.importorskip("dask_jobqueue")
    from phos_dask.jobqueue import main

    config = tmp_path / "jobqueue.yaml"
    config.write_text(yaml_text)
    assert main(["--config", str(config), "--kind", kind, "--print-job-script"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phos_dask.jobqueue: error: ") and words in err and "\n" not in err


def test_run_refuses_flags_for_another_cluster_and_sbatch_problems_are_one_line(small_bucket, tmp_path, no_sbatch,
                                                                               monkeypatch, capsys):
    pytest.importorskip("dask_jobqueue")
    from phos_dask.jobqueue import main

    base = ["--config", str(JOBQUEUE_YAML), "--set", f"shared-temp-directory={tmp_path}",
            "--set", f"log-directory={tmp_path / 'logs'}",
            "--set", 'scheduler-options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}']
    run = ["run", str(small_bucket), "--out", str(tmp_path / "out.zarr"), "--film", "Portra400"]
    assert main([*base, *run, "--workers", "4"]) == 2
    assert "--workers does not apply here" in capsys.readouterr().err
    assert main([*base, "run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.zarr"), "--film", "X"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # checked by run's own parser before any job is submitted
        main([*base, *run, "--tile", "big"])
    assert exit_.value.code == 2 and "--tile" in capsys.readouterr().err
    assert main([*base, *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch not found" in err[0]
    refusing = tmp_path / "refusing-bin"
    refusing.mkdir()
    (refusing / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: cpu' >&2\nexit 1\n")
    (refusing / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{refusing}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert main([*base, *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("phos_dask.jobqueue: error: sbatch refused 1 of 1 worker job(s): "
                       "sbatch: error: invalid partition specified: cpu")
    assert not (tmp_path / "out.zarr").exists()


SBATCH_STAND_IN = """#!/usr/bin/env bash
# sbatch stand-in: runs a copy of the job script in the background in its own session; job id = its pid
set -euo pipefail
jobs="$(dirname "$0")/../jobs"
mkdir -p "$jobs"
script=$(mktemp "$jobs/job-XXXXXX.sh")
cp "$1" "$script"
setsid bash "$script" >"$script.log" 2>&1 </dev/null &
echo "$!" >>"$jobs/ids"
echo "Submitted batch job $!"
"""
SCANCEL_STAND_IN = """#!/usr/bin/env bash
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null || true; done
echo "$@" >>"$(dirname "$0")/../jobs/cancelled"
"""


def test_submit_script_runs_a_job_on_slurm_worker_jobs_and_cancels_them(small_bucket, tmp_path):
    """submit.sh → python -m phos_dask.jobqueue → sbatch (a stand-in that runs the job script here) → workers
    that connect over TLS → the job completes → scancel for each worker job → nothing left running."""
    pytest.importorskip("dask_jobqueue")
    if shutil.which("setsid") is None:
        pytest.skip("setsid is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH_STAND_IN), ("scancel", SCANCEL_STAND_IN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "out.zarr"
    overrides = ["cores=2", "processes=2", "memory=4GiB", f"log-directory={tmp_path / 'logs'}",
                 f"shared-temp-directory={tmp_path / 'shared'}", f"local-directory={tmp_path / 'scratch'}",
                 'scheduler-options={"host":"127.0.0.1","dashboard_address":"127.0.0.1:0"}']
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PHOS_DASK_CONFIG": str(JOBQUEUE_YAML),
           "PHOS_DASK_JOBS": "1", "PHOS_DASK_SET": " ".join(overrides)}
    result = subprocess.run(["bash", str(SUBMIT), str(small_bucket), str(out), "--film", "Portra400"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _image_status(out) == {"a.jpg": "complete", "b.png": "complete", "sub__c.png": "complete"}
    jobs = tmp_path / "jobs"
    (job_id,) = (jobs / "ids").read_text().split()
    assert (jobs / "cancelled").read_text().split() == [job_id]
    (script,) = [p.read_text() for p in jobs.glob("job-*.sh")]
    assert "#SBATCH --cpus-per-task=2" in script and " --nworkers 2 " in script and " --tls-key " in script
    deadline = time.monotonic() + 15
    while _group_members(int(job_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_members(int(job_id)), "worker job processes left running"


def _group_members(pgid: int) -> list[int]:
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                members.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


# --- deploy/kubernetes ----------------------------------------------------------------------------------------


def _manifests() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def _one(kind: str) -> dict:
    (doc,) = _manifests()[kind]
    return doc


def _scheduler_address(cluster_name: str, namespace: str) -> str:
    return f"tcp://{cluster_name}-scheduler.{namespace}.svc.cluster.local:8786"


def _check_cluster_spec(spec: dict, cluster_name: str) -> list[dict]:
    """A DaskCluster spec: `dask scheduler` behind a Service that selects it, CPU `dask worker`s. Returns the
    worker containers."""
    (scheduler,) = spec["scheduler"]["spec"]["containers"]
    assert scheduler["command"] == ["dask", "scheduler"]
    service = spec["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": cluster_name, "dask.org/component": "scheduler"}
    assert service["type"] == "ClusterIP"  # not exposed outside the Kubernetes cluster
    assert {p["port"] for p in service["ports"]} == {8786, 8787}
    from distributed.cli.dask_scheduler import main as dask_scheduler

    dask_scheduler.make_context("dask-scheduler", list(scheduler["args"]))
    (worker,) = spec["worker"]["spec"]["containers"]
    assert worker["command"] == ["dask", "worker"]
    _check_worker_args(worker)
    from distributed.cli.dask_worker import main as dask_worker

    dask_worker.make_context("dask-worker", list(worker["args"]))
    _check_resources(scheduler)
    return [worker]


def _check_worker_args(container: dict) -> None:
    flags = _flag_values(container["args"])
    assert flags["--name"] == "$(DASK_WORKER_NAME)"  # how the operator retires workers when scaling down
    assert flags["--nthreads"] == "1"
    assert parse_bytes(flags["--memory-limit"]) < parse_bytes(container["resources"]["limits"]["memory"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env[PRE_SPAWN]) == WORKER_ENV


def _check_resources(container: dict) -> None:
    for side in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][side]), container["name"]


def _check_run_command(command: list[str], scheduler: str) -> None:
    from phos_dask.cli import build_parser
    from phos_dask.stocks import get_stock

    assert command[:4] == ["python", "-m", "phos_dask", "run"]
    args = build_parser().parse_args(command[3:])  # flags `run` accepts
    assert args.scheduler == scheduler
    assert args.source.startswith("s3://") and args.out.startswith("s3://")
    get_stock(args.film)


def test_kubernetes_manifests_run_the_cluster_and_the_job_with_the_right_commands():
    namespace = _one("Namespace")["metadata"]["name"]
    secret = _one("Secret")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])

    cluster = _one("DaskCluster")
    name = cluster["metadata"]["name"]
    workers = _check_cluster_spec(cluster["spec"], name)

    gpu_group = _one("DaskWorkerGroup")
    assert gpu_group["spec"]["cluster"] == name
    (gpu,) = gpu_group["spec"]["worker"]["spec"]["containers"]
    assert gpu["command"] == ["dask", "cuda", "worker"] and gpu["image"].endswith(":gpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    _check_worker_args(gpu)
    workers.append(gpu)

    (job,) = _one("Job")["spec"]["template"]["spec"]["containers"]
    _check_run_command(job["command"], _scheduler_address(name, namespace))
    assert _one("Job")["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    daskjob = _one("DaskJob")
    job_name = daskjob["metadata"]["name"]
    workers += _check_cluster_spec(daskjob["spec"]["cluster"]["spec"], job_name)  # the operator names it so
    pod = daskjob["spec"]["job"]["spec"]
    assert pod["restartPolicy"] == "Never"  # a bare pod: it must end Succeeded or Failed
    (runner,) = pod["containers"]
    _check_run_command(runner["command"], _scheduler_address(job_name, namespace))
    (wait,) = pod["initContainers"]
    assert f'"{job_name}-scheduler.{namespace}.svc.cluster.local", 8786' in wait["command"][-1]

    for doc in [d for docs in _manifests().values() for d in docs if d["kind"] != "Namespace"]:
        assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    for container in [*workers, job, runner]:
        assert re.fullmatch(r"ghcr\.io/phos-dask/phos-dask:(cpu|gpu)", container["image"])
        _check_resources(container)
        # credentials come from the Secret, never inline
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
        assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")]


# --- deploy/docker --------------------------------------------------------------------------------------------


def _dockerfile(kind: str) -> str:
    return (DOCKER / f"Dockerfile.{kind}").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m[0].upper(), m[1].strip()) for m in re.findall(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def _installed_extras(text: str) -> set[str]:
    runs = " ".join(args for op, args in _instructions(text) if op == "RUN" and "pip install" in args)
    (extras,) = re.findall(r"/src\[([\w,-]+)\]", runs)
    return set(extras.split(","))


def test_dockerfiles_install_the_package_extras_and_share_one_entrypoint():
    cpu, gpu = _dockerfile("cpu"), _dockerfile("gpu")
    assert _installed_extras(cpu) <= set(EXTRAS) and "s3" in _installed_extras(cpu)
    assert _installed_extras(gpu) <= set(EXTRAS) and {"gpu", "s3"} <= _installed_extras(gpu)
    assert _installed_extras(gpu) - {"gpu"} == _installed_extras(cpu)  # the same image plus the GPU stack

    def only(text: str, op: str) -> str:
        (value,) = [args for o, args in _instructions(text) if o == op]
        return value

    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", only(cpu, "FROM"))
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-runtime-ubuntu\d+\.\d+", only(gpu, "FROM"))
    assert json.loads(only(cpu, "ENTRYPOINT")) == json.loads(only(gpu, "ENTRYPOINT")) == ["python", "-m", "phos_dask"]
    for text in (cpu, gpu):
        assert only(text, "USER") not in ("root", "0")
        assert "python3.11 -m venv" in text or "FROM python:3.11" in text  # one Python version across a cluster


def test_both_images_pin_the_dask_that_the_gpu_extra_pins():
    """A scheduler from the CPU image and GPU workers must run the same Dask; the gpu extra pins it exactly."""
    pins = {}
    for requirement in EXTRAS["gpu"]:
        name, _, version = re.sub(r"\[.*?\]", "", requirement).partition("==")
        if name in ("dask", "distributed"):
            pins[name] = version
    lines = (DOCKER / "constraints.txt").read_text().splitlines()
    constraints = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert constraints == pins and len(pins) == 2
    for kind in ("cpu", "gpu"):
        assert "-c /src/constraints.txt" in _dockerfile(kind)


def test_docker_build_context_holds_what_the_dockerfiles_copy_and_the_tags_match_the_manifests():
    images = {c["image"] for docs in _manifests().values() for d in docs for c in _containers(d)}
    for kind in ("cpu", "gpu"):
        text = _dockerfile(kind)
        allowed = {line[1:].rstrip("/") for line in (DOCKER / f"Dockerfile.{kind}.dockerignore").read_text()
                   .splitlines() if line.startswith("!")}
        for op, args in _instructions(text):
            if op == "COPY":
                *sources, _ = args.split()
                for source in sources:
                    assert (ROOT / source).exists(), source
                    assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"
        tag = f"ghcr.io/phos-dask/phos-dask:{kind}"
        assert f"docker build -f deploy/docker/Dockerfile.{kind} -t {tag} ." in text
        assert tag in images


def _containers(doc: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers"):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


# --- deploy/README.md -----------------------------------------------------------------------------------------


def test_the_readme_section_names_only_files_that_exist():
    text = (DEPLOY / "README.md").read_text()
    assert text.lstrip().startswith("## Running on a cluster")
    named = set(re.findall(r"deploy/[\w./-]+[\w]", text))
    assert named, "the section names no deploy/ files"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing
