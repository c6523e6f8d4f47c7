"""The film model on dask arrays and xarray DataArrays: a lazy render for notebooks (dask-image, xarray, zarr).

`render(x, settings)` with `x` a `dask.array.Array` of shape (h, w) or (h, w, c) (c = 1…4, as NumPy `render`
takes) returns a lazy dask array of the output, bit-identical to `phos_dask.render(x.compute(), settings)`
for any chunking. Nothing is computed while the graph is built.

The graph, per image:

* **Chunks.** The channel axis becomes one chunk. Along each spatial axis, neighbouring chunks smaller than
  the model's halo (`Plan.halo`, px) are merged until every chunk is at least the halo (or the axis is one
  chunk): merging only removes chunk boundaries, so the output stays aligned with any store chunked like the
  input. Output chunks = these spatial chunks (the input's own when none is smaller than the halo), plus one
  chunk of 3 channels for colour stocks. Chunks of ≥ 4× the halo keep the recomputed halo ≤ ~2× the work.
* **Grain constants.** K_c (spec §4) is a whole-image reduction: one `phos-grain-sums` task per chunk takes
  the exact integer sums of its pixels (`pipeline.grain_sums`), and one `phos-grain-k` task adds them into K,
  on which every render task depends. So every input chunk is read before the first render task runs, and
  the scheduler keeps the input chunks (the input's bytes: 3 B/px for 8-bit RGB) until their render tasks
  have used them. For an input larger than memory, compute K first (`grain_constants(x, settings).compute()`,
  streaming) and pass it (`render_dask(x, settings, grain_k=K)`): the render then streams too. (The input is
  not re-read through `dask.graph_manipulation.clone`: in this dask that corrupts graphs holding rechunks,
  dask#12455.) Without grain (`grain="none"`) there is no reduction.
* **Render.** `dask.array.overlap.overlap` with depth = halo and no boundary padding (`boundary="none"`): each
  block is the image clipped to its chunk ± halo, exactly the window `render_window` needs (the reflect
  border at the true edges is the model's own). One `phos-render` task per chunk, which depends on K.

Dask lives here (the array-API layer) and in graph.py / the cluster layer; the film model knows none of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.delayed import Delayed

from phos_dask.engine import render_image as render_array
from phos_dask.engine import render_window
from phos_dask.film.pipeline import Plan, grain_k_from_sums, grain_sums, make_plan
from phos_dask.settings import Settings

#: Name of the channel dimension a DataArray gains when a grey (y, x) input renders through a colour stock.
CHANNEL_DIM = "c"


def render(image: Any, settings: Settings | None = None) -> Any:
    """The film model on a dask array (lazily) or an xarray DataArray (its dims and coords kept).

    image: dask array (h, w) or (h, w, c), c = 1…4 (grey, grey + alpha, RGB, RGBA; alpha ignored), uint8/uint16
    sRGB codes or float sRGB in [0, 1] (linear if settings.linear_input); or a DataArray whose dims are in
    that order, backed by dask (→ lazy DataArray) or NumPy/CuPy (→ computed now, as NumPy `render`).
    Returns (h, w, 3) for colour stocks, (h, w) for B&W, in settings.dtype. settings.working_size is refused:
    resample first (the working size is a whole-image resampling that changes the shape).
    """
    settings = settings or Settings()
    if isinstance(image, da.Array):
        return render_dask(image, settings)
    if hasattr(image, "dims") and hasattr(image, "coords"):
        return _render_dataarray(image, settings)
    return render_array(image, settings)


def render_dask(x: da.Array, settings: Settings, *, grain_k: Sequence[float] | Delayed | None = None) -> da.Array:
    """Lazy film render of the dask array `x` (see `render`); output chunks as described in the module.

    grain_k: the image's grain constants K_c (a sequence of floats, or the Delayed of `grain_constants`);
    by default computed in the same graph. Ignored without grain."""
    _check(x, settings)
    x, rows, cols, plan = _prepared(x, settings)
    H, W = int(x.shape[0]), int(x.shape[1])
    halo = plan.halo
    depth = tuple(halo if len(c) > 1 else 0 for c in (rows, cols))
    if not plan.has_grain:
        grain_k = None
    elif grain_k is None:
        grain_k = _grain_constants(x, settings, plan.grain_planes)
    elif not isinstance(grain_k, Delayed):
        grain_k = plan.with_grain_k(grain_k).grain_k  # checked now, not in every task

    windows = da.overlap.overlap(x, depth={0: depth[0], 1: depth[1], 2: 0}, boundary="none",
                                 allow_rechunk=False)
    out_dtype = np.dtype(settings.dtype)
    colour = plan.channels == 3
    common: dict[str, Any] = {"settings": settings, "image_shape": (H, W), "depth": depth, "dtype": out_dtype,
                              "token": "phos-render"}
    if colour:
        return windows.map_blocks(_render_block, grain_k, chunks=(rows, cols, (3,)),
                                  meta=meta_from_array(x, 3, out_dtype), **common)
    return windows.map_blocks(_render_block, grain_k, chunks=(rows, cols), drop_axis=2,
                              meta=meta_from_array(x, 2, out_dtype), **common)


def grain_constants(x: da.Array, settings: Settings) -> Delayed:
    """The image's grain constants K_c per grain plane (spec §4), lazily: a Delayed tuple of floats, () without
    grain. Equal to `pipeline.grain_constants` of the computed image; streams (a chunk per thread in memory)."""
    _check(x, settings)
    x, _, _, plan = _prepared(x, settings)
    return _grain_constants(x, settings, plan.grain_planes) if plan.has_grain else dask.delayed(())


def _prepared(x: da.Array, settings: Settings) -> tuple[da.Array, tuple[int, ...], tuple[int, ...], Plan]:
    """(x as (h, w, c) with one channel chunk and spatial chunks ≥ the halo, row chunks, column chunks, plan)."""
    if x.ndim == 2:
        x = x[:, :, None]
    plan = make_plan(settings, (int(x.shape[0]), int(x.shape[1])))
    rows, cols = (merge_small_chunks(c, plan.halo) for c in x.chunks[:2])
    return x.rechunk((rows, cols, -1)), rows, cols, plan


def _grain_constants(x: da.Array, settings: Settings, planes: int) -> Delayed:
    rows, cols = x.chunks[:2]
    sums = x.map_blocks(
        _grain_sums_block, settings=settings, planes=planes,
        chunks=((1,) * len(rows), (1,) * len(cols), (planes,), (2,)), new_axis=3,
        dtype=np.int64, meta=np.empty((0, 0, 0, 0), np.int64), token="phos-grain-sums",
    )
    # the chunks' own keys (not an optimised copy of the graph), so the render shares the input's tasks
    parts = sums.to_delayed(optimize_graph=False).ravel().tolist()
    return dask.delayed(_grain_k, pure=True)(parts, dask_key_name=f"phos-grain-k-{sums.name}")


def merge_small_chunks(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Chunk sizes along one axis (px) with neighbours merged until each is ≥ `minimum` px, or the axis is one
    chunk; a short remainder joins the chunk before it. Every boundary of the result is one of the input's.

    >>> merge_small_chunks((4, 4, 4, 30, 4), 10)
    (12, 34)
    """
    minimum = max(1, int(minimum))  # also drops empty chunks
    out: list[int] = []
    run = 0
    for c in chunks:
        run += int(c)
        if run >= minimum:
            out.append(run)
            run = 0
    if run:
        if out:
            out[-1] += run
        else:
            out.append(run)
    return tuple(out)


