"""A job: every image under a source, rendered into one output store, resumably, with a report."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phos_dask import __version__, index
from phos_dask.device import sized_for_gpus
from phos_dask.errors import PhosError
from phos_dask.imageio import DEFAULT_MAX_PIXELS
from phos_dask.lease import Lease, LeaseError, hold
from phos_dask.progress import Progress
from phos_dask.settings import Settings
from phos_dask.sources import Problem, SourceItem, scan
from phos_dask.storage import Location, relative_inside
from phos_dask.store import (
    DEFAULT_COMPRESSION,
    METADATA,
    OUTPUT_CODECS,
    REPORT,
    STAGING,
    OutputError,
    check_output,
    root_document,
    write_root,
)
from phos_dask.taskflow import WHOLE_LIMIT_MP, ImageContext, ImageResult, JobConfig
from phos_dask.thumbs import PackWriter
from phos_dask.tiles import DEFAULT_TILE, pyramid_shapes

#: Peak bytes of working memory per pixel of a render window (measured: 24 MP colour ≈ 1.1 GB).
BYTES_PER_PX = {"color": 46, "bw": 22}


class JobError(PhosError, ValueError):
    """A job that cannot start as asked (bad source, output in use with other settings, …)."""


@dataclass
class JobSpec:
    source: str
    out: str
    settings: Settings = field(default_factory=Settings)
    tile: int = DEFAULT_TILE
    whole_limit_mp: float = WHOLE_LIMIT_MP
    overwrite: bool = False
    storage_options: dict[str, Any] | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    #: "cpu" or "gpu" (chosen by phos_dask.device.choose from --device auto|cpu|gpu)
    device: str = "cpu"
    #: the output's codec: "lz4", "zstd" or "none" (phos_dask.store.OUTPUT_CODECS)
    compression: str = DEFAULT_COMPRESSION

    def config(self, lease_token: str | None = None) -> JobConfig:
        return JobConfig(self.out, self.settings.replace(image_key=""), self.tile, self.whole_limit_mp,
                         self.storage_options, self.max_pixels, lease_token, self.device, self.overwrite,
                         self.compression)


#: Past the contact sheet's images, every this-many-th image returns its thumbnails too, for the strip of
#: latest images on the job's dashboard page.
STRIP_EVERY = 25
#: The contact sheet shows this many images (the first by key).
SHEET_IMAGES = 200


@dataclass
class JobPlan:
    spec: JobSpec
    todo: list[SourceItem]
    skipped: list[SourceItem]
    problems: list[Problem] = field(default_factory=list)
    #: keys of `todo` images the output holds something of (their task checks and clears it)
    present: frozenset[str] = frozenset()
    #: keys of `todo` images finished earlier with other settings, replaced by this run (--overwrite)
    replaced: tuple[str, ...] = ()
    #: the output's index as read ({key: entry}) and its parts
    index: dict[str, dict[str, Any]] = field(default_factory=dict)
    index_parts: list[str] = field(default_factory=list)
    #: lines for the user about how the plan was made (e.g. the output found inside the source)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Checked:
    """What `check_spec` found: the output's path inside the source (None: it is not there) and the names
    at the output's top level."""

    inside: str | None
    names: frozenset[str]


def check_spec(spec: JobSpec) -> Checked:
    """Refuse (JobError) a job whose output is the source or holds it, or is neither absent, nor empty, nor a
    phos_dask store; before anything is written. Lists the output once."""
    if spec.compression not in OUTPUT_CODECS:
        raise JobError(f"unknown compression {spec.compression!r}: choose one of {', '.join(OUTPUT_CODECS)}")
    if any(c in spec.out for c in "*?[]"):
        raise JobError(f"the output {spec.out!r} has a glob character (* ? [ ]) in its name; choose another --out")
    if relative_inside(spec.out, spec.source) is not None:
        raise JobError(f"the output {spec.out!r} is the source or contains it; choose an --out outside "
                       f"{spec.source!r}")
    try:
        names = check_output(Location.of(spec.out, spec.storage_options))
    except OutputError as e:
        raise JobError(str(e)) from None
    return Checked(relative_inside(spec.source, spec.out) or None, frozenset(names))


