"""phos_dask on SLURM: dask-jobqueue worker jobs described by one YAML file (`deploy/slurm/jobqueue.yaml`).

The file is in dask-jobqueue's own configuration format (https://jobqueue.dask.org/en/latest/configuration.html,
keys spelled with dashes). It is read through Dask's configuration loader (`dask.config.collect_yaml`, which
uses `yaml.safe_load`): data only, never code. Two sections:

    jobqueue:
      slurm:        # --kind cpu: any key of dask-jobqueue's `slurm` section (cores, processes, memory, walltime,
                    #   queue, account, job-extra-directives, job-script-prologue, worker-command, ...)
      slurm-gpu:    # --kind gpu: only what differs from `slurm`; it is laid over it

Keys the file leaves out come from Dask's own configuration (dask-jobqueue's defaults, `~/.config/dask/`,
`DASK_JOBQUEUE__SLURM__*`); a key dask-jobqueue does not know is an error, so typos are not silently ignored.
On top of the file, every worker job script exports the environment phos_dask gives its local workers
(`phos_dask.localworkers.WORKER_ENV`: single-threaded kernels, an untrimmed heap) through Dask's nanny
`pre-spawn-environ`, and the scheduler and workers talk TLS with throwaway certificates unless `tls=False`.

Python:

    from phos_dask.jobqueue import slurm_cluster
    with slurm_cluster("deploy/slurm/jobqueue.yaml", kind="gpu") as cluster, Client(cluster) as client:
        print(cluster.job_script())
        cluster.scale(jobs=4)      # sbatch is called only now

Command line (exit status and one-line errors as `python -m phos_dask`):

    python -m phos_dask.jobqueue --config deploy/slurm/jobqueue.yaml --kind gpu --print-job-script
    python -m phos_dask.jobqueue --config deploy/slurm/jobqueue.yaml --kind cpu --jobs 8 \\
        run /archive --out /scratch/archive.zarr --film Portra400

The second starts the scheduler in this process, submits `--jobs` worker jobs, waits for the first worker,
then runs `python -m phos_dask run … --scheduler ADDRESS` against them (with `--device cpu` or `--device gpu`
from `--kind` unless given) and cancels the jobs when the run ends, however it ends (SIGTERM included, e.g.
`scancel` of the job this runs in).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask

from phos_dask.errors import PhosError
from phos_dask.localworkers import WORKER_ENV

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster

PROG = "phos_dask.jobqueue"
#: The file's section for each kind; "slurm-gpu" is laid over "slurm".
SECTIONS = {"cpu": ("slurm",), "gpu": ("slurm", "slurm-gpu")}
#: dask-jobqueue keys that are deprecated aliases of others: refused, so a file says each thing once.
DEPRECATED = {"extra": "worker-extra-args", "env-extra": "job-script-prologue", "job-extra": "job-extra-directives",
              "header-skip": "job-directives-skip", "project": "account"}
#: `run` flags that describe a local cluster or another scheduler: this command provides the cluster.
CLUSTER_FLAGS = ("--scheduler", "--scheduler-file", "--workers", "--dashboard-address", "--rmm-pool-size")
#: Environment variable through which Dask's nanny sets each worker process's environment.
PRE_SPAWN_ENV = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"


class JobqueueError(PhosError, ValueError):
    """The configuration cannot be used, or SLURM refused the jobs; the message says why in one line."""


def _jobqueue():
    try:
        import dask_jobqueue
    except ImportError as e:
        raise JobqueueError(f"dask-jobqueue cannot be imported ({e}): pip install -e '.[slurm]'") from None
    return dask_jobqueue


def read_config(path: str | os.PathLike, kind: str = "cpu") -> dict[str, Any]:
    """The settings for `kind` ("cpu" or "gpu") from the file at `path`, keys spelled as in the file
    (`death-timeout`), the `slurm-gpu` section laid over `slurm` for "gpu". Raises JobqueueError for a missing
    or malformed file, a missing section, or a key dask-jobqueue's SLURM support does not know."""
    if kind not in SECTIONS:
        raise JobqueueError(f"kind must be one of {', '.join(SECTIONS)}, not {kind!r}")
    _jobqueue()  # registers dask-jobqueue's defaults, which name the keys it knows
    p = Path(path)
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise JobqueueError(f"cannot read the jobqueue configuration {str(p)!r}: {e.strerror or e}") from None
    try:
        docs = list(dask.config.collect_yaml([str(p)]))  # yaml.safe_load, inside Dask
    except ValueError as e:
        raise JobqueueError(" ".join(str(e).split())) from None
    sections = (docs[0] if docs else {}).get("jobqueue")
    if not isinstance(sections, dict):
        raise JobqueueError(f"{str(p)!r} has no `jobqueue:` mapping (see deploy/slurm/jobqueue.yaml)")
    known = set(dask.config.get("jobqueue.slurm")) - set(DEPRECATED)
    merged: dict[str, Any] = {}
    for name in SECTIONS[kind]:
        section = sections.get(name)
        if not isinstance(section, dict):
            raise JobqueueError(f"{str(p)!r} has no `jobqueue: {name}:` section (needed for --kind {kind})")
        for key, value in section.items():
            if key in DEPRECATED:
                raise JobqueueError(f"{str(p)!r}: `{name}: {key}` is deprecated in dask-jobqueue; "
                                    f"use `{DEPRECATED[key]}`")
            if key not in known:
                raise JobqueueError(f"{str(p)!r}: `{name}: {key}` is not a dask-jobqueue SLURM setting "
                                    f"(known: {', '.join(sorted(known))})")
            merged[key] = value
    return merged


