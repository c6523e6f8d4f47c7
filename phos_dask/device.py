"""Where the film model runs: the GPUs CuPy sees, whether dask-cuda can schedule them, and the rule that
picks a device for a job (`--device auto|cpu|gpu`).

`probe()` is the only function that touches the hardware; everything else is a pure function of what it
found, so the rules are tested on machines without a GPU by handing them a `Devices` record. GPU sizing of a
job (`sized_for_gpus`) and the accelerator a task renders on (`accelerator`) are decided here too.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from phos_dask.errors import EnvironmentProblem

if TYPE_CHECKING:
    from phos_dask.taskflow import JobConfig

DEVICES = ("auto", "cpu", "gpu")
#: Share of a GPU's free memory one task may plan to use (tiles are sized to stay under it).
GPU_MEMORY_SHARE = 0.30
#: Estimated peak device bytes per pixel of a render window on the CuPy path: an estimate from the op
#: sequence of the unfused reference ops (more temporaries than the CPU kernels' 46/22), not a measurement;
#: kept for the fused kernels of `film._cuda` too, which need less (about 70/35), so it stays conservative.
GPU_BYTES_PER_PX = {"color": 96, "bw": 48}


class DeviceError(EnvironmentProblem, RuntimeError):
    """A GPU was asked for but cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str


@dataclass(frozen=True)
class Devices:
    """What `probe` found. Versions are strings; an `…_error` says in one line why a library is unusable."""

    cupy: str | None = None
    cupy_error: str | None = "CuPy is not installed (pip install -e '.[gpu]')"
    gpus: tuple[GPU, ...] = ()
    driver: str | None = None
    runtime: str | None = None
    dask_cuda: str | None = None
    dask_cuda_error: str | None = "dask-cuda is not installed (pip install -e '.[gpu]')"
    probe_error: str | None = None

    def gpu_problem(self) -> str | None:
        """Why a GPU would not be used, in one line; None when CuPy sees a device and dask-cuda imports."""
        if self.cupy is None:
            return self.cupy_error or "CuPy is not installed"
        if self.probe_error:
            return f"CuPy cannot reach a GPU: {self.probe_error}"
        if not self.gpus:
            return "CuPy sees no CUDA device"
        if self.dask_cuda is None:
            return self.dask_cuda_error or "dask-cuda is not installed"
        return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def probe() -> Devices:
    """Look at this process's GPUs (through CuPy) and whether dask-cuda imports. Never raises."""
    found: dict[str, Any] = {}
    try:
        import dask_cuda

        found["dask_cuda"] = getattr(dask_cuda, "__version__", None) or _version("dask-cuda") or "?"
        found["dask_cuda_error"] = None
    except Exception as e:  # not installed, or an install that breaks on import (e.g. mismatched dask pins)
        if not _missing(e, "dask_cuda"):
            found["dask_cuda_error"] = f"dask-cuda cannot be imported: {_line(e)}"
    try:
        import cupy
    except Exception as e:
        if not _missing(e, "cupy"):
            found["cupy_error"] = f"CuPy cannot be imported: {_line(e)}"
        return Devices(**found)
    found.update(cupy=cupy.__version__, cupy_error=None)
    try:
        rt = cupy.cuda.runtime
        found["driver"] = _cuda_version(rt.driverGetVersion())
        found["runtime"] = _cuda_version(rt.runtimeGetVersion())
        gpus = []
        for i in range(rt.getDeviceCount()):
            props = rt.getDeviceProperties(i)
            with cupy.cuda.Device(i):
                free, total = cupy.cuda.runtime.memGetInfo()
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            gpus.append(GPU(i, name, int(total), int(free), f"{props['major']}.{props['minor']}"))
        found["gpus"] = tuple(gpus)
    except Exception as e:  # no driver, no device, driver too old: CUDARuntimeError and friends
        found["probe_error"] = _line(e)
    return Devices(**found)


def gpu_kernels() -> str:
    """Which GPU implementation CuPy arrays get, in one line: "fused (numba-cuda X)" when the fused kernels of
    `film._cuda` import (and `ops.CUDA_KERNELS` is on), else "reference (why)". Never raises."""
    from phos_dask.film import ops

    if not ops.CUDA_KERNELS:
        return "reference (PHOS_CUDA_KERNELS=0)"
    try:
        from phos_dask.film import _cuda  # noqa: F401
    except Exception as e:
        return f"reference ({_line(e)})"
    return f"fused (numba-cuda {_version('numba-cuda') or '?'})"


def _missing(e: BaseException, module: str) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == module


def _line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text