def plan_job(spec: JobSpec, checked: Checked | None = None) -> JobPlan:
    """Find the inputs and sort them into work to do and finished images to skip (resume), from one
    listing of the source, and of an existing output its root, its index and one listing of its names:
    nothing per image. An image counts as finished when its index entry has this job's fingerprint and the
    size and stamp (modification time, or ETag) its file has now."""
    checked = checked or check_spec(spec)
    inside = checked.inside
    try:
        items, problems = scan(spec.source, spec.storage_options, spec.include, spec.exclude, skip=inside)
    except FileNotFoundError as e:
        raise JobError(str(e)) from None
    notes = [f"the output is inside the source: its files ({inside}/) are not inputs"] if inside else []
    if not items:
        raise JobError(f"no images found under {spec.source!r}")
    out = Location.of(spec.out, spec.storage_options)
    if METADATA not in checked.names:  # a new output: every image is fresh
        return JobPlan(spec, items, [], problems, notes=notes)
    root = root_document(out) or {}
    if root.get("source") not in (None, spec.source) and not spec.overwrite:
        raise JobError(f"the output {spec.out!r} holds the images of another source ({root['source']!r}); "
                       "choose another --out, or give --overwrite to let this source replace its images")
    finished, parts = index.read(out)
    names = checked.names
    fingerprint = spec.config().fingerprint()
    todo, skipped, clash, replaced = [], [], [], []
    for item in items:
        entry = finished.get(item.key) if item.key in names else None
        if entry is None:
            todo.append(item)
        elif entry.get("fingerprint") != fingerprint and not spec.overwrite:
            clash.append(item.key)
        elif (entry.get("fingerprint") == fingerprint and entry.get("size") == item.size
              and entry.get("stamp", "") == item.stamp):
            skipped.append(item)
        else:  # replaced: other settings with --overwrite, or its input changed since
            todo.append(item)
            replaced.append(item.key)
    if clash:
        raise JobError(
            f"{len(clash)} image(s) in {spec.out!r} were made with other settings (e.g. {clash[0]!r}); rerun "
            "with --overwrite to replace them, or choose another --out"
        )
    # indexed as finished but gone from the store (deleted by hand): no longer finished, whatever happens next
    replaced += [it.key for it in todo if it.key in finished and it.key not in names]
    present = frozenset(it.key for it in todo if it.key in names)
    return JobPlan(spec, todo, skipped, problems, present, tuple(replaced), finished, parts, notes)


def _manifest(spec: JobSpec) -> dict[str, Any]:
    """The root's attributes: the job's settings, never anything per image (constant size)."""
    return {
        "version": __version__,
        "settings": spec.settings.replace(image_key="").to_dict(),
        "fingerprint": spec.config().fingerprint(),
        "seed": spec.settings.seed,
        "source": spec.source,
    }