def worker_env_prologue() -> str:
    """The job-script line that gives every worker process phos_dask's worker environment. Dask's nanny sets
    `distributed.nanny.pre-spawn-environ` in each worker's environment before starting it (plain exports
    would lose MALLOC_TRIM_THRESHOLD_ to Dask's own default there)."""
    return f"export {PRE_SPAWN_ENV}={shlex.quote(json.dumps(WORKER_ENV))}"


def cluster_kwargs(config: str | os.PathLike, kind: str = "cpu", **overrides: Any) -> dict[str, Any]:
    """SLURMCluster keyword arguments from the file (see read_config) with `overrides` (Python names,
    `death_timeout=…`) laid over it. The worker environment line is appended to `job_script_prologue`."""
    kwargs = {("job_name" if k == "name" else k.replace("-", "_")): v for k, v in read_config(config, kind).items()}
    kwargs.update(overrides)
    prologue = kwargs.get("job_script_prologue")
    if prologue is None:
        prologue = dask.config.get("jobqueue.slurm.job-script-prologue") or []
    if isinstance(prologue, str):
        prologue = [prologue]
    kwargs["job_script_prologue"] = [*prologue, worker_env_prologue()]
    return kwargs


def slurm_cluster(config: str | os.PathLike, kind: str = "cpu", jobs: int = 0, tls: bool = True,
                  **overrides: Any) -> SLURMCluster:
    """A dask_jobqueue.SLURMCluster for phos_dask workers of `kind` ("cpu" or "gpu"), configured by the YAML
    file `config` (see the module docstring) and `overrides` (SLURMCluster keyword arguments, which win).

    Its scheduler runs in this process at once; SLURM jobs are submitted only by `jobs` > 0 or a later
    `cluster.scale(jobs=N)` / `cluster.adapt(...)`, so with `jobs=0` it needs no `sbatch` (e.g. to look at
    `cluster.job_script()`). With `tls` (the default) the scheduler and workers use TLS with throwaway
    certificates (`Security.temporary()`, needs `cryptography`); the workers' copies are written, readable
    by the owner only, to `shared-temp-directory`, which must be on a file system the compute nodes share.
    Close it (or use it as a context manager) to cancel its jobs."""
    if jobs < 0:
        raise JobqueueError(f"jobs must be ≥ 0, not {jobs}")
    kwargs = cluster_kwargs(config, kind, **overrides)
    if tls and "security" not in kwargs:
        shared = kwargs.get("shared_temp_directory") or dask.config.get("jobqueue.slurm.shared-temp-directory")
        if not shared:
            raise JobqueueError("TLS needs `shared-temp-directory` (a directory the compute nodes share, e.g. "
                                "~/.phos_dask/jobqueue) in the configuration, or tls=False / --no-tls")
        local = Path(os.path.expandvars(os.path.expanduser(shared)))
        local.mkdir(mode=0o700, parents=True, exist_ok=True)
        kwargs["shared_temp_directory"] = shared
        kwargs["security"] = True
    cluster_cls = _jobqueue().SLURMCluster
    try:
        cluster = cluster_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise JobqueueError(" ".join(str(e).split())) from None
    except ImportError as e:  # Security.temporary() without `cryptography`
        raise JobqueueError(f"TLS needs the `cryptography` package (pip install -e '.[slurm]'), or tls=False / "
                            f"--no-tls: {e}") from None
    if jobs:
        try:
            submit(cluster, jobs)
        except BaseException:
            cluster.close()
            raise
    return cluster