def _check(x: da.Array, settings: Settings) -> None:
    if settings.working_size is not None:
        raise ValueError("working_size is not supported for dask arrays or DataArrays: it resamples the whole "
                         "image and changes its shape; resample first, or render a NumPy array")
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 2, 3, 4))):
        raise ValueError(f"expected an image of shape (h, w), (h, w, 1|2|3|4), got {x.shape}")
    if any(math.isnan(s) for s in x.shape):
        raise ValueError("the dask array has unknown chunk sizes; call x.compute_chunk_sizes() first")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"the image is empty: shape {x.shape}")


def _grain_sums_block(block: np.ndarray, *, settings: Settings, planes: int,
                      block_info: dict | None = None) -> np.ndarray:
    """(1, 1, planes, 2) int64: `grain_sums` (Σq, n) of one chunk of the prepared image, per grain plane."""
    assert block_info is not None
    (y0, _), (x0, _) = block_info[0]["array-location"][:2]
    sums = grain_sums(block, (y0, x0), settings)
    # Σq ≤ n·2³²: exact in int64 for any chunk under ~34 Gpx (np.array raises OverflowError beyond)
    return np.array(sums, dtype=np.int64).reshape(1, 1, planes, 2)


def _grain_k(parts: list[np.ndarray]) -> tuple[float, ...]:
    """K_c per grain plane from every chunk's (1, 1, planes, 2) sums, added as Python ints (exact)."""
    planes = parts[0].shape[2]
    total = [(sum(int(b[0, 0, p, 0]) for b in parts), sum(int(b[0, 0, p, 1]) for b in parts)) for p in range(planes)]
    return grain_k_from_sums(total)


