"""benchmarks/iteration.py's pass counting against the equations (issue 17), on its ``--quick`` sizes.

The benchmark's floor rests on two things this test checks on a real run (1 and 2 ranks): the counters
see every batched FFT and every projector call of an iteration, and for APT the passes the code makes are
exactly the passes seed 001's equations need (1 FFT, 1 iFFT, CG iterations + 2 projector fwd and adj), for
the 2-step's DM and CG iterations one of each. Times are recorded, never asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_iteration_bench_counts_the_needed_passes(tmp_path):
    layouts = "1x1,2x1"
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "iteration.py"), "--quick", "--out",
                          str(tmp_path), "--cases", "seed001", "--methods", "apt,two-step", "--layouts", layouts,
                          "--iterations", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "iteration.json").read_text())
    assert (tmp_path / "iteration.png").stat().st_size > 10_000
    runs = doc["cases"]["seed001"]["runs"]
    for layout in layouts.split(","):
        apt = runs["apt"][layout]["kinds"]["apt"]
        assert apt["passes_counted"] == pytest.approx(apt["passes_needed"], abs=1e-9)
        assert apt["passes_needed"]["proj_fwd"] == apt["needed_from"]["cg_iterations"] + 2
        assert apt["extra_passes"] == {} and apt["extra_reasons"] == []
        assert apt["floor_s"] > 0 and apt["ratio"] > 0 and apt["target"] == 1.3
        ranks = doc["layouts"][layout]["ranks"]
        assert len(runs["apt"][layout]["per_rank"]) == ranks
        frames = [r["frames"] for r in runs["apt"][layout]["per_rank"]]
        assert sum(frames) == doc["cases"]["seed001"]["frames"]
        two = runs["two-step"][layout]["kinds"]
        assert two["two-step/dm"]["passes_counted"] == {"fft": 1, "ifft": 1, "proj_fwd": 0, "proj_adj": 0}
        assert two["two-step/cg"]["passes_counted"] == {"fft": 0, "ifft": 0, "proj_fwd": 1, "proj_adj": 1}
        assert set(apt["phases_s"]) >= {"cg", "project", "prox", "ptycho", "comm_time"}
