"""Tile geometry: the grid covers the image exactly once, windows carry the halo, chunks have one writer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from phos_dask.tiles import (
    GROW_TO_HALOS,
    MAX_WINDOW_PX,
    MIN_SHARD,
    MIN_TILE,
    TILE_ALIGN,
    TilePlan,
    assert_one_writer_per_chunk,
    effective_tile,
    pyramid_shapes,
    staging_chunk,
)

SHAPES = [(1, 1), (255, 257), (777, 1013), (2000, 3001), (4096, 4096), (15000, 20000)]


@pytest.mark.parametrize(("shape", "tile", "halo"), list(itertools.product(SHAPES, [1, 300, 1024, 2048], [0, 23, 170])))
def test_tiles_cover_every_pixel_exactly_once(shape, tile, halo):
    plan = TilePlan.build(shape, tile, halo)
    if shape[0] * shape[1] > 5e6:
        coverage = np.zeros((plan.grid[0], plan.grid[1]), np.int64)
        area = 0
        for t in plan:
            y0, y1, x0, x1 = t.box
            coverage[t.index] += 1
            area += (y1 - y0) * (x1 - x0)
        assert area == shape[0] * shape[1] and np.all(coverage == 1)
        return
    seen = np.zeros(shape, np.int64)
    for t in plan:
        y0, y1, x0, x1 = t.box
        seen[y0:y1, x0:x1] += 1
    assert np.all(seen == 1)


@pytest.mark.parametrize(("shape", "tile", "halo"), list(itertools.product(SHAPES[:5], [300, 1024], [0, 23, 170])))
def test_windows_carry_the_halo_clipped_only_at_the_image_edge(shape, tile, halo):
    H, W = shape
    for t in TilePlan.build(shape, tile, halo):
        y0, y1, x0, x1 = t.box
        wy0, wy1, wx0, wx1 = t.window
        assert wy0 == max(0, y0 - halo) and wy1 == min(H, y1 + halo)
        assert wx0 == max(0, x0 - halo) and wx1 == min(W, x1 + halo)


def test_small_tiles_grow_to_the_minimum_and_the_halo_aligned():
    assert effective_tile(1, 0) == MIN_TILE
    assert effective_tile(300, 10) == 320
    assert effective_tile(2048, 170) == 2048


def test_tiles_grow_towards_eight_halos_within_the_memory_bound():
    assert effective_tile(256, 100) == 768  # 8 × halo, aligned down
    assert effective_tile(2048, 170) == 2048  # 8 × halo is less than asked: not shrunk
    assert effective_tile(1024, 400) == 3200  # grown to 8 × halo: window (4000/3200)² ≈ 1.56× the tile
    assert effective_tile(2048, 840) == 3968  # 300 MP: memory wins over 8 × halo
    assert MAX_WINDOW_PX >= (3968 + 2 * 840) ** 2  # the window of that tile
    assert effective_tile(2048, 1700) == 2240  # s ≈ 20: little room past the halo
    assert effective_tile(256, 2900) == 2944  # the window passes the bound: never below the halo
    for halo in range(0, 2000, 37):
        grown = effective_tile(256, halo)
        assert grown >= max(halo, MIN_TILE) and grown % TILE_ALIGN == 0
        assert grown + 2 * halo <= math.isqrt(MAX_WINDOW_PX) or grown < halo + TILE_ALIGN
        assert grown <= max(GROW_TO_HALOS * halo, MIN_TILE)
    assert all(effective_tile(t, h) % TILE_ALIGN == 0 for t in range(1, 3000, 97) for h in (0, 50, 333))


def _decoded_span(window: tuple[int, int], chunk: int) -> int:
    """px along one axis of the whole chunks a window [a, b) decodes."""
    a, b = window
    return -(-b // chunk) * chunk - a // chunk * chunk


@pytest.mark.parametrize(("shape", "tile", "halo"), [((15000, 20000), 2048, 840), ((9000, 12000), 2048, 420),
                                                      ((6000, 9000), 1024, 170), ((5000, 5000), 256, 300)])
def test_a_tile_decodes_less_of_the_staged_input_than_with_chunks_of_a_whole_tile(shape, tile, halo):
    plan = TilePlan.build(shape, effective_tile(tile, halo), halo)
    side = plan.tile
    chunk = staging_chunk(side)
    assert side % chunk == 0 and chunk % (TILE_ALIGN // 2) == 0
    for t in plan:
        wy0, wy1, wx0, wx1 = t.window
        for window, n in (((wy0, wy1), shape[0]), ((wx0, wx1), shape[1])):
            half, whole = _decoded_span(window, chunk), _decoded_span(window, side)
            assert window[1] - window[0] <= half <= whole
            if window[0] > 0 and window[1] < n and halo <= chunk:  # an interior window: 2 tiles, not 3
                assert (half, whole) == (2 * side, 3 * side)


def test_pyramid_goes_down_to_1024_px_on_the_long_side():
    assert pyramid_shapes((777, 1013)) == [(777, 1013)]
    assert pyramid_shapes((2000, 3001)) == [(2000, 3001), (1000, 1501), (500, 751)]
    assert pyramid_shapes((15000, 20000))[-1] == (469, 625)


@pytest.mark.parametrize(("shape", "tile"), list(itertools.product(SHAPES, [300, 1024, 2048])))
def test_every_shard_of_every_tile_level_has_exactly_one_writer(shape, tile):
    plan = TilePlan.build(shape, tile, 0)
    assert_one_writer_per_chunk(plan, [plan.shard_shape(k) for k in range(plan.tile_levels)])
    # tiles write a level while their footprint there is at least MIN_SHARD px, never past the pyramid
    levels = len(pyramid_shapes(shape))
    assert plan.tile_levels == min(levels, 1 + sum(1 for k in range(1, 7) if plan.tile >> k >= MIN_SHARD))
    assert all(min(plan.shard_shape(k)) >= MIN_SHARD for k in range(plan.tile_levels))


def test_chunks_that_straddle_tiles_are_caught():
    plan = TilePlan.build((1000, 1000), 300, 0)  # 320 px tiles
    with pytest.raises(AssertionError, match="not one chunk"):
        assert_one_writer_per_chunk(plan, [(256, 256)])
    with pytest.raises(AssertionError, match="not one chunk"):
        assert_one_writer_per_chunk(plan, [(640, 640)])


def test_a_tile_window_grows_no_larger_than_the_jobs_whole_image_task():
    import dataclasses

    from phos_dask.settings import Settings
    from phos_dask.sources import SourceItem
    from phos_dask.taskflow import ImageContext, JobConfig

    item = SourceItem("/nowhere/big.jpg", "big.jpg", "big.jpg", 1)
    cfg = JobConfig("/nowhere/out.zarr", Settings(film="Portra400"))
    assert cfg.max_window_px == MAX_WINDOW_PX == cfg.whole_limit_mp * 1e6
    big = ImageContext.build(cfg, item, (15000, 20000))
    assert big.tiling.halo == 840 and big.tiling.tile == 3968
    # a job whose whole-image tasks are capped lower (--whole-limit, or a GPU's free memory) tiles no larger
    capped = dataclasses.replace(cfg, whole_limit_mp=16.0)
    assert capped.max_window_px == 16_000_000
    tiling = ImageContext.build(capped, item, (15000, 20000)).tiling
    assert tiling.tile == 2304
    assert max((t.window[1] - t.window[0]) * (t.window[3] - t.window[2]) for t in tiling) <= 16e6
    assert dataclasses.replace(cfg, whole_limit_mp=0.0).max_window_px == MAX_WINDOW_PX  # always tiled


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint16, 0), (np.float32, 3)])
def test_a_window_of_the_staged_input_is_what_zarr_reads_there(tmp_path, dtype, channels):
    """tiled.staged_window reads the staging area's chunks itself: the same values as Zarr's read of the same
    box, for boxes inside one chunk, across chunk edges and at the array's ragged edges; a chunk that is
    missing is an error, not zeros."""
    import zarr

    from phos_dask.storage import Location
    from phos_dask.store import staging_compressor, staging_path
    from phos_dask.tiled import staged_window

    rng = np.random.default_rng(3)
    shape = (301, 413, channels) if channels else (301, 413)
    image = (rng.random(shape) * (255 if dtype == np.uint8 else 60000)).astype(dtype)
    out = Location.of(str(tmp_path / "out.zarr"))
    chunks = (64, 64, channels) if channels else (64, 64)
    staged = zarr.create_array(store=out.url_of(staging_path("k")), shape=shape, dtype=dtype, chunks=chunks,
                               fill_value=0, compressors=staging_compressor(np.dtype(dtype).itemsize))
    staged[...] = image
    for box in [(0, 10, 0, 10), (60, 70, 60, 200), (0, 301, 0, 413), (250, 301, 390, 413), (64, 128, 128, 192)]:
        got = staged_window(out, "k", box)
        want = staged[box[0] : box[1], box[2] : box[3]]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    (tmp_path / "out.zarr" / staging_path("k") / "c" / "1" / "1").rename(tmp_path / "gone")
    with pytest.raises(KeyError, match="missing"):
        staged_window(out, "k", (60, 70, 60, 70))