def _render_block(window: np.ndarray, grain_k: tuple[float, ...] | None, *, settings: Settings,
                  image_shape: tuple[int, int], depth: tuple[int, int], block_info: dict | None = None):
    """One output chunk from its window: the chunk ± depth px, clipped to the image (no padding)."""
    assert block_info is not None
    (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
    H, W = image_shape
    oy, ox = max(0, y0 - depth[0]), max(0, x0 - depth[1])
    expected = (min(H, y1 + depth[0]) - oy, min(W, x1 + depth[1]) - ox)
    if tuple(window.shape[:2]) != expected:
        raise RuntimeError(f"window of chunk {(y0, y1, x0, x1)} is {window.shape[:2]}, expected {expected}")
    return render_window(window, (oy, ox), image_shape, (y0, y1, x0, x1), settings, grain_k)


def _render_dataarray(arr: Any, settings: Settings) -> Any:
    """A DataArray with dims in the order (rows, cols[, channel]) → DataArray of the render with the same dims
    and coords (other orders: `arr.transpose(...)` first).

    Spatial dims and every coordinate that lives on them (or is scalar) are kept. The channel dim keeps its
    name; its coordinates are kept for RGB input (RGBA: the first three), dropped otherwise. B&W output has no
    channel dim; a grey (y, x) input through a colour stock gains one named CHANNEL_DIM. attrs are not copied
    (the values are new). Backed by dask → lazy; by NumPy/CuPy → computed now."""
    import xarray as xr

    if settings.working_size is not None:
        raise ValueError("working_size is not supported for dask arrays or DataArrays: it resamples the whole "
                         "image and changes its shape; resample first, or render a NumPy array")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr.isel({arr.dims[2]: slice(0, 3)})  # alpha is ignored: keep the RGB labels
    data = arr.data
    out = render_dask(data, settings) if isinstance(data, da.Array) else render_array(data, settings)
    dims = tuple(arr.dims[:2])
    if out.ndim == 3:
        dims += (arr.dims[2] if arr.ndim == 3 else CHANNEL_DIM,)
    sizes = dict(zip(dims, out.shape, strict=True))
    coords = {name: c.variable for name, c in arr.coords.items()
              if all(sizes.get(d) == n for d, n in c.sizes.items())}
    return xr.DataArray(out, dims=dims, coords=coords, name=arr.name)
