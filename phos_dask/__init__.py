"""phos_dask: the Phos film model at archive scale."""

import os

# OpenCV reads its own decode limit (2**30 px) once, when cv2 is loaded; the limit that applies is ours
# (`--max-pixels`, checked from each file's header before anything is decoded).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))

from phos_dask.film.pipeline import make_plan, scale_for, source_box, total_halo
from phos_dask.render import output_shape, render, render_window
from phos_dask.settings import FILM_FORMATS, GRAIN_STYLES, Settings, SettingsError
from phos_dask.stocks import Stock, StockError, all_stocks, get_stock

__version__ = "0.2.0"

__all__ = [
    "FILM_FORMATS",
    "GRAIN_STYLES",
    "Settings",
    "SettingsError",
    "Stock",
    "StockError",
    "__version__",
    "all_stocks",
    "get_stock",
    "make_plan",
    "output_shape",
    "render",
    "render_window",
    "scale_for",
    "source_box",
    "total_halo",
]
