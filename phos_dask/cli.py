"""Command line: `python -m phos_dask films`, `… preview IMAGE -o OUT --film NAME`,
`… run SOURCE --out OUT.zarr --film NAME` (a whole archive on a Dask cluster) and
`… export OUT.zarr --to DIR --format jpeg|png|tiff16` (a store's images as ordinary files).

A thin shell over the Python API. Exit codes: 0 success; 2 for anything wrong with what the user gave
(bad flag, unknown stock, setting out of range, missing or undecodable input file, output extension or
dtype that cannot be written) — also for a file that fails to decode, since that too is an input the user
chose; 1 when the output cannot be written (permissions, full disk); 130 on Ctrl-C. Every such error is
one line on stderr, `phos_dask: error: …`, never a traceback. `run` exits 0 when every image succeeded,
1 when some failed (all others finished; one line `phos_dask: failed: …` each), 2 for usage or
configuration errors, including an output held by another live run (see phos_dask.lease).

`run` flags beyond the render flags:

* `--job FILE.toml|FILE.json`: the run's settings from a file, read as data. Keys are the long flag names
  (dashes or underscores) plus `source`; true/false for switches, lists for repeatable flags, a table for
  `storage_option`. The file's settings come first, so flags on the command line win (repeatable flags add).
* `--max-pixels N` (default 1e9): images whose header claims more pixels are refused before decoding.
* `--tls-ca-file`, `--tls-cert`, `--tls-key`: PEM files for a `tls://` scheduler.
* Without `--scheduler`/`--scheduler-file`, Dask's `scheduler-address` configuration
  (`DASK_SCHEDULER_ADDRESS`) names the scheduler, as for `distributed.Client()`; else a local cluster starts.
* `--tile`, `--whole-limit`, `--max-pixels` default to the `phos_dask` section of Dask's configuration
  (`DASK_PHOS_DASK__TILE=1024`, Dask's YAML files; see phos_dask.config), which also holds `lease-ttl` and
  `kernel-threads`. Flags (and --job's file) win over the configuration.
* `--performance-report FILE.html`: write Dask's performance report of the job (`distributed.performance_report`).
* The job's live page is on the Dask dashboard at `/phos` (numbers at `/phos/status.json`, Prometheus series
  `phos_*` on `/metrics`; see phos_dask.dashboard).

* `--include GLOB`, `--exclude GLOB` (repeatable): only inputs whose path relative to SOURCE, or whose
  file name, matches some `--include` and no `--exclude` (`*.tif`, `raw/**`).
* `--storage-option KEY=VALUE` (repeatable): fsspec options for SOURCE and OUT (e.g. `anon=true`,
  `client_kwargs.endpoint_url=http://host:9000`; dots in KEY make nested options; VALUE is read as JSON
  when it parses — true, 3, 1.5, "text", {...} — else as a string).
* `--export FORMAT --export-dir DIR` (together; `--quality Q` for jpeg): after the job, write this job's
  complete images (rendered now or skipped as already finished) as files under DIR (see `export`). Each
  image that cannot be exported is a line `phos_dask: failed: KEY: export: …` and makes the exit status 1.

After the job `run` writes a contact sheet, `OUT/_phos/contact.jpg` (inputs beside results, up to 200
images), and prints `contact sheet: PATH` on stderr; if that fails it prints `phos_dask: warning: …` and the exit
status is unchanged.

`export OUT.zarr --to DIR --format jpeg|png|tiff16 [--quality Q] [--storage-option KEY=VALUE]` writes every
complete image of the store as a file named after its input (`sub dir/a.jpg` → `DIR/sub dir/a.jpg`,
`.png` or `.tif`; folders created), with an sRGB ICC profile and, for JPEG and PNG, the input's EXIF
(Orientation 1). The formats are 8-bit JPEG (quality Q, default 92), 8-bit PNG and 16-bit TIFF; conversions
are documented in `phos_dask.export`. It prints one line per failed image, `phos_dask: failed: KEY: …`, and
a summary on stderr; exit 0 when every image was written, 1 when some failed, 2 when the store is missing
or a flag is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import cv2

from phos_dask import __version__
from phos_dask.errors import PhosError
from phos_dask.export import FORMATS, JPEG_QUALITY
from phos_dask.imageio import check_writable, read_image, write_image
from phos_dask.render import render
from phos_dask.settings import DTYPES, FILM_FORMATS, GRAIN_STYLES, Settings
from phos_dask.stocks import all_stocks

PROG = "phos_dask"

#: Exit status for errors in what the user asked for (flags, settings, input files).
EXIT_USAGE = 2
#: Exit status when the output cannot be written.
EXIT_OUTPUT = 1

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}


class CLIError(PhosError):
    """An error the user can fix; the message is printed as one line and the command exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = code

    @property
    def code(self) -> int:
        return self.exit_code


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`phos_dask: error: …`) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def integer(text: str) -> int:
    """An integer flag value in any Python literal base (``42``, ``0x2a``, ``0b101010``)."""
    return int(text, 0)


