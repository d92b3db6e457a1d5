"""Dask backend: DaskComm collectives on a real LocalCluster (2 and 3 worker processes), the dashboard,
failure of one rank, equivalence with the serial reconstruction, and ``hpc-pt reconstruct --backend dask``.

dask.distributed and bokeh are in the ``test`` extra, so these tests FAIL (not skip) where they are
missing. One module-scoped cluster of 3 single-threaded worker processes serves every test but the CLI
ones (each of which starts its own). Helper functions run on the workers are module-level: the workers
are spawned with this process's ``sys.path``, so they import this module by name.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest

from hpc_pt import reconstruct
from test_mpi import _ragged  # the same ragged 16^3 dataset the MPI tests use

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-5

# name, method, iterations, settings: iteration counts at which MPI/Dask and serial differ by float32
# rounding only (see tests/parallel/test_mpi.py for why APT/APTs start from zeros)
CASES = [
    ["apt", "apt", 3, {"init": "zeros"}],
    ["apts", "apts", 3, {"init": "zeros"}],
    ["gd", "gd", 4, {}],
    ["admm", "admm", 2, {}],
    ["two-step", "two-step", 4, {"options": {"tomo_iterations": 3}}],
]


def cluster_client(workers: int, security=None, **kwargs):
    """A generator for module fixtures: a client of ``local_cluster(workers, **kwargs)`` (LocalCluster of
    single-threaded worker processes on 127.0.0.1, dashboard on port 0), closed after the module."""
    from distributed import Client

    from hpc_pt.parallel.dask import local_cluster

    extra = {} if security is None else {"security": security}
    cluster = local_cluster(workers, **kwargs, **extra)
    c = Client(cluster, **extra)
    c.wait_for_workers(workers, timeout=120)
    c.dashboard_url = cluster.dashboard_link  # the real port (asked for port 0)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def client():
    yield from cluster_client(3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16^3 phantom, 4 angles, Fermat scan, ragged frame counts (as tests/parallel/test_mpi.py)."""
    path = tmp_path_factory.mktemp("dask") / "a4.cxi"
    _ragged(4, path)
    return path


# --------------------------------------------------------------------------------------------------
# collectives (these functions run on the workers)
# --------------------------------------------------------------------------------------------------

def _length(src: int, dst: int) -> int:
    """Elements rank ``src`` sends rank ``dst``: uneven, zero for some pairs (including some self-sends)."""
    return (3 * src + 5 * dst + 1) % 7 * 11


def _payload(src: int, dst: int, dtype) -> np.ndarray:
    n = _length(src, dst)
    x = np.arange(n, dtype=np.float64) + 1000 * src + 100 * dst
    return (x + 1j * x).astype(dtype) if np.dtype(dtype).kind == "c" else x.astype(dtype)


def _big(rank: int) -> np.ndarray:
    """300 kB per rank: the reduce-scatter + all-gather path on 3 ranks."""
    return (np.sin(np.arange(20_000, dtype=np.float64) * (rank + 1)) * 10 ** rank).astype(np.complex128)


