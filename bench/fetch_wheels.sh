#!/usr/bin/env bash
# Fill the ignored .whl/ folder with the wheels bench/gpu_check.sh installs on a GPU machine that has no
# network (it has CuPy, NumPy, numba, OpenCV and Pillow). Run here, then carry .whl/ with the check.
#   bash bench/fetch_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU machine's Python
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
# --no-deps: exactly these (the GPU machine already has the heavy ones); pins as in pyproject's gpu extra
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl \
    "dask==2026.7.1" "distributed==2026.7.1" "dask-cuda==26.10.*" "rapids-dask-dependency==26.10.*" \
    zarr numcodecs donfig crc32c tifffile fsspec imagecodecs psutil array-api-compat array-api-strict \
    pytest pluggy iniconfig cloudpickle toolz partd locket msgpack tornado sortedcontainers tblib zict \
    pyyaml jinja2 markupsafe click urllib3 packaging typing-extensions nvidia-ml-py pynvml
du -sh .whl