def run_job(spec: JobSpec, client=None, progress: Progress | None = None, plan: JobPlan | None = None,
            lease: Lease | None = None, sheet_thumbs: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Run the job on a distributed Client (default: the current one, `distributed.get_client()`) and
    return its report (also written to OUT/_phos/report.json). The job's page is on the dashboard at /phos
    (phos_dask.dashboard); its tasks run in a `distributed.span` named `phos-<job name>`.
    `plan` is plan_job(spec) when the caller has made it already, under `lease` (phos_dask.lease.hold);
    without a lease the job takes one itself. Raises JobError when another run holds the output.
    `sheet_thumbs` receives {key: thumbnail pair JPEG} of the images rendered now among the first
    SHEET_IMAGES keys (for `export.write_contact_sheet`)."""
    if lease is None:
        checked = check_spec(spec)  # before the lease: it writes into the output
        try:
            with hold(spec.out, spec.storage_options) as held:
                client = client if client is not None else _current_client()  # before planning, after the lease
                return run_job(spec, client, progress, plan or plan_job(spec, checked), held, sheet_thumbs)
        except LeaseError as e:
            raise JobError(str(e)) from None
    if client is None:
        client = _current_client()
    from distributed import span

    from phos_dask.dashboard import Publisher, job_name
    from phos_dask.graph import Todo, submit_job

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    plan = plan or plan_job(spec)
    out = Location.of(spec.out, spec.storage_options)
    manifest = _manifest(spec)
    write_root(out, manifest)
    finished = index.Writer(out)
    packs = PackWriter(out)
    if plan.replaced:  # before any task replaces them: a killed run must not leave them indexed as finished
        finished.remove(plan.replaced)
        finished.flush()
        packs.remove(plan.replaced)
        packs.flush()
    total = len(plan.todo) + len(plan.skipped) + len(plan.problems)
    progress = progress or Progress(total, tty=False)
    progress.total = total
    results: dict[str, dict[str, Any]] = {}
    sheet = set(heapq.nsmallest(SHEET_IMAGES, (it.key for it in plan.todo + plan.skipped)))
    thumbs: dict[str, bytes] = {}
    fingerprint = manifest["fingerprint"]

    def record(item: SourceItem, result: ImageResult) -> None:
        if lease.lost.is_set() and result.status == "failed":
            result = dataclasses.replace(result, error=f"another run took over the output's lease ({result.error})")
        pair = result.thumb
        if pair is not None and item.key in sheet:
            thumbs[item.key] = pair
        results[item.key] = {"key": item.key, "source": item.relpath, **result.to_row()}
        if result.status in ("done", "skipped") and not lease.lost.is_set():
            finished.add(index.entry(item.key, item.relpath, fingerprint, item.size, item.stamp))
            if item.key in thumbs:
                packs.add(item.key, thumbs[item.key])
        progress.update(results[item.key])
        board.add(results[item.key], pair)

    cfg = spec.config(lease.token)
    if spec.device == "gpu":
        cfg = sized_for_gpus(cfg, client)
    name = job_name(spec.out)
    board = Publisher(client, name, total, spec.source, spec.out)  # the job's page on the dashboard
    unusable = [{"key": None, "source": p.relpath, "status": "failed", "error": p.error} for p in plan.problems]
    for row in unusable:
        progress.update(row)
        board.add(row, task=False)
    for item in plan.skipped:
        results[item.key] = {"key": item.key, "source": item.relpath, "status": "skipped"}
        progress.update(results[item.key])
        board.add(results[item.key], task=False)
    # thumbnails: of the contact sheet's images, and of every STRIP_EVERY-th other one for the dashboard's strip
    todos = (Todo(it, it.key not in plan.present, it.key in sheet or i % STRIP_EVERY == 0)
             for i, it in enumerate(plan.todo))
    lease.tasks_started = True
    outcome = "stopped"
    try:
        with span(f"phos-{name}"):
            submit_job(client, cfg, todos, record, images=len(plan.todo))
        outcome = "finished"
    finally:
        board.close(outcome)
        if not lease.lost.is_set():
            finished.flush()
            with contextlib.suppress(OSError):  # thumbnails are a convenience: never the job's failure
                packs.flush()
    progress.close()
    images = [results[it.key] for it in plan.skipped + plan.todo] + unusable
    counts = {s: sum(1 for r in images if r["status"] == s) for s in ("done", "skipped", "failed")}
    report = {
        "version": __version__,
        "source": spec.source,
        "out": spec.out,
        "fingerprint": manifest["fingerprint"],
        "settings": manifest["settings"],
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
        "counts": counts,
        "megapixels": round(sum(r.get("megapixels", 0.0) for r in images if r["status"] == "done"), 3),
        "device": spec.device,
        "tile": cfg.tile,
        "compression": cfg.compression,
        "gpu_oom_fallbacks": sum(int(r.get("gpu_oom_fallbacks", 0)) for r in images),
        "images": images,
    }
    out.put_json(REPORT, report)
    if not lease.lost.is_set():
        with contextlib.suppress(OSError):  # e.g. a bucket that allows no deletes: the parts stay valid
            finished.compact(plan.index_parts)
        with contextlib.suppress(OSError):
            packs.compact(earlier_runs=bool(plan.index_parts))
    if out.local and not out.names(STAGING):
        out.delete(STAGING, recursive=True)
    if sheet_thumbs is not None:
        sheet_thumbs.update(thumbs)
    return report


def _current_client():
    """The current Dask client (`distributed.get_client()`), or JobError when there is none."""
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        raise JobError("no Dask client: pass one to run_job, or create one first (distributed.Client(...))"
                       ) from None


#: Header reads a dry run keeps in flight.
PROBES = 32


def dry_run(spec: JobSpec) -> dict[str, Any]:
    """The plan without computing: per image its size, scale, halo, tiles, peak task memory, bytes out.
    Headers are read concurrently (one ranged read each)."""
    from phos_dask.engine import output_shape
    from phos_dask.imageio import open_region_reader
    from phos_dask.sources import probe_shape
    from phos_dask.storage import options_for

    plan = plan_job(spec)
    cfg = spec.config()
    itemsize = {"uint8": 1, "uint16": 2, "float16": 2, "float32": 4}[spec.settings.dtype]

    def row(item: SourceItem) -> dict[str, Any]:
        shape = probe_shape(item.url, spec.storage_options)
        if shape is None:  # e.g. BigTIFF, which the header reader does not know
            reader = open_region_reader(item.url, options_for(item.url, spec.storage_options))
            if reader is None:
                return {"key": item.key, "source": item.relpath, "mode": "whole"}  # the decoder decides
            with reader:
                shape = reader.shape
        if spec.max_pixels is not None and shape[0] * shape[1] > spec.max_pixels:
            return {"key": item.key, "source": item.relpath, "mode": "refused", "shape": list(shape),
                    "error": f"{shape[1]}x{shape[0]} px is over the limit of {spec.max_pixels} px (--max-pixels)"}
        shape = output_shape(shape, cfg.settings)
        mode = "whole" if cfg.runs_whole(shape) else "tiled"
        out: dict[str, Any] = {"key": item.key, "source": item.relpath, "mode": mode}
        ctx = ImageContext.build(cfg, item, shape)
        mp, tp = ctx.model, ctx.tiling
        per_px = BYTES_PER_PX["color" if mp.stock.is_color else "bw"]
        if mode == "whole":
            peak = shape[0] * shape[1] * per_px
        else:
            win = max((t.window[1] - t.window[0]) * (t.window[3] - t.window[2]) for t in tp)
            peak = max(win * per_px, shape[0] * shape[1] * 3 * 2)
        out_px = sum(h * w for h, w in pyramid_shapes(shape))
        out.update({
            "shape": list(shape), "scale": round(mp.s, 4), "halo": mp.halo,
            "tiles": 1 if mode == "whole" else tp.count, "tile": tp.tile,
            "peak_task_bytes": int(peak), "bytes_out": int(out_px * mp.channels * itemsize),
        })
        return out

    with ThreadPoolExecutor(PROBES) as pool:
        rows = list(pool.map(row, plan.todo))
    return {
        "source": spec.source, "out": spec.out, "images": len(rows), "skipped": len(plan.skipped),
        "bytes_out": sum(r.get("bytes_out", 0) for r in rows),
        "plan": rows,
        "problems": [{"source": p.relpath, "error": p.error} for p in plan.problems],
    }