#: The stock `run` uses without --film: the one the original Phos app preselects.
DEFAULT_FILM = "NC200"


def add_render_arguments(parser: argparse.ArgumentParser, dtypes: Sequence[str] = DTYPES,
                         film_required: bool = True) -> None:
    """Add the flags that choose a render's `Settings` (film, grain, scattering, …) to `parser`.

    `dtypes` limits `--dtype` to what the command can write; `--dtype` defaults to None so the command
    can pick a default that suits its output. Read the flags back with `settings_from_args`.
    """
    g = parser.add_argument_group("film model")
    g.add_argument("--film", required=film_required, metavar="NAME",
                   help="film stock, case-insensitive (list them with 'phos_dask films')"
                        + ("" if film_required else f"; default {DEFAULT_FILM}, as the original app"))
    g.add_argument("--grain", choices=list(GRAIN_STYLES), default=_DEFAULTS["grain"],
                   help="grain style (default: %(default)s)")
    g.add_argument("--grain-size", type=float, default=_DEFAULTS["grain_size"], metavar="PX",
                   help="grain correlation sigma in px at scale 1, 0.25-10 (default: %(default)s)")
    g.add_argument("--grain-intensity", type=float, default=_DEFAULTS["grain_intensity"], metavar="X",
                   help="grain amplitude, 0-4 (default: %(default)s)")
    g.add_argument("--seed", type=integer, default=_DEFAULTS["seed"], metavar="N",
                   help="job seed for the grain, 0..2**64-1 (default: %(default)s)")
    g.add_argument("--scattering", type=float, default=None, metavar="X",
                   help="bloom scattering 0-1 (default: the stock's own; upstream's app uses 0.10)")
    g.add_argument("--exposure-time", type=float, default=None, metavar="SECONDS",
                   help="exposure time for reciprocity failure (default: none, i.e. 1 s)")
    g.add_argument("--film-format", choices=list(FILM_FORMATS), default=_DEFAULTS["film_format"],
                   help="frame size: larger formats make grain and glow smaller (default: %(default)s)")
    g.add_argument("--working-size", type=int, default=None, metavar="N",
                   help="resample so the short side is N px before rendering (default: keep the size)")
    g.add_argument("--hd-curve", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the stock's characteristic curve (default: on for B&W, off for colour)")
    g.add_argument("--linear-input", "--input-linear", dest="linear_input", action="store_true",
                   help="input is linear light, not sRGB-encoded (float files such as float TIFFs always are)")
    g.add_argument("--dtype", choices=list(dtypes), default=None,
                   help="output sample type (default: depends on the output)")


def settings_from_args(args: argparse.Namespace, image_key: str, dtype: str | None = None) -> Settings:
    """The validated `Settings` for flags added by `add_render_arguments`.

    `image_key` names the image (mixed into its grain seed). `dtype` is used when `--dtype` was not given
    (falling back to Settings' default). Raises `SettingsError` / `StockError` for invalid values.
    """
    return Settings(
        film=args.film,
        grain=args.grain,
        grain_size=args.grain_size,
        grain_intensity=args.grain_intensity,
        seed=args.seed,
        image_key=image_key,
        scattering=args.scattering,
        exposure_time=args.exposure_time,
        film_format=args.film_format,
        working_size=args.working_size,
        dtype=args.dtype or dtype or _DEFAULTS["dtype"],
        hd_curve=args.hd_curve,
        linear_input=args.linear_input,
    )


def _films(args: argparse.Namespace) -> int:
    stocks = all_stocks().values()
    if args.json:
        rows = [{"name": s.name, "kind": s.kind, "iso": s.iso, "character": s.character} for s in stocks]
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "TYPE", "ISO", "CHARACTER")]
    table += [(s.name, "colour" if s.is_color else "B&W", str(s.iso), s.character) for s in stocks]
    w0 = max(len(r[0]) for r in table)
    w1 = max(len(r[1]) for r in table)
    w2 = max(len(r[2]) for r in table)
    for name, kind, iso, character in table:
        print(f"{name:<{w0}}  {kind:<{w1}}  {iso:>{w2}}  {character}")
    return 0


