"""The communication model of benchmarks/scaling.py (docs/scaling.md) against the bytes a real MPI run counts.

One ``mpiexec -n P`` job (P = 2, and 3 for uneven slabs and a rank with two neighbours) runs APTs and APT
for 2 outer iterations on 16^3 datasets and writes every rank's per-iteration history (rank 0 also writes
the Zarr store of the first case, whose history must hold the same rank-0 counters). Checked exactly, for
every rank and every iteration:

* APTs with integer scan positions: the stencil is the illumination alone (no halo), so per outer iteration
  the ``alltoallv`` bytes summed over ranks are exactly ``2 * transpose_bytes`` (one transpose to the slabs,
  one back), and each rank's share is the model's ``to_slabs_bytes + to_angles_bytes``;
* APT (TV): plus ``(2 (1 + c) + 3) * halo_bytes(bounds, N^2)``, c = the iteration's ``cg_iterations`` from the
  history: CG applies L = r2 N - r1 Laplacian 1 + c times (warm-start residual, then once per iteration), each
  Laplacian is gradient + divergence (two halos), and divergence(p + Lambda1), gradient(u) for the p-update and
  gradient(u) in the TV value add three;
* sub-pixel positions (APTs and APT): plus ``(1 + c) * halo_bytes(bounds, A W)`` for the 3x3 stencil's rows;
* the one-float reductions: ``8 * (6 + 2c)`` (APTs) / ``8 * (8 + 2c)`` (APT) bytes per rank;
* iteration 1 also carries the solver's set-up (stencil maps to the slabs, D(ones) and D(u0) to the angles,
  the power iteration's stencil halos and scalars), which the model adds with ``first=True``.

mpi4py and mpich are in the ``test`` extra: these tests fail (not skip) where MPI is missing, as test_mpi does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpc_pt.io import read_table, write_cxi
from hpc_pt.parallel import halo_bytes, transpose_bytes
from hpc_pt.pipeline import build_shard, volume_shape_for
from hpc_pt.simulate import SimulationConfig, simulate_dataset
from test_mpi import mpiexec_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import scaling  # noqa: E402  (benchmarks/scaling.py: the model lives there, not in hpc_pt)

ITERATIONS = 2
CASES = [  # name, dataset, method
    ["apts-int", "int", "apts"],
    ["apt-int", "int", "apt"],
    ["apts-frac", "frac", "apts"],
    ["apt-frac", "frac", "apt"],
]

RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    from hpc_pt import reconstruct
    from hpc_pt.parallel import MPIComm

    comm = MPIComm()
    out_dir, cases = sys.argv[1], json.loads(sys.argv[2])
    for k, (name, data, method, iterations) in enumerate(cases):
        out = f"{out_dir}/{name}.zarr" if k == 0 else None  # one store: its history is rank 0's counters
        res = reconstruct(data, out=out, comm=comm, method=method, iterations=iterations,
                          deterministic=False)  # the model counts the ordinary mode's bytes
        with open(f"{out_dir}/{name}.rank{comm.rank}.json", "w") as fh:
            json.dump({k: [float(x) for x in v] for k, v in res.history.items()}, fh)
""")


