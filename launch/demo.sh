#!/usr/bin/env bash
# Install hpc-pt from this checkout and run the demo (a 48^3 simulated dataset reconstructed with APT;
# about 20 s on 2 cores). Arguments are passed to `hpc-pt demo`.
#
#   launch/demo.sh [--out-dir DIR] [--iterations N] [--force]
#
# Environment:
#   PYTHON  interpreter (Python >= 3.11) to install into [python3]
#   VENV    if set, create (if needed) and use this virtual environment instead of PYTHON's site-packages
#   EXTRAS  extras to install as well, e.g. "mpi,dask" [none]
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") [--out-dir DIR] [--iterations N] [--force]   (hpc-pt demo options)" >&2
    exit 2
}
die() { echo "error: $*" >&2; exit 2; }

case ${1:-} in -h | --help) usage ;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f $root/pyproject.toml ]] || die "$root has no pyproject.toml; run this script from an hpc-pt checkout"

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" > /dev/null || die "python '$PYTHON' not found; install Python >= 3.11 or set PYTHON"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "hpc-pt needs Python >= 3.11, $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())')"
if [[ -n ${VENV:-} ]]; then
    [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
    PYTHON=$VENV/bin/python
fi
spec=$root
[[ -n ${EXTRAS:-} ]] && spec="${root}[${EXTRAS}]"

echo "+ $PYTHON -m pip install $spec" >&2
"$PYTHON" -m pip install "$spec"
echo "+ $PYTHON -m hpc_pt.cli demo $*" >&2
exec "$PYTHON" -m hpc_pt.cli demo "$@"
