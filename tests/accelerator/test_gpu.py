"""CuPy backend equivalence: every operator and one solver give the NumPy answer on a GPU.

Marked ``gpu``: skipped cleanly (tests/conftest.py) when CuPy is missing or sees no CUDA device; they run
on a GPU machine with ``pip install ".[gpu,test]"``.
"""
import numpy as np
import pytest

from hpc_pt.operators import ExpMap, Gradient, Pad, Projector, Ptychography, dot_test

pytestmark = pytest.mark.gpu


def crand(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def close(a_gpu, b_cpu, tol=1e-5):
    a = a_gpu.get()
    return np.linalg.norm(a - b_cpu) <= tol * np.linalg.norm(b_cpu)


def test_projector_gpu_matches_cpu(rng):
    import cupy as cp

    angles = np.linspace(0, np.pi, 9, endpoint=False)
    cpu = Projector(24, 4, angles, n_det=28)
    gpu = Projector(24, 4, angles, n_det=28, gpu=True)
    u, p = crand(rng, cpu.shape_in), crand(rng, cpu.shape_out)
    assert close(gpu.fwd(cp.asarray(u)), cpu.fwd(u))
    assert close(gpu.adj(cp.asarray(p)), cpu.adj(p))
    assert dot_test(gpu, xp=cp) <= 1e-5


@pytest.mark.parametrize("fractional", [False, True])
def test_ptychography_gpu_matches_cpu(rng, fractional):
    import cupy as cp

    probe = crand(rng, (8, 8))
    pos = rng.uniform(0, 20, (30, 2))
    if not fractional:
        pos = np.round(pos)
    aidx = rng.integers(0, 2, 30)
    cpu = Ptychography(probe, pos, (2, 29, 29), angle_index=aidx)
    gpu = Ptychography(cp.asarray(probe), pos, (2, 29, 29), angle_index=aidx)
    psi, y = crand(rng, cpu.shape_in), crand(rng, cpu.shape_out)
    assert close(gpu.fwd(cp.asarray(psi)), cpu.fwd(psi))
    assert close(gpu.adj(cp.asarray(y)), cpu.adj(y))


def test_small_operators_gpu_match_cpu(rng):
    import cupy as cp

    u = crand(rng, (5, 6, 7))
    G = Gradient(u.shape)
    assert close(G.fwd(cp.asarray(u)), G.fwd(u))
    P = Pad((2, 5, 7), (9, 11), (2, 3), np.complex64)
    x = crand(rng, (2, 5, 7))
    assert close(P.fwd(cp.asarray(x)), P.fwd(x))
    E = ExpMap(0.7)
    assert close(E.vjp(cp.asarray(u), cp.asarray(u)), E.vjp(u, u))


def test_apt_gpu_matches_cpu():
    from hpc_pt.pipeline import reconstruct
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=16, angles=8, probe_size=8, probe_fwhm=3, step=2, field_pad=3))
    cpu = reconstruct(ds, method="apt", iterations=5)
    gpu = reconstruct(ds, method="apt", iterations=5, device="gpu")
    assert np.linalg.norm(gpu.volume - cpu.volume) <= 1e-3 * np.linalg.norm(cpu.volume)


def test_slab_space_gpu_matches_cpu(rng):
    """The slab layer on CuPy arrays (staged through pinned host memory, 2 in-process ranks) gives the CPU
    answer, and the ptychographic normal stencil on the GPU equals the CPU one."""
    import os
    import sys

    import cupy as cp

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    from threadcomm import run_threads

    from hpc_pt.parallel import SlabSpace

    angles = np.linspace(0, np.pi, 5, endpoint=False)
    u = crand(rng, (9, 12, 12))
    G = crand(rng, (5, 9, 14))

    def work(comm, gpu):
        ra = [[0, 2, 4], [1, 3]]
        sp = SlabSpace(comm, angles, ra, u.shape, n_det=14, gpu=gpu)
        xp = cp if gpu else np
        ul = xp.asarray(sp.local(u))
        mine = xp.asarray(G[sp.my_angles])
        res = [sp.project(ul), sp.backproject(mine), sp.laplacian(ul), sp.to_slabs(mine)]
        return [r.get() if gpu else r for r in res]

    cpu = run_threads(2, lambda c: work(c, False))
    gpu = run_threads(2, lambda c: work(c, True))
    for a, b in zip(cpu, gpu):
        for x, y in zip(a, b):
            assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(x)
    probe = crand(rng, (6, 6))
    pos = rng.uniform(0, 10, (8, 2))
    pc = Ptychography(probe, pos, (2, 18, 18), angle_index=np.repeat([0, 1], 4))
    pg = Ptychography(cp.asarray(probe), pos, (2, 18, 18), angle_index=np.repeat([0, 1], 4))
    mc, mg = pc.normal_stencil(), pg.normal_stencil().get()
    assert np.abs(mc - mg).max() <= 1e-5 * np.abs(mc).max()


@pytest.mark.parametrize("method", ["apts", "admm", "gd", "two-step"])
def test_methods_gpu_match_cpu(method):
    """Every other method on the GPU gives the CPU answer after a few iterations (linear model, constant
    start: GD's and ADMM's energy-matched constant included)."""
    from hpc_pt.pipeline import reconstruct
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=16, angles=8, probe_size=8, probe_fwhm=3, step=2, field_pad=3))
    start = {"init": "constant"} if method in ("admm", "gd") else {}
    cpu = reconstruct(ds, method=method, iterations=3, model="linear", **start)
    gpu = reconstruct(ds, method=method, iterations=3, model="linear", device="gpu", **start)
    assert np.linalg.norm(gpu.volume - cpu.volume) <= 1e-3 * np.linalg.norm(cpu.volume)