def submit(cluster: SLURMCluster, jobs: int, timeout: float = 600.0) -> None:
    """Scale `cluster` to `jobs` SLURM jobs and wait until sbatch has answered for each. Raises JobqueueError
    when sbatch is missing, or refuses a job twice (the message is sbatch's own)."""
    from distributed.core import Status

    command = shlex.split(cluster.job_cls.submit_command)[0]
    if shutil.which(command) is None:
        raise JobqueueError(f"cannot submit SLURM jobs: {command} not found (run this on a SLURM login node or "
                            "inside a SLURM job)")
    cluster.scale(jobs=jobs)
    deadline = time.monotonic() + timeout
    while len(cluster.workers) < jobs:  # a job appears there once sbatch has answered for all of them
        if time.monotonic() > deadline:
            raise JobqueueError(f"{command} did not answer within {timeout:g} s")
        time.sleep(0.05)
    refused = []
    for job in list(cluster.workers.values()):
        if job.job_id is not None:
            continue
        try:  # the first failure's message stays inside Dask's background task: submit once more to get it
            cluster.sync(job.start)
        except (RuntimeError, OSError) as e:
            job.status = Status.failed  # so that the cluster can close (it checks that its jobs ended)
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            stderr = lines[lines.index("stderr:") + 1:] if "stderr:" in lines else lines
            refused.append(" ".join(stderr) or lines[0])
    if refused:
        raise JobqueueError(f"{command} refused {len(refused)} of {jobs} worker job(s): {refused[0]}")