def _mpiexec(n, *args, timeout=300):
    exe = mpiexec_path()
    env = {**os.environ, "HPC_PT_NUFFT_THREADS": "1", "HPC_PT_FFT_WORKERS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(["timeout", str(timeout), exe, "-n", str(n), *args], check=False, capture_output=True,
                          text=True, timeout=timeout + 30, env=env)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """16^3, 4 angles, probe 8, step 3: integer positions (per-angle offset 1) and sub-pixel ones (0.5)."""
    d = tmp_path_factory.mktemp("scaling")
    out = {}
    for key, offset in (("int", 1.0), ("frac", 0.5)):
        ds = simulate_dataset(SimulationConfig(size=16, angles=4, probe_size=8, probe_fwhm=3, step=3, field_pad=3,
                                               per_angle_offset=offset))
        fractional = build_shard(ds, "linear").model.ptycho.fractional
        assert fractional is (key == "frac")
        pos = np.concatenate([a.positions for a in ds.angles])
        nz, n, _ = volume_shape_for(ds)
        out[key] = {"path": str(d / f"{key}.cxi"), "counts": [a.frames.shape[0] for a in ds.angles], "nz": nz, "n": n,
                    "W": ds.geometry.field_shape[1], "A": len(ds.angles), "n_maps": 9 if fractional else 1,
                    "vertical": bool(np.any(pos[:, 0] % 1 != 0))}
        write_cxi(ds, out[key]["path"])
    assert out["int"]["vertical"] is False and out["frac"]["vertical"] is True
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_bytes_model_equals_mpi_counters(datasets, tmp_path, n):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    cases = [[name, datasets[key]["path"], method, ITERATIONS] for name, key, method in CASES]
    p = _mpiexec(n, sys.executable, "-m", "mpi4py", str(script), str(tmp_path), json.dumps(cases))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for name, key, method in CASES:
        ds = datasets[key]
        tv = method == "apt"
        ra, bounds = scaling.rank_layout(ds["counts"], ds["nz"], ds["n"], n)
        hists = [json.loads((tmp_path / f"{name}.rank{r}.json").read_text()) for r in range(n)]
        stored = read_table(tmp_path / f"{name}.zarr", "history") if name == CASES[0][0] else None
        assert stored is None or len(stored["iteration"]) == ITERATIONS
        for i in range(ITERATIONS):
            c = int(hists[0]["cg_iterations"][i])
            assert c >= 1 and all(int(h["cg_iterations"][i]) == c for h in hists)
            if stored is not None:  # the store's history holds rank 0's counters
                for k in ("comm_bytes_alltoallv", "comm_bytes_scalar", "cg_iterations"):
                    assert stored[k][i] == hists[0][k][i]
            kw = {"tv": tv, "vertical": ds["vertical"], "n_maps": ds["n_maps"], "first": i == 0}
            for r in range(n):
                model = scaling.apt_iteration_bytes(ra, bounds, ds["n"], ds["W"], ds["A"], r, c, **kw)
                got = {k: int(hists[r].get(f"comm_bytes_{k}", [0] * ITERATIONS)[i])
                       for k in ("alltoallv", "scalar", "allreduce")}
                assert got == {"alltoallv": model["alltoallv"], "scalar": model["scalar"], "allreduce": 0}, \
                    (name, n, i, r, got, model)
            # summed over ranks, against the slab module's own formulas
            measured = sum(int(h["comm_bytes_alltoallv"][i]) for h in hists)
            hx = scaling.halo_exchanges(c, tv=tv, vertical=ds["vertical"])
            expected = (2 * transpose_bytes(ra, bounds, ds["W"])
                        + hx["volume"] * halo_bytes(bounds, ds["n"] ** 2)
                        + hx["stencil"] * halo_bytes(bounds, ds["A"] * ds["W"]))
            if i == 0:  # set-up: stencil maps (float32) to the slabs, D(ones) and D(u0) back to the angles
                expected += ds["n_maps"] * transpose_bytes(ra, bounds, ds["W"], itemsize=4)
                expected += 2 * transpose_bytes(ra, bounds, ds["W"])
                expected += (scaling.POWER_ITERATIONS * halo_bytes(bounds, ds["A"] * ds["W"])
                             if ds["vertical"] else 0)
            assert measured == expected, (name, n, i, measured, expected)
            if name == "apts-int" and i > 0:
                assert measured == 2 * transpose_bytes(ra, bounds, ds["W"])


def test_transpose_closed_form():
    """The closed form 8 A N_z W (P - 1) / P is exact for whole angles split evenly over evenly split rows."""
    for P, A in ((2, 4), (4, 8), (4, 12)):
        ra, bounds = scaling.rank_layout([10] * A, 64, 64, P)
        assert transpose_bytes(ra, bounds, 72) == scaling.approx_transpose_bytes(A, 64, 72, P)
        assert sum(scaling.to_slabs_bytes(ra, bounds, 72, r) for r in range(P)) == transpose_bytes(ra, bounds, 72)
        assert sum(scaling.to_angles_bytes(ra, bounds, 72, r) for r in range(P)) == transpose_bytes(ra, bounds, 72)


def test_model_serial_sends_nothing():
    ra, bounds = scaling.rank_layout([5, 5], 16, 16, 1)
    b = scaling.apt_iteration_bytes(ra, bounds, 16, 22, 2, 0, 4, tv=True, vertical=True, n_maps=9, first=True)
    assert b["comm_bytes"] == 0


def test_extrapolation_fits_in_memory():
    """The 256-GPU example of docs/scaling.md: the model's memory per GPU stays under 80 GB."""
    p = scaling.predict_iteration(scaling.BIG, scaling.H100)
    assert p["memory_bytes"]["total"] < scaling.H100["memory_bytes"]
    assert 0 < p["efficiency"] <= 1
