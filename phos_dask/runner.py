"""`run`'s orchestration, for any front end: fill the defaults (film, output, Dask's configuration), check the
job, hold the output's lease, plan, warm the kernels, connect to the cluster, run the job, write the contact
sheet and the export, and summarise. phos_dask.cli maps its flags to `RunOptions` and prints; this module
says each line for the user through `say` (in the order the command line prints them) and raises
`CLIError` (one line, an exit status) for what the user must fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phos_dask.errors import EXIT_FAILED, one_line
from phos_dask.options import CLIError, parse_storage_options, printable
from phos_dask.settings import Settings

PROG = "phos_dask"
#: The stock `run` uses without a film: the one the original Phos app preselects.
DEFAULT_FILM = "NC200"
#: `run`'s output type unless one is chosen.
DEFAULT_DTYPE = "uint16"
#: A local cluster's dashboard unless one is chosen.
DEFAULT_DASHBOARD = "127.0.0.1:8787"
#: Where a job can run.
DEVICES = ("auto", "cpu", "gpu")

Say = Callable[[str], None]


@dataclass
class RunOptions:
    """Everything `run` is asked to do; None means "the default" (see `fill_defaults`). `settings` holds
    `Settings` fields by name (None or absent: Settings' own default)."""

    source: str | None = None
    out: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    tile: int | None = None
    whole_limit: float | None = None
    max_pixels: int | None = None
    compression: str | None = None
    lease_ttl: float | None = None
    device: str = "auto"
    rmm_pool_size: str | None = None
    workers: int | None = None
    threads: int | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    dashboard_address: str = DEFAULT_DASHBOARD
    overwrite: bool = False
    dry_run: bool = False
    performance_report: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    storage_option: list[str] = field(default_factory=list)
    export: str | None = None
    export_dir: str | None = None
    quality: int | None = None


@dataclass
class RunResult:
    """What `run` did: the plan (a dry run) or the job's report, and the exit status."""

    exit_code: int = 0
    plan: dict | None = None
    report: dict | None = None


def _quiet(line: str) -> None:
    pass


def apply_config_defaults(opts: Any, say: Say = _quiet) -> None:
    """Fill tile, whole_limit, max_pixels and compression left unset (None) from Dask's configuration
    (phos_dask.config), and lease_ttl; and the scheduler from `scheduler-address` when neither scheduler nor
    scheduler_file is given. `opts` is a RunOptions or anything with those attributes."""
    import dask

    from phos_dask import config

    try:
        if opts.tile is None:
            opts.tile = config.tile()
        if opts.whole_limit is None:
            opts.whole_limit = config.whole_limit()
        if opts.max_pixels is None:
            opts.max_pixels = config.max_pixels()
        if opts.compression is None:
            opts.compression = config.compression()
        opts.lease_ttl = config.lease_ttl()
    except config.ConfigError as e:
        raise CLIError(str(e)) from None
    if not opts.scheduler and not opts.scheduler_file:
        address = dask.config.get("scheduler-address", None)
        if address:
            opts.scheduler = str(address)
            if not opts.dry_run:
                say(f"scheduler: {address} (Dask's scheduler-address configuration)")


@contextlib.contextmanager
def lease_ttl(seconds: float | None) -> Iterator[None]:
    """For the block, leases of other machines' runs expire `seconds` after their last heartbeat (and ours
    beats every sixth of it); None: the package's own TTL (PHOS_DASK_LEASE_TTL, else 60 s)."""
    from phos_dask import lease

    if seconds is None:
        yield
        return
    saved = lease.TTL, lease.HEARTBEAT
    lease.TTL, lease.HEARTBEAT = seconds, seconds / 6
    try:
        yield
    finally:
        lease.TTL, lease.HEARTBEAT = saved


def run(opts: RunOptions, say: Say = _quiet, progress: Callable[[], Any] | None = None) -> RunResult:
    """Do `run`: a dry run's plan, or the job with its contact sheet and export. `progress` makes the job's
    phos_dask.progress.Progress once the cluster is up (default: JSON lines on stdout). Raises CLIError for
    what the user must fix."""
    warming: list[subprocess.Popen] = []
    try:
        return _run(opts, say, progress, warming)
    finally:
        _stop(warming)
        from phos_dask.localworkers import stop_forkserver

        stop_forkserver()


def _run(opts: RunOptions, say: Say, progress: Callable[[], Any] | None, warming: list[subprocess.Popen]
         ) -> RunResult:
    if not opts.source:
        raise CLIError("run needs a SOURCE (a folder, an image or a URL), on the command line or as `source` "
                       "in --job's file")
    if opts.settings.get("film") is None:
        opts.settings["film"] = DEFAULT_FILM
        say(f"film: {DEFAULT_FILM} (the default, as in the original app; choose another with --film NAME, "
            "list them with 'phos_dask films')")
    if opts.out is None:
        opts.out = default_out(opts.source)
        say(f"out: {opts.out} (beside the source; choose another with --out)")
    chosen = {k: v for k, v in opts.settings.items() if v is not None}
    settings = Settings(**{"dtype": DEFAULT_DTYPE, **chosen, "image_key": ""})
    if (opts.export is None) != (opts.export_dir is None):
        raise CLIError("--export and --export-dir go together: give both or neither")
    storage_options = parse_storage_options(opts.storage_option or [])
    if not (opts.scheduler or opts.scheduler_file) and not opts.dry_run and opts.device in ("auto", "cpu"):
        # a local CPU cluster is likely: its workers will be forks of a server that imports what they need
        # from now on, once (phos_dask.localworkers), and loads the kernels a first photograph needs when
        # numba's cache has them. Unless every kernel the job needs is known to be cached, compile them first,
        # while Dask and the rest of the package are imported, the job is planned and the workers start
        # (stopped below if no worker needs them, as when Dask's configuration names a scheduler); the server
        # then yields the CPU to that compile (phos_dask.worker_boot).
        from phos_dask import localworkers, warmup

        if not warmup.is_warm(settings):
            warming.extend(warmup.start(settings))
        localworkers.start_forkserver(settings)
    apply_config_defaults(opts, say)
    external = bool(opts.scheduler or opts.scheduler_file)
    if external:
        _stop(warming)
    from distributed.core import Status

    from phos_dask.cluster import connect, threads_for, tls_security
    from phos_dask.device import DeviceError, choose, probe
    from phos_dask.job import JobSpec, check_spec, dry_run, plan_job, run_job
    from phos_dask.lease import hold
    from phos_dask.progress import Progress
    from phos_dask.store import REPORT

    if external:  # workers resolve paths in their own working directory: give them absolute local paths
        opts.source, opts.out = _absolute(opts.source), _absolute(opts.out)
    try:
        device, why = choose(opts.device, probe()) if not external else (opts.device, "asked for")
    except DeviceError as e:
        raise CLIError(str(e)) from None
    spec = JobSpec(source=opts.source, out=opts.out, settings=settings, tile=opts.tile,
                   whole_limit_mp=opts.whole_limit, overwrite=opts.overwrite, compression=opts.compression,
                   storage_options=storage_options or None, include=tuple(opts.include or ()),
                   exclude=tuple(opts.exclude or ()), max_pixels=opts.max_pixels or None,
                   device=device if device != "auto" else "cpu")
    try:
        if opts.dry_run:
            return RunResult(plan=dry_run(spec))
        security = tls_security(opts.tls_ca_file, opts.tls_cert, opts.tls_key)
        sheet_thumbs: dict[str, bytes] = {}
        checked = check_spec(spec)  # before the lease, which writes into the output
        with lease_ttl(opts.lease_ttl), hold(spec.out, spec.storage_options) as lease:
            plan = plan_job(spec, checked)  # usage errors surface before a cluster starts
            for note in plan.notes:
                say(f"note: {note}")
            threads = opts.threads or threads_for(spec.source, spec.out)
            if external or spec.device != "cpu" or not plan.todo:
                _stop(warming)  # no local CPU worker will render: nothing to compile for
            local = None
            try:
                with connect(opts.scheduler, opts.scheduler_file, opts.workers, opts.dashboard_address,
                             security=security, device=spec.device, rmm_pool_size=opts.rmm_pool_size,
                             threads=threads, warm=settings if plan.todo else None) as client:
                    local = client.cluster  # None on an external scheduler
                    say(f"dashboard: {client.dashboard_link}")
                    if client.dashboard_link:
                        say(f"job page: {client.dashboard_link.rsplit('/', 1)[0]}/phos")
                    if external and opts.device != "cpu":
                        spec.device, why = _cluster_device(client, opts.device)
                    say(f"device: {spec.device} ({why})")
                    with _performance_report(opts.performance_report, say):
                        report = run_job(spec, client, progress() if progress else Progress(0), plan, lease,
                                         sheet_thumbs)
            finally:
                if local is not None and local.status == Status.closed:
                    # the local cluster closed and joined its worker processes: no task of this run can
                    # still write, so an interrupted run gives its lease up without the settle
                    lease.tasks_started = False
            _stop(warming)  # the job that needed it is over; what it compiled so far stays cached
    except OSError as e:  # the output cannot be created or written (permissions, read-only, full disk)
        where = f" {e.filename!r}" if e.filename else ""
        raise CLIError(f"cannot write the output{where}: {e.strerror or e}", EXIT_FAILED) from None
    counts = report["counts"]
    say(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"{report['megapixels']:.1f} MP in {report['seconds']:.1f} s; report: {opts.out}/{REPORT}")
    for r in report["images"]:
        if r["status"] == "failed":
            named = r["source"] in r["error"]
            line = r["error"] if named else f"{r['source']}: {r['error']}"
            say(f"{PROG}: failed: {printable(line)}")
    contact_sheet(opts.out, storage_options, report, sheet_thumbs, say)
    export_failed = 0
    if opts.export:
        finished = [r["key"] for r in report["images"] if r["status"] in ("done", "skipped")]
        export_failed = export(opts.out, opts.export_dir, opts.export, opts.quality, storage_options, finished,
                               say)
    return RunResult(exit_code=EXIT_FAILED if counts["failed"] or export_failed else 0, report=report)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop phos_dask.warmup's processes that are still at work (what they compiled so far stays cached)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    procs.clear()


@contextlib.contextmanager
def _performance_report(path: str | None, say: Say) -> Iterator[None]:
    """Dask's performance report of the block written to `path` (HTML), when given."""
    if not path:
        yield
        return
    from distributed import performance_report

    with performance_report(filename=path):
        yield
    say(f"performance report: {path}")


def default_out(source: str) -> str:
    """`<source name>.zarr` beside the source: photos/ → photos.zarr, s3://b/photos/ → s3://b/photos.zarr,
    a file a.jpg → a.zarr. A bucket or file-system root has no beside: CLIError."""
    import fsspec.utils

    from phos_dask.sources import IMAGE_EXTENSIONS

    protocol = fsspec.utils.get_protocol(source)
    remote = protocol not in ("file", "local")
    if remote:
        head, rest = source.split("://", 1)
        parts = [p for p in rest.split("/") if p]
        if len(parts) < 2:
            bucket = parts[0] if parts else "BUCKET"
            raise CLIError(f"{source!r} is a bucket's root: there is nothing beside it to write the output to; "
                           f"give --out (e.g. --out {head}://{bucket}/phos.zarr)")
        last = parts[-1]
        image = not source.endswith("/") and Path(last).suffix.lower() in IMAGE_EXTENSIONS
        stem = Path(last).stem if image else last
        return f"{head}://{'/'.join([*parts[:-1], stem])}.zarr"
    path = Path(source.removeprefix("file://")).resolve()
    if path.parent == path:
        raise CLIError(f"{source!r} is the file system's root; give --out")
    stem = path.stem if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS else path.name
    return str(path.parent / f"{stem}.zarr")


def _absolute(path: str) -> str:
    """A local path made absolute; URLs (s3://…, file://…) as they are."""
    import fsspec.utils

    return os.path.abspath(path) if fsspec.utils.get_protocol(path) in ("file", "local") and "://" not in path \
        else path


def _cluster_device(client, requested: str) -> tuple[str, str]:
    """The device for a job on an existing cluster: "gpu" when any worker has a usable GPU."""
    from phos_dask.device import DeviceError, probe

    problems = client.run(lambda: probe().gpu_problem())
    usable = [w for w, p in problems.items() if p is None]
    if usable:
        return "gpu", f"{len(usable)} of {len(problems)} worker(s) have a GPU"
    why = next(iter(problems.values()), "no workers")
    if requested == "gpu":
        raise CLIError(str(DeviceError(f"--device gpu: no worker has a usable GPU ({why})")))
    return "cpu", f"no worker has a usable GPU: {why}"


def contact_sheet(out: str, storage_options: dict, report: dict, pairs: dict[str, bytes], say: Say) -> None:
    """Write OUT/_phos/contact.jpg from the job's thumbnails and say where; a failure is a warning, never
    the command's failure."""
    from phos_dask.contact import write_contact_sheet
    from phos_dask.job import SHEET_IMAGES

    finished = sorted((r["key"], r["source"]) for r in report["images"] if r["status"] in ("done", "skipped"))
    finished = finished[:SHEET_IMAGES]
    try:
        path = write_contact_sheet(out, storage_options or None, keys=[k for k, _ in finished],
                                   labels=dict(finished), pairs=pairs) if finished else None
    except Exception as e:
        say(f"{PROG}: warning: cannot write the contact sheet: {one_line(e, limit=10**6)}")
        return
    if path:
        say(f"contact sheet: {path}")


def export(out: str, to_dir: str, fmt: str, quality: int | None, storage_options: dict,
           keys: list[str] | None = None, say: Say = _quiet) -> int:
    """Export the store's complete images (or `keys`); say the failures and a summary; return the failures.
    `quality` None: phos_dask.export's JPEG default."""
    from phos_dask.export import JPEG_QUALITY, ExportError, export_store

    try:
        results = export_store(out, to_dir, fmt, JPEG_QUALITY if quality is None else quality,
                               storage_options or None, keys)
    except ExportError as e:
        raise CLIError(str(e)) from None
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        say(f"{PROG}: failed: {r['key']}: export: {r['error']}")
    say(f"exported {len(results) - len(failed)} image(s) as {fmt} to {to_dir}"
        + (f"; {len(failed)} failed" if failed else ""))
    return len(failed)


def options_from(values: Any) -> RunOptions:
    """RunOptions from any object with RunOptions' attribute names (an argparse Namespace), plus the Settings
    fields it has (those go to `settings`)."""
    names = {f.name for f in dataclasses.fields(RunOptions)} - {"settings"}
    given = {n: getattr(values, n) for n in names if getattr(values, n, None) is not None}
    settings = {f.name: getattr(values, f.name) for f in dataclasses.fields(Settings)
                if f.name != "image_key" and hasattr(values, f.name)}
    return RunOptions(**given, settings=settings)