def _preview(args: argparse.Namespace) -> int:
    src = Path(args.image)
    out = Path(args.output)
    dtype = args.dtype or ("uint16" if out.suffix.lower() in (".tif", ".tiff") else "uint8")
    try:
        check_writable(out, dtype)  # refuse before rendering
    except ValueError as e:
        raise CLIError(str(e)) from None
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise CLIError(f"output {str(out)!r} is the input file; choose another output path")
    settings = settings_from_args(args, image_key=src.name, dtype=dtype)
    t0 = time.perf_counter()
    image = read_image(src)
    result = render(image, settings)
    try:
        write_image(out, result)
    except OSError as e:
        raise CLIError(f"cannot write {str(out)!r}: {e.strerror or e}", EXIT_OUTPUT) from None
    seconds = time.perf_counter() - t0
    h, w = result.shape[:2]
    kind = "RGB" if result.ndim == 3 else "grey"
    print(f"wrote {out} ({w}x{h} {kind} {dtype}, {settings.stock.name}) in {seconds:.2f} s")
    return 0


def _job_defaults(args: argparse.Namespace) -> None:
    """Fill --tile, --whole-limit and --max-pixels left unset from Dask's configuration (phos_dask.config),
    and the scheduler from `scheduler-address` when neither --scheduler nor --scheduler-file is given."""
    import dask

    from phos_dask import config

    try:
        if args.tile is None:
            args.tile = config.tile()
        if args.whole_limit is None:
            args.whole_limit = config.whole_limit()
        if args.max_pixels is None:
            args.max_pixels = config.max_pixels()
        args.lease_ttl = config.lease_ttl()
    except config.ConfigError as e:
        raise CLIError(str(e)) from None
    if not args.scheduler and not args.scheduler_file:
        address = dask.config.get("scheduler-address", None)
        if address:
            args.scheduler = str(address)
            if not args.dry_run:
                print(f"scheduler: {address} (Dask's scheduler-address configuration)", file=sys.stderr,
                      flush=True)


@contextlib.contextmanager
def _lease_ttl(seconds: float | None) -> Iterator[None]:
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