@contextlib.contextmanager
def client_tls(cluster: SLURMCluster) -> Iterator[None]:
    """Dask configuration under which a plain `Client(address)` (as `python -m phos_dask run --scheduler`
    makes) connects to `cluster`'s TLS scheduler with its certificates (held in memory, never written)."""
    sec = cluster.security
    if not (sec and sec.tls_ca_file):
        yield
        return
    with dask.config.set({"distributed.comm.tls.ca-file": sec.tls_ca_file,
                          "distributed.comm.tls.client.cert": sec.tls_client_cert,
                          "distributed.comm.tls.client.key": sec.tls_client_key,
                          "distributed.comm.require-encryption": True}):
        yield


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` as SLURMCluster keyword arguments; VALUE is JSON when it parses, else a string."""
    from phos_dask.options import json_or_text

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise JobqueueError(f"--set wants KEY=VALUE, not {item!r}")
        key = key.strip()
        out["job_name" if key == "name" else key.replace("-", "_")] = json_or_text(text)
    return out


def _run_args(command: list[str], kind: str) -> list[str]:
    if not command or command[0] != "run":
        raise JobqueueError("give --print-job-script, or `run SOURCE --out OUT.zarr …` after the options")
    for flag in CLUSTER_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in command):
            raise JobqueueError(f"{flag} does not apply here: this command provides the cluster (SLURM jobs)")
    from phos_dask.flags import build_parsers

    args = build_parsers().parse(command)  # a mistyped flag (or job file) ends here, before any job is queued
    source = args.source or ""
    if source and "://" not in source and not Path(source).exists():
        raise JobqueueError(f"SOURCE {source!r} does not exist")
    has_device = any(a == "--device" or a.startswith("--device=") for a in command)
    return command if has_device else [*command, "--device", kind]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Run `python -m phos_dask run` on Dask workers submitted as SLURM jobs (dask-jobqueue), or "
                    "print the worker job script.",
        epilog="example: python -m phos_dask.jobqueue --config deploy/slurm/jobqueue.yaml --kind cpu --jobs 8 "
               "run /archive --out /scratch/archive.zarr --film Portra400",
    )
    parser.add_argument("--config", required=True, metavar="FILE.yaml",
                        help="dask-jobqueue configuration with `jobqueue: slurm:` (and `slurm-gpu:`) sections")
    parser.add_argument("--kind", choices=list(SECTIONS), default="cpu",
                        help="CPU workers (`slurm`) or GPU workers (`slurm-gpu` over `slurm`) (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker jobs to submit (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the file, e.g. --set queue=debug --set walltime=00:30:00 "
                             "(VALUE is JSON when it parses; repeatable)")
    parser.add_argument("--no-tls", action="store_true",
                        help="plain TCP between scheduler and workers (default: TLS, throwaway certificates)")
    parser.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                        help="give up when no worker has started after SECONDS (default: wait; jobs may queue)")
    parser.add_argument("--print-job-script", action="store_true",
                        help="print the worker job script (cluster.job_script()) and exit; submits nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="run SOURCE --out OUT.zarr …",
                        help="the `python -m phos_dask run` arguments (without --scheduler/--workers)")
    return parser


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # scancel/timeouts send SIGTERM: close the cluster (cancel the jobs) on the way out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m phos_dask.jobqueue`; returns the exit status (that of `run`, or 2 for configuration errors)."""
    args = build_parser().parse_args(argv)
    try:
        overrides = _parse_set(args.set)
        if args.print_job_script:
            if args.command:
                raise JobqueueError("--print-job-script takes no `run …` command")
            with slurm_cluster(args.config, args.kind, tls=not args.no_tls, **overrides) as cluster:
                print(cluster.job_script(), end="")
            return 0
        if args.jobs < 1:
            raise JobqueueError(f"--jobs must be ≥ 1, not {args.jobs}")
        command = _run_args(args.command, args.kind)
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        try:
            return _run(args, command, overrides)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except JobqueueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, command: list[str], overrides: Mapping[str, Any]) -> int:
    from distributed import Client

    from phos_dask import runner
    from phos_dask.flags import build_parsers
    from phos_dask.progress import Progress

    with slurm_cluster(args.config, args.kind, tls=not args.no_tls, **overrides) as cluster:
        submit(cluster, args.jobs)
        ids = ", ".join(str(j.job_id) for j in cluster.workers.values())
        print(f"{PROG}: scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}; "
              f"{args.jobs} SLURM job(s) submitted ({ids}); waiting for the first worker", file=sys.stderr, flush=True)
        with Client(cluster) as client:
            try:
                client.wait_for_workers(1, timeout=args.wait_timeout)
            except TimeoutError:
                raise JobqueueError(f"no worker started within {args.wait_timeout:g} s (jobs {ids}; see "
                                    "`squeue` and the jobs' logs)") from None
        args = build_parsers().parse([*command, "--scheduler", cluster.scheduler_address])
        with client_tls(cluster):
            try:
                result = runner.run(runner.options_from(args), say=lambda line: print(line, file=sys.stderr,
                                                                                      flush=True),
                                    progress=lambda: Progress(0, stream=sys.stdout, tty=False))
            except PhosError as e:
                print(f"phos_dask: error: {e}", file=sys.stderr)
                return e.exit_code
            if result.plan is not None:
                print(json.dumps(result.plan, indent=2))
            return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
