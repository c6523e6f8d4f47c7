#!/usr/bin/env bash
# The GPU check (issues 6 and 17), for a machine with an NVIDIA H100/H200, CuPy, numba-cuda and no network.
#
#   bash bench/gpu_check.sh            # from the repository root; results in bench/results/ (or $OUT)
#
# 1. Missing Python packages (dask, distributed, dask-cuda, rmm, zarr, …) are installed from wheels carried in
#    the repository's ignored .whl/ folder (fill it beforehand with bench/fetch_wheels.sh); only wheels of
#    distributions not installed already, so the machine's own numba, numba-cuda and CuPy stay; nothing is
#    fetched.
# 2. The GPU tests, on the real device: tests/test_cuda_kernels.py (every fused kernel vs the CPU kernel),
#    tests/test_gpu.py, tests/test_device.py, tests/test_array_api.py.
# 3. bench/gpu_check.py: fused GPU vs CPU on 3 photographs × 3 stocks, the model's GP/s from uint16 in device
#    memory at 24 MP and 100 MP (and the reference GPU ops and the CPU cores at 24 MP), no host
#    synchronisation inside a render, and a job end to end (files → Zarr) on LocalCUDACluster with an RMM
#    pool vs a CPU cluster; writes gpu-<date>-<device>.json (after every step, so a kill keeps the rest).
# Budget: an estimate of 5 to 7 minutes on an H200 from a bare machine (never run yet; the steps time
# themselves, see the JSON); each part has its own time limit, so the whole stays under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-bench/results}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$(date +%s)

if [ -d .whl ]; then
    # wheels whose distribution is not installed yet (wheel names normalise '-' to '_')
    todo=$("$PY" - <<'EOF'
import importlib.metadata, pathlib, re
have = {re.sub(r"[-_.]+", "_", d.metadata["Name"]).lower() for d in importlib.metadata.distributions()}
for w in sorted(pathlib.Path(".whl").glob("*.whl")):
    if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() not in have:
        print(w)
EOF
)
    if [ -n "$todo" ]; then
        echo "installing from .whl/ (no index, no dependency resolution):" $todo
        # shellcheck disable=SC2086
        "$PY" -m pip install -q --no-index --no-deps --no-compile $todo || echo "installing from .whl/ failed"
    fi
fi
"$PY" - <<'EOF'
import importlib.util
wanted = {"cupy": "cupy", "numba": "numba", "numba_cuda": "numba-cuda", "dask": "dask", "distributed": "distributed",
          "dask_cuda": "dask-cuda", "rmm": "rmm-cu13", "zarr": "zarr", "numcodecs": "numcodecs", "tifffile": "tifffile",
          "fsspec": "fsspec", "imagecodecs": "imagecodecs", "cv2": "opencv-python-headless", "PIL": "pillow",
          "psutil": "psutil", "array_api_compat": "array-api-compat", "array_api_strict": "array-api-strict",
          "pytest": "pytest"}
missing = [dist for mod, dist in wanted.items() if importlib.util.find_spec(mod) is None]
print("still missing:", " ".join(missing) if missing else "nothing")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$OUT/gpu-smi.txt"

timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_gpu.py tests/test_device.py \
    tests/test_array_api.py 2>&1 | tee "$OUT/gpu-tests.log" || echo "GPU tests failed or timed out (see $OUT/gpu-tests.log)"
echo "tests done: $(( $(date +%s) - start )) s"
timeout 420 "$PY" bench/gpu_check.py "$@" || echo "gpu_check.py failed or timed out (the JSON holds the steps done)"
echo "gpu_check.sh: $(( $(date +%s) - start )) s"
