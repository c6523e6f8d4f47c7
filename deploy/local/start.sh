#!/usr/bin/env bash
# Start a Dask scheduler and workers on this machine, in the background, for
#   python -m phos_dask run SOURCE --out OUT.zarr --film NAME --scheduler-file RUN_DIR/scheduler.json
# Stop them with deploy/local/stop.sh --dir RUN_DIR.
#
# Usage: deploy/local/start.sh [--workers N] [--gpu] [--dir RUN_DIR] [--host HOST] [--port PORT]
#                              [--dashboard-address HOST:PORT|none] [--memory-limit SIZE] [--timeout SECONDS]
#                              [-- EXTRA WORKER ARGS...]
#   --workers N          CPU worker processes of one thread each (default: one per core)
#   --gpu                one `dask cuda worker` instead: one single-threaded worker per visible GPU
#                        (choose them with CUDA_VISIBLE_DEVICES); needs phos_dask's `gpu` extra
#   --dir RUN_DIR        scheduler.json, *.pid and logs/ go here (default: ./dask-cluster)
#   --host HOST          address the scheduler and workers listen on (default 127.0.0.1). Anything else
#                        exposes an unauthenticated scheduler, which runs code it is sent: trusted networks only
#   --port PORT          scheduler port (default 0: a free one; the address is in scheduler.json)
#   --dashboard-address  scheduler dashboard (default HOST:8787; `none`: no dashboard)
#   --memory-limit SIZE  per worker (default: the machine's memory, or its cgroup limit, shared evenly
#                        between the CPU workers; dask-cuda's own default for --gpu)
#   --timeout SECONDS    how long to wait for the scheduler and the workers (default 120)
#   -- ARGS              passed on to every worker command, e.g. -- --rmm-pool-size 24GB
# Python: $PYTHON if set, else `python` (or `python3`) on PATH; it must import phos_dask (activate the venv).
set -euo pipefail

die() { echo "start.sh: error: $*" >&2; exit 2; }

