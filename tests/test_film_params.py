"""The film model stands alone: `phos_dask.film` computes from `FilmParams` (its parameters as data) and imports
nothing of jobs, files or stores; a job's `Settings` only builds those parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

import phos_dask
from phos_dask import Settings
from phos_dask.film.params import FilmParams
from phos_dask.film.pipeline import make_plan, render_region

FILM = Path(phos_dask.__file__).parent / "film"


def test_the_film_package_imports_only_itself_and_the_error_base():
    outside = set()
    for path in FILM.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            outside |= {n for n in names if n.startswith("phos_dask") and not n.startswith("phos_dask.film")}
    assert outside <= {"phos_dask.errors"}, outside


def test_film_params_render_what_the_settings_render(small_photo):
    settings = Settings(film="Cinestill800T", dtype="uint16", seed=5, image_key="a.jpg", grain="coarse")
    params = settings.film_params()
    assert isinstance(params, FilmParams) and params.image_seed == settings.image_seed()
    shape = small_photo.shape[:2]
    box = (0, shape[0], 0, shape[1])
    by_settings = render_region(small_photo, (0, 0), shape, box, make_plan(settings, shape))
    by_params = render_region(small_photo, (0, 0), shape, box, make_plan(params, shape))
    np.testing.assert_array_equal(by_settings, by_params)
    other = render_region(small_photo, (0, 0), shape, box,
                          make_plan(Settings(film="Cinestill800T", dtype="uint16", seed=6, image_key="a.jpg",
                                             grain="coarse").film_params(), shape))
    assert not np.array_equal(by_params, other)  # the seed reaches the model through the parameters
