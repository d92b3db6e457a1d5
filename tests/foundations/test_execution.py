"""The execution policy (hpc_pt.execution): CPU budget, ranks per node, threads per rank, thread env."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_pt.errors import InputError
from hpc_pt.execution import (LOCAL_SIZE_VARS, Execution, apply_thread_policy, cpu_budget, ranks_on_node,
                              threads_per_rank)

REPO = Path(__file__).resolve().parents[2]
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "HPC_PT_FFT_WORKERS", "HPC_PT_NUFFT_THREADS",
               "HPC_PT_THREADS")


def _cgroup(tmp_path, files: dict, proc: str = "0::/\n") -> dict:
    """A fake cgroup tree under tmp_path (relative path -> text) and its /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(proc)
    return {"cgroup_root": str(root), "proc_cgroup": str(tmp_path / "proc_cgroup")}


@pytest.mark.parametrize("cpu_max, expect", [("200000 100000\n", 2), ("150000 100000\n", 2),
                                             ("50000 100000\n", 1), ("max 100000\n", 8)])
def test_cpu_budget_cgroup_v2(tmp_path, cpu_max, expect):
    n, source = cpu_budget({}, affinity=8, **_cgroup(tmp_path, {"cpu.max": cpu_max}))
    assert n == expect
    assert ("cgroup v2" in source) == (expect < 8)


def test_cpu_budget_cgroup_v2_own_path_and_ancestors(tmp_path):
    where = _cgroup(tmp_path, {"cpu.max": "max 100000", "job/cpu.max": "300000 100000",
                               "job/step/cpu.max": "max 100000"}, proc="0::/job/step\n")
    assert cpu_budget({}, affinity=16, **where) == (3, f"cgroup v2 {where['cgroup_root']}/job/cpu.max (300000 100000)")


@pytest.mark.parametrize("sub", ["cpu", "cpu,cpuacct"])
def test_cpu_budget_cgroup_v1(tmp_path, sub):
    where = _cgroup(tmp_path, {f"{sub}/cpu.cfs_quota_us": "400000\n", f"{sub}/cpu.cfs_period_us": "100000\n"},
                    proc="4:memory:/x\n2:cpu,cpuacct:/\n0::/\n")
    n, source = cpu_budget({}, affinity=8, **where)
    assert (n, source.startswith("cgroup v1")) == (4, True)
    unlimited = _cgroup(tmp_path / "u", {f"{sub}/cpu.cfs_quota_us": "-1\n", f"{sub}/cpu.cfs_period_us": "100000\n"})
    assert cpu_budget({}, affinity=8, **unlimited) == (8, "CPU affinity (8 CPUs)")


def test_cpu_budget_slurm_and_defaults(tmp_path):
    where = _cgroup(tmp_path, {"cpu.max": "600000 100000"})
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "4"}, affinity=8, **where) == (4, "SLURM_CPUS_PER_TASK=4")
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "16"}, affinity=8, **where)[0] == 6
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "junk"}, affinity=8, **where)[0] == 6
    none = {"cgroup_root": str(tmp_path / "absent"), "proc_cgroup": str(tmp_path / "absent")}
    assert cpu_budget({}, affinity=3, **none) == (3, "CPU affinity (3 CPUs)")
    n, _ = cpu_budget({})  # this machine: at least 1, at most what the process may run on
    assert 1 <= n <= (os.cpu_count() or 1)


@pytest.mark.parametrize("env, expect", [
    ({}, 1),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "SLURM_TASKS_PER_NODE": "8"}, 4),  # Open MPI
    ({"MPI_LOCALNRANKS": "3", "PMI_SIZE": "6", "PMI_RANK": "1"}, 3),  # MPICH / Hydra; PMI_SIZE is the world
    ({"PMI_SIZE": "6"}, 1),
    ({"PMI_LOCAL_SIZE": "2"}, 2),  # Cray PALS
    ({"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "8"}, 2),
    ({"SLURM_NTASKS_PER_NODE": "5"}, 5),
    ({"SLURM_TASKS_PER_NODE": "4(x2)"}, 4),
    ({"SLURM_TASKS_PER_NODE": "2,1"}, 2),
    ({"SLURM_TASKS_PER_NODE": "3(x2),1"}, 3),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "", "MPI_LOCALNRANKS": "0", "SLURM_NTASKS_PER_NODE": "x"}, 1),
])
def test_ranks_on_node(env, expect):
    assert ranks_on_node(env) == expect


