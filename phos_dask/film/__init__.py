"""The Phos film model: pure array functions, one module per phenomenon (see spec/phos-model.md)."""

from phos_dask.film.pipeline import Plan, make_plan, render_region, scale_for, source_box, total_halo

__all__ = ["Plan", "make_plan", "render_region", "scale_for", "source_box", "total_halo"]
