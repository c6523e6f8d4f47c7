"""phos_dask: the Phos film model at archive scale.

Importing the package, or calling it, changes no process-wide state: no environment variable, no
`PIL.Image.MAX_IMAGE_PIXELS`, no OpenCV log level. Only the processes the package itself starts (the
command line, the worker processes of its local clusters) set what they need (`phos_dask.cluster`).
"""

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
