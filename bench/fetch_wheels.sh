#!/usr/bin/env bash
# Fill the ignored .whl/ folder with the wheels bench/gpu_check.sh installs on a GPU machine that has no
# network. The lent H200 image (see the device notes' KINDS.md) already has CuPy (cupy-cuda13x), NumPy,
# numba, numba-cuda, cuda-bindings/cuda-core/cuda-pathfinder, OpenCV, Pillow and pytest, so those are not
# carried (gpu_check.sh installs only wheels of distributions the machine lacks). Run here, then carry .whl/.
#   bash bench/fetch_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU machine's Python
#   WITH_NUMBA_CUDA=1 bash bench/fetch_wheels.sh    # also numba-cuda and its pure dependencies, for a
#                                                   # machine without them (it must have numba 0.60+)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
get() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl "$@"
}
# --no-deps: exactly these; pins as in pyproject's gpu extra. rmm-cu13 (+ librmm-cu13, rapids-logger; about
# 6 MB): the RMM pool of the LocalCUDACluster worker, CUDA 13 like the machine's CuPy.
get "dask==2026.7.1" "distributed==2026.7.1" "dask-cuda==26.10.*" "rapids-dask-dependency==26.10.*" \
    "rmm-cu13==26.10.*" "librmm-cu13==26.10.*" "rapids-logger==0.3.*" \
    zarr numcodecs donfig crc32c tifffile fsspec imagecodecs psutil array-api-compat array-api-strict \
    pytest pluggy iniconfig cloudpickle toolz partd locket msgpack tornado sortedcontainers tblib zict \
    pyyaml jinja2 markupsafe click urllib3 packaging typing-extensions nvidia-ml-py pynvml
if [ "${WITH_NUMBA_CUDA:-0}" = 1 ]; then
    get "numba-cuda==0.30.*" "cuda-core<2" "cuda-pathfinder<2"
fi
du -sh .whl
