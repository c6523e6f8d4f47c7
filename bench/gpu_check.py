"""The GPU check (issues 6 and 17), run by bench/gpu_check.sh on a machine with an NVIDIA GPU, CuPy and
numba-cuda. Every step times itself; a step that fails is recorded in the JSON and the others still run.

1. environment: the device, library versions, which GPU implementation CuPy arrays get (`device.gpu_kernels`).
2. correctness: 3 photographs × 3 stocks (Portra400, Cinestill800T, HP5Plus400) at 1800 px on the fused
   GPU kernels vs the CPU kernels: float32 max |Δ| ≤ 2e-5; uint16 codes within ±1 on at most 1e-4 of the
   pixels (issue 17's target); the fused kernels vs the reference GPU ops (PHOS_CUDA_KERNELS=0 path);
   GPU determinism; GPU region == GPU whole on 8 random windows.
3. model speed: GP/s of the model (the plan, K_c included, made beforehand) from uint16 already in device
   memory to uint16 codes in device memory, at 24 MP and 100 MP, best of 3, synchronised; the host time to
   enqueue a render against the time to finish it (enqueue ≪ finish: no host round trip between stages);
   the reference GPU ops at 24 MP; the same 24 MP work on this machine's CPU cores (numba, every core).
   Target: ≥ 1 GP/s per H100/H200.
4. end to end: a folder of 24 MP 16-bit TIFFs rendered into Zarr by `run_job` on dask-cuda's
   LocalCUDACluster (one worker per GPU, an RMM pool when rmm imports) and on a CPU LocalCluster with one
   worker per core, in the same run. Target: GPU ≥ 10× the CPU cluster.
Writes gpu-<date>-<device>.json (device name in it and in the file name) under $OUT or bench/results/.

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
TARGETS = {"model_gpix_per_s": 1.0, "end_to_end_gpu_over_cpu": 10.0, "code_diff_max": 1,
           "code_diff_share_max": 1e-4, "float_diff_max": 2e-5}
#: RMM pool of the GPU worker, as dask-cuda takes it.
RMM_POOL = os.environ.get("PHOS_RMM_POOL", "32GB")


def _photo(name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(ROOT / "examples" / name)), cv2.COLOR_BGR2RGB)


def _sized(img: np.ndarray, long_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    f = long_side / max(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)


def _uint16(shape: tuple[int, int]) -> np.ndarray:
    """A real photograph enlarged to `shape` (rows, cols), 16-bit."""
    import cv2

    img = cv2.resize(_photo(PHOTOS[0]), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return img.astype(np.uint16) * 257


def _best(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def environment(cp, result: dict) -> None:
    from phos_dask.device import gpu_kernels

    def version(dist: str) -> str | None:
        import importlib.metadata

        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    result["machine"].update({dist: version(dist) for dist in ("numba", "numba-cuda", "dask", "dask-cuda",
                                                                "rmm-cu13", "rmm-cu12")})
    result["machine"]["gpu_kernels"] = gpu_kernels()
    print(json.dumps(result["machine"]), flush=True)


def correctness(cp, check, quick: bool) -> None:
    from phos_dask import Settings, make_plan, render, render_window
    from phos_dask.film import ops
    from phos_dask.film.pipeline import grain_constants

    for name in PHOTOS[: 1 if quick else 3]:
        img = _sized(_photo(name), 1800)
        g = cp.asarray(img)
        for film in FILMS:
            st = Settings(film=film, seed=3, image_key=name)
            lin_cpu = render(img, st.replace(dtype="float32"))
            lin_gpu = cp.asnumpy(render(g, st.replace(dtype="float32")))
            diff = float(np.abs(lin_cpu - lin_gpu).max())
            check(f"float32 GPU vs CPU {film} {name}", diff <= TARGETS["float_diff_max"], max_abs_diff=diff)
            c_cpu = render(img, st.replace(dtype="uint16")).astype(np.int64)
            c_gpu = cp.asnumpy(render(g, st.replace(dtype="uint16"))).astype(np.int64)
            d = np.abs(c_cpu - c_gpu)
            share = float(np.mean(d.reshape(d.shape[0], d.shape[1], -1).max(axis=2) > 0))
            check(f"uint16 GPU vs CPU {film} {name}", int(d.max()) <= TARGETS["code_diff_max"]
                  and share <= TARGETS["code_diff_share_max"], max_code_diff=int(d.max()), share_differing=share)
            ops.CUDA_KERNELS = False
            try:
                c_ref = cp.asnumpy(render(g, st.replace(dtype="uint16"))).astype(np.int64)
            finally:
                ops.CUDA_KERNELS = True
            check(f"uint16 fused vs reference GPU ops {film} {name}", int(np.abs(c_ref - c_gpu).max()) <= 1,
                  max_code_diff=int(np.abs(c_ref - c_gpu).max()))
    img = _sized(_photo(PHOTOS[0]), 1800)
    st = Settings(film="Cinestill800T", seed=9, image_key="det", dtype="uint16")
    g = cp.asarray(img)
    a, b = cp.asnumpy(render(g, st)), cp.asnumpy(render(g, st))
    check("GPU deterministic", bool(np.array_equal(a, b)))
    H, W = img.shape[:2]
    halo = make_plan(st, (H, W)).halo
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


def _model_gpu(cp, big: np.ndarray, film: str, repeats: int) -> dict:
    """Seconds of one render on the GPU from device-resident uint16 to device-resident codes."""
    from phos_dask import Settings, make_plan
    from phos_dask.film.pipeline import grain_constants, render_region

    st = Settings(film=film, dtype="uint16", image_key="speed")
    H, W = big.shape[:2]
    plan = make_plan(st, (H, W), grain_k=grain_constants(big, st))
    g = cp.asarray(big)
    dev = cp.cuda.Device()
    dev.synchronize()
    enqueue: list[float] = []

    def once() -> None:
        t = time.perf_counter()
        out = render_region(g, (0, 0), (H, W), (0, H, 0, W), plan)
        enqueue.append(time.perf_counter() - t)
        dev.synchronize()
        del out

    once()  # kernel compilation, memory pool warm-up
    enqueue.clear()
    best, times = _best(once, repeats)
    # No host synchronisation inside a render: queue ~0.5 s of matrix products first and check that the
    # render's calls all return before they finish (any device-to-host read or synchronising copy would wait).
    a = cp.ones((8192, 8192), cp.float32)
    for _ in range(24):
        b = a @ a
    busy = cp.cuda.Event()
    busy.record()
    t = time.perf_counter()
    out = render_region(g, (0, 0), (H, W), (0, H, 0, W), plan)
    returned = time.perf_counter() - t
    asynchronous = not busy.done
    dev.synchronize()
    del a, b, out
    g = None  # the image's device memory back to the pool before the next size
    cp.get_default_memory_pool().free_all_blocks()
    px = H * W
    return {"megapixels": round(px / 1e6, 1), "seconds_best": best, "seconds": times,
            "enqueue_seconds": enqueue, "gpix_per_s": px / best / 1e9,
            "returned_before_queued_work_finished": asynchronous, "seconds_to_return_behind_busy_gpu": returned}


def model_speed(cp, result: dict, check, quick: bool) -> None:
    from phos_dask import Settings, render
    from phos_dask.film import ops

    rows: dict = {}
    result["model_speed"] = rows
    for label, shape in (("24mp", (4000, 6000)), ("100mp", (8160, 12240))):
        if quick and label == "100mp":
            continue
        big = _uint16(shape)
        row = _model_gpu(cp, big, "Portra400", 3)
        rows[label] = row
        print(json.dumps({label: row}), flush=True)
        check(f"model GP/s {label} Portra400 uint16 ≥ {TARGETS['model_gpix_per_s']}",
              row["gpix_per_s"] >= TARGETS["model_gpix_per_s"], gpix_per_s=round(row["gpix_per_s"], 3))
        check(f"no host synchronisation inside a render {label}", row["returned_before_queued_work_finished"],
              seconds_to_return=round(row["seconds_to_return_behind_busy_gpu"], 4))
        if label == "24mp":
            ops.CUDA_KERNELS = False
            try:
                ref = _model_gpu(cp, big, "Portra400", 1)
            finally:
                ops.CUDA_KERNELS = True
            rows["24mp_reference_gpu_ops"] = ref
            print(json.dumps({"24mp_reference_gpu_ops": ref}), flush=True)
            import numba

            st = Settings(film="Portra400", dtype="uint16", image_key="speed")
            render(big, st)  # numba compile/cache
            cpu_s, cpu_all = _best(lambda big=big, st=st: render(big, st), 1 if quick else 2)
            rows["24mp_cpu"] = {"seconds_best": cpu_s, "seconds": cpu_all, "threads": numba.get_num_threads(),
                                "gpix_per_s": big.shape[0] * big.shape[1] / cpu_s / 1e9,
                                "gpu_over_cpu": cpu_s / row["seconds_best"]}
            print(json.dumps({"24mp_cpu": rows["24mp_cpu"]}), flush=True)


def _gpu_client(stack, result: dict):
    """A client of a LocalCUDACluster with an RMM pool, or without one if that fails (recorded)."""
    from phos_dask.cluster import connect

    try:
        import rmm  # noqa: F401

        pool = RMM_POOL
    except Exception as e:
        result["rmm"] = f"not used: {type(e).__name__}: {e}"
        pool = None
    if pool is not None:
        try:
            client = stack.enter_context(connect(device="gpu", dashboard_address="127.0.0.1:0", rmm_pool_size=pool))
            result["rmm"] = f"pool {pool}"
            return client
        except Exception as e:
            result["rmm"] = f"pool {pool} failed, none used: {type(e).__name__}: {e}"
    return stack.enter_context(connect(device="gpu", dashboard_address="127.0.0.1:0"))


def end_to_end(result: dict, check, quick: bool) -> None:
    import contextlib

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
    rows: dict = {}
    result["end_to_end"] = rows
    try:
        src = tmp / "src"
        src.mkdir()
        base = _uint16((4000, 6000))
        n = 2 if quick else 12
        for i in range(n):
            tifffile.imwrite(src / f"scan{i}.tif", np.roll(base, 137 * i, axis=1), photometric="rgb")
        for device in ("gpu", "cpu"):
            out = tmp / f"{device}.zarr"
            spec = JobSpec(str(src), str(out), Settings(film="Portra400", dtype="uint16"), device=device)
            t0 = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if device == "gpu":
                    client = _gpu_client(stack, rows)
                else:
                    client = stack.enter_context(connect(device="cpu", workers=os.cpu_count(),
                                                         dashboard_address="127.0.0.1:0"))
                started = time.perf_counter() - t0
                t = time.perf_counter()
                report = run_job(spec, client)
                seconds = time.perf_counter() - t
                workers = len(client.scheduler_info()["workers"])
            rows[device] = {"workers": workers, "cluster_start_seconds": started, "seconds": seconds, "images": n,
                            "megapixels": report["megapixels"], "mp_per_s": report["megapixels"] / seconds,
                            "counts": report["counts"], "tile": report.get("tile"),
                            "gpu_oom_fallbacks": report.get("gpu_oom_fallbacks")}
            print(json.dumps({device: rows[device]}), flush=True)
            shutil.rmtree(out, ignore_errors=True)
        rows["gpu_over_cpu"] = rows["cpu"]["seconds"] / rows["gpu"]["seconds"]
        check(f"end to end LocalCUDACluster ≥ {TARGETS['end_to_end_gpu_over_cpu']}× the CPU cluster",
              rows["gpu_over_cpu"] >= TARGETS["end_to_end_gpu_over_cpu"], gpu_over_cpu=round(rows["gpu_over_cpu"], 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(quick: bool) -> dict:
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"gpu": name, "gpu_memory_gb": round(cp.cuda.runtime.memGetInfo()[1] / 1e9, 1),
                    "gpu_count": cp.cuda.runtime.getDeviceCount(), "cupy": cp.__version__, "numpy": np.__version__,
                    "python": sys.version.split()[0], "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "targets": TARGETS,
        "checks": [],
        "steps_seconds": {},
        "errors": {},
    }

    def check(label: str, passed: bool, **details) -> None:
        row = {"check": label, "pass": bool(passed), **details}
        result["checks"].append(row)
        print(json.dumps(row), flush=True)

    for step, fn in (("environment", lambda: environment(cp, result)),
                     ("correctness", lambda: correctness(cp, check, quick)),
                     ("model_speed", lambda: model_speed(cp, result, check, quick)),
                     ("end_to_end", lambda: end_to_end(result, check, quick))):
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # keep what the other steps measure
            result["errors"][step] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["steps_seconds"][step] = round(time.perf_counter() - t, 1)
        print(f"step {step}: {result['steps_seconds'][step]} s", flush=True)
        _write(result)  # what is measured so far survives a kill at the time limit
    result["pass"] = not result["errors"] and all(c["pass"] for c in result["checks"])
    return result


def _write(res: dict) -> Path:
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^A-Za-z0-9]+", "-", res.get("machine", {}).get("gpu", "unknown")).strip("-").lower()
    path = out / f"gpu-{datetime.now(UTC):%Y%m%d}-{device}.json"
    path.write_text(json.dumps(res, indent=2))
    return path


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    try:
        res = main(quick)
    except Exception as e:  # no CuPy, no device: say so in the JSON too
        traceback.print_exc()
        res = {"pass": False, "error": f"{type(e).__name__}: {e}", "machine": {"gpu": "none"}}
    path = _write(res)
    print(f"{'PASS' if res['pass'] else 'FAIL'}: {path}")
    sys.exit(0 if res["pass"] else 1)
