"""The film stocks' profiles. They are the model's own data and live with it, in phos_dask.film.stocks; this
module keeps the import path the rest of the package and its users have."""

from phos_dask.film.stocks import (
    CHARACTER,
    Halation,
    HDCurve,
    Layer,
    Reciprocity,
    Stock,
    StockError,
    Tone,
    all_stocks,
    get_stock,
)

__all__ = ["CHARACTER", "HDCurve", "Halation", "Layer", "Reciprocity", "Stock", "StockError", "Tone", "all_stocks",
           "get_stock"]
