"""The task protocol of a job, typed: what every task gets (`JobConfig`, `ImageContext`) and what it returns
(`ImageResult`, `Staged`, `TileDone`). Frozen dataclasses: Dask pickles them between client and workers.

Words, one meaning each:

- *settings*: the job's `Settings` for one image (`JobConfig.image_settings`);
- *model*: the film model's plan for an image of one shape (`phos_dask.film.pipeline.Plan`);
- *tiling*: the image's tile grid and halo (`phos_dask.tiles.TilePlan`);
- *staged*: an image prepared to be rendered in tiles (its input copied to the staging area, or readable
  by region), `Staged`; *stages*: only the report's split of a task's time (`Stages`: decode, model, write).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from phos_dask.film.pipeline import Plan, make_plan
from phos_dask.imageio import DEFAULT_MAX_PIXELS
from phos_dask.settings import Settings
from phos_dask.sources import SourceItem
from phos_dask.store import DEFAULT_COMPRESSION
from phos_dask.tiles import DEFAULT_TILE, MAX_WINDOW_PX, TilePlan

#: Images up to this many megapixels (after working size) run as one task: no halo is recomputed and
#: nothing is staged. A 32 MP render peaks near 1.6 GB.
WHOLE_LIMIT_MP = 32.0


@dataclass(frozen=True)
class JobConfig:
    """What every task of a job needs: small and picklable."""

    out_url: str
    settings: Settings
    tile: int = DEFAULT_TILE
    whole_limit_mp: float = WHOLE_LIMIT_MP
    storage_options: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    #: The job's lease on the output (phos_dask.lease); tasks write only while it is still the job's.
    lease_token: str | None = None
    #: "gpu": render on the worker's GPU through CuPy when it has one (else, and after a device
    #: out-of-memory error, on the CPU); "cpu": always the CPU kernels.
    device: str = "cpu"
    #: Replace finished images made with other settings (else such an image fails with one line).
    overwrite: bool = False
    #: The output's codec (phos_dask.store.OUTPUT_CODECS); it changes the bytes stored, never the pixels.
    compression: str = DEFAULT_COMPRESSION

    def accelerator(self):
        from phos_dask import device

        return device.accelerator(self.device)

    def image_settings(self, item: SourceItem, linear: bool = False) -> Settings:
        """The image's settings; `linear`: its decoded pixels are linear light (e.g. a float TIFF)."""
        st = self.settings.replace(image_key=item.relpath)
        return st.replace(linear_input=True) if linear and not st.linear_input else st

    def fingerprint(self) -> str:
        return self.settings.fingerprint()

    @property
    def max_window_px(self) -> int:
        """The most px a tile's padded window grows to: those of the largest image a task renders whole
        (`whole_limit_mp`, which a GPU job sizes from the GPUs' free memory), at most tiles.MAX_WINDOW_PX;
        MAX_WINDOW_PX when every image is tiled (whole_limit_mp 0)."""
        limit = int(self.whole_limit_mp * 1e6)
        return min(MAX_WINDOW_PX, limit) if limit > 0 else MAX_WINDOW_PX

    def runs_whole(self, shape: tuple[int, int]) -> bool:
        """Whether an image of this (working-size) shape is one task rather than staged tiles."""
        tiling = TilePlan.build(shape, self.tile, 0)
        return tiling.count == 1 or shape[0] * shape[1] <= self.whole_limit_mp * 1e6


@dataclass(frozen=True)
class ImageContext:
    """One image's settings → film-model plan → tiling, for its (working-size) shape: derived here only."""

    settings: Settings
    model: Plan
    tiling: TilePlan

    @classmethod
    def build(cls, cfg: JobConfig, item: SourceItem, shape: tuple[int, int], linear: bool = False,
              grain_k: tuple[float, ...] | list[float] | None = None) -> ImageContext:
        """`grain_k`: the whole image's grain constants K_c (a tile renders only with them)."""
        shape = (int(shape[0]), int(shape[1]))
        st = cfg.image_settings(item, linear)
        model = make_plan(st, shape)
        if grain_k is not None and model.has_grain:
            model = model.with_grain_k(tuple(grain_k))
        return cls(st, model, TilePlan.build(shape, cfg.tile, model.halo, cfg.max_window_px))

    @property
    def shape(self) -> tuple[int, int]:
        return self.tiling.shape

    def with_grain_k(self, grain_k: tuple[float, ...]) -> ImageContext:
        return dataclasses.replace(self, model=self.model.with_grain_k(grain_k))


