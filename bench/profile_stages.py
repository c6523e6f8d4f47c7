"""Where the whole-image render spends its time: seconds per array op for a 6000×4000 photograph.

Usage: python bench/profile_stages.py [FILM ...]   (prints one line per render; the first is a warm-up)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2

from phos_dask import Settings, render
from phos_dask.film import ops

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "parity" / "coffee_3000x2000.jpg"
#: The array ops a render goes through (a CPU render with integer output takes `finish`, the fused last stage;
#: float output and the GPU take the separate ones).
OPS = ["front", "any_above", "cells", "blur_valid", "compose", "finish", "grain_noise", "mix", "mix_encode",
       "mix_filmic_encode"]


def main(films: list[str]) -> None:
    src = PHOTO if PHOTO.exists() else sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.jpg"))[0]
    img = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)
    big = cv2.resize(img, (6000, 4000), interpolation=cv2.INTER_CUBIC)
    spent: dict[str, float] = {}
    for name in OPS:
        original = getattr(ops, name)

        def timed(*args, _f=original, _name=name, **kwargs):
            t = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t

        setattr(ops, name, timed)
    for film in [films[0], *films]:
        spent.clear()
        t = time.perf_counter()
        render(big, Settings(film=film))
        total = time.perf_counter() - t
        parts = "  ".join(f"{k} {v:.3f}" for k, v in spent.items())
        print(f"{film:<14} {total:6.3f} s   {parts}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["Portra400", "Cinestill800T", "HP5Plus400"])
