"""Public API of the film engine: `render` on whole images (NumPy, CuPy, dask arrays, xarray DataArrays),
`render_window` on regions, `output_shape`; from settings."""

from __future__ import annotations

import sys

from phos_dask.engine import output_shape, prepare, render_image, render_window
from phos_dask.settings import Settings

__all__ = ["output_shape", "prepare", "render", "render_window"]


def render(image, settings: Settings | None = None):
    """The film model on a whole image.

    image: (h, w, 3) or (h, w) [(h, w, 4): alpha ignored], uint8/uint16 sRGB codes or float32 sRGB in
    [0, 1] (linear if settings.linear_input). Returns (h', w', 3) for colour stocks, (h', w') for B&W, in
    settings.dtype (uint codes are sRGB; floats are linear light); h', w' differ only with working_size.

    A dask array gives a lazy dask array, bit-identical for any chunking; an xarray DataArray gives a
    DataArray with the same dims and coords (`phos_dask.darray.render`).
    """
    settings = settings or Settings()
    if _is_lazy_or_labelled(image):
        from phos_dask import darray

        return darray.render(image, settings)
    return render_image(image, settings)


def _is_lazy_or_labelled(image) -> bool:
    """Whether `image` is a dask array or an xarray DataArray, checked without importing dask or xarray
    (whoever made one has imported them)."""
    dask_array = sys.modules.get("dask.array")
    xarray = sys.modules.get("xarray")
    return (dask_array is not None and isinstance(image, dask_array.Array)) or (
        xarray is not None and isinstance(image, xarray.DataArray)
    )
