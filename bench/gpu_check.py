"""The GPU check (issue 6), run by bench/gpu_check.sh on a machine with an NVIDIA GPU and CuPy.

1. Correctness: 3 photographs × 3 stocks (Portra400, Cinestill800T, HP5Plus400) on CuPy vs the CPU kernels:
   linear float32 max |Δ| ≤ 1e-4 and 16-bit output PSNR ≥ 60 dB; GPU determinism; GPU region == GPU whole.
2. Speed of the model: GP/s of a 24 MP uint16 image already in device memory → uint16 codes in device memory
   (best of 3, synchronised), and the same work on this machine's CPU cores (numba, every core).
3. End to end: a folder of 24 MP 16-bit TIFFs rendered into Zarr by `run_job` on dask-cuda (one worker per
   GPU) and on a CPU LocalCluster with one worker per core, in the same run.
Writes bench/results/gpu-<date>-<device>.json (or under $OUT) and prints every row as it goes.

Usage: PYTHONPATH=. python bench/gpu_check.py [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILMS = ("Portra400", "Cinestill800T", "HP5Plus400")
PHOTOS = ("coffee.jpg", "astronaut.jpg", "chelsea.jpg")


def _photo(name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(ROOT / "examples" / name)), cv2.COLOR_BGR2RGB)


def _sized(img: np.ndarray, long_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    f = long_side / max(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)


def _psnr16(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(65535.0**2 / mse)


def _best(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def correctness(cp, check, quick: bool) -> None:
    from phos_dask import Settings, make_plan, render, render_window

    for name in PHOTOS[: 1 if quick else 3]:
        img = _sized(_photo(name), 1800)
        for film in FILMS:
            st = Settings(film=film, seed=3, image_key=name)
            lin_cpu = render(img, st.replace(dtype="float32"))
            lin_gpu = cp.asnumpy(render(cp.asarray(img), st.replace(dtype="float32")))
            diff = float(np.abs(lin_cpu - lin_gpu).max())
            check(f"linear GPU vs CPU {film} {name}", diff <= 1e-4, max_abs_diff=diff)
            c_cpu = render(img, st.replace(dtype="uint16"))
            c_gpu = cp.asnumpy(render(cp.asarray(img), st.replace(dtype="uint16")))
            psnr = _psnr16(c_cpu, c_gpu)
            check(f"uint16 GPU vs CPU {film} {name}", psnr >= 60, psnr_db=round(psnr, 2),
                  max_code_diff=int(np.abs(c_cpu.astype(int) - c_gpu).max()))
    img = _sized(_photo(PHOTOS[0]), 1800)
    st = Settings(film="Cinestill800T", seed=9, image_key="det", dtype="uint16")
    g = cp.asarray(img)
    a, b = cp.asnumpy(render(g, st)), cp.asnumpy(render(g, st))
    check("GPU deterministic", bool(np.array_equal(a, b)))
    H, W = img.shape[:2]
    halo = make_plan(st, (H, W)).halo
    from phos_dask.film.pipeline import grain_constants

    grain_k = grain_constants(img, st)
    rng = np.random.default_rng(0)
    bad = 0
    for _ in range(8):
        y0 = int(rng.integers(0, H - 1))
        y1 = int(rng.integers(y0 + 1, min(H, y0 + 500) + 1))
        x0 = int(rng.integers(0, W - 1))
        x1 = int(rng.integers(x0 + 1, min(W, x0 + 500) + 1))
        wy0, wy1, wx0, wx1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
        got = cp.asnumpy(render_window(g[wy0:wy1, wx0:wx1], (wy0, wx0), (H, W), (y0, y1, x0, x1), st,
                                         grain_k=grain_k))
        bad += not np.array_equal(got, a[y0:y1, x0:x1])
    check("GPU region == GPU whole (8 windows)", bad == 0, mismatches=bad)


def model_speed(cp, result: dict, quick: bool) -> None:
    from phos_dask import Settings, render

    big = (_sized(_photo(PHOTOS[0]), 6000).astype(np.uint16) * 257)[:4000, :6000]
    px = big.shape[0] * big.shape[1]
    st = Settings(film="Portra400", dtype="uint16", image_key="speed")
    g = cp.asarray(big)
    cp.cuda.Device().synchronize()

    def on_gpu() -> None:
        render(g, st)
        cp.cuda.Device().synchronize()

    on_gpu()  # compile and warm the memory pool
    gpu_s, gpu_all = _best(on_gpu, 3)
    render(big, st)  # numba compile/cache
    cpu_s, cpu_all = _best(lambda: render(big, st), 1 if quick else 2)
    import numba

    row = {"megapixels": px / 1e6, "gpu_seconds_best": gpu_s, "gpu_seconds": gpu_all,
           "gpu_gpix_per_s": px / gpu_s / 1e9, "cpu_seconds_best": cpu_s, "cpu_seconds": cpu_all,
           "cpu_threads": numba.get_num_threads(), "cpu_gpix_per_s": px / cpu_s / 1e9,
           "gpu_over_cpu": cpu_s / gpu_s, "targets": {"gpix_per_s": 1.0, "gpu_over_cpu": 20.0}}
    result["model_24mp_uint16"] = row
    print(json.dumps(row), flush=True)


def end_to_end(result: dict, quick: bool) -> None:
    try:
        import dask_cuda  # noqa: F401
        import tifffile
    except ImportError as e:
        result["end_to_end"] = {"skipped": f"{type(e).__name__}: {e}"}
        print(json.dumps(result["end_to_end"]), flush=True)
        return
    from phos_dask import Settings
    from phos_dask.cluster import connect
    from phos_dask.job import JobSpec, run_job

    tmp = Path(tempfile.mkdtemp(prefix="phos-gpu-"))
    try:
        src = tmp / "src"
        src.mkdir()
        base = (_sized(_photo(PHOTOS[0]), 6000).astype(np.uint16) * 257)[:4000, :6000]
        n = 2 if quick else 6
        for i in range(n):
            tifffile.imwrite(src / f"scan{i}.tif", np.roll(base, 137 * i, axis=1), photometric="rgb")
        rows = {}
        for device in ("gpu", "cpu"):
            out = tmp / f"{device}.zarr"
            spec = JobSpec(str(src), str(out), Settings(film="Portra400", dtype="uint16"), device=device)
            with connect(device=device, workers=os.cpu_count(), dashboard_address="127.0.0.1:0") as client:
                t = time.perf_counter()
                report = run_job(spec, client)
                seconds = time.perf_counter() - t
                workers = len(client.scheduler_info()["workers"])
            rows[device] = {"workers": workers, "seconds": seconds, "images": n,
                            "megapixels": report["megapixels"], "mp_per_s": report["megapixels"] / seconds,
                            "counts": report["counts"], "tile": report.get("tile"),
                            "gpu_oom_fallbacks": report.get("gpu_oom_fallbacks")}
            print(json.dumps({device: rows[device]}), flush=True)
        rows["gpu_over_cpu"] = rows["cpu"]["seconds"] / rows["gpu"]["seconds"]
        result["end_to_end"] = rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(quick: bool) -> dict:
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"gpu": name, "gpu_memory_gb": round(cp.cuda.runtime.memGetInfo()[1] / 1e9, 1),
                    "cupy": cp.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "checks": [],
        "steps_seconds": {},
    }
    ok = True

    def check(label: str, passed: bool, **details) -> None:
        nonlocal ok
        ok &= bool(passed)
        row = {"check": label, "pass": bool(passed), **details}
        result["checks"].append(row)
        print(json.dumps(row), flush=True)

    for step, fn in (("correctness", lambda: correctness(cp, check, quick)),
                     ("model_speed", lambda: model_speed(cp, result, quick)),
                     ("end_to_end", lambda: end_to_end(result, quick))):
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # keep what the other steps measure
            ok = False
            result[f"{step}_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["steps_seconds"][step] = round(time.perf_counter() - t, 1)
    result["pass"] = ok
    return result


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    try:
        res = main(quick)
    except Exception as e:  # no CuPy, no device: say so in the JSON too
        traceback.print_exc()
        res = {"pass": False, "error": f"{type(e).__name__}: {e}", "machine": {"gpu": "none"}}
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^A-Za-z0-9]+", "-", res.get("machine", {}).get("gpu", "unknown")).strip("-").lower()
    path = out / f"gpu-{datetime.now(UTC):%Y%m%d}-{device}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"{'PASS' if res['pass'] else 'FAIL'}: {path}")
    sys.exit(0 if res["pass"] else 1)
