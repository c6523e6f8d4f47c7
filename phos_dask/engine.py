"""The film engine on arrays in memory (NumPy, CuPy): whole images and regions, from settings. The public
`phos_dask.render` (phos_dask/render.py) adds dask arrays and xarray DataArrays on top."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from phos_dask.film import ops
from phos_dask.film.pipeline import Box, as_rgb, make_plan, render_region, touch_scratch
from phos_dask.resample import resample_to, working_shape
from phos_dask.settings import Settings


def prepare(image, settings: Settings):
    """Decoded image → the (h, w, 3) array the model runs on: grey expanded, alpha dropped, working size."""
    image = as_rgb(image)
    if settings.working_size is not None:
        if ops.namespace(image) is not np:
            raise NotImplementedError("working-size resampling runs on the CPU; resample before the GPU")
        image = resample_to(image, settings.working_size)
    return image


def render_image(image, settings: Settings | None = None):
    """The film model on a whole image in memory.

    image: (h, w, 3) or (h, w) [(h, w, 4): alpha ignored], uint8/uint16 sRGB codes or float32 sRGB in
    [0, 1] (linear if settings.linear_input). Returns (h', w', 3) for colour stocks, (h', w') for B&W, in
    settings.dtype (uint codes are sRGB; floats are linear light); h', w' differ only with working_size.
    """
    settings = settings or Settings()
    image = prepare(image, settings)
    shape = image.shape[:2]
    plan = make_plan(settings, shape)
    return render_region(image, (0, 0), shape, (0, shape[0], 0, shape[1]), plan)


def prepare_memory(image_shape: tuple[int, int], settings: Settings) -> bool:
    """Take now, in this thread, the first-touch page faults of the largest array a CPU `render_image` of an
    image of `image_shape` (rows, cols, before any working-size resampling) with `settings` keeps in this
    thread's scratch: fresh memory costs about 0.5 s of CPU per GB on a virtual machine, and `preview` has
    a core to spare for it while its kernels load in another thread. Returns whether it touched anything."""
    shape = output_shape(image_shape, settings)
    return touch_scratch(make_plan(settings, shape), shape)


def render_window(window, window_origin: tuple[int, int], image_shape: tuple[int, int], out_box: Box,
                  settings: Settings, grain_k: Sequence[float] | None = None):
    """The model's output on `out_box` (y0, y1, x0, x1) of an image of `image_shape`, computed from a
    padded window of it whose top-left pixel sits at global `window_origin`. Bit-identical to the same
    region of `render` on the whole image. Coordinates are those of the working-size image.

    grain_k: the whole image's grain constants (`grain_constants(prepared_image, settings)`, or the summed
    `grain_sums` of its blocks); required with grain on unless the window is the whole image."""
    plan = make_plan(settings, image_shape, grain_k=grain_k)
    return render_region(as_rgb(window), window_origin, image_shape, out_box, plan)


def output_shape(shape: tuple[int, int], settings: Settings) -> tuple[int, int]:
    return shape if settings.working_size is None else working_shape(shape, settings.working_size)