def _collectives(comm):
    import hashlib

    r, P = comm.rank, comm.size
    out = {}
    for dt in (np.complex64, np.float32, np.int64):
        send = [_payload(r, s, dt) for s in range(P)]
        recv = comm.alltoallv(send, [_length(s, r) for s in range(P)])
        out[f"alltoallv_{np.dtype(dt).name}"] = all(
            recv[s].dtype == np.dtype(dt) and np.array_equal(recv[s], _payload(s, r, dt)) for s in range(P))
    x = np.full((3, 4), r + 1j * (r + 1), dtype=np.complex64)
    s = comm.allreduce_sum(x)
    out["allreduce"] = bool(s.dtype == np.complex64 and np.array_equal(s, np.full((3, 4), sum(
        np.complex64(q + 1j * (q + 1)) for q in range(P)), dtype=np.complex64)))
    out["argument_untouched"] = bool(np.all(x == r + 1j * (r + 1)))
    big = comm.allreduce_sum(_big(r))
    out["big_sha"] = hashlib.sha1(big.tobytes()).hexdigest()
    out["big"] = big[:5].tolist()
    out["allreduce_0d"] = float(comm.allreduce_sum(np.float64(r + 1)))
    out["sum_scalar"] = comm.sum_scalar(r + 0.5)
    out["volume_dot"] = comm.volume_dot(x, x)
    out["bcast_array"] = comm.bcast(np.full(5, float(r)), root=P - 1).tolist()
    out["bcast_scalar"] = comm.bcast(r * 2.5, root=0)
    out["bcast_int"] = comm.bcast(r + 7, root=1)
    comm.barrier()
    with comm.phase("cg"):
        time.sleep(0.02)
        comm.sum_scalar(1.0)
    out["stats"] = {"bytes": dict(comm.stats.bytes), "calls": dict(comm.stats.calls),
                    "phase": dict(comm.stats.phase_seconds)}
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_collectives(client, n):
    from hpc_pt.parallel.dask import run_spmd

    res = run_spmd(client, _collectives, workers=n, name="collectives")
    assert len(res) == n
    expect_big = _big(0)
    for q in range(1, n):
        expect_big = expect_big + _big(q)  # rank order
    for r, out in enumerate(res):
        bad = [k for k in ("alltoallv_complex64", "alltoallv_float32", "alltoallv_int64", "allreduce",
                           "argument_untouched") if not out[k]]
        assert not bad, (r, bad)
        assert out["sum_scalar"] == sum(q + 0.5 for q in range(n))
        assert out["allreduce_0d"] == sum(range(1, n + 1))
        x = [np.full((3, 4), q + 1j * (q + 1), dtype=np.complex64) for q in range(n)]
        assert out["volume_dot"] == pytest.approx(sum(float(np.vdot(v, v).real) for v in x), rel=1e-12)
        assert out["bcast_array"] == [n - 1.0] * 5
        assert out["bcast_scalar"] == 0.0 and isinstance(out["bcast_scalar"], float)
        assert out["bcast_int"] == 8 and isinstance(out["bcast_int"], int)
        assert out["big"] == expect_big[:5].tolist()
        assert out["big_sha"] == res[0]["big_sha"], "every rank gets the bitwise same sum"
        # byte counters: the MPIComm formulas
        st = out["stats"]
        a2a = sum(_length(r, s) * np.dtype(dt).itemsize for s in range(n) if s != r
                  for dt in (np.complex64, np.float32, np.int64))
        assert st["bytes"]["alltoallv"] == a2a and st["calls"]["alltoallv"] == 3
        assert st["bytes"]["allreduce"] == 3 * 4 * 8 + 20_000 * 16 + 8 and st["calls"]["allreduce"] == 3
        assert st["bytes"]["scalar"] == 8 * 3 and st["calls"]["scalar"] == 3  # sum_scalar, volume_dot, in cg
        assert st["bytes"]["bcast"] == (5 * 8 if r == n - 1 else 0) and st["calls"]["bcast"] == 1
        assert st["phase"]["cg"] >= 0.02


def test_dashboard_and_activities(client):
    """The dashboard answers on the real port with the bokeh page; a rank's phase and its collectives
    show as activities on the Fine Performance Metrics page (the scheduler's cumulative worker metrics)."""
    from hpc_pt.parallel.dask import run_spmd

    url = client.dashboard_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/status") and ":0/" not in url
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read().decode()
        assert resp.status == 200
    assert "bokeh" in body and "<script" in body, body[:500]

    run_spmd(client, _collectives, workers=2, name="activities")

    def activities(dask_scheduler):
        # keys: ("execute", task prefix, activity, unit)
        return sorted({k[2] for k in dask_scheduler.cumulative_worker_metrics
                       if isinstance(k, tuple) and len(k) == 4 and k[0] == "execute"
                       and k[1] == "hpc-pt-activities"})

    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < 15:  # worker metrics reach the scheduler with the next heartbeat
        seen = client.run_on_scheduler(activities)
        if {"cg", "transpose", "allreduce-scalar"} <= set(seen):
            break
        time.sleep(0.2)
    assert {"cg", "transpose", "allreduce", "allreduce-scalar", "bcast"} <= set(seen), seen


# --------------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------------

def _fail_on_rank1(comm):
    comm.sum_scalar(1.0)
    if comm.rank == 1:
        time.sleep(0.3)  # the others are already waiting in the next collective
        raise ValueError("injected failure on rank 1")
    comm.alltoallv([np.zeros(1000)] * comm.size, [1000] * comm.size)
    comm.sum_scalar(2.0)
    return "unreachable"


def _wait_then_ok(comm):
    return comm.sum_scalar(comm.rank)


