#!/usr/bin/env bash
# The GPU check (issue 6), for a machine with an NVIDIA H100/H200, CuPy installed and no network.
#
#   bash bench/gpu_check.sh            # from the repository root; results in bench/results/ (or $OUT)
#
# 1. Missing Python packages (dask, distributed, zarr, …) are installed from wheels carried in the
#    repository's ignored .whl/ folder (fill it beforehand with bench/fetch_wheels.sh); nothing is fetched.
# 2. The GPU tests: tests/test_gpu.py, tests/test_device.py, tests/test_array_api.py.
# 3. bench/gpu_check.py: GPU vs CPU on 3 photographs × 3 stocks (linear max |Δ| ≤ 1e-4, 16-bit PSNR ≥ 60 dB),
#    the model's GP/s from uint16 already in device memory, the same work on this machine's CPU cores,
#    and a job end to end (files → Zarr) on dask-cuda and on a CPU cluster; writes
#    bench/results/gpu-<date>-<device>.json.
# Budget: under 8 minutes on an H100 (the steps time themselves; see the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-bench/results}
mkdir -p "$OUT"
start=$(date +%s)

missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {"dask": "dask", "distributed": "distributed", "zarr": "zarr", "numcodecs": "numcodecs",
          "tifffile": "tifffile", "fsspec": "fsspec", "imagecodecs": "imagecodecs", "numba": "numba",
          "cv2": "opencv-python-headless", "PIL": "pillow", "psutil": "psutil",
          "array_api_compat": "array-api-compat", "array_api_strict": "array-api-strict", "pytest": "pytest",
          "dask_cuda": "dask-cuda", "bokeh": "bokeh"}
print(" ".join(dist for mod, dist in wanted.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ -d .whl ]; then
        echo "missing: $missing; installing the wheels in .whl/ (no index, no dependency resolution)"
        "$PY" -m pip install -q --no-index --no-deps .whl/*.whl || echo "installing from .whl/ failed"
    else
        echo "missing and no .whl/ folder to install from: $missing"
    fi
fi

"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device.py tests/test_array_api.py \
    2>&1 | tee "$OUT/gpu-tests.log" || echo "GPU tests failed (see $OUT/gpu-tests.log)"
"$PY" bench/gpu_check.py
echo "gpu_check.sh: $(( $(date +%s) - start )) s"
