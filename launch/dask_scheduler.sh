#!/usr/bin/env bash
# Start a Dask scheduler and K workers on this machine, print the scheduler address, and keep them
# running until Ctrl-C (or SIGTERM), which stops them all. Use the address with --scheduler:
#
#   launch/dask_scheduler.sh 4 &                  # prints  scheduler: tcp://HOST:8786
#   hpc-pt reconstruct data.h5 --backend dask --scheduler tcp://HOST:8786 --out recon.zarr
#
#   launch/dask_scheduler.sh K [PORT]             # PORT defaults to 8786
#
# Workers on other machines can join the same scheduler:
#   python -m distributed.cli.dask_worker tcp://HOST:PORT --nworkers K --nthreads 1
#
# Environment:
#   PYTHON          interpreter with hpc-pt installed (pip install ".[dask]" from a checkout) installed [python3]
#   HOST            address the scheduler listens on and advertises [this machine's hostname;
#                   127.0.0.1 keeps it private to this machine]
#   THREADS         threads per worker [1]
#   MEMORY_LIMIT    memory limit per worker, e.g. 8GB [auto: machine memory / K]
#   DASHBOARD       dashboard address [:8787]
#   SCHEDULER_FILE  where the connection information is written [$LOG_DIR/scheduler.json]
#   LOG_DIR         scheduler and worker logs [${TMPDIR:-/tmp}/hpc-pt-dask-$$]
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") K [PORT]   (K workers; scheduler on PORT, default 8786)" >&2
    exit 2
}
die() { echo "error: $*" >&2; exit 2; }

case ${1:-} in -h | --help) usage ;; esac
[[ $# -ge 1 && $# -le 2 ]] || usage
workers=$1 port=${2:-8786}
[[ $workers =~ ^[1-9][0-9]*$ ]] || die "K must be a positive integer (number of Dask workers), got '$workers'"
if ! [[ $port =~ ^[0-9]+$ ]] || (( port > 65535 )); then
    die "PORT must be a TCP port number, got '$port'"
fi

PYTHON=${PYTHON:-python3}
HOST=${HOST:-$(hostname)}
THREADS=${THREADS:-1}
MEMORY_LIMIT=${MEMORY_LIMIT:-auto}
DASHBOARD=${DASHBOARD:-:8787}
LOG_DIR=${LOG_DIR:-${TMPDIR:-/tmp}/hpc-pt-dask-$$}
SCHEDULER_FILE=${SCHEDULER_FILE:-$LOG_DIR/scheduler.json}
command -v "$PYTHON" > /dev/null || die "python '$PYTHON' not found; set PYTHON=/path/to/python"
"$PYTHON" -c "import distributed" 2> /dev/null || die "Dask is not installed; pip install \".[dask]\" from the hpc-pt checkout"
mkdir -p "$LOG_DIR"
rm -f "$SCHEDULER_FILE"

pids=()
cleanup() {
    trap - EXIT INT TERM
    if (( ${#pids[@]} )); then
        echo "stopping the Dask scheduler and workers" >&2
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # workers first, then the scheduler
            kill "${pids[i]}" 2> /dev/null || true
            wait "${pids[i]}" 2> /dev/null || true
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PYTHON" -m distributed.cli.dask_scheduler --host "$HOST" --port "$port" --dashboard-address "$DASHBOARD" \
    --scheduler-file "$SCHEDULER_FILE" > "$LOG_DIR/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
    [[ -s $SCHEDULER_FILE ]] && break
    kill -0 "${pids[0]}" 2> /dev/null || die "the scheduler stopped; see $LOG_DIR/scheduler.log:
$(tail -n 5 "$LOG_DIR/scheduler.log")"
    sleep 0.5
done
[[ -s $SCHEDULER_FILE ]] || die "the scheduler did not start within 30 s; see $LOG_DIR/scheduler.log"
address=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$SCHEDULER_FILE")

"$PYTHON" -m distributed.cli.dask_worker "$address" --nworkers "$workers" --nthreads "$THREADS" \
    --memory-limit "$MEMORY_LIMIT" --local-directory "$LOG_DIR" > "$LOG_DIR/workers.log" 2>&1 &
pids+=($!)
"$PYTHON" - "$address" "$workers" << 'PY' || die "the workers did not connect within 60 s; see $LOG_DIR/workers.log"
import sys
from distributed import Client
with Client(sys.argv[1], timeout=30) as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=60)
PY

echo "scheduler: $address"
echo "workers:   $workers x $THREADS thread(s); dashboard $DASHBOARD; logs in $LOG_DIR; Ctrl-C stops them"
echo "use:       hpc-pt reconstruct DATA.h5 --backend dask --scheduler $address --out RECON.zarr"
wait "${pids[@]}"