def choose(requested: str, devices: Devices) -> tuple[str, str]:
    """("gpu" | "cpu", why) for `--device requested`. Raises DeviceError when "gpu" is asked for and cannot
    be had; "auto" takes the GPUs when CuPy sees one and dask-cuda imports, else the CPU."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu", "asked for"
    problem = devices.gpu_problem()
    if problem is None:
        names = ", ".join(sorted({g.name for g in devices.gpus}))
        return "gpu", f"{len(devices.gpus)} GPU(s): {names}"
    if requested == "gpu":
        raise DeviceError(f"--device gpu: {problem}")
    return "cpu", problem


def gpu_tile(free_bytes: int, halo: int, is_color: bool, largest: int = 8192) -> int:
    """The largest tile side (multiple of 64, at least 256) whose padded window's estimated device memory
    stays within GPU_MEMORY_SHARE of `free_bytes`; `largest` caps it."""
    per_px = GPU_BYTES_PER_PX["color" if is_color else "bw"]
    budget = GPU_MEMORY_SHARE * free_bytes
    side = int((budget / per_px) ** 0.5) - 2 * halo
    return max(256, min(largest, side // 64 * 64))


def gpu_whole_limit_px(free_bytes: int, is_color: bool = True) -> int:
    """Pixels of the largest image one GPU task renders whole within GPU_MEMORY_SHARE of `free_bytes`."""
    return int(GPU_MEMORY_SHARE * free_bytes / GPU_BYTES_PER_PX["color" if is_color else "bw"])


def free_gpu_bytes() -> int | None:
    """Free memory of this worker's GPU (run on each worker), or None without one."""
    if cupy_accelerator() is None:
        return None
    import cupy

    return int(cupy.cuda.runtime.memGetInfo()[0])


def sized_for_gpus(cfg: JobConfig, client) -> JobConfig:
    """Tiles and the whole-image limit sized from the GPU workers' free memory (the smallest of them):
    an estimated window of at most GPU_MEMORY_SHARE of it (halo taken as 128 px)."""
    import dataclasses

    free = [b for b in client.run(free_gpu_bytes).values() if b]
    if not free:
        return cfg
    least = min(free)
    return dataclasses.replace(cfg, tile=min(cfg.tile, gpu_tile(least, 128, True)),
                               whole_limit_mp=min(cfg.whole_limit_mp, gpu_whole_limit_px(least) / 1e6))


@dataclass(frozen=True)
class Accelerator:
    """An array namespace on a device and the moves to and from it: CuPy in production; the tests build one
    over array_api_strict with a memory limit standing in for the GPU's."""

    name: str
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]
    out_of_memory: tuple[type[BaseException], ...]
    release: Callable[[], None] = lambda: None


_CUPY: list[Accelerator | None] = []


def cupy_accelerator() -> Accelerator | None:
    """CuPy on this process's current GPU, or None when there is none (cached per process)."""
    if not _CUPY:
        acc = None
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
                name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

                def release() -> None:
                    cupy.get_default_memory_pool().free_all_blocks()
                    cupy.get_default_pinned_memory_pool().free_all_blocks()

                acc = Accelerator(f"gpu ({name})", cupy.asarray, cupy.asnumpy,
                                  (cupy.cuda.memory.OutOfMemoryError,), release)
        except Exception:
            acc = None
        _CUPY.append(acc)
    return _CUPY[0]


def accelerator(kind: str) -> Accelerator | None:
    """What a task of a job with `--device kind` ("cpu" | "gpu", see `choose`) renders on: the worker's GPU
    through CuPy for "gpu" when it has one, else None (the CPU kernels)."""
    return cupy_accelerator() if kind == "gpu" else None


def render_on(accelerator: Accelerator | None, window: np.ndarray, origin: tuple[int, int],
              shape: tuple[int, int], box: tuple[int, int, int, int], plan) -> tuple[np.ndarray, str, bool]:
    """`render_region` on the accelerator when there is one, else on the CPU, in the output arrays' layout
    (C, h, w); a device out-of-memory error reruns the region on the CPU path. Returns (output on the host,
    where it ran, whether it fell back)."""
    from phos_dask.film.pipeline import render_region

    if accelerator is not None:
        try:
            out = render_region(accelerator.to_device(window), origin, shape, box, plan, planar=True)
            return accelerator.to_host(out), accelerator.name, False
        except accelerator.out_of_memory:
            accelerator.release()
            return render_region(window, origin, shape, box, plan, planar=True), "cpu (GPU out of memory)", True
    return render_region(window, origin, shape, box, plan, planar=True), "cpu", False
