#!/usr/bin/env bash
# Reconstruct on a local Dask cluster of K workers (started and stopped by hpc-pt itself).
#
#   launch/dask_local.sh K DATA.h5 OUT.zarr [hpc-pt reconstruct options ...]
#   launch/dask_local.sh 4 data.h5 recon.zarr --method apt --iterations 50
#
# Runs  python -m hpc_pt.cli reconstruct DATA --backend dask --workers K --out OUT [options]
# To use workers that are already running (launch/dask_scheduler.sh, slurm/dask_jobqueue.py), pass
# --scheduler tcp://HOST:PORT instead of using this script.
#
# Environment:
#   PYTHON           interpreter with hpc-pt installed (pip install ".[dask]" from a checkout) installed [python3]
#   OMP_NUM_THREADS  threads per worker for FFTs / NUFFTs [1]
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") K DATA.h5 OUT.zarr [hpc-pt reconstruct options ...]" >&2
    echo "  e.g. $(basename "$0") 4 data.h5 recon.zarr --method apt --iterations 50" >&2
    exit 2
}
die() { echo "error: $*" >&2; exit 2; }

case ${1:-} in -h | --help) usage ;; esac
[[ $# -ge 3 ]] || usage
workers=$1 data=$2 out=$3
shift 3
[[ $workers =~ ^[1-9][0-9]*$ ]] || die "K must be a positive integer (number of Dask workers), got '$workers'"
[[ -e $data ]] || die "input '$data' does not exist"

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" > /dev/null || die "python '$PYTHON' not found; set PYTHON=/path/to/python"
"$PYTHON" -c "import hpc_pt" 2> /dev/null || die "$PYTHON cannot import hpc_pt; pip install \".[dask]\" from the hpc-pt checkout"
"$PYTHON" -c "import distributed" 2> /dev/null || die "Dask is not installed; pip install \".[dask]\" from the hpc-pt checkout"
"$PYTHON" -m hpc_pt.cli reconstruct --help | grep -q -- '--workers' ||
    die "this hpc-pt has no Dask backend yet ('hpc-pt reconstruct --help' lists no --workers); update hpc-pt or use launch/mpi_local.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "+ $PYTHON -m hpc_pt.cli reconstruct $data --backend dask --workers $workers --out $out $*" >&2
exec "$PYTHON" -m hpc_pt.cli reconstruct "$data" --backend dask --workers "$workers" --out "$out" "$@"
