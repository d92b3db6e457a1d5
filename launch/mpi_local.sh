#!/usr/bin/env bash
# Reconstruct on P MPI ranks of this machine.
#
#   launch/mpi_local.sh P DATA.h5 OUT.zarr [hpc-pt reconstruct options ...]
#   launch/mpi_local.sh 4 data.h5 recon.zarr --method apt --iterations 50
#
# Runs  mpiexec -n P python -m mpi4py -m hpc_pt.cli reconstruct DATA --backend mpi --out OUT [options]
# Every rank reads only its own frames; rank 0 writes OUT and the PNG next to it. `-m mpi4py` makes an
# uncaught exception on one rank abort the whole job instead of leaving the others waiting.
# Without --method / --iterations / --config the package defaults apply (APT).
#
# Environment:
#   PYTHON        interpreter with hpc-pt and mpi4py installed [python3]
#   MPIEXEC       MPI launcher [mpiexec; `pip install ".[mpi]"` provides MPICH's]
#   MPIEXEC_ARGS  extra launcher arguments, e.g. "--bind-to core" [none]
#   OMP_NUM_THREADS  threads per rank for FFTs / NUFFTs [1]
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") P DATA.h5 OUT.zarr [hpc-pt reconstruct options ...]" >&2
    echo "  e.g. $(basename "$0") 4 data.h5 recon.zarr --method apt --iterations 50" >&2
    exit 2
}
die() { echo "error: $*" >&2; exit 2; }

case ${1:-} in -h | --help) usage ;; esac
[[ $# -ge 3 ]] || usage
ranks=$1 data=$2 out=$3
shift 3
[[ $ranks =~ ^[1-9][0-9]*$ ]] || die "P must be a positive integer (number of MPI ranks), got '$ranks'"
[[ -e $data ]] || die "input '$data' does not exist"
[[ $out == *.zarr || $out == *.zarr/ ]] || die "OUT must be a Zarr store ending in .zarr, got '$out'"

PYTHON=${PYTHON:-python3}
MPIEXEC=${MPIEXEC:-mpiexec}
command -v "$PYTHON" > /dev/null || die "python '$PYTHON' not found; set PYTHON=/path/to/python"
command -v "$MPIEXEC" > /dev/null || die "'$MPIEXEC' not found; pip install \".[mpi]\" from the hpc-pt checkout (MPICH wheel) or load your MPI module"
"$PYTHON" -c "import hpc_pt, mpi4py" 2> /dev/null ||
    die "$PYTHON cannot import hpc_pt and mpi4py; pip install \".[mpi]\" from the hpc-pt checkout"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

read -r -a launcher_args <<< "${MPIEXEC_ARGS:-}"  # a list of words
command=("$MPIEXEC" -n "$ranks" "${launcher_args[@]}" "$PYTHON" -m mpi4py -m hpc_pt.cli reconstruct "$data"
         --backend mpi --out "$out" "$@")
echo "+ ${command[*]}" >&2
exec "${command[@]}"
