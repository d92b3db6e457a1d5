"""Seed 001's closed-form proxes against numerical minimisers, and the CG used for the u-update."""
import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from hpc_pt.solvers.base import conjugate_gradient
from hpc_pt.solvers.prox import data_objective, prox_amplitude, prox_poisson, prox_tv


def numeric_prox(G, zt, r):
    """argmin_z G(|z|) + r/2 |z - zt|^2 over complex z by a 2D numerical minimiser."""
    obj = lambda v: G(abs(v[0] + 1j * v[1])) + 0.5 * r * abs(v[0] + 1j * v[1] - zt) ** 2
    best = min((minimize(obj, x0, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-14,
                                                                    "maxiter": 20000})
                for x0 in ([zt.real, zt.imag], [2 * zt.real, 2 * zt.imag], [0.1, 0.1])), key=lambda s: s.fun)
    return best.x[0] + 1j * best.x[1]


@pytest.mark.parametrize("metric", ["gaussian", "poisson"])
def test_z_prox_is_exact(rng, metric):
    for _ in range(12):
        zt = complex(*rng.normal(0, 2, 2))
        f = float(rng.uniform(0, 9))
        r = float(rng.uniform(0.1, 5))
        if metric == "gaussian":
            G = lambda rho: 0.5 * (rho - np.sqrt(f)) ** 2
            z = prox_amplitude(np.array([zt]), np.array([np.sqrt(f)]), r)[0]
        else:
            G = lambda rho: 0.5 * (rho ** 2 - f * np.log(max(rho, 1e-300) ** 2))
            z = prox_poisson(np.array([zt]), np.array([f]), r)[0]
        zn = numeric_prox(G, zt, r)
        total = lambda q: G(abs(q)) + 0.5 * r * abs(q - zt) ** 2
        assert total(z) <= total(zn) + 1e-9
        assert abs(z - zn) < 1e-4 * (1 + abs(zn))


def test_prox_respects_mask():
    zt = np.array([1 + 1j, 2.0])
    z = prox_amplitude(zt, np.array([5.0, 5.0]), 1.0, mask=np.array([True, False]))
    assert z[1] == zt[1] and abs(z[0]) == pytest.approx((5 + np.sqrt(2)) / 2)


def test_tv_prox_matches_numerical_minimiser(rng):
    pt = rng.standard_normal((3, 2, 2, 1)) + 1j * rng.standard_normal((3, 2, 2, 1))
    t = 0.7
    p = prox_tv(pt, t)

    def obj(v):
        q = (v[: v.size // 2] + 1j * v[v.size // 2:]).reshape(pt.shape)
        return t * np.sqrt((abs(q) ** 2).sum(axis=0)).sum() + 0.5 * (abs(q - pt) ** 2).sum()

    x0 = np.concatenate([pt.real.ravel(), pt.imag.ravel()])
    res = minimize(obj, x0, method="Powell", options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 200000})
    v = np.concatenate([p.real.ravel(), p.imag.ravel()])
    assert obj(v) <= res.fun + 1e-8


def test_data_objective_zero_at_exact_fit(rng):
    f = rng.uniform(0, 4, (5, 5))
    for metric in ("gaussian", "poisson"):
        assert data_objective(np.sqrt(f), f, np.sqrt(f), metric) == pytest.approx(0, abs=1e-12)
        assert data_objective(np.sqrt(f) * 1.1, f, np.sqrt(f), metric) > 0


def test_conjugate_gradient_solves_spd_system(rng):
    n = 30
    A = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    A = A.conj().T @ A + n * np.eye(n)
    x_true = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    b = A @ x_true
    dot = lambda a, c: float(np.vdot(a, c).real)
    x, info = conjugate_gradient(lambda v: A @ v, b, np.zeros(n, complex), dot, tol=1e-10, max_iter=200)
    assert np.linalg.norm(x - x_true) / np.linalg.norm(x_true) < 1e-8
    assert info.iterations <= n + 5 and info.residual <= 1e-10
    # a warm start at the solution needs no iteration
    x2, info2 = conjugate_gradient(lambda v: A @ v, b, x_true, dot, tol=1e-6)
    assert info2.iterations <= 1


def test_conjugate_gradient_zero_start_skips_one_application(rng):
    """x0=None: the iterates of an explicit zero start, with one application of A fewer."""
    n = 20
    A = rng.standard_normal((n, n))
    A = A.T @ A + n * np.eye(n)
    b = rng.standard_normal(n)
    b_before = b.copy()
    dot = lambda a, c: float(np.vdot(a, c).real)
    calls = []

    def apply_a(v):
        calls.append(1)
        return A @ v

    x_zero, info_zero = conjugate_gradient(apply_a, b, np.zeros(n), dot, tol=1e-8, max_iter=7)
    n_zero = len(calls)
    calls.clear()
    x_none, info_none = conjugate_gradient(apply_a, b, None, dot, tol=1e-8, max_iter=7)
    assert len(calls) == n_zero - 1 == info_none.iterations
    assert info_none.iterations == info_zero.iterations
    np.testing.assert_allclose(x_none, x_zero, rtol=1e-12, atol=1e-14 * np.linalg.norm(x_zero))
    np.testing.assert_array_equal(b, b_before)  # the right-hand side is not modified in place
