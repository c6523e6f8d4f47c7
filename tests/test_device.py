"""Device selection and the GPU out-of-memory fallback, on machines without a GPU: the rules are pure
functions of what the hardware probe found (the probe is the only thing replaced, by a `Devices` record),
and the fallback runs the real model on a real second array namespace (array_api_strict) whose memory
limit stands in for a GPU's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phos_dask import Settings, make_plan
from phos_dask.device import (
    GPU,
    GPU_MEMORY_SHARE,
    Accelerator,
    DeviceError,
    Devices,
    choose,
    gpu_tile,
    gpu_whole_limit_px,
    probe,
    render_on,
)
from phos_dask.film.pipeline import render_region

xs = pytest.importorskip("array_api_strict")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
H100 = GPU(0, "NVIDIA H100 80GB HBM3", 85_000_000_000, 84_000_000_000, "9.0")
WITH_GPU = Devices(cupy="13.6.0", cupy_error=None, gpus=(H100,), driver="12.8", runtime="12.8",
                   dask_cuda="26.10.0", dask_cuda_error=None)


def test_auto_takes_the_gpus_when_cupy_sees_one_and_dask_cuda_imports():
    assert choose("auto", WITH_GPU) == ("gpu", "1 GPU(s): NVIDIA H100 80GB HBM3")
    assert choose("gpu", WITH_GPU)[0] == "gpu"
    assert choose("cpu", WITH_GPU) == ("cpu", "asked for")


@pytest.mark.parametrize(("devices", "why"), [
    (Devices(), "CuPy is not installed"),
    (Devices(cupy="13.6.0", cupy_error=None, probe_error="CUDARuntimeError: cudaErrorNoDevice"),
     "CuPy cannot reach a GPU: CUDARuntimeError"),
    (Devices(cupy="13.6.0", cupy_error=None), "CuPy sees no CUDA device"),
    (Devices(cupy="13.6.0", cupy_error=None, gpus=(H100,),
             dask_cuda_error="dask-cuda cannot be imported: ImportError: cannot import name 'x' from 'distributed'"),
     "dask-cuda cannot be imported"),
])
def test_without_a_usable_gpu_auto_runs_on_the_cpu_and_gpu_is_refused_with_the_reason(devices, why):
    device, reason = choose("auto", devices)
    assert device == "cpu" and why in reason
    with pytest.raises(DeviceError, match=f"--device gpu: {why}"):
        choose("gpu", devices)


def test_the_probe_on_this_machine_says_why_no_gpu_is_used():
    found = probe()
    if found.gpu_problem() is None:
        pytest.skip("this machine has a usable GPU")
    assert found.gpu_problem() and "\n" not in found.gpu_problem()


def test_gpu_tiles_are_sized_from_free_device_memory():
    for free in (2e9, 8e9, 40e9, 80e9):
        for halo, colour in ((16, True), (120, True), (120, False)):
            tile = gpu_tile(int(free), halo, colour)
            assert tile % 64 == 0 and 256 <= tile <= 8192
            window = (tile + 2 * halo) ** 2 * (96 if colour else 48)
            assert window <= GPU_MEMORY_SHARE * free or tile == 256
    assert gpu_tile(int(2e9), 64, True) < gpu_tile(int(20e9), 64, True)
    assert gpu_whole_limit_px(int(80e9)) * 96 <= GPU_MEMORY_SHARE * 80e9


class _Full(MemoryError):
    """The stand-in device's out-of-memory error."""


def strict_device(capacity_bytes: int) -> Accelerator:
    def to_device(a: np.ndarray):
        if a.nbytes * 30 > capacity_bytes:  # the render needs many times its input
            raise _Full(f"{a.nbytes * 30} bytes wanted, {capacity_bytes} free")
        return xs.asarray(a)

    return Accelerator("strict device", to_device, np.asarray, (_Full,))


@pytest.fixture(scope="module")
def region(small_photo):
    image = np.ascontiguousarray(small_photo[:120, :160])
    st = Settings(film="Portra400", seed=5, image_key="k", dtype="uint16")
    return image, (0, 0), image.shape[:2], (0, 120, 0, 160), make_plan(st, image.shape[:2])


def test_a_region_that_fits_runs_on_the_device(region):
    out, used, fell_back = render_on(strict_device(10**9), *region)
    assert used == "strict device" and not fell_back
    assert out.shape == (3, 120, 160)  # the output arrays' layout (C, h, w)
    assert np.abs(out.astype(np.int64) - render_region(*region, planar=True)).max() <= 1


def test_out_of_device_memory_reruns_the_region_on_the_cpu_with_the_cpu_output(region):
    out, used, fell_back = render_on(strict_device(10**5), *region)
    assert fell_back and used == "cpu (GPU out of memory)"
    np.testing.assert_array_equal(out, render_region(*region, planar=True))


def test_a_job_counts_its_gpu_fallbacks_in_the_report(tmp_path, small_photo, monkeypatch):
    """A whole-image task on a 'GPU' too small for it: the image is complete, equals the CPU render, and the
    result says where it ran and counts the fallback."""
    import zarr
    from PIL import Image

    from phos_dask import device
    from phos_dask.render import render
    from phos_dask.sources import discover
    from phos_dask.tasks import JobConfig, process_image

    Image.fromarray(small_photo).save(tmp_path / "a.png")
    monkeypatch.setattr(device, "cupy_accelerator", lambda: strict_device(10**5))
    item = discover(str(tmp_path / "a.png"))[0]
    cfg = JobConfig(str(tmp_path / "o.zarr"), Settings(film="Portra400", dtype="uint16"), device="gpu")
    result = process_image(cfg, item)
    assert result.status == "done" and result.gpu_oom_fallbacks == 1
    assert result.device == "cpu (GPU out of memory)"
    group = zarr.open_group(str(tmp_path / "o.zarr" / "a.png"), mode="r")  # the job writes the root
    assert group.attrs["phos"]["device"].startswith("cpu (GPU out of memory) on ")
    expected = render(small_photo, Settings(film="Portra400", dtype="uint16", image_key="a.png"))
    np.testing.assert_array_equal(np.moveaxis(group["0"][...], 0, -1), expected)


def test_info_lists_versions_devices_and_why_no_gpu_is_used():
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "info", "--json"], capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["versions"]["phos_dask"] and info["versions"]["dask"] and info["versions"]["numpy"]
    assert isinstance(info["gpus"], list)
    if info["gpu_problem"] is not None:
        text = subprocess.run([sys.executable, "-m", "phos_dask", "info"], capture_output=True, text=True,
                              env=ENV, timeout=60).stdout
        assert f"GPU not used: {info['gpu_problem']}" in text.splitlines()


def test_run_device_gpu_without_a_gpu_is_one_line(tmp_path, small_photo):
    from PIL import Image

    if probe().gpu_problem() is None:
        pytest.skip("this machine has a usable GPU")
    (tmp_path / "src").mkdir()
    Image.fromarray(small_photo).save(tmp_path / "src" / "a.png")
    proc = subprocess.run([sys.executable, "-m", "phos_dask", "run", str(tmp_path / "src"), "--out",
                           str(tmp_path / "o.zarr"), "--film", "Portra400", "--device", "gpu"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phos_dask: error: --device gpu: ")