def test_ranks_on_node_reads_what_hydra_exports(tmp_path):
    """The mpich wheel's mpiexec (Hydra) exports MPI_LOCALNRANKS; skipped where it is not installed.

    Each rank writes its environment to its own file: two ranks printing long lines to one pipe
    interleave them (seen in CI), so stdout cannot be parsed line by line.
    """
    mpiexec = Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists():
        pytest.skip("no mpiexec beside the interpreter")
    code = ("import json, os, sys; "
            "open(os.path.join(sys.argv[1], 'env%s.json' % os.getpid()), 'w').write(json.dumps(dict(os.environ)))")
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", code, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip(f"mpiexec failed here: {out.stderr.strip()[:200]}")
    envs = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("env*.json"))]
    assert len(envs) == 2
    assert {ranks_on_node(e) for e in envs} == {2}
    assert any(v in envs[0] for v in LOCAL_SIZE_VARS)


def test_threads_per_rank_division_and_overrides(tmp_path):
    none = {"cgroup_root": str(tmp_path / "absent"), "proc_cgroup": str(tmp_path / "absent")}
    assert threads_per_rank(environ={}, affinity=16, **none) == 16
    assert threads_per_rank(environ={"MPI_LOCALNRANKS": "4"}, affinity=16, **none) == 4
    assert threads_per_rank(environ={"MPI_LOCALNRANKS": "3"}, affinity=16, **none) == 5
    assert threads_per_rank(environ={"MPI_LOCALNRANKS": "4"}, affinity=2, **none) == 1  # never 0
    quota = _cgroup(tmp_path, {"cpu.max": "800000 100000"})
    assert threads_per_rank(environ={"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, affinity=64, **quota) == 4
    # SLURM_CPUS_PER_TASK is one task's share: it caps the count and is not divided again
    slurm = {"SLURM_CPUS_PER_TASK": "4", "SLURM_NTASKS_PER_NODE": "4"}
    assert threads_per_rank(environ=slurm, affinity=4, **none) == 1  # all tasks' ranks see the same 4 CPUs
    assert threads_per_rank(environ=slurm, affinity=64, **none) == 4
    # the user's count wins: the argument, then HPC_PT_THREADS
    assert threads_per_rank(environ={"HPC_PT_THREADS": "7", "MPI_LOCALNRANKS": "4"}, affinity=2, **none) == 7
    assert threads_per_rank(3, environ={"HPC_PT_THREADS": "7"}, affinity=2, **none) == 3
    assert threads_per_rank(environ={"HPC_PT_THREADS": " "}, affinity=2, **none) == 2
    for bad in ("0", "-2", "two", "2.5", "4(x2)"):
        with pytest.raises(InputError, match="HPC_PT_THREADS"):
            threads_per_rank(environ={"HPC_PT_THREADS": bad}, affinity=2, **none)
    with pytest.raises(InputError, match="threads argument"):
        threads_per_rank(0, environ={}, affinity=2, **none)


def test_apply_thread_policy_sets_only_what_the_user_left():
    env = {}
    report = apply_thread_policy(1, env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["OMP_NUM_THREADS"] == env["HPC_PT_FFT_WORKERS"] == "1"
    cores = os.cpu_count() or 1
    assert "HPC_PT_NUFFT_THREADS" not in env  # never set: the user's override only
    assert report["set"] == {k: env[k] for k in report["set"]} and not report["user"]
    assert report["openmp_loaded_before"] is None  # not os.environ: not asked

    user = {"OMP_WAIT_POLICY": "ACTIVE", "HPC_PT_NUFFT_THREADS": "3", "HPC_PT_FFT_WORKERS": "-1",
            "OMP_NUM_THREADS": "5"}
    env = dict(user)
    report = apply_thread_policy(2, env)
    assert env == user and report["user"] == user and not report["set"]

    # the backend's own NUFFT default (1 thread for small transforms and deterministic plans) is kept
    env = {}
    report = apply_thread_policy(cores, env)
    assert "HPC_PT_NUFFT_THREADS" not in env and "HPC_PT_NUFFT_THREADS" in report["default"]
    assert json.loads(json.dumps(report)) == report
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputError, match="threads"):
            apply_thread_policy(bad, {})


def test_execution_validation_and_describe():
    ex = Execution()
    assert (ex.device, ex.dtype, ex.frame_batch, ex.threads) == ("cpu", "complex64", None, 1)
    assert Execution(dtype=np.complex128).dtype == "complex128"
    assert Execution(frame_batch=np.int64(512), threads=4) == Execution(frame_batch=512, threads=4)
    for kwargs, match in [({"device": "cuda"}, "device='cuda' must be one of cpu, gpu"),
                          ({"dtype": "float32"}, "complex64 or complex128"),
                          ({"dtype": "nonsense"}, "complex64 or complex128"),
                          ({"frame_batch": 0}, "frame_batch=0 must be None or a positive integer"),
                          ({"frame_batch": 2.5}, "frame_batch"),
                          ({"threads": 0}, "threads=0 must be a positive integer"),
                          ({"threads": None}, "threads")]:
        with pytest.raises(ValueError, match=match):
            Execution(**kwargs)
    with pytest.raises(AttributeError):
        ex.threads = 2  # frozen
    env = {"HPC_PT_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    ex = Execution.from_environment(device="gpu", dtype="complex128", frame_batch=64, environ=env)
    assert (ex.device, ex.dtype, ex.frame_batch, ex.threads) == ("gpu", "complex128", 64, 3)
    info = ex.describe(env)
    assert info["threads"] == 3 and info["threads_default_source"] == "HPC_PT_THREADS=3"
    assert info["env"]["OMP_WAIT_POLICY"] == "PASSIVE" and info["ranks_on_node"] == 1
    assert 1 <= info["cpu_budget"] <= (os.cpu_count() or 1)
    assert json.loads(json.dumps(info)) == info
    assert Execution.from_environment(environ={"MPI_LOCALNRANKS": "64"}).threads == 1


def test_policy_reaches_child_processes():
    """apply_thread_policy on os.environ, in a fresh interpreter, before finufft loads: the variables reach
    a child it starts, and importing hpc_pt (operators included) has not loaded OpenMP yet."""
    code = (
        "import json, os, subprocess, sys\n"
        "import hpc_pt.operators\n"
        "from hpc_pt.execution import apply_thread_policy\n"
        "report = apply_thread_policy(1)\n"
        "child = subprocess.run([sys.executable, '-c', 'import json, os; print(json.dumps(dict(os.environ)))'],\n"
        "                       capture_output=True, text=True, check=True).stdout\n"
        "print(json.dumps({'report': report, 'child': json.loads(child)}))\n")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["child"]["OMP_WAIT_POLICY"] == "PASSIVE" == got["report"]["set"]["OMP_WAIT_POLICY"]
    assert got["child"]["OMP_NUM_THREADS"] == "1"
    assert got["report"]["openmp_loaded_before"] in (False, None)  # None: no /proc/self/maps (not Linux)


def test_the_cli_applies_the_policy_before_any_command(tmp_path):
    """`hpc-pt` sets the thread environment once, before the command runs (so before finufft's OpenMP runtime
    loads), keeping what the user set."""
    code = ("import os, sys; from hpc_pt.cli import main; "
            "rc = main(['info', sys.argv[1]]); "
            "print(rc, os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'), "
            "os.environ.get('HPC_PT_NUFFT_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.cxi")], capture_output=True,
                         text=True, env=env, timeout=120)
    rc, wait, omp, nufft = out.stdout.split()
    assert rc == "2" and wait == "PASSIVE" and int(omp) >= 1 and nufft == "None", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.cxi")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.stdout.split()[1] == "ACTIVE"
