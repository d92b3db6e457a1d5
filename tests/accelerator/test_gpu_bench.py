"""benchmarks/gpu_bench.py on the CPU: the measurement, comparison and JSON / markdown code that
benchmarks/gpu_check.sh runs on a GPU, exercised here with ``--device cpu --quick``."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_bench  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    rc = gpu_bench.main(["--device", "cpu", "--quick", "--out", str(out), "--iterations", "2", "--max-size", "32",
                         "--no-mpi"])
    return rc, json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_quick_cpu_run_writes_every_part(quick_run):
    rc, doc, md = quick_run
    assert rc == 0
    assert doc["environment"]["device"] == "cpu"
    for part in ("operators", "equivalence", "methods", "largest"):
        assert part in doc and doc[part]["part_wall_s"] >= 0
    names = {c["name"] for c in doc["operators"]["cases"]}
    assert {"ptycho_large", "ptycho_small", "projector_large", "projector_small"} <= names
    for c in doc["operators"]["cases"]:
        assert np.isfinite(c["ratio"]) and c["ratio"] > 0
        assert c["dot_test"] <= 1e-5
    # the same computation on the same backend twice: the comparison must find agreement
    assert set(doc["equivalence"]["methods"]) == set(gpu_bench.METHODS)
    assert doc["equivalence"]["all_agree"]
    for m, v in doc["methods"]["methods"].items():
        assert v["device_iter_s"] > 0 and v["cpu_iter_s"] > 0 and v["speedup"] > 0, m
        assert v["device_peak_bytes"] > 0 and v["peak_over_model"] > 0, m
        assert v["relative_difference"] <= gpu_bench.EQUIV_TOL, m
    big = doc["largest"]["largest"]
    assert big["fits"] and big["N"] in doc["largest"]["candidates"] and big["peak_bytes"] > 0
    for m in gpu_bench.METHODS:
        assert f"| {m} |" in md
    assert "## Largest size" in md and "peak / model" in md


def test_failures_flag_disagreement():
    doc = {"equivalence": {"methods": {"apt": {"relative_difference": 1e-7, "agree": True},
                                       "gd": {"relative_difference": 0.3, "agree": False}}},
           "mpi": {"ok": False, "returncode": 1}}
    bad = gpu_bench.failures(doc)
    assert len(bad) == 2 and bad[0].startswith("equivalence gd") and bad[1].startswith("mpi")
    assert gpu_bench.failures({"mpi": {"ok": True, "agree": True, "relative_difference": 0.0}}) == []


def test_relative_difference():
    a = np.ones(10, np.complex64)
    assert gpu_bench.relative_difference(a, a) == 0
    assert abs(gpu_bench.relative_difference(1.1 * a, a) - 0.1) < 1e-6
    assert gpu_bench.relative_difference(np.zeros(3), np.zeros(3)) == 0


def test_candidate_sizes_follow_the_memory_model():
    small = gpu_bench.candidate_sizes(2**30, 512)
    large = gpu_bench.candidate_sizes(64 * 2**30, 512)
    assert small and large and max(large) > max(small)
    assert small == sorted(small, reverse=True) and all(n % 64 == 0 for n in large)
    assert gpu_bench.candidate_sizes(1e3, 512) == []
    n = max(small)  # the model puts the chosen size under the fraction, and the next one above it
    assert gpu_bench.model_bytes(_seed001_problem(n)) <= gpu_bench.MEMORY_FRACTION * 2**30
    if n + 64 <= 512:
        assert gpu_bench.model_bytes(_seed001_problem(n + 64)) > gpu_bench.MEMORY_FRACTION * 2**30


def _seed001_problem(n):
    cfg = gpu_bench.seed001_config(n)
    per = (n - cfg["probe_size"]) // cfg["step"] + 1
    return {"N": n, "nz": n, "W": n, "A": cfg["angles"], "F": cfg["angles"] * per ** 2, "m": cfg["probe_size"],
            "n_maps": 1}


def test_seed001_config_scales_with_size():
    base = gpu_bench.seed001_config()
    assert (base["size"], base["probe_size"], base["step"], base["angles"]) == (128, 64, 32, 12)
    half = gpu_bench.seed001_config(64)
    assert (half["size"], half["probe_size"], half["step"], half["angles"]) == (64, 32, 16, 12)


def test_peak_memory_cpu_sees_an_allocation():
    with gpu_bench.PeakMemory("cpu") as mem:
        x = np.ones(1 << 20)  # 8 MiB
        del x
    assert mem.peak >= 8 << 20


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses_and_prints_the_wheel_command():
    """The shell script is valid bash, and its preparation step names the wheels it installs, for the
    Python version given (without downloading anything: --print-fetch)."""
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    p = subprocess.run(["bash", str(script), "--print-fetch", "--python", "3.12"], capture_output=True, text=True,
                       check=True, env={**os.environ, "PATH": os.environ.get("PATH", "")})
    cmd = p.stdout
    assert "pip download" in cmd and "--python-version 3.12" in cmd and "--only-binary=:all:" in cmd
    for pkg in ("cufinufft", "finufft", "numba", "zarr", "pydantic"):
        assert pkg in cmd
    assert "--platform manylinux" in cmd
