"""Tile geometry: the output grid of an image, each tile's padded read window, and the pyramid blocks a
tile owns. Pure integer arithmetic; boxes are half-open global (y0, y1, x0, x1) in px."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_TILE = 2048
MIN_TILE = 256
#: Tiles are multiples of this, so pyramid levels 1..6 split along tile edges (2**6 = 64).
TILE_ALIGN = 64
#: Tiles write at most this many levels past level 0 themselves (a tile's footprint stays whole px).
TILE_LEVELS = 6
#: No tile-written level has shards (a tile's footprint) under this side, px: past that, levels are built
#: whole by the image's finalize task (viewers then never fetch tiny chunks).
MIN_SHARD = 256
PYRAMID_MAX_SIDE = 1024

Box = tuple[int, int, int, int]


#: A tile's padded window is kept under this many px: 32 MP, the largest image a task renders whole
#: (phos_dask.taskflow.WHOLE_LIMIT_MP), so a tile task peaks no higher than a whole-image task (≈ 1.5 GB for a
#: colour render).
MAX_WINDOW_PX = 32_000_000
#: Tiles grow towards this many halos a side: the recomputed halo is then at most (1 + 2/8)² ≈ 1.56× a tile's
#: own pixels (at 4 halos, the least design.md allows, 2.25×).
GROW_TO_HALOS = 8


def effective_tile(requested: int, halo: int, max_window_px: int = MAX_WINDOW_PX) -> int:
    """The tile side actually used, rounded to a multiple of 64: at least MIN_TILE and the halo, and grown
    towards GROW_TO_HALOS × the halo as far as the padded window stays under `max_window_px` (where the halo
    itself is that large, the window may pass it by the rounding)."""
    side = max(int(requested), MIN_TILE, halo)
    target = min(GROW_TO_HALOS * halo, math.isqrt(max(0, int(max_window_px))) - 2 * halo)
    if side < target:
        side = max(side, target // TILE_ALIGN * TILE_ALIGN)
    return math.ceil(side / TILE_ALIGN) * TILE_ALIGN


def staging_chunk(tile: int) -> int:
    """Side of the staged input's chunks (px) for tiles of side `tile` (a multiple of TILE_ALIGN): half a
    tile. A tile's window reaches a halo h past its box on each side, so it decodes whole chunks spanning
    tile + 2·ceil(h/c)·c px per axis: with c = tile that is 3 tiles for any halo; with c = tile/2 it is 2
    tiles when h ≤ tile/2 (the usual case: tiles grow towards 4× the halo), never more than with whole
    tiles. Smaller chunks would cut little more and cost a request (and Zarr's overhead) each."""
    return tile // 2


def pyramid_shapes(shape: tuple[int, int], max_side: int = PYRAMID_MAX_SIDE) -> list[tuple[int, int]]:
    """(rows, cols) of each pyramid level: level 0 is the image, each next one ceil-halved, down to the
    first level whose long side is ≤ max_side."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > max_side:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes  # type: ignore[return-value]


@dataclass(frozen=True)
class Tile:
    index: tuple[int, int]  # (row, column) in the tile grid
    box: Box  # output pixels
    window: Box  # input pixels read: box + halo, clipped to the image

    @property
    def name(self) -> str:
        return f"{self.index[0]}-{self.index[1]}"


@dataclass(frozen=True)
class TilePlan:
    shape: tuple[int, int]
    tile: int
    halo: int

    @classmethod
    def build(cls, shape: tuple[int, int], requested_tile: int, halo: int,
              max_window_px: int = MAX_WINDOW_PX) -> TilePlan:
        return cls(tuple(shape), effective_tile(requested_tile, halo, max_window_px), halo)  # type: ignore[arg-type]

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.shape[0] / self.tile), math.ceil(self.shape[1] / self.tile)

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1]

    def __iter__(self) -> Iterator[Tile]:
        H, W = self.shape
        t, h = self.tile, self.halo
        for i in range(self.grid[0]):
            for j in range(self.grid[1]):
                y0, x0 = i * t, j * t
                y1, x1 = min(H, y0 + t), min(W, x0 + t)
                window = (max(0, y0 - h), min(H, y1 + h), max(0, x0 - h), min(W, x1 + h))
                yield Tile((i, j), (y0, y1, x0, x1), window)

    @property
    def tile_levels(self) -> int:
        """How many leading pyramid levels the tiles write themselves: level 0 and each next one while a
        tile's footprint there is at least MIN_SHARD px (and at most TILE_LEVELS past level 0), never more
        than the pyramid has. The levels past these are built whole from the last of them."""
        count = 1
        while count <= TILE_LEVELS and self.tile >> count >= MIN_SHARD:
            count += 1
        return min(count, len(pyramid_shapes(self.shape)))

    def shard_shape(self, level: int) -> tuple[int, int]:
        """A tile's footprint (rows, cols) at pyramid level `level` < tile_levels: the shard each tile
        writes there (the level's array may clip it: see phos_dask.store)."""
        assert level < self.tile_levels
        return self.tile >> level, self.tile >> level

    def level_box(self, tile: Tile, level: int) -> Box:
        """The block of pyramid level `level` that `tile` owns (exactly one shard of that level)."""
        y0, y1, x0, x1 = tile.box
        f = 1 << level
        return y0 // f, math.ceil(y1 / f), x0 // f, math.ceil(x1 / f)


def assert_one_writer_per_chunk(plan: TilePlan, chunks: list[tuple[int, int]]) -> None:
    """Every chunk (with sharding: every shard, the object a task writes) of every tile-written level
    belongs to exactly one tile: `chunks[level]` is the (rows, cols) shape of that level's chunks (shards).
    Raises AssertionError naming the first conflict."""
    shapes = pyramid_shapes(plan.shape)
    for level in range(min(len(chunks), len(shapes), TILE_LEVELS + 1)):
        ch, cw = chunks[level]
        owners: dict[tuple[int, int], tuple[int, int]] = {}
        for tile in plan:
            y0, y1, x0, x1 = plan.level_box(tile, level)
            if y0 % ch or x0 % cw or y1 - y0 > ch or x1 - x0 > cw:
                raise AssertionError(f"tile {tile.index} is not one chunk of level {level} (chunks {ch}×{cw})")
            key = (y0 // ch, x0 // cw)
            if key in owners:
                raise AssertionError(f"chunk {key} of level {level} written by {owners[key]} and {tile.index}")
            owners[key] = tile.index
        lh, lw = shapes[level]
        expected = math.ceil(lh / ch) * math.ceil(lw / cw)
        if len(owners) != expected:
            raise AssertionError(f"level {level}: {len(owners)} tiles for {expected} chunks")