#: The stages a task's time is split into (seconds each): reading and decoding the input (for a tiled image
#: also staging it and reading each tile's window), the film model, and encoding and writing the output
#: (chunks, pyramid levels, thumbnails, metadata).
STAGES = ("decode", "model", "write")


@dataclass(frozen=True)
class Stages:
    """A task's time by stage, seconds (rounded to 0.1 ms)."""

    decode: float = 0.0
    model: float = 0.0
    write: float = 0.0

    @classmethod
    def of(cls, decode: float = 0.0, model: float = 0.0, write: float = 0.0) -> Stages:
        return cls(round(decode, 4), round(model, 4), round(write, 4))

    @classmethod
    def total(cls, *parts: Stages | None) -> Stages:
        """The sum of `parts` (None: nothing), rounded once."""
        return cls.of(*(sum(getattr(p, s) for p in parts if p is not None) for s in STAGES))

    def to_dict(self) -> dict[str, float]:
        return {"decode": self.decode, "model": self.model, "write": self.write}


Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class ImageResult:
    """How an image ended: what the job's client records (a report row: `to_row`, fields that are None left
    out, so a skipped image is {"key", "status"} and a failed one {"key", "status", "error"[, "detail"]}).
    `thumb`: the image's thumbnail pair (JPEG) when it was asked for; never part of the row."""

    key: str
    status: Status
    error: str | None = None
    #: an unexpected error's traceback
    detail: str | None = None
    #: task time, s (of every task of the image)
    seconds: float | None = None
    megapixels: float | None = None
    #: how many tiles a tiled image ran as (None: it ran whole)
    tiles: int | None = None
    device: str | None = None
    gpu_oom_fallbacks: int | None = None
    stages: Stages | None = None
    #: from submission to the result, s (set by the client, phos_dask.graph)
    wall_seconds: float | None = None
    thumb: bytes | None = field(default=None, repr=False)

    @classmethod
    def failed(cls, key: str, error: Exception | str, detail: str | None = None) -> ImageResult:
        return cls(key, "failed", error=str(error), detail=detail)

    @classmethod
    def skipped(cls, key: str) -> ImageResult:
        return cls(key, "skipped")

    @classmethod
    def done(cls, key: str, shape: tuple[int, int], seconds: float, **fields: Any) -> ImageResult:
        return cls(key, "done", seconds=round(seconds, 3), megapixels=round(shape[0] * shape[1] / 1e6, 3), **fields)

    def to_row(self) -> dict[str, Any]:
        """The report row's fields (the job adds "source"): every field that is set, but the thumbnail."""
        row: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "thumb":
                continue
            row[f.name] = value.to_dict() if isinstance(value, Stages) else value
        return row


@dataclass(frozen=True)
class Staged:
    """An image prepared to be rendered in tiles (the first task's result when the image is too large for
    one): what its tiles and its finalize need. `direct`: tiles read their windows from the file itself
    (a tiled TIFF), else from the staging area; `grain_k`: K_c of the whole image, so every tile renders
    with the whole image's; `thumb`: finalize returns the image's thumbnails (`source_thumb`: the input's,
    encoded, when the first task had the decoded pixels)."""

    key: str
    shape: tuple[int, int]
    direct: bool
    linear: bool
    sha256: str
    grain_k: tuple[float, ...]
    tiles: tuple[tuple[int, int], ...]
    seconds: float
    stages: Stages
    thumb: bool = False
    source_thumb: bytes | None = field(default=None, repr=False)

    def context(self, cfg: JobConfig, item: SourceItem) -> ImageContext:
        return ImageContext.build(cfg, item, self.shape, self.linear, self.grain_k)

    def for_tiles(self) -> Staged:
        """What a tile task is sent: without the tile list and the thumbnail (small, plain data)."""
        return dataclasses.replace(self, tiles=(), source_thumb=None)


@dataclass(frozen=True)
class TileDone:
    """What one tile task returns: its time, where it ran, whether a GPU out-of-memory error made it run on
    the CPU; or `failed`, the image's failed result (its finalize then reports the image as failed)."""

    seconds: float = 0.0
    device: str = ""
    gpu_oom_fallback: bool = False
    stages: Stages = Stages()
    failed: ImageResult | None = None