def _run(args: argparse.Namespace) -> int:
    from phos_dask.cluster import connect, threads_for, tls_security
    from phos_dask.job import JobSpec, check_spec, dry_run, plan_job, run_job
    from phos_dask.lease import hold
    from phos_dask.progress import Progress
    from phos_dask.store import REPORT

    if not args.source:
        raise CLIError("run needs a SOURCE (a folder, an image or a URL), on the command line or as `source` "
                       "in --job's file")
    if args.film is None:
        args.film = DEFAULT_FILM
        print(f"film: {DEFAULT_FILM} (the default, as in the original app; choose another with --film NAME, "
              "list them with 'phos_dask films')", file=sys.stderr, flush=True)
    if args.out is None:
        args.out = default_out(args.source)
        print(f"out: {args.out} (beside the source; choose another with --out)", file=sys.stderr, flush=True)
    settings = settings_from_args(args, image_key="", dtype="uint16")
    if (args.export is None) != (args.export_dir is None):
        raise CLIError("--export and --export-dir go together: give both or neither")
    storage_options = parse_storage_options(args.storage_option or [])
    _job_defaults(args)
    from phos_dask.device import DeviceError, choose, probe

    external = bool(args.scheduler or args.scheduler_file)
    if external:  # workers resolve paths in their own working directory: give them absolute local paths
        args.source, args.out = _absolute(args.source), _absolute(args.out)
    try:
        device, why = choose(args.device, probe()) if not external else (args.device, "asked for")
    except DeviceError as e:
        raise CLIError(str(e)) from None
    spec = JobSpec(source=args.source, out=args.out, settings=settings, tile=args.tile,
                   whole_limit_mp=args.whole_limit, overwrite=args.overwrite,
                   storage_options=storage_options or None, include=tuple(args.include or ()),
                   exclude=tuple(args.exclude or ()), max_pixels=args.max_pixels or None,
                   device=device if device != "auto" else "cpu")
    try:
        if args.dry_run:
            plan = dry_run(spec)
            if args.json:
                print(json.dumps(plan, indent=2))
            else:
                _print_plan(plan)
            return 0
        security = tls_security(args.tls_ca_file, args.tls_cert, args.tls_key)
        sheet_thumbs: dict[str, bytes] = {}
        checked = check_spec(spec)  # before the lease, which writes into the output
        with contextlib.ExitStack() as stack, _lease_ttl(args.lease_ttl), \
                hold(spec.out, spec.storage_options) as lease:
            plan = plan_job(spec, checked)  # usage errors surface before a cluster starts
            for note in plan.notes:
                print(f"note: {note}", file=sys.stderr, flush=True)
            threads = args.threads or threads_for(spec.source, spec.out)
            if not external and spec.device == "cpu" and plan.todo:  # compile kernels while the workers start
                stack.enter_context(_warm_up(settings))
            with connect(args.scheduler, args.scheduler_file, args.workers, args.dashboard_address,
                         security=security, device=spec.device, rmm_pool_size=args.rmm_pool_size,
                         threads=threads) as client:
                print(f"dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
                if client.dashboard_link:
                    print(f"job page: {client.dashboard_link.rsplit('/', 1)[0]}/phos", file=sys.stderr, flush=True)
                if external and args.device != "cpu":
                    spec.device, why = _cluster_device(client, args.device)
                print(f"device: {spec.device} ({why})", file=sys.stderr, flush=True)
                bar = not args.json and sys.stderr.isatty()
                progress = Progress(0, stream=sys.stderr if bar else sys.stdout, tty=bar)
                with _performance_report(args.performance_report):
                    report = run_job(spec, client, progress, plan, lease, sheet_thumbs)
    except OSError as e:  # the output cannot be created or written (permissions, read-only, full disk)
        where = f" {e.filename!r}" if e.filename else ""
        raise CLIError(f"cannot write the output{where}: {e.strerror or e}", EXIT_OUTPUT) from None
    counts = report["counts"]
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"{report['megapixels']:.1f} MP in {report['seconds']:.1f} s; report: {args.out}/{REPORT}",
          file=sys.stderr)
    for r in report["images"]:
        if r["status"] == "failed":
            named = r["source"] in r["error"]
            line = r["error"] if named else f"{r['source']}: {r['error']}"
            print(f"{PROG}: failed: {printable(line)}", file=sys.stderr)
    _contact_sheet(args.out, storage_options, report, sheet_thumbs)
    export_failed = 0
    if args.export:
        finished = [r["key"] for r in report["images"] if r["status"] in ("done", "skipped")]
        export_failed = _export(args.out, args.export_dir, args.export, args.quality, storage_options, finished)
    return 1 if counts["failed"] or export_failed else 0


