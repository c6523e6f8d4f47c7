"""The GPU check: the film model on CuPy against the CPU kernels, plus GPU determinism, region == whole
and a 24 MP timing. Run on a machine with a CUDA GPU and CuPy; writes JSON to $OUT or bench/results/.

Usage: PYTHONPATH=. python bench/gpu_check.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from phos_dask import Settings, make_plan, render, render_window

ROOT = Path(__file__).resolve().parents[1]


def _photo() -> np.ndarray:
    path = ROOT / "examples" / "coffee.jpg"
    try:
        import cv2

        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    except ImportError:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))


def _enlarge(img: np.ndarray, f: int) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(np.repeat(img, f, axis=0), f, axis=1))


def main() -> dict:
    import cupy as cp

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"gpu": props["name"].decode(), "cupy": cp.__version__, "numpy": np.__version__,
                    "python": sys.version.split()[0], "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "checks": [],
    }
    photo = _photo()
    mid = _enlarge(photo, 3)  # 1800×1200: scale s = 0.4, coarse cells of 1 px… and 2 px below
    ok = True

    def check(name: str, passed: bool, **details) -> None:
        nonlocal ok
        ok &= bool(passed)
        row = {"check": name, "pass": bool(passed), **details}
        result["checks"].append(row)
        print(json.dumps(row), flush=True)

    for film in ("Portra400", "Cinestill800T", "HP5Plus400"):
        for img, label in ((photo, "600x400"), (mid, "1800x1200")):
            st = Settings(film=film, seed=3, image_key=label)
            f_cpu = render(img, st.replace(dtype="float32"))
            f_gpu = cp.asnumpy(render(cp.asarray(img), st.replace(dtype="float32")))
            diff = float(np.abs(f_cpu - f_gpu).max())
            check(f"float32 GPU vs CPU {film} {label}", diff < 2e-5, max_abs_diff=diff)
            c_cpu = render(img, st).astype(int)
            c_gpu = cp.asnumpy(render(cp.asarray(img), st)).astype(int)
            d = np.abs(c_cpu - c_gpu)
            check(f"uint8 GPU vs CPU {film} {label}", int(d.max()) <= 1, max_code_diff=int(d.max()),
                  share_differing=float((d > 0).mean()))

    st = Settings(film="Cinestill800T", seed=9, image_key="det")
    g = cp.asarray(mid)
    a, b = cp.asnumpy(render(g, st)), cp.asnumpy(render(g, st))
    check("GPU deterministic", bool(np.array_equal(a, b)))

    H, W = mid.shape[:2]
    plan = make_plan(st, (H, W))
    rng = np.random.default_rng(0)
    bad = 0
    for _ in range(12):
        y0 = int(rng.integers(0, H - 1)); y1 = int(rng.integers(y0 + 1, min(H, y0 + 500) + 1))  # noqa: E702
        x0 = int(rng.integers(0, W - 1)); x1 = int(rng.integers(x0 + 1, min(W, x0 + 500) + 1))  # noqa: E702
        h = plan.halo
        wy0, wy1, wx0, wx1 = max(0, y0 - h), min(H, y1 + h), max(0, x0 - h), min(W, x1 + h)
        got = cp.asnumpy(render_window(g[wy0:wy1, wx0:wx1], (wy0, wx0), (H, W), (y0, y1, x0, x1), st))
        bad += not np.array_equal(got, a[y0:y1, x0:x1])
    check("GPU region == whole (12 windows)", bad == 0, mismatches=bad)

    big = _enlarge(photo, 10)  # 6000×4000
    st = Settings(film="Portra400")
    gbig = cp.asarray(big)
    render(gbig, st)
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = render(gbig, st)
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t)
    del out
    render(big, st)
    t = time.perf_counter()
    render(big, st)
    cpu_s = time.perf_counter() - t
    result["timing_24mp_portra400"] = {"gpu_seconds_best": min(times), "gpu_seconds": times,
                                       "cpu_numba_seconds": cpu_s, "cpu_threads": os.cpu_count()}
    print(json.dumps(result["timing_24mp_portra400"]), flush=True)
    result["pass"] = ok
    return result


if __name__ == "__main__":
    try:
        res = main()
    except Exception as e:  # report what broke instead of losing the run
        import traceback

        traceback.print_exc()
        res = {"pass": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    print("PASS" if res["pass"] else "FAIL")
    sys.exit(0 if res["pass"] else 1)