def test_failing_rank_stops_job(client):
    from hpc_pt.parallel.dask import run_spmd

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="injected failure on rank 1") as info:
        run_spmd(client, _fail_on_rank1, workers=3, name="fail")
    assert time.perf_counter() - t0 < 30
    assert info.value.rank == 1
    assert run_spmd(client, _wait_then_ok, workers=3, name="after") == [3.0] * 3, "the workers are free again"


def _patch_gd_on_this_worker(fail: bool, error: str = "InputError"):
    """Make this worker's "gd" method fail (``fail``) or restore it, through the solver registry."""
    import dataclasses

    from hpc_pt.errors import InputError
    from hpc_pt.solvers import gd
    from hpc_pt.solvers.registry import register_solver

    if fail:
        def broken(*args, **kwargs):
            if error == "InputError":
                raise InputError("injected failure on one rank")
            raise RuntimeError("injected crash on one rank")

        register_solver(dataclasses.replace(gd.SPEC, run=broken), overwrite=True)
    else:
        register_solver(gd.SPEC, overwrite=True)


def test_run_dask_failing_rank(client, data, tmp_path):
    """Rank 1's solver raises after the set-up while rank 0 goes on into the solver's first collective:
    run_dask raises rank 1's error within seconds."""
    from hpc_pt.errors import InputError
    from hpc_pt.dask_run import run_dask
    from hpc_pt.parallel.dask import worker_addresses

    rank1 = worker_addresses(client, 2)[1]
    client.run(_patch_gd_on_this_worker, True, workers=[rank1])
    try:
        t0 = time.perf_counter()
        with pytest.raises(InputError, match="injected failure on one rank") as info:
            run_dask(str(data), out=str(tmp_path / "r.zarr"), client=client, workers=2, method="gd",
                     iterations=50, dashboard=False)
        assert time.perf_counter() - t0 < 30
        assert info.value.rank == 1
    finally:
        client.run(_patch_gd_on_this_worker, False, workers=[rank1])
    assert not (tmp_path / "r.zarr").exists()


def _hpc_pt_tasks(dask_scheduler):
    """Keys of hpc-pt rank tasks the scheduler still holds (run on the scheduler)."""
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("hpc-pt-")]


def test_killed_worker_stops_job_and_cluster_recovers(client, data, tmp_path):
    """kill -9 of rank 1's worker process while ranks 0 and 2 are in the solver: run_dask raises
    WorkerLost naming rank 1, its worker and pid and the signal within seconds (the survivors blocked in a
    collective see its connection drop; the scheduler's remove-worker event raises the abort flag), leaves
    no task behind, and the same cluster (the nanny restarted the worker) runs the next reconstruction."""
    import signal

    from hpc_pt.dask_run import run_dask
    from hpc_pt.parallel.dask import WorkerLost, run_spmd, worker_addresses

    addrs = worker_addresses(client, 3)
    pid = client.run(os.getpid, workers=[addrs[1]])[addrs[1]]
    killed = []
    # keys earlier tests' futures may still pin (a future freed only by the cyclic GC keeps its task)
    before = set(client.run_on_scheduler(_hpc_pt_tasks))

    def kill_on_first_row(row):
        if not killed:
            killed.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(WorkerLost) as info:
        run_dask(str(data), out=str(tmp_path / "k.zarr"), client=client, workers=3, method="gd",
                 iterations=100_000, progress=kill_on_first_row, dashboard=False)
    seconds = time.monotonic() - killed[0]
    assert seconds < 15, f"{seconds:.1f} s from kill to the error"
    e = info.value
    assert (e.rank, e.ranks, e.worker, e.pid) == (1, [1], addrs[1], pid)
    assert e.cause == "killed by signal 9 (SIGKILL)"
    assert str(e) == (f"rank 1 of 3: its Dask worker {addrs[1]} (pid {pid}) died while the job ran: killed by "
                      "signal 9 (SIGKILL); the other ranks stopped")
    assert not (tmp_path / "k.zarr").exists()
    left, t0 = set(client.run_on_scheduler(_hpc_pt_tasks)) - before, time.monotonic()
    while left and time.monotonic() - t0 < 10:  # a cancel reaches the scheduler over the batched stream
        time.sleep(0.1)
        left = set(client.run_on_scheduler(_hpc_pt_tasks)) - before
    assert not left, f"rank tasks of the killed job left on the scheduler: {sorted(left)}"

    client.wait_for_workers(3, timeout=60)  # the nanny's new worker process (same name, new address)
    assert worker_addresses(client, 3)[1] != addrs[1]
    res = run_dask(str(data), out=str(tmp_path / "next.zarr"), client=client, workers=3, method="gd",
                   iterations=2, dashboard=False)
    assert res.parallel["ranks"] == 3 and (tmp_path / "next.zarr").is_dir()
    assert run_spmd(client, _wait_then_ok, workers=3, name="after-kill") == [3.0] * 3


