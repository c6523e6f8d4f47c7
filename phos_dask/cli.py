"""Command line: `python -m phos_dask films`, `… preview IMAGE -o OUT --film NAME`,
`… run SOURCE --out OUT.zarr --film NAME` (a whole archive on a Dask cluster) and
`… export OUT.zarr --to DIR --format jpeg|png|tiff16` (a store's images as ordinary files).

A thin shell over the Python API: the flags are defined in phos_dask.flags, `run`'s orchestration is
phos_dask.runner; this module runs the commands and prints.

Exit codes: 0 success; 2 for anything wrong with what the user gave
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
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from phos_dask import __version__, runner
from phos_dask.engine import prepare_memory
from phos_dask.errors import EXIT_FAILED, PhosError
from phos_dask.flags import PROG, add_render_arguments, build_parser, build_parsers, settings_from_args
from phos_dask.imageio import check_writable, read_image, write_image
from phos_dask.options import CLIError, parse_storage_options
from phos_dask.render import render
from phos_dask.stocks import all_stocks
from phos_dask.warmup import warm_in_background

__all__ = ["CLIError", "add_render_arguments", "build_parser", "main", "parse_storage_options",
           "settings_from_args"]


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
    warm_in_background(settings, np.uint16 if src.suffix.lower() in (".tif", ".tiff") else np.uint8)
    image = read_image(src)
    prepare_memory(image.shape[:2], settings)  # while the kernels load
    result = render(image, settings)
    try:
        write_image(out, result)
    except OSError as e:
        raise CLIError(f"cannot write {str(out)!r}: {e.strerror or e}", EXIT_FAILED) from None
    seconds = time.perf_counter() - t0
    h, w = result.shape[:2]
    kind = "RGB" if result.ndim == 3 else "grey"
    print(f"wrote {out} ({w}x{h} {kind} {dtype}, {settings.stock.name}) in {seconds:.2f} s")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from phos_dask.interrupts import quiet_interrupts
    from phos_dask.progress import Progress

    quiet_interrupts()

    bar = not args.json and sys.stderr.isatty()
    result = runner.run(runner.options_from(args), say=_say,
                        progress=lambda: Progress(0, stream=sys.stderr if bar else sys.stdout, tty=bar))
    if result.plan is not None:
        if args.json:
            print(json.dumps(result.plan, indent=2))
        else:
            _print_plan(result.plan)
    return result.exit_code


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


def _export_command(args: argparse.Namespace) -> int:
    storage_options = parse_storage_options(args.storage_option or [])
    failed = runner.export(args.out, args.to, args.format, args.quality, storage_options, say=_say)
    return EXIT_FAILED if failed else 0


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


COMMANDS = {"films": _films, "info": _info, "preview": _preview, "run": _run, "export": _export_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parsers(argv).parse(argv)
        _quiet_opencv(load=args.command != "preview")
        return COMMANDS[args.command](args)
    except PhosError as e:  # ours: the message is for the user as it stands
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # e.g. `phos_dask films | head`: stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _quiet_opencv(load: bool) -> None:
    """OpenCV logs decoder complaints on stderr; our own one-line error says what went wrong instead: its log
    level is silenced now if it is loaded, and by the environment for a later load (unless the environment
    names a level). `load`: load it now. Every command but `preview` does: `run` must start its fork server
    with the environment OpenCV's import sets (LD_LIBRARY_PATH), or its workers are spawned, not forked
    (phos_dask.localworkers). `preview` loads it only when a decoder needs it (not for an ordinary JPEG or TIFF),
    which takes its import (about 0.03 s) off the start-up that the kernels' loading waits for."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    if load or "cv2" in sys.modules:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
