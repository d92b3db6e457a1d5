"""Shared by tests/parallel/test_slabs.py and tests/mpi_scripts/slab_checks.py: the checks of a SlabSpace against
the global (serial) operators, written once and run with any Comm."""
from __future__ import annotations

import numpy as np

from hpc_pt.operators import Projector, divergence, gradient, laplacian, tv_value
from hpc_pt.parallel import SlabSpace, halo_bytes, transpose_bytes

NZ, N, W = 11, 8, 10


def rank_angles_for(size: int, n_angles: int):
    """Whole angles round-robin, or (more ranks than angles) angle r % A on rank r: split angles."""
    if size <= n_angles:
        return [list(range(r, n_angles, size)) for r in range(size)]
    return [[r % n_angles] for r in range(size)]


def run_checks(comm, n_angles: int = 5, align: int = 1) -> dict:
    """Every check's worst relative error (or exact-match flag) on this rank, plus byte counts."""
    rng = np.random.default_rng(7)
    angles = np.linspace(0, np.pi, n_angles, endpoint=False)
    ra = rank_angles_for(comm.size, n_angles)
    sp = SlabSpace(comm, angles, ra, (NZ, N, N), n_det=W, dtype=np.complex128, align=align)
    G = rng.standard_normal((n_angles, NZ, W)) + 1j * rng.standard_normal((n_angles, NZ, W))
    u = rng.standard_normal((NZ, N, N)) + 1j * rng.standard_normal((NZ, N, N))
    holders = {a: [r for r in range(comm.size) if a in ra[r]] for a in range(n_angles)}
    # split angles: the holders' parts sum to G (part k = G * weight_k, weights summing to 1)
    mine = np.stack([G[a] * (1.0 + holders[a].index(comm.rank)) /
                     sum(1.0 + k for k in range(len(holders[a]))) for a in sp.my_angles])
    out = {}
    b0 = comm.stats.bytes.get("alltoallv", 0)
    q = sp.to_slabs(mine)
    out["to_slabs"] = float(np.abs(q - G[:, sp.z0:sp.z1]).max())
    out["to_slabs_bytes"] = comm.stats.bytes.get("alltoallv", 0) - b0
    b0 = comm.stats.bytes.get("alltoallv", 0)
    back = sp.to_angles(G[:, sp.z0:sp.z1].copy())
    out["to_angles"] = float(np.abs(back - G[sp.my_angles]).max())
    out["to_angles_bytes"] = comm.stats.bytes.get("alltoallv", 0) - b0
    out["expected_transpose_bytes"] = transpose_bytes(ra, sp.bounds, W, 16) if comm.size > 1 else 0
    ul = sp.local(u)
    out["gradient"] = float(np.abs(sp.gradient(ul) - gradient(u)[:, sp.z0:sp.z1]).max())
    g = rng.standard_normal((3, NZ, N, N)) + 0j
    out["divergence"] = float(np.abs(sp.divergence(g[:, sp.z0:sp.z1].copy()) - divergence(g)[sp.z0:sp.z1]).max())
    out["laplacian"] = float(np.abs(sp.laplacian(ul) - laplacian(u)[sp.z0:sp.z1]).max())
    out["tv"] = abs(sp.tv_value(ul) - tv_value(u)) / tv_value(u)
    b0 = comm.stats.bytes.get("alltoallv", 0)
    sp.halo(ul)
    out["halo_bytes"] = comm.stats.bytes.get("alltoallv", 0) - b0
    out["expected_halo_bytes"] = halo_bytes(sp.bounds, N * N, 16) if comm.size > 1 else 0
    Pg = Projector(N, NZ, angles, n_det=W, dtype=np.complex128)
    ref = Pg.fwd(u)
    out["project"] = float(np.abs(sp.project(ul) - ref[sp.my_angles]).max() / np.abs(ref).max())
    bp = Pg.adj(G)
    out["backproject"] = float(np.abs(sp.backproject(mine) - bp[sp.z0:sp.z1]).max() / np.abs(bp).max())
    out["allgather"] = float(np.abs(sp.allgather(ul) - u).max())
    out["dot"] = abs(sp.dot(ul, ul) - float(np.vdot(u, u).real)) / float(np.vdot(u, u).real)
    out["rows"] = [sp.z0, sp.z1]
    return out


def assert_checks(outs: list[dict]) -> None:
    """``outs``: every rank's :func:`run_checks` result. Values match the global operators to rounding, and
    the bytes all ranks sent together equal the formulas of hpc_pt.parallel.slabs."""
    for out in outs:
        for key in ("to_slabs", "to_angles", "gradient", "divergence", "laplacian", "allgather"):
            assert out[key] < 1e-12, (key, out[key])
        for key in ("tv", "project", "backproject", "dot"):
            assert out[key] < 1e-12, (key, out[key])
    total = {k: sum(o[k] for o in outs) for k in ("to_slabs_bytes", "to_angles_bytes", "halo_bytes")}
    assert total["to_slabs_bytes"] == outs[0]["expected_transpose_bytes"], (total, outs[0])
    assert total["to_angles_bytes"] == outs[0]["expected_transpose_bytes"], (total, outs[0])
    assert total["halo_bytes"] == outs[0]["expected_halo_bytes"], (total, outs[0])
    rows = sorted(tuple(o["rows"]) for o in outs)
    assert rows[0][0] == 0 and rows[-1][1] == NZ and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
