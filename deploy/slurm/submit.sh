#!/usr/bin/env bash
# One phos_dask job on SLURM: this batch job runs the Dask scheduler and `python -m phos_dask run`, and
# submits the Dask workers as further SLURM jobs (dask-jobqueue, configured by deploy/slurm/jobqueue.yaml).
# They are cancelled when the run ends, is cancelled (scancel) or reaches this job's time limit.
#
#   sbatch deploy/slurm/submit.sh SOURCE OUT.zarr --film Portra400 [more `run` flags]
#
# Submit from the repository root (or set PHOS_DASK_CONFIG), with phos_dask's venv active (sbatch passes
# the environment on) or PYTHON set. SOURCE and OUT must be on storage every node sees (a shared file
# system, or s3://…), given as absolute paths. Settings, from the environment:
#   PHOS_DASK_CONFIG  dask-jobqueue configuration (default deploy/slurm/jobqueue.yaml)
#   PHOS_DASK_KIND    cpu or gpu: which workers (default cpu)
#   PHOS_DASK_JOBS    worker jobs to submit (default 4)
#   PHOS_DASK_SET     space-separated KEY=VALUE overrides of the configuration, e.g. "queue=debug account=proj1"
# e.g. PHOS_DASK_KIND=gpu PHOS_DASK_JOBS=2 sbatch deploy/slurm/submit.sh /archive /scratch/a.zarr --film Portra400
#
# This job only coordinates: little CPU and memory, but it must outlive the whole run (its time limit ends
# the run, SIGTERM 2 minutes before it so the worker jobs are cancelled; a rerun skips finished images).
#SBATCH --job-name=phos-dask-run
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=1-00:00:00
#SBATCH --output=phos-dask-run-%j.out
#SBATCH --signal=B:TERM@120
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: sbatch deploy/slurm/submit.sh SOURCE OUT.zarr --film NAME [run flags]" >&2
    exit 2
fi
source_path=$1
out_path=$2
shift 2

python=${PYTHON:-$(command -v python || command -v python3 || true)}
[ -n "$python" ] || { echo "submit.sh: error: no python: activate phos_dask's venv or set PYTHON" >&2; exit 2; }
config=${PHOS_DASK_CONFIG:-deploy/slurm/jobqueue.yaml}

sets=()
read -r -a kvs <<<"${PHOS_DASK_SET:-}"
for kv in ${kvs[@]+"${kvs[@]}"}; do
    sets+=(--set "$kv")
done

# exec: SLURM's SIGTERM (scancel, time limit) reaches Python, which cancels the worker jobs on its way out.
exec "$python" -m phos_dask.jobqueue --config "$config" --kind "${PHOS_DASK_KIND:-cpu}" \
    --jobs "${PHOS_DASK_JOBS:-4}" ${sets[@]+"${sets[@]}"} \
    run "$source_path" --out "$out_path" "$@"
