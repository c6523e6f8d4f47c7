"""The command line's flags: `build_parser` (every sub-command's arguments; the render flags generated from
`Settings`' field metadata), `settings_from_args`, and `--job` files applied as the `run` parser's defaults.
phos_dask.cli runs the commands; phos_dask.jobqueue checks and runs a `run` command line with it.

Public argparse only: the flags a job file may set are the ones recorded in a `FlagTable` as they are added.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from phos_dask import __version__, runner
from phos_dask.encode import JPEG_QUALITY
from phos_dask.errors import EXIT_USAGE
from phos_dask.options import CLIError
from phos_dask.settings import DTYPES, Settings

PROG = "phos_dask"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`phos_dask: error: …`) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class FlagTable(dict):
    """The arguments added through `add`, by dest: (action, kind) with kind one of "switch", "bool"
    (--x/--no-x), "append" or "value". What a job file may set, and how its values are read."""

    def add(self, container: Any, *names: str, **kwargs: Any) -> argparse.Action:
        action = container.add_argument(*names, **kwargs)
        how = kwargs.get("action")
        kind = ("bool" if how is argparse.BooleanOptionalAction else "switch" if how == "store_true"
                else "append" if how == "append" else "value")
        self[action.dest] = (action, kind)
        return action


def integer(text: str) -> int:
    """An integer flag value in any Python literal base (``42``, ``0x2a``, ``0b101010``)."""
    return int(text, 0)


def pixels(text: str) -> int:
    try:
        n = int(float(text)) if any(c in text for c in ".eE") else integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels such as 1e9, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {n}")
    return n


def quality(text: str) -> int:
    q = integer(text)
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {q}")
    return q


_FLAG_TYPES = {int: integer, float: float, str: None}


def add_render_arguments(parser: argparse.ArgumentParser, dtypes: Sequence[str] = DTYPES,
                         film_required: bool = True, table: FlagTable | None = None) -> None:
    """Add the flags that choose a render's `Settings` (film, grain, scattering, …) to `parser`, one per field
    with metadata (phos_dask.settings.option): `--grain-size` for grain_size, its help, range and default.

    `dtypes` limits `--dtype` to what the command can write; `--dtype` defaults to None so the command
    can pick a default that suits its output. Read the flags back with `settings_from_args`.
    """
    table = FlagTable() if table is None else table
    g = parser.add_argument_group("film model")
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        if "help" not in meta:
            continue
        names = (f"--{f.name.replace('_', '-')}", *meta["aliases"])
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": meta["help"]}
        if "shown_range" in meta:
            kw["help"] += f", {meta['shown_range']}"
        shown = meta.get("default_text", "%(default)s")
        if f.name == "film":
            kw.update(required=film_required, default=None)
            shown = None if film_required else f"{runner.DEFAULT_FILM}, as the original app"
        elif f.name == "dtype":
            kw.update(choices=list(dtypes), default=None)
        elif "choices" in meta:
            kw["choices"] = list(meta["choices"])
        if meta["kind"] is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default is None else "store_true"
        else:
            kw.update(type=_FLAG_TYPES[meta["kind"]], metavar=meta["metavar"])
            if "choices" in kw:
                del kw["metavar"]
        if shown and not (meta["kind"] is bool and f.default is False):
            kw["help"] += f" (default: {shown})"
        table.add(g, *names, **kw)


def settings_from_args(args: argparse.Namespace, image_key: str, dtype: str | None = None) -> Settings:
    """The validated `Settings` for flags added by `add_render_arguments`.

    `image_key` names the image (mixed into its grain seed). `dtype` is used when `--dtype` was not given
    (falling back to Settings' default). Raises `SettingsError` / `StockError` for invalid values.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if hasattr(args, f.name)}
    values["dtype"] = values.get("dtype") or dtype or Settings.dtype
    return Settings(**{**values, "image_key": image_key})


#: Stands for "phos_dask.KEY in Dask's configuration, now VALUE" in a help text until the help is shown.
_CONFIGURED = re.compile(r"<configured ([\w-]+)>")


#: `run --compression`'s choices: phos_dask.store.OUTPUT_CODECS's names (not imported here: the command line
#: reaches its kernels' warm-up before it loads the store's codecs).
COMPRESSIONS = ("lz4", "zstd", "none")


def _configured(key: str) -> str:
    return f"<configured {key}>"


class ConfiguredHelp(argparse.HelpFormatter):
    """Help whose defaults come from Dask's configuration, read as the help is shown: Dask's import (0.2 s)
    is left until then, so a `run` reaches the start of its kernels' warm-up sooner."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if not text or not _CONFIGURED.search(text):
            return text
        from phos_dask import config

        return _CONFIGURED.sub(lambda m: f"phos_dask.{m[1]} in Dask's configuration, now {config.get(m[1])}", text)


def add_run_arguments(run: argparse.ArgumentParser) -> FlagTable:
    """`run`'s arguments; returns the table of those a job file may set."""
    t = FlagTable()
    t.add(run, "source", metavar="SOURCE", nargs="?",
          help="folder (searched recursively) or single image (or `source` in --job's file)")
    run.add_argument("--job", metavar="FILE.toml|FILE.json",
                     help="read run's settings from a TOML or JSON file: keys are the long flag names "
                          "(film = \"Portra400\", workers = 4, include = [\"*.tif\"], source = \"…\"); "
                          "flags given on the command line win")
    t.add(run, "--out", metavar="OUT.zarr",
          help="output Zarr store (default: SOURCE's name + .zarr beside it: photos/ → photos.zarr, "
               "s3://b/photos/ → s3://b/photos.zarr)")
    add_render_arguments(run, dtypes=("uint8", "uint16", "float16"), film_required=False, table=t)
    t.add(run, "--tile", type=integer, default=None, metavar="PX",
          help=f"tile side in px for images rendered in tiles (default: {_configured('tile')}; grown to at "
               "least 256 px and the model's halo, rounded up to a multiple of 64)")
    t.add(run, "--whole-limit", type=float, default=None, metavar="MP",
          help=f"images up to this many megapixels run as one task (default: {_configured('whole-limit')}; "
               "0 = always tile)")
    t.add(run, "--compression", choices=COMPRESSIONS, default=None,
          help="the output's codec: lz4 (fast), zstd (smaller: about 0.8 of lz4's bytes for 8-bit output, 0.92 "
               "for 16-bit; a run 1.1-1.3x as long) or none (the least CPU, 1.13-1.32x lz4's bytes) "
               f"(default: {_configured('compression')}); the pixels are the same")
    t.add(run, "--max-pixels", type=pixels, default=None, metavar="N",
          help="refuse images whose header claims more pixels than N, before decoding them "
               f"(default: {_configured('max-pixels')}; 0 = no limit)")
    t.add(run, "--device", choices=list(runner.DEVICES), default="auto",
          help="where the model runs: auto (GPUs when CuPy sees one and dask-cuda imports, else the "
               "CPU), cpu, or gpu (an error without one) (default: %(default)s)")
    t.add(run, "--rmm-pool-size", metavar="SIZE",
          help="local GPU cluster: an RMM memory pool of SIZE per GPU, e.g. 24GB (default: none)")
    t.add(run, "--workers", type=integer, default=None, metavar="N",
          help="local cluster: worker processes, one thread each (default: one per core)")
    t.add(run, "--threads", type=integer, default=None, metavar="N",
          help="local cluster: threads per worker process (default 1; 4 when SOURCE or OUT is on "
               "object storage, where tasks mostly wait on requests)")
    t.add(run, "--scheduler", metavar="tcp://HOST:PORT",
          help="use this existing Dask scheduler (tls://HOST:PORT with --tls-* or Dask's TLS config; "
               "default: Dask's scheduler-address configuration, DASK_SCHEDULER_ADDRESS, else a local cluster)")
    t.add(run, "--scheduler-file", metavar="FILE", help="use the scheduler described in FILE")
    t.add(run, "--tls-ca-file", metavar="PEM", help="CA certificate for a tls:// scheduler")
    t.add(run, "--tls-cert", metavar="PEM", help="client certificate for a tls:// scheduler")
    t.add(run, "--tls-key", metavar="PEM", help="client private key for a tls:// scheduler")
    t.add(run, "--dashboard-address", default=runner.DEFAULT_DASHBOARD, metavar="HOST:PORT",
          help="local cluster's dashboard (default %(default)s; ':0' = a free port on 127.0.0.1; "
               "name a host, e.g. 0.0.0.0:8787, to serve other machines)")
    t.add(run, "--overwrite", action="store_true",
          help="replace finished images that were made with other settings")
    t.add(run, "--dry-run", action="store_true", help="print the plan and compute nothing")
    t.add(run, "--performance-report", metavar="FILE.html",
          help="write Dask's performance report of the job (task stream, profiles, fine metrics)")
    t.add(run, "--json", action="store_true",
          help="progress as one JSON line per image even on a terminal (and --dry-run as JSON)")
    t.add(run, "--include", action="append", metavar="GLOB",
          help="only inputs whose relative path or file name matches (repeatable)")
    t.add(run, "--exclude", action="append", metavar="GLOB",
          help="leave out inputs whose relative path or file name matches (repeatable)")
    add_storage_option(run, "SOURCE and OUT", t)
    from phos_dask.export import FORMATS

    t.add(run, "--export", choices=list(FORMATS), metavar="FORMAT",
          help="after the job, also write the images as files: jpeg, png or tiff16 (with --export-dir)")
    t.add(run, "--export-dir", metavar="DIR", help="folder for --export's files")
    add_quality(run, t)
    return t


def add_quality(parser: argparse.ArgumentParser, table: FlagTable | None = None) -> None:
    (table or FlagTable()).add(parser, "--quality", type=quality, default=JPEG_QUALITY, metavar="Q",
                               help="JPEG quality 1-100 (default: %(default)s)")


def add_storage_option(parser: argparse.ArgumentParser, what: str, table: FlagTable | None = None) -> None:
    (table or FlagTable()).add(parser, "--storage-option", action="append", metavar="KEY=VALUE",
                               help=f"fsspec option for {what} (repeatable; VALUE read as JSON when it parses; "
                                    "a.b=VALUE nests)")


def read_job_file(path: str) -> dict:
    """A job file's table (TOML or JSON, read as data, never run). CLIError when it cannot be read or parsed."""
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
    return table


def job_file_values(path: str, flags: FlagTable) -> dict[str, Any]:
    """A job file's settings as parser defaults by dest, read as the flags would read them (`flags`: the
    parser's FlagTable). CLIError for an unknown key or a value of the wrong kind."""
    values: dict[str, Any] = {}
    for key, value in read_job_file(path).items():
        dest = str(key).replace("-", "_")
        if dest not in flags:
            known = sorted(d.replace("_", "-") for d in flags)
            raise CLIError(f"job file {path!r}: unknown key {key!r} (known: {', '.join(known)})")
        action, kind = flags[dest]
        wrong = CLIError(f"job file {path!r}: {key!r} cannot be {json.dumps(value)}")
        if kind in ("switch", "bool"):
            if not isinstance(value, bool):
                raise wrong
        elif kind == "append" and dest == "storage_option" and isinstance(value, dict):
            value = [f"{k}={json.dumps(v)}" for k, v in _flatten(value)]
        elif kind == "append" and isinstance(value, list):
            value = [_read(action, item, wrong) for item in value]
        elif kind == "value":
            value = _read(action, value, wrong)
        else:
            raise wrong
        values[dest] = value
    return values


def _read(action: argparse.Action, value: Any, wrong: CLIError) -> Any:
    """One value as the flag reads its text (its type and choices)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise wrong
    try:
        value = action.type(str(value)) if action.type else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise CLIError(f"{wrong}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise CLIError(f"{wrong}: choose from {', '.join(map(str, action.choices))}")
    return value


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in table.items():
        items += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return items


@dataclasses.dataclass
class Parsers:
    """The top-level parser, and `run`'s parser with the table of its job-file flags."""

    main: argparse.ArgumentParser
    run: argparse.ArgumentParser
    run_flags: FlagTable

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """The parsed command line; for `run --job FILE`, the file's settings become `run`'s defaults and the
        line is parsed again, so flags given on the command line win (repeatable flags add to the file's)."""
        args = self.main.parse_args(argv)
        if getattr(args, "job", None):
            self.run.set_defaults(**job_file_values(args.job, self.run_flags))
            args = self.main.parse_args(argv)
        return args


#: The sub-commands and their one-line help.
SUB_COMMANDS = {
    "films": "list the film stocks",
    "info": "versions, GPUs and whether the model would use them",
    "preview": "render one image to a .jpg, .png or .tif",
    "run": "render every image under a folder into an OME-Zarr store on a Dask cluster",
    "export": "write a store's finished images as JPEG, PNG or 16-bit TIFF files",
}


def build_parsers(argv: Sequence[str] | None = None) -> Parsers:
    """The `phos_dask` parsers; the sub-command is `args.command`. Given the command line `argv`, only the
    sub-command it names gets its flags (the others are listed with their help only): building `run`'s
    flags reads Dask's configuration, whose import would cost `preview` 0.2 s."""
    named = argv[0] if argv and argv[0] in SUB_COMMANDS else None
    parser = Parser(prog=PROG, description="The Phos film model (bloom, halation, grain, filmic tone).",
                    epilog="Exit status: 0 ok, 2 bad arguments or input, 1 output not writable.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=text) for name, text in SUB_COMMANDS.items()}
    run_flags = FlagTable()
    for name, build in _SUB_PARSERS.items():
        if named in (None, name):
            flags = build(parsers[name])
            if name == "run":
                run_flags = flags
    return Parsers(parser, parsers["run"], run_flags)


def _films_parser(films: argparse.ArgumentParser) -> None:
    films.description = "List the film stocks."
    films.add_argument("--json", action="store_true", help="print a JSON list of {name, kind, iso, character}")


def _info_parser(info: argparse.ArgumentParser) -> None:
    info.description = ("Versions of phos_dask and its libraries, the GPUs CuPy sees (name, memory total/free, "
                        "driver and runtime), whether dask-cuda is usable, and in one line why a GPU would not "
                        "be used.")
    info.add_argument("--json", action="store_true", help="print the same as JSON")


def _preview_parser(preview: argparse.ArgumentParser) -> None:
    preview.description = ("Render one image file with a film stock and write it as .jpg, .png or .tif "
                           "(B&W stocks write a grey image).")
    preview.add_argument("image", metavar="IMAGE", help="input image (JPEG, PNG, TIFF, WebP, …)")
    preview.add_argument("-o", "--output", required=True, metavar="OUT",
                         help="output file: .jpg/.jpeg (uint8), .png (uint8 or uint16) or .tif/.tiff "
                              "(uint8 or uint16); default dtype uint8, uint16 for .tif")
    add_render_arguments(preview, dtypes=("uint8", "uint16"))


def _run_parser(run: argparse.ArgumentParser) -> FlagTable:
    run.description = ("Render every image under SOURCE into OUT (a Zarr v3 group of OME-Zarr images), tile "
                       "by tile on a Dask cluster. Reruns skip finished images.")
    run.formatter_class = ConfiguredHelp
    return add_run_arguments(run)


def _export_parser(export: argparse.ArgumentParser) -> None:
    from phos_dask.export import FORMATS

    export.description = ("Write every complete image of OUT.zarr as a file under DIR named after its input "
                          "(folders kept), with an sRGB ICC profile and, for JPEG and PNG, the input's EXIF.")
    export.add_argument("out", metavar="OUT.zarr", help="output store written by 'phos_dask run'")
    export.add_argument("--to", required=True, metavar="DIR", help="folder to write into (created as needed)")
    export.add_argument("--format", required=True, choices=list(FORMATS),
                        help="jpeg (8-bit), png (8-bit) or tiff16 (16-bit)")
    add_quality(export)
    add_storage_option(export, "OUT.zarr and the inputs")


_SUB_PARSERS = {"films": _films_parser, "info": _info_parser, "preview": _preview_parser, "run": _run_parser,
                "export": _export_parser}


def build_parser() -> argparse.ArgumentParser:
    """The `phos_dask` argument parser with its sub-commands (without job files: see `build_parsers`)."""
    return build_parsers().main
