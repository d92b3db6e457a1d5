#!/usr/bin/env bash
# GPU validation of hpc-pt (issue 16): install from a checkout without internet, print the GPU and the
# library versions, run the GPU tests, then benchmarks/gpu_bench.py (CPU/GPU equivalence of every method,
# operator and per-iteration times, peak memory against docs/scaling.md, 2 MPI ranks on one GPU).
#
# Preparation, on a machine with internet (wheels for the device's Linux x86_64 CPython):
#   benchmarks/gpu_check.sh --fetch-wheels [--python 3.11] [--preinstalled "numpy cupy-cuda12x ..."]
#   (--print-fetch prints the pip download command instead of running it)
# The run, on the CUDA machine (CuPy, mpi4py and h5py preinstalled), from the checkout with .whl/ in it:
#   benchmarks/gpu_check.sh [--quick] [--out benchmarks/results] [--max-size N] [--python-bin PY]
# Results: <out>/gpu.json, <out>/gpu.md, and <out>/gpu_check.log with everything the run printed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
wheels="$repo/.whl"
py_version=""
py_bin="${PYTHON:-python3}"
mode="run"
quick=""
out="$repo/benchmarks/results"
max_size=512
# packages the device already has: their wheels are not fetched (deleted after the download) nor installed
preinstalled="numpy cupy-cuda12x cupy mpi4py h5py torch"
# what the run needs beyond those: hpc-pt's runtime dependencies (numba brings llvmlite, about 45 MB), the GPU
# NUFFT, and the test runner
# (matplotlib is left out: it only draws the PNGs, which this check never writes; pip check names it)
needs="scipy zarr<3.2 finufft cufinufft numba pydantic rich PyYAML periodictable pytest pytest-timeout"
carry_limit=$((64 * 1024 * 1024))

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --fetch-wheels) mode="fetch" ;;
        --print-fetch) mode="print" ;;
        --python) py_version="$2"; shift ;;
        --python-bin) py_bin="$2"; shift ;;
        --preinstalled) preinstalled="$2"; shift ;;
        --quick) quick="--quick" ;;
        --out) out="$2"; shift ;;
        --max-size) max_size="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option $1; see $0 --help" >&2; exit 2 ;;
    esac
    shift
done

fetch_command() {
    # one pip download for the target CPython (binary wheels only, so the platform and version apply)
    local v="${py_version:-$("$py_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
    local req
    printf '%s' "$py_bin -m pip download --dest $wheels --only-binary=:all: --implementation cp"
    printf '%s' " --python-version $v --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64"
    printf '%s' " --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64"
    for req in $needs; do printf " '%s'" "$req"; done
    printf '\n'
}

dist_name() {  # normalised distribution name of a wheel file
    basename "$1" | cut -d- -f1 | sed 's/[_.]/-/g' | tr '[:upper:]' '[:lower:]'
}

is_preinstalled() {
    local n="$1" p
    for p in $preinstalled; do
        [ "$n" = "$(printf '%s' "$p" | sed 's/[_.]/-/g' | tr '[:upper:]' '[:lower:]')" ] && return 0
        case "$n" in nvidia-*) return 0 ;; esac
    done
    return 1
}

if [ "$mode" = "print" ]; then
    fetch_command
    exit 0
fi

if [ "$mode" = "fetch" ]; then
    mkdir -p "$wheels"
    cmd="$(fetch_command)"
    echo "+ $cmd"
    eval "$cmd" || { echo "error: pip download failed" >&2; exit 1; }
    for w in "$wheels"/*.whl; do
        if is_preinstalled "$(dist_name "$w")"; then
            echo "preinstalled on the device, removed: $(basename "$w")"
            rm -f "$w"
        fi
    done
    total=$(du -cb "$wheels"/*.whl | tail -1 | cut -f1)
    find "$wheels" -maxdepth 1 -type f -name '*.whl' -printf '%s %f\n' | sort -rn \
        | awk '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}'
    echo "wheels: $((total / 1048576)) MiB in $wheels (the device run carries at most 64 MiB)"
    if [ "$total" -gt "$carry_limit" ]; then
        echo "warning: over 64 MiB: name packages the device has with --preinstalled (largest first above)" >&2
        exit 1
    fi
    exit 0
fi

# ---- the run, on the CUDA machine -------------------------------------------------------------------
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "GPU and driver"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not available"

step "install (no index: preinstalled packages are kept, the rest comes from $wheels)"
if [ -d "$wheels" ]; then
    for w in "$wheels"/*.whl; do
        [ -e "$w" ] || continue
        n="$(dist_name "$w")"
        if "$py_bin" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$n" 2>/dev/null; then
            echo "kept the installed $n"
        else
            "$py_bin" -m pip install --no-index --no-deps --quiet "$w" || status=1
        fi
    done
else
    echo "no $wheels: using what is installed (see --fetch-wheels)"
fi
"$py_bin" -m pip install --no-index --no-deps --no-build-isolation --quiet -e "$repo" || status=1
"$py_bin" -m pip check || echo "note: pip check reports missing or conflicting requirements (above)"

step "versions"
"$py_bin" - <<'EOF' || status=1
import importlib.metadata as md, sys
print("Python", sys.version.split()[0])
for name in ("hpc-pt", "numpy", "scipy", "cupy-cuda12x", "cupy", "cufinufft", "finufft", "mpi4py", "h5py",
             "zarr", "pydantic", "torch"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
import cupy
from hpc_pt.backend import gpu_available
dev = cupy.cuda.Device()
props = cupy.cuda.runtime.getDeviceProperties(dev.id)
print("GPU", props["name"], f"{dev.mem_info[1] / 2**30:.1f} GiB", "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "driver", cupy.cuda.runtime.driverGetVersion(), "visible", cupy.cuda.runtime.getDeviceCount())
import cufinufft  # noqa: F401  (imports the CUDA NUFFT library)
print("gpu_available:", gpu_available())
EOF

cd "$repo" || exit 1
step "pytest -m gpu (CPU/GPU equivalence of the operators, the slab layer and APT)"
timeout 150 "$py_bin" -m pytest -q -m gpu tests/accelerator/test_gpu.py -p no:cacheprovider || status=1

step "CPU-side GPU preparations (array namespace check, device selection)"
timeout 60 "$py_bin" -m pytest -q tests/foundations/test_array_namespace.py tests/parallel/test_devices.py -p no:cacheprovider || status=1

step "benchmarks/gpu_bench.py --device gpu $quick"
timeout 330 "$py_bin" "$here/gpu_bench.py" --device gpu $quick --out "$out" --max-size "$max_size" || status=1

step "done: $out/gpu.json, $out/gpu.md, $log (status $status)"
exit "$status"
