"""Fault tests: ``kill -9`` of one MPI rank and of one Dask worker while a checkpointed reconstruction runs.
The job ends within seconds; the same command with ``--resume`` completes and its volume equals an
uninterrupted *serial* run bit for bit (APT's default deterministic mode makes 1 and 2 ranks agree, and
resume continues bitwise)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from hpc_pt import reconstruct
from hpc_pt.io import read_volume
from test_mpi import _ragged, mpiexec_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERATIONS, EVERY = 200, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "a4.cxi"
    _ragged(4, path)
    return path


@pytest.fixture(scope="module")
def serial(data):
    return reconstruct(str(data), method="apt", iterations=ITERATIONS).volume


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                HPC_PT_NUFFT_THREADS="1")


def _latest(ckpt) -> int:
    try:
        return int(re.findall(r"\d+", (ckpt / "LATEST").read_text())[-1])
    except (OSError, IndexError, ValueError):
        return 0


def _kill_one_rank_after_a_checkpoint(cmd, out, is_rank):
    """Start ``cmd``; once its first checkpoint is on disk kill -9 one of its rank processes (``is_rank``
    picks them from the descendants); return (exit code, stderr, seconds from the kill to the exit)."""
    import psutil

    p = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t_end = time.monotonic() + 120
        while _latest(out.parent / (out.name + ".ckpt")) < EVERY:
            assert p.poll() is None, f"the job ended before its first checkpoint: {p.stderr.read()[-2000:]}"
            assert time.monotonic() < t_end, "no checkpoint within 120 s"
            time.sleep(0.05)
        ranks = [c for c in psutil.Process(p.pid).children(recursive=True) if is_rank(c.cmdline())]
        assert ranks, [c.cmdline() for c in psutil.Process(p.pid).children(recursive=True)]
        t0 = time.monotonic()
        os.kill(ranks[-1].pid, 9)
        _, err = p.communicate(timeout=90)
        return p.returncode, err, time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _resume_and_compare(cmd, out, serial):
    p = subprocess.run(cmd + ["--resume"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    vol, _ = read_volume(out)
    diff = float(np.linalg.norm(vol - serial) / np.linalg.norm(serial))
    assert np.array_equal(vol, serial), f"resumed result vs uninterrupted serial: relative difference {diff:.3g}"


def test_kill_9_of_an_mpi_rank_then_resume(data, serial, tmp_path):
    out = tmp_path / "m.zarr"
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "hpc_pt", "reconstruct", str(data),
           "--backend", "mpi", "--iterations", str(ITERATIONS), "--checkpoint-every", str(EVERY),
           "--out", str(out), "--quiet"]
    code, err, seconds = _kill_one_rank_after_a_checkpoint(
        cmd, out, lambda a: "hpc_pt" in a and "reconstruct" in a and not any("mpiexec" in x for x in a))
    assert code != 0, err[-2000:]
    print(f"MPI: {seconds:.2f} s from kill -9 of a rank to mpiexec's exit (code {code})")
    assert seconds < 30, f"{seconds:.1f} s from the kill to the job's exit"
    assert not out.exists(), "a killed run published no result"
    _resume_and_compare(cmd, out, serial)


def test_kill_9_of_a_dask_worker_then_resume(data, serial, tmp_path):
    out = tmp_path / "d.zarr"
    cmd = [sys.executable, "-m", "hpc_pt", "reconstruct", str(data), "--backend", "dask", "--workers", "2",
           "--iterations", str(ITERATIONS), "--checkpoint-every", str(EVERY), "--out", str(out), "--quiet"]
    code, err, seconds = _kill_one_rank_after_a_checkpoint(cmd, out, lambda a: any("spawn_main" in x for x in a))
    assert code == 3, err[-2000:]
    print(f"Dask: {seconds:.2f} s from kill -9 of a worker to the command's exit (code {code})")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "died while the job ran: killed by signal 9 (SIGKILL)" in errors[0], err
    assert errors[0].endswith("rerun with --resume to continue from the last checkpoint"), errors[0]
    assert "Traceback" not in err, err
    assert seconds < 30, f"{seconds:.1f} s from the kill to the command's exit"
    assert not out.exists()
    _resume_and_compare(cmd, out, serial)