# --------------------------------------------------------------------------------------------------
# reconstructions
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dask_matches_serial(client, data, case):
    from hpc_pt.dask_run import run_dask

    name, method, iterations, settings = case
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two-step warns about overlap / convergence on tiny problems
        ref = reconstruct(str(data), method=method, iterations=iterations, **settings)
        res = run_dask(str(data), client=client, workers=2, method=method, iterations=iterations,
                       progress=rows.append, dashboard=False, **settings)
    diff = float(np.linalg.norm(res.volume - ref.volume) / np.linalg.norm(ref.volume))
    assert diff <= TOL, f"{name}: Dask (2 workers) vs serial relative difference {diff:.2e}"
    assert res.parallel["backend"] == "dask" and res.parallel["ranks"] == 2
    per_rank = res.parallel["bytes_read_per_rank"]
    assert [i["bytes_read"] for i in res.rank_info] == per_rank
    assert all(0 < b < sum(per_rank) for b in per_rank), "each worker reads only its own frames"
    assert len(rows) == len(res.history["iteration"]), "progress rows forwarded to the client"


DET_HISTORY = {"apt": ("objective", "r_factor", "primal_residual", "rel_change", "cg_residual"),
               "gd": ("objective", "r_factor", "step", "grad_norm", "rel_change"),
               "admm": ("objective", "prior_value", "r_factor", "primal_residual", "dual_residual",
                        "primal_residual_prior", "rho", "tau", "cg_residual", "rel_change")}


@pytest.mark.parametrize("method,mode", [("apt", True), ("apt", None), ("gd", True), ("gd", None), ("admm", True)],
                         ids=["apt-on", "apt-default", "gd-on", "gd-default", "admm-on"])
