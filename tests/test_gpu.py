"""The film model on CuPy (the fused kernels of film/_cuda.py, and the reference ops) computes what the CPU
kernels compute. Skipped without a CUDA GPU and CuPy
(bench/gpu_check.py is the fuller check, run on a GPU machine; its results are in bench/results/)."""

from __future__ import annotations

import numpy as np
import pytest

from phos_dask import Settings, make_plan, render, render_window
from phos_dask.film.pipeline import grain_constants

cp = pytest.importorskip("cupy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device", allow_module_level=True)
except Exception as exc:  # no driver: CUDARuntimeError
    pytest.skip(f"no usable CUDA device ({exc})", allow_module_level=True)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("film", ["Portra400", "Cinestill800T", "HP5Plus400"])
def test_gpu_render_matches_the_cpu(small_photo, film):
    st = Settings(film=film, seed=3, image_key="k", dtype="float32")
    cpu = render(small_photo, st)
    gpu = cp.asnumpy(render(cp.asarray(small_photo), st))
    assert np.abs(cpu - gpu).max() < 2e-5
    codes = np.abs(render(small_photo, st.replace(dtype="uint8")).astype(int)
                   - cp.asnumpy(render(cp.asarray(small_photo), st.replace(dtype="uint8"))).astype(int))
    assert codes.max() <= 1


def test_gpu_region_equals_gpu_whole(small_photo):
    st = Settings(film="Cinestill800T", seed=1)
    g = cp.asarray(small_photo)
    whole = cp.asnumpy(render(g, st))
    H, W = small_photo.shape[:2]
    h = make_plan(st, (H, W)).halo
    box = (40, 200, 100, 333)
    win = (max(0, 40 - h), min(H, 200 + h), max(0, 100 - h), min(W, 333 + h))
    k = grain_constants(g, st)
    assert k == grain_constants(small_photo, st)  # K_c is computed on the host: the same bits from either
    got = cp.asnumpy(render_window(g[win[0] : win[1], win[2] : win[3]], (win[0], win[2]), (H, W), box, st, k))
    np.testing.assert_array_equal(got, whole[40:200, 100:333])


def test_the_grain_hash_gives_the_same_bits_on_the_gpu():
    from phos_dask.film import grain
    from phos_dask.film.ops import namespace

    rows, cols = np.arange(1000, 1300), np.arange(5000, 5400)
    cpu = grain.hash_normal(np, 0x9E3779B97F4A7C15, rows, cols)
    gpu = grain.hash_normal(namespace(cp.zeros(1)), 0x9E3779B97F4A7C15, rows, cols)
    np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)


def test_a_gpu_tile_that_runs_out_of_device_memory_is_rendered_on_the_cpu(small_photo):
    from phos_dask.device import Accelerator, cupy_accelerator, render_on
    from phos_dask.film.pipeline import render_region

    acc = cupy_accelerator()
    assert acc is not None
    st = Settings(film="Portra400", image_key="k", dtype="uint16")
    region = (small_photo, (0, 0), small_photo.shape[:2], (0, 300, 0, 450), make_plan(st, small_photo.shape[:2]))
    out, used, fell_back = render_on(acc, *region)
    assert used.startswith("gpu") and not fell_back

    def full(_):
        raise cp.cuda.memory.OutOfMemoryError(1 << 40, 0)

    full_gpu = Accelerator(acc.name, full, acc.to_host, acc.out_of_memory, acc.release)  # CuPy's own OOM error
    out, used, fell_back = render_on(full_gpu, *region)
    assert fell_back and used == "cpu (GPU out of memory)"
    np.testing.assert_array_equal(out, render_region(*region, planar=True))


def test_cupy_arrays_take_the_fused_kernels_which_match_the_reference_gpu_ops(small_photo, monkeypatch):
    from phos_dask.device import gpu_kernels
    from phos_dask.film import ops

    assert gpu_kernels().startswith("fused"), gpu_kernels()
    st = Settings(film="Cinestill800T", seed=2, image_key="f", dtype="uint16")
    g = cp.asarray(small_photo)
    fused = cp.asnumpy(render(g, st)).astype(int)
    monkeypatch.setattr(ops, "CUDA_KERNELS", False)
    reference = cp.asnumpy(render(g, st)).astype(int)
    assert np.abs(fused - reference).max() <= 1