workers=""
gpu=0
run_dir="dask-cluster"
host="127.0.0.1"
port=0
dashboard=""
memory_limit=""
timeout=120
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) [ $# -ge 2 ] || die "--workers needs a number"; workers=$2; shift 2 ;;
        --gpu) gpu=1; shift ;;
        --dir) [ $# -ge 2 ] || die "--dir needs a directory"; run_dir=$2; shift 2 ;;
        --host) [ $# -ge 2 ] || die "--host needs an address"; host=$2; shift 2 ;;
        --port) [ $# -ge 2 ] || die "--port needs a number"; port=$2; shift 2 ;;
        --dashboard-address) [ $# -ge 2 ] || die "--dashboard-address needs HOST:PORT or none"; dashboard=$2; shift 2 ;;
        --memory-limit) [ $# -ge 2 ] || die "--memory-limit needs a size"; memory_limit=$2; shift 2 ;;
        --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; timeout=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, not '$port'"
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, not '$timeout'"
if [ -n "$workers" ]; then
    [ "$gpu" -eq 0 ] || die "--workers does not apply with --gpu (one worker per visible GPU; use CUDA_VISIBLE_DEVICES)"
    [[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive number, not '$workers'"
fi
dashboard=${dashboard:-$host:8787}

python=${PYTHON:-$(command -v python || command -v python3 || true)}
[ -n "$python" ] || die "no python on PATH: activate phos_dask's venv or set PYTHON"

mkdir -p "$run_dir/logs" "$run_dir/scratch"
run_dir=$(cd "$run_dir" && pwd -P)
sched_file="$run_dir/scheduler.json"

# A cluster already running from RUN_DIR? (pid files whose process still has RUN_DIR's scheduler file on its
# command line; stale ones, from a crash or a reboot, are removed.)
for pid_file in "$run_dir"/*.pid; do
    [ -e "$pid_file" ] || continue
    pid=$(cat "$pid_file" 2>/dev/null || true)
    args=""
    [[ "$pid" =~ ^[0-9]+$ ]] && args=$(ps -ww -o args= -p "$pid" 2>/dev/null || true)
    if [[ "$args" == *"$sched_file"* ]]; then
        die "a cluster is already running from $run_dir (pid $pid); stop it with: $(dirname "$0")/stop.sh --dir $run_dir"
    fi
    rm -f "$pid_file"
done
rm -f "$sched_file"

# Settings from phos_dask itself: the workers' environment (phos_dask.localworkers.WORKER_ENV) and the memory to share.
settings=$("$python" - "${workers:-0}" <<'EOF'
import json, os, sys
try:
    from phos_dask.localworkers import WORKER_ENV
except ImportError as e:
    sys.exit(f"start.sh: error: {sys.executable} cannot import phos_dask ({e}); activate its venv or set PYTHON")
from distributed.system import MEMORY_LIMIT
n = int(sys.argv[1]) or os.cpu_count() or 1
print(n)
print(MEMORY_LIMIT // n)
print(json.dumps(WORKER_ENV))
EOF
) || exit 2
{ read -r default_workers; read -r share; read -r worker_env; } <<<"$settings"
workers=${workers:-$default_workers}

started=()
cleanup_on_failure() {
    local status=$?
    if [ "$status" -ne 0 ] && [ "${#started[@]}" -gt 0 ]; then
        echo "start.sh: stopping what was started" >&2
        "$(dirname "$0")/stop.sh" --dir "$run_dir" >&2 || true
    fi
}
trap cleanup_on_failure EXIT

# Each process in its own process group (job control), so stop.sh can clear up a worker's children too.
set -m
launch() {  # launch NAME COMMAND...: in the background, detached from the terminal; NAME.pid and logs/NAME.log
    local name=$1
    shift
    nohup "$@" >"$run_dir/logs/$name.log" 2>&1 </dev/null &
    echo "$!" >"$run_dir/$name.pid"
    started+=("$name")
}

dashboard_args=(--dashboard-address "$dashboard")
[ "$dashboard" = "none" ] && dashboard_args=(--no-dashboard)
launch scheduler "$python" -m dask scheduler --scheduler-file "$sched_file" --host "$host" --port "$port" \
    "${dashboard_args[@]}"

deadline=$((SECONDS + timeout))
until [ -s "$sched_file" ]; do
    if ! kill -0 "$(cat "$run_dir/scheduler.pid")" 2>/dev/null; then
        tail -n 20 "$run_dir/logs/scheduler.log" >&2
        die "the scheduler exited (log: $run_dir/logs/scheduler.log)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "the scheduler did not start within ${timeout}s (log: $run_dir/logs/scheduler.log)"
    sleep 0.2
done

# Dask's nanny sets distributed.nanny.pre-spawn-environ in each worker process's environment.
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="$worker_env"
common=(--scheduler-file "$sched_file" --host "$host" --nthreads 1 --no-dashboard
        --local-directory "$run_dir/scratch")
if [ "$gpu" -eq 1 ]; then
    gpu_memory=()
    [ -z "$memory_limit" ] || gpu_memory=(--memory-limit "$memory_limit")
    launch gpu-worker "$python" -m dask cuda worker "${common[@]}" ${gpu_memory[@]+"${gpu_memory[@]}"} ${extra[@]+"${extra[@]}"}
    expect=1
else
    for i in $(seq 1 "$workers"); do
        launch "worker-$i" "$python" -m dask worker "${common[@]}" --name "worker-$i" --memory-limit "${memory_limit:-$share}" \
            ${extra[@]+"${extra[@]}"}
    done
    expect=$workers
fi
unset DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON

left=$((deadline - SECONDS))
[ "$left" -gt 0 ] || left=1
if ! "$python" - "$sched_file" "$expect" "$left" <<'EOF'
import sys
from distributed import Client
sched_file, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with Client(scheduler_file=sched_file, timeout=timeout) as client:
        client.wait_for_workers(n, timeout=timeout)
except (OSError, TimeoutError) as e:
    sys.exit(f"start.sh: error: workers did not register: {e}")
EOF
then
    tail -n 5 "$run_dir"/logs/*worker*.log >&2 || true
    die "not all workers started within ${timeout}s (logs: $run_dir/logs/)"
fi

address=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$sched_file")
trap - EXIT
echo "scheduler $address; ${#started[@]} process(es) started; logs in $run_dir/logs/"
echo "run a job:  python -m phos_dask run SOURCE --out OUT.zarr --film Portra400 --scheduler-file $sched_file"
echo "stop:       $(dirname "$0")/stop.sh --dir $run_dir"