@pytest.mark.parametrize("workers", [2, 3])
def test_dask_deterministic_bitwise(client, data, workers, method, mode):
    """The deterministic mode, asked for or by default (APT from its default constant start, GD): 2 and 3
    Dask workers give the serial volume and history bit for bit (tests/parallel/test_mpi.py: MPI ranks)."""
    from hpc_pt.dask_run import run_dask

    settings = {"method": method, "iterations": 4}
    if mode is not None:
        settings["deterministic"] = mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reconstruct(str(data), **settings)
        res = run_dask(str(data), client=client, workers=workers, dashboard=False, **settings)
    assert res.parallel["ranks"] == workers
    diff = float(np.linalg.norm(res.volume - ref.volume) / np.linalg.norm(ref.volume))
    assert np.array_equal(res.volume, ref.volume), f"{workers} workers: relative difference {diff:.3g}"
    for key in DET_HISTORY[method]:
        assert np.array_equal(res.history[key], ref.history[key]), key


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def _cli(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hpc_pt", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_cli_dask(client, data, tmp_path):
    store = tmp_path / "r.zarr"
    p = _cli("reconstruct", str(data), "--backend", "dask", "--workers", "2", "--method", "gd", "--iterations",
             "2", "--out", str(store))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    first = p.stdout.splitlines()[0]
    assert first.startswith("dashboard: http://127.0.0.1:") and first.endswith("/status"), p.stdout
    assert p.stdout.count("iter ") == 2, p.stdout  # rank 0's progress rows, printed here
    assert "on 2 Dask workers" in p.stdout
    assert store.is_dir() and (tmp_path / "r.png").is_file()
    import zarr

    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    par = attrs.get("parallel") or attrs.get("hpc_pt", {}).get("parallel")
    assert par["backend"] == "dask" and par["ranks"] == 2 and all(par["bytes_read_per_rank"])

    # on a running cluster (this module's): the output exists now, rank 0 alone checks it, every rank
    # stops, one line, exit 2
    p = _cli("reconstruct", str(data), "--backend", "dask", "--scheduler", client.scheduler.address, "--workers",
             "2", "--method", "gd", "--iterations", "2", "--out", str(store), "--quiet")
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stdout.startswith(f"dashboard: {client.dashboard_url}"), p.stdout
    assert p.stderr.strip().splitlines() == [f"error: rank 0: {store} already exists; pass --force "
                                             "(overwrite=True) to replace it"], p.stderr


@pytest.mark.parametrize("error, code, line", [
    ("InputError", 2, "error: rank 1: injected failure on one rank"),
    ("RuntimeError", 1, "error: rank 1: RuntimeError: injected crash on one rank")])
def test_cli_dask_failing_rank(client, data, tmp_path, error, code, line):
    """Rank 1 alone fails in its solver (a user error, or any other exception) while rank 0 waits in a
    collective: one stderr line naming the rank, no traceback, exit 2 / 1, and the cluster's workers are
    free for the next job."""
    from hpc_pt.parallel.dask import run_spmd, worker_addresses

    rank1 = worker_addresses(client, 2)[1]
    client.run(_patch_gd_on_this_worker, True, error, workers=[rank1])
    try:
        p = _cli("reconstruct", str(data), "--backend", "dask", "--scheduler", client.scheduler.address,
                 "--workers", "2", "--method", "gd", "--model", "linear", "--iterations", "50", "--out",
                 str(tmp_path / "f.zarr"), "--quiet", timeout=120)
    finally:
        client.run(_patch_gd_on_this_worker, False, workers=[rank1])
    assert p.returncode == code, p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == [line], p.stderr
    assert not (tmp_path / "f.zarr").exists()
    assert run_spmd(client, _wait_then_ok, workers=2, name="after-cli") == [1.0, 1.0]


def test_cli_dask_killed_worker(data, tmp_path):
    """kill -9 of one worker process of ``--workers 2`` while the solver runs: the command ends within
    seconds with one stderr line naming the rank, the worker, its pid and the signal, exit 3, no
    traceback (nor the nanny's restart warning)."""
    import re

    import psutil

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "hpc_pt", "reconstruct", str(data), "--backend", "dask",
                          "--workers", "2", "--method", "gd", "--model", "linear", "--iterations", "100000",
                          "--out", str(tmp_path / "k.zarr"), "--progress-every", "1"],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for out_line in p.stdout:  # the first progress row: both ranks are in the solver
            if "iter " in out_line:
                break
        workers = [c for c in psutil.Process(p.pid).children(recursive=True)
                   if any("spawn_main" in a for a in c.cmdline())]
        assert len(workers) == 2, [c.cmdline() for c in workers]
        victim = workers[0].pid
        t0 = time.monotonic()
        os.kill(victim, 9)
        _, err = p.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 3, err[-3000:]
    assert seconds < 30, f"{seconds:.1f} s from kill to exit"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(rf"error: rank [01] of 2: its Dask worker tcp://127\.0\.0\.1:\d+ \(pid {victim}\) died "
                        r"while the job ran: killed by signal 9 \(SIGKILL\); the other ranks stopped; rerun the "
                        r"command \(--checkpoint-every K lets a rerun continue with --resume\)", lines[0]), lines[0]
    assert not (tmp_path / "k.zarr").exists()


@pytest.mark.parametrize("flags", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"],
                                   ["--backend", "mpi", "--workers", "2"], ["--backend", "dask"]])
def test_cli_dask_flag_errors(data, tmp_path, flags):
    p = _cli("reconstruct", str(data), "--out", str(tmp_path / "x.zarr"), *flags, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "--backend dask" in lines[0]
    assert not (tmp_path / "x.zarr").exists()


def test_local_workers_get_the_thread_policy(client):
    """A local cluster's workers get the execution policy before they spawn: the CPU budget divided among
    them, OpenMP waiting passively, unless the parent's environment already says otherwise."""
    from hpc_pt.execution import cpu_budget
    from hpc_pt.parallel.dask.cluster import worker_thread_env

    env = worker_thread_env(2, environ={})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "HPC_PT_NUFFT_THREADS" not in env
    assert int(env["OMP_NUM_THREADS"]) == max(1, cpu_budget({})[0] // 2) == int(env["HPC_PT_FFT_WORKERS"])
    assert worker_thread_env(2, environ={"OMP_WAIT_POLICY": "ACTIVE"}).get("OMP_WAIT_POLICY") is None
    seen = client.run(lambda: os.environ.get("OMP_WAIT_POLICY"))
    assert set(seen.values()) == {os.environ.get("OMP_WAIT_POLICY") or "PASSIVE"}
