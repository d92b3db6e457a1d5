"""The deterministic CPU NUFFT pair (spread-only finufft + scipy.fft): accuracy, adjointness, bit stability.

Deterministic mode (docs/parallel.md) needs every slice's transform to be bitwise independent of how many
slices one call holds and of the thread count; these tests pin that, and that the split pair is as accurate
as finufft's own transform at the same tolerance.
"""
import numpy as np
import pytest

from hpc_pt.backend import NufftPair2D


def radial_points(n_angles, n_radial):
    th = np.linspace(0, np.pi, n_angles, endpoint=False)
    r = (np.arange(n_radial) - n_radial // 2) * 2 * np.pi / n_radial
    return (np.cos(th)[:, None] * r).ravel(), (np.sin(th)[:, None] * r).ravel()


def direct_type2(f, kx, ky):
    """c_j = sum f[m, n] exp(-i (kx_j m' + ky_j n')), centred indices, in float64."""
    n1, n2 = f.shape[-2:]
    m1 = np.arange(n1) - n1 // 2
    m2 = np.arange(n2) - n2 // 2
    e1 = np.exp(-1j * np.outer(kx, m1))
    e2 = np.exp(-1j * np.outer(ky, m2))
    return np.einsum("jm,jn,tmn->tj", e1, e2, f.astype(np.complex128))


def random_complex(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype, tol", [(np.complex64, 3e-5), (np.complex128, 1e-10)])
@pytest.mark.parametrize("modes", [(24, 24), (23, 26)])
def test_split_pair_matches_direct_sums_and_is_adjoint(dtype, tol, modes):
    rng = np.random.default_rng(3)
    kx, ky = radial_points(7, 37)
    pair = NufftPair2D(kx, ky, modes, dtype=dtype, deterministic=True)
    f = random_complex(rng, (3,) + modes, dtype)
    c = random_complex(rng, (3, kx.size), dtype)
    Af = pair.type2(f)
    ref = direct_type2(f, kx, ky)
    assert np.linalg.norm(Af - ref) / np.linalg.norm(ref) < tol
    # type 1 against the direct adjoint sums
    n1, n2 = modes
    e1 = np.exp(1j * np.outer(kx, np.arange(n1) - n1 // 2))
    e2 = np.exp(1j * np.outer(ky, np.arange(n2) - n2 // 2))
    ref1 = np.einsum("jm,jn,tj->tmn", e1, e2, c.astype(np.complex128))
    Ahc = pair.type1(c)
    assert np.linalg.norm(Ahc - ref1) / np.linalg.norm(ref1) < tol
    # the pair is an exact adjoint pair (dot test)
    lhs, rhs = np.vdot(c, Af), np.vdot(Ahc, f)
    assert abs(lhs - rhs) / abs(lhs) < (1e-5 if dtype == np.complex64 else 1e-12)


def test_split_pair_agrees_with_finufft_plans():
    """Same transform as the non-deterministic (finufft FFT) plans, to the requested accuracy."""
    rng = np.random.default_rng(4)
    kx, ky = radial_points(12, 85)
    f = random_complex(rng, (4, 64, 64), np.complex64)
    fast = NufftPair2D(kx, ky, (64, 64), deterministic=False).type2(f)
    det = NufftPair2D(kx, ky, (64, 64), deterministic=True).type2(f)
    assert np.linalg.norm(det - fast) / np.linalg.norm(fast) < 2e-5


def test_split_pair_bitwise_for_any_batch_split_and_thread_count(monkeypatch):
    """Each slice's result has the same bits whether it is transformed alone, in any batch, on 1 or 2 threads."""
    rng = np.random.default_rng(5)
    kx, ky = radial_points(9, 85)
    n = 64                                   # 96^2 grid x 32 slices > 2^18: the FFT runs threaded
    f = random_complex(rng, (32, n, n), np.complex64)
    c = random_complex(rng, (32, kx.size), np.complex64)
    monkeypatch.setenv("HPC_PT_NUFFT_THREADS", "1")
    pair = NufftPair2D(kx, ky, (n, n), deterministic=True)
    full2, full1 = pair.type2(f), pair.type1(c)
    parts2 = np.concatenate([pair.type2(f[:1]), pair.type2(f[1:13]), pair.type2(f[13:])])
    parts1 = np.concatenate([pair.type1(c[:1]), pair.type1(c[1:13]), pair.type1(c[13:])])
    assert np.array_equal(parts2, full2) and np.array_equal(parts1, full1)
    monkeypatch.setenv("HPC_PT_NUFFT_THREADS", "2")
    pair2 = NufftPair2D(kx, ky, (n, n), deterministic=True)
    assert np.array_equal(pair2.type2(f), full2)
    assert np.array_equal(pair2.type1(c), full1)
