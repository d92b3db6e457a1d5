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