@contextlib.contextmanager
def _warm_up(settings: Settings) -> Iterator[None]:
    """phos_dask.warmup in the background for the block; stopped at its end if still at work (the job that
    needed it is over; what it compiled so far stays cached)."""
    from phos_dask import warmup

    proc = warmup.start(settings)
    try:
        yield
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@contextlib.contextmanager
def _performance_report(path: str | None) -> Iterator[None]:
    """Dask's performance report of the block written to `path` (HTML), when given."""
    if not path:
        yield
        return
    from distributed import performance_report

    with performance_report(filename=path):
        yield
    print(f"performance report: {path}", file=sys.stderr, flush=True)


def printable(text: str) -> str:
    """One terminal line: control characters (a newline in a file name) shown as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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


def _info(args: argparse.Namespace) -> int:
    """Versions, the GPUs this machine's CuPy sees, and why a GPU would not be used."""
    import importlib.metadata
    import platform

    from phos_dask.device import probe

    names = ["numpy", "numba", "opencv-python-headless", "dask", "distributed", "zarr", "tifffile", "fsspec",
             "bokeh", "cupy-cuda12x", "cupy-cuda13x", "cupy", "dask-cuda"]
    versions = {"phos_dask": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found = probe()
    info = {
        "versions": versions,
        "cuda": {"driver": found.driver, "runtime": found.runtime},
        "gpus": [{"index": g.index, "name": g.name, "memory_total": g.total_bytes, "memory_free": g.free_bytes,
                  "compute_capability": g.compute_capability} for g in found.gpus],
        "dask_cuda": found.dask_cuda or found.dask_cuda_error,
        "gpu_problem": found.gpu_problem(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("  ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"CUDA driver {found.driver or '-'}, runtime {found.runtime or '-'}; dask-cuda: {info['dask_cuda']}")
    for g in found.gpus:
        print(f"GPU {g.index}: {g.name}, {g.total_bytes / 2**30:.1f} GiB, {g.free_bytes / 2**30:.1f} GiB free, "
              f"compute {g.compute_capability}")
    print("GPU used by --device auto" if info["gpu_problem"] is None else f"GPU not used: {info['gpu_problem']}")
    return 0


def _contact_sheet(out: str, storage_options: dict, report: dict, pairs: dict[str, bytes]) -> None:
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
        print(f"{PROG}: warning: cannot write the contact sheet: {' '.join(str(e).split()) or type(e).__name__}",
              file=sys.stderr)
        return
    if path:
        print(f"contact sheet: {path}", file=sys.stderr)


def _export(out: str, to_dir: str, fmt: str, quality: int, storage_options: dict,
            keys: list[str] | None = None) -> int:
    """Export the store's complete images (or `keys`); print failures and a summary; return the failures."""
    from phos_dask.export import ExportError, export_store

    try:
        results = export_store(out, to_dir, fmt, quality, storage_options or None, keys)
    except ExportError as e:
        raise CLIError(str(e)) from None
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        print(f"{PROG}: failed: {r['key']}: export: {r['error']}", file=sys.stderr)
    print(f"exported {len(results) - len(failed)} image(s) as {fmt} to {to_dir}"
          + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return len(failed)


def _export_command(args: argparse.Namespace) -> int:
    storage_options = parse_storage_options(args.storage_option or [])
    return 1 if _export(args.out, args.to, args.format, args.quality, storage_options) else 0


def json_or_text(text: str) -> Any:
    """A flag's VALUE: its JSON reading when it parses (true, 3, 1.5, "x", {...}), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` flags → fsspec storage options. VALUE is JSON when it parses (true, 3, "x", {...}), else
    the text itself; dots in KEY nest (`client_kwargs.endpoint_url=…` → {"client_kwargs": {...}}).
    Raises CLIError for a pair without '=', an empty key part, or a key given twice."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CLIError(f"--storage-option {pair!r}: expected KEY=VALUE (KEY may be dotted: a.b=VALUE)")
        value = json_or_text(text)
        node = options
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CLIError(f"--storage-option {pair!r}: {part!r} is already set to a value")
        if parts[-1] in node:
            raise CLIError(f"--storage-option {pair!r}: {key!r} is given twice")
        node[parts[-1]] = value
    return options


def _print_plan(plan: dict) -> None:
    print(f"{plan['images']} image(s) to render from {plan['source']} into {plan['out']} "
          f"({plan['skipped']} already complete); about {plan['bytes_out'] / 1e9:.2f} GB to write")
    rows = [("IMAGE", "SIZE", "SCALE", "HALO", "MODE", "TILES", "PEAK MB", "OUT MB")]
    for r in plan["plan"]:
        if "scale" not in r:  # header unreadable, or refused (over --max-pixels)
            size = f"{r['shape'][1]}x{r['shape'][0]}" if "shape" in r else "?"
            rows.append((r["source"], size, "?", "?", r["mode"], "?", "?", "?"))
            continue
        rows.append((r["source"], f"{r['shape'][1]}x{r['shape'][0]}", f"{r['scale']:.3f}", str(r["halo"]),
                     r["mode"], str(r["tiles"]), f"{r['peak_task_bytes'] / 1e6:.0f}",
                     f"{r['bytes_out'] / 1e6:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for p in plan.get("problems", []):
        print(f"not an input: {p['source']}: {p['error']}")


def build_parser() -> argparse.ArgumentParser:
    """The `phos_dask` argument parser with its sub-commands."""
    parser = _Parser(prog=PROG, description="The Phos film model (bloom, halation, grain, filmic tone).",
                     epilog="Exit status: 0 ok, 2 bad arguments or input, 1 output not writable.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    films = sub.add_parser("films", help="list the film stocks", description="List the film stocks.")
    films.add_argument("--json", action="store_true",
                       help="print a JSON list of {name, kind, iso, character}")
    films.set_defaults(func=_films)

    info = sub.add_parser("info", help="versions, GPUs and whether the model would use them",
                          description="Versions of phos_dask and its libraries, the GPUs CuPy sees (name, memory "
                                      "total/free, driver and runtime), whether dask-cuda is usable, and in one "
                                      "line why a GPU would not be used.")
    info.add_argument("--json", action="store_true", help="print the same as JSON")
    info.set_defaults(func=_info)

    preview = sub.add_parser(
        "preview", help="render one image to a .jpg, .png or .tif",
        description="Render one image file with a film stock and write it as .jpg, .png or .tif "
                    "(B&W stocks write a grey image).",
    )
    preview.add_argument("image", metavar="IMAGE", help="input image (JPEG, PNG, TIFF, WebP, …)")
    preview.add_argument("-o", "--output", required=True, metavar="OUT",
                         help="output file: .jpg/.jpeg (uint8), .png (uint8 or uint16) or .tif/.tiff "
                              "(uint8 or uint16); default dtype uint8, uint16 for .tif")
    add_render_arguments(preview, dtypes=("uint8", "uint16"))
    preview.set_defaults(func=_preview)

    run = sub.add_parser(
        "run", help="render every image under a folder into an OME-Zarr store on a Dask cluster",
        description="Render every image under SOURCE into OUT (a Zarr v3 group of OME-Zarr images), tile "
                    "by tile on a Dask cluster. Reruns skip finished images.",
    )
    run.add_argument("source", metavar="SOURCE", nargs="?",
                     help="folder (searched recursively) or single image (or `source` in --job's file)")
    run.add_argument("--job", metavar="FILE.toml|FILE.json",
                     help="read run's settings from a TOML or JSON file: keys are the long flag names "
                          "(film = \"Portra400\", workers = 4, include = [\"*.tif\"], source = \"…\"); "
                          "flags given on the command line win")
    run.add_argument("--out", metavar="OUT.zarr",
                     help="output Zarr store (default: SOURCE's name + .zarr beside it: photos/ → photos.zarr, "
                          "s3://b/photos/ → s3://b/photos.zarr)")
    add_render_arguments(run, dtypes=("uint8", "uint16", "float16"), film_required=False)
    run.add_argument("--tile", type=integer, default=None, metavar="PX",
                     help="tile side in px for images rendered in tiles (default: phos_dask.tile in Dask's "
                          "configuration, 2048; grown to at least 256 px and the model's halo, rounded up to a "
                          "multiple of 64)")
    run.add_argument("--whole-limit", type=float, default=None, metavar="MP",
                     help="images up to this many megapixels run as one task (default: phos_dask.whole-limit, "
                          "32; 0 = always tile)")
    run.add_argument("--max-pixels", type=_pixels, default=None, metavar="N",
                     help="refuse images whose header claims more pixels than N, before decoding them "
                          "(default: phos_dask.max-pixels, 1e9 = 1 gigapixel; 0 = no limit)")
    run.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                     help="where the model runs: auto (GPUs when CuPy sees one and dask-cuda imports, else the "
                          "CPU), cpu, or gpu (an error without one) (default: auto)")
    run.add_argument("--rmm-pool-size", metavar="SIZE",
                     help="local GPU cluster: an RMM memory pool of SIZE per GPU, e.g. 24GB (default: none)")
    run.add_argument("--workers", type=integer, default=None, metavar="N",
                     help="local cluster: worker processes, one thread each (default: one per core)")
    run.add_argument("--threads", type=integer, default=None, metavar="N",
                     help="local cluster: threads per worker process (default 1; 4 when SOURCE or OUT is on "
                          "object storage, where tasks mostly wait on requests)")
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                     help="use this existing Dask scheduler (tls://HOST:PORT with --tls-* or Dask's TLS config; "
                          "default: Dask's scheduler-address configuration, DASK_SCHEDULER_ADDRESS, else a local "
                          "cluster)")
    run.add_argument("--scheduler-file", metavar="FILE", help="use the scheduler described in FILE")
    run.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate for a tls:// scheduler")
    run.add_argument("--tls-cert", metavar="PEM", help="client certificate for a tls:// scheduler")
    run.add_argument("--tls-key", metavar="PEM", help="client private key for a tls:// scheduler")
    run.add_argument("--dashboard-address", default="127.0.0.1:8787", metavar="HOST:PORT",
                     help="local cluster's dashboard (default 127.0.0.1:8787; ':0' = a free port on 127.0.0.1; "
                          "name a host, e.g. 0.0.0.0:8787, to serve other machines)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace finished images that were made with other settings")
    run.add_argument("--dry-run", action="store_true", help="print the plan and compute nothing")
    run.add_argument("--performance-report", metavar="FILE.html",
                     help="write Dask's performance report of the job (task stream, profiles, fine metrics)")
    run.add_argument("--json", action="store_true",
                     help="progress as one JSON line per image even on a terminal (and --dry-run as JSON)")
    run.add_argument("--include", action="append", metavar="GLOB",
                     help="only inputs whose relative path or file name matches (repeatable)")
    run.add_argument("--exclude", action="append", metavar="GLOB",
                     help="leave out inputs whose relative path or file name matches (repeatable)")
    _add_storage_option(run, "SOURCE and OUT")
    run.add_argument("--export", choices=list(FORMATS), metavar="FORMAT",
                     help="after the job, also write the images as files: jpeg, png or tiff16 (with --export-dir)")
    run.add_argument("--export-dir", metavar="DIR", help="folder for --export's files")
    _add_quality(run)
    run.set_defaults(func=_run)

    export = sub.add_parser(
        "export", help="write a store's finished images as JPEG, PNG or 16-bit TIFF files",
        description="Write every complete image of OUT.zarr as a file under DIR named after its input "
                    "(folders kept), with an sRGB ICC profile and, for JPEG and PNG, the input's EXIF.",
    )
    export.add_argument("out", metavar="OUT.zarr", help="output store written by 'phos_dask run'")
    export.add_argument("--to", required=True, metavar="DIR", help="folder to write into (created as needed)")
    export.add_argument("--format", required=True, choices=list(FORMATS),
                        help="jpeg (8-bit), png (8-bit) or tiff16 (16-bit)")
    _add_quality(export)
    _add_storage_option(export, "OUT.zarr and the inputs")
    export.set_defaults(func=_export_command)
    return parser


def _pixels(text: str) -> int:
    try:
        n = int(float(text)) if any(c in text for c in ".eE") else integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels such as 1e9, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {n}")
    return n


def _quality(text: str) -> int:
    q = integer(text)
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {q}")
    return q


def _add_quality(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quality", type=_quality, default=JPEG_QUALITY, metavar="Q",
                        help="JPEG quality 1-100 (default: %(default)s)")


def _add_storage_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help=f"fsspec option for {what} (repeatable; VALUE read as JSON when it parses; "
                             "a.b=VALUE nests)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(parser, argv)
        # OpenCV logs decoder complaints on stderr; our own one-line error says what went wrong instead
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        return args.func(args)
    except PhosError as e:  # ours: the message is for the user as it stands
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # e.g. `phos_dask films | head`: stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def job_file_arguments(path: str, parser: argparse.ArgumentParser) -> tuple[list[str], str | None]:
    """A job file (TOML or JSON, read as data, never run) as `run` flags, and its `source` if any.
    Raises CLIError for a file that cannot be read or parsed, an unknown key, or a value of the wrong kind."""
    import tomllib

    ext = Path(path).suffix.lower()
    if ext not in (".toml", ".json"):
        raise CLIError(f"job file {path!r}: must be .toml or .json")
    try:
        text = Path(path).read_text(encoding="utf-8")
        table = tomllib.loads(text) if ext == ".toml" else json.loads(text)
    except OSError as e:
        raise CLIError(f"cannot read job file {path!r}: {e.strerror or e}") from None
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise CLIError(f"job file {path!r} is not valid {ext[1:].upper()}: {' '.join(str(e).split())}") from None
    if not isinstance(table, dict):
        raise CLIError(f"job file {path!r}: expected a table of settings at the top level")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    source = None
    for key, value in table.items():
        dest = str(key).replace("-", "_")
        if dest == "source" and isinstance(value, str):
            source = value
            continue
        action = actions.get(dest)
        if action is None or dest in ("job", "help"):
            known = sorted([*(d.replace("_", "-") for d in actions if d not in ("job", "help")), "source"])
            raise CLIError(f"job file {path!r}: unknown key {key!r} (known: {', '.join(known)})")
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction) and isinstance(value, bool):
            tokens.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0 and isinstance(value, bool):
            tokens += [flag] if value else []
        elif dest == "storage_option" and isinstance(value, dict):
            tokens += [f"{flag}={k}={json.dumps(v)}" for k, v in _flatten(value)]
        elif isinstance(action, argparse._AppendAction) and isinstance(value, list):
            tokens += [f"{flag}={item}" for item in value]
        elif isinstance(value, str | int | float) and not isinstance(value, bool) and action.nargs != 0:
            tokens.append(f"{flag}={value}")
        else:
            raise CLIError(f"job file {path!r}: {key!r} cannot be {json.dumps(value)}")
    return tokens, source


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in table.items():
        items += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return items


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The parsed command line; for `run --job FILE`, the file's settings go first, so flags given on the
    command line win."""
    if "run" not in argv:
        return parser.parse_args(argv)
    at = argv.index("run") + 1
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--job")
    known, _ = pre.parse_known_args(argv[at:])
    if not known.job:
        return parser.parse_args(argv)
    tokens, source = job_file_arguments(known.job, parser._subparsers._group_actions[0].choices["run"])
    args = parser.parse_args([*argv[:at], *tokens, *argv[at:]])
    args.source = args.source or source
    return args


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
