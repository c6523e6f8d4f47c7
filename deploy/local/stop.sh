#!/usr/bin/env bash
# Stop the scheduler and workers that deploy/local/start.sh started from RUN_DIR.
#
# Usage: deploy/local/stop.sh [--dir RUN_DIR] [--timeout SECONDS]
#   --dir RUN_DIR      the directory given to start.sh (default: ./dask-cluster)
#   --timeout SECONDS  how long each group (workers, then the scheduler) has to exit after SIGTERM before
#                      SIGKILL (default 30)
# Workers go first (a worker whose scheduler is already gone waits to reconnect), then the scheduler. A pid
# is signalled only while its process still has RUN_DIR/scheduler.json on its command line, so a pid reused
# by another program since is left alone. Each process's group (a worker's own worker processes) is cleared
# too. The pid files and scheduler.json are removed; logs/ is kept. Stopping a stopped cluster does nothing.
set -euo pipefail

die() { echo "stop.sh: error: $*" >&2; exit 2; }

run_dir="dask-cluster"
timeout=30
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || die "--dir needs a directory"; run_dir=$2; shift 2 ;;
        --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; timeout=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, not '$timeout'"
[ -d "$run_dir" ] || { echo "stop.sh: nothing to stop ($run_dir does not exist)"; exit 0; }
run_dir=$(cd "$run_dir" && pwd -P)
sched_file="$run_dir/scheduler.json"

ours() {  # ours PID: the process is alive and is one of this cluster's (not `ps | grep -q`: under pipefail,
    local args  # grep quitting early can fail the pipeline with ps's SIGPIPE)
    args=$(ps -ww -o args= -p "$1" 2>/dev/null) || return 1
    [[ "$args" == *"$sched_file"* ]]
}
group_alive() {  # group_alive PGID: some process of the group is left
    kill -0 -- "-$1" 2>/dev/null
}

stopped=0
stop_group() {  # stop_group PIDFILE...: SIGTERM each, wait for them and their groups, SIGKILL what is left
    local pids=() pid f
    for f in "$@"; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid"; then
            pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    [ "${#pids[@]}" -gt 0 ] || { rm -f "$@"; return 0; }
    local deadline=$((SECONDS + timeout)) left
    while :; do
        left=()
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null || group_alive "$pid"; then left+=("$pid"); fi
        done
        [ "${#left[@]}" -gt 0 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "stop.sh: ${#left[@]} process group(s) still running after ${timeout}s: SIGKILL" >&2
            for pid in "${left[@]}"; do
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            done
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    stopped=$((stopped + ${#pids[@]}))
    rm -f "$@"
}

shopt -s nullglob
stop_group "$run_dir"/*worker*.pid
stop_group "$run_dir"/scheduler.pid
rm -f "$sched_file"
echo "stop.sh: stopped $stopped process(es) from $run_dir"
