"""Priors behind denoise(x, strength): the TV prox against a brute-force minimiser, identities, registry."""
import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from hpc_pt.operators import divergence, gradient, tv_value
from hpc_pt.priors import (
    Denoiser,
    NoPrior,
    TVDenoiser,
    available_denoisers,
    get_denoiser,
    register_denoiser,
)
from hpc_pt.priors import registry as prior_base


def brute_tv_prox(x, s, mode):
    """argmin_v 1/2 ||v - x||^2 + s TV(v) by L-BFGS on the smoothed TV sqrt(|grad v|^2 + e^2), e -> 1e-6.

    Independent of the FGP solver: primal, smoothed, quasi-Newton, continuation in e (the smoothing moves
    the minimiser by O(e)).
    """
    shp, n, cplx = x.shape, x.size, np.iscomplexobj(x)

    def unpack(w):
        return (w[:n] + 1j * w[n:]).reshape(shp) if cplx else w.reshape(shp)

    def pack(v):
        return np.concatenate([v.real.ravel(), v.imag.ravel()]) if cplx else np.real(v).ravel()

    w = pack(x)
    for e in (1e-2, 1e-4, 1e-6):
        def fun(w, e=e):
            v = unpack(w)
            g = gradient(v)
            if cplx and mode == "separate":
                mr = np.sqrt((g.real ** 2).sum(0) + e * e)
                mi = np.sqrt((g.imag ** 2).sum(0) + e * e)
                val, q = mr.sum() + mi.sum(), g.real / mr + 1j * (g.imag / mi)
            else:
                m = np.sqrt((np.abs(g) ** 2).sum(0) + e * e)
                val, q = m.sum(), g / m
            return 0.5 * np.sum(np.abs(v - x) ** 2) + s * val, pack((v - x) - s * divergence(q))

        w = minimize(fun, w, jac=True, method="L-BFGS-B",
                     options={"maxiter": 20000, "maxcor": 50, "ftol": 1e-16, "gtol": 1e-12}).x
    return unpack(w)


@pytest.mark.parametrize("shape,cplx,mode", [((3, 3, 3), False, "joint"), ((4, 4, 4), True, "joint"),
                                             ((3, 3, 3), True, "separate")])
def test_tv_prox_matches_brute_force(shape, cplx, mode):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if cplx else 0)
    s = 0.3
    den = TVDenoiser(n_iter=20000, tol=1e-12, mode=mode, warm_start=False)
    v = den.denoise(x, s)
    vb = brute_tv_prox(x, s, mode)
    assert np.linalg.norm(v - vb) <= 1e-4 * np.linalg.norm(vb)  # measured 3e-7 .. 2e-6

    def obj(y):
        return 0.5 * np.sum(np.abs(y - x) ** 2) + s * den.value(y)

    assert obj(v) <= obj(vb) + 1e-9 * abs(obj(vb))  # FGP is at least as good as the smoothed minimiser


def test_joint_mode_value_is_operators_tv(rng):
    x = (rng.standard_normal((4, 5, 6)) + 1j * rng.standard_normal((4, 5, 6)))
    assert TVDenoiser(mode="joint").value(x) == pytest.approx(tv_value(x), rel=1e-12)
    sep = TVDenoiser(mode="separate").value(x)
    assert sep == pytest.approx(tv_value(x.real) + tv_value(x.imag), rel=1e-12)


@pytest.mark.parametrize("name", ["tv", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.complex128])
def test_strength_zero_is_identity(name, dtype, rng):
    x = (rng.standard_normal((5, 6, 7)) + (1j * rng.standard_normal((5, 6, 7)) if np.dtype(dtype).kind == "c"
                                           else 0)).astype(dtype)
    den = get_denoiser(name)
    v = den.denoise(x, 0.0)
    assert v is not x and v.dtype == x.dtype
    np.testing.assert_array_equal(v, x)


def test_none_is_identity_at_any_strength(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.complex64)
    np.testing.assert_array_equal(NoPrior().denoise(x, 10.0), x)
    assert NoPrior().value(x) == 0.0


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_tv_value_decreases_with_strength(mode, rng):
    x = (rng.standard_normal((8, 8, 8)) + 1j * rng.standard_normal((8, 8, 8))).astype(np.complex64)
    den = TVDenoiser(n_iter=200, mode=mode, warm_start=False)
    values = [den.value(x)] + [den.value(den.denoise(x, s)) for s in (0.05, 0.2, 1.0)]
    assert all(b < a for a, b in itertools.pairwise(values)), values
    v = den.denoise(x, 0.2)
    assert v.dtype == np.complex64 and v.shape == x.shape
    # the prox objective is below its value at v = x (TV(x) alone)
    assert 0.5 * np.sum(np.abs(v - x) ** 2) + 0.2 * den.value(v) < 0.2 * den.value(x)


def test_tv_keeps_constants_and_mean(rng):
    den = TVDenoiser(n_iter=100, warm_start=False)
    c = np.full((4, 5, 6), 2.0 - 1.0j, dtype=np.complex128)
    np.testing.assert_allclose(den.denoise(c, 1.0), c, atol=1e-12)
    x = rng.standard_normal((6, 6, 6))
    assert den.denoise(x, 0.5).mean() == pytest.approx(x.mean(), abs=1e-10)  # div has zero sum


def test_real_input_agrees_in_both_modes(rng):
    x = rng.standard_normal((5, 5, 5))
    a = TVDenoiser(n_iter=500, tol=1e-10, mode="joint", warm_start=False).denoise(x, 0.3)
    b = TVDenoiser(n_iter=500, tol=1e-10, mode="separate", warm_start=False).denoise(x, 0.3)
    assert np.isrealobj(a)
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_warm_start_gives_the_same_prox(rng):
    x = rng.standard_normal((6, 6, 6)) + 1j * rng.standard_normal((6, 6, 6))
    cold = TVDenoiser(n_iter=5000, tol=1e-11, warm_start=False).denoise(x, 0.4)
    warm = TVDenoiser(n_iter=5000, tol=1e-11, warm_start=True)
    warm.denoise(x + 0.3 * rng.standard_normal(x.shape), 0.2)  # leaves a dual from another problem
    np.testing.assert_allclose(warm.denoise(x, 0.4), cold, atol=1e-6)


def test_prox_alias_and_call(rng):
    x = rng.standard_normal((4, 4, 4))
    den = TVDenoiser(n_iter=50, warm_start=False)
    np.testing.assert_array_equal(den.prox(x, 0.1), den.denoise(x, 0.1))
    np.testing.assert_array_equal(den(x, 0.1), den.denoise(x, 0.1))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mode"):
        TVDenoiser(mode="diagonal")
    with pytest.raises(ValueError, match="n_iter"):
        TVDenoiser(n_iter=0)
    with pytest.raises(ValueError, match="strength"):
        TVDenoiser().denoise(np.zeros((2, 2, 2)), -1.0)
    with pytest.raises(ValueError, match="3D"):
        TVDenoiser().denoise(np.zeros((4, 4)), 0.1)


def test_registry(monkeypatch):
    monkeypatch.setattr(prior_base, "_REGISTRY", dict(prior_base._REGISTRY))
    assert {"tv", "none"} <= set(available_denoisers())
    assert isinstance(get_denoiser("tv"), TVDenoiser)
    assert isinstance(get_denoiser("TV "), TVDenoiser)  # case and whitespace insensitive
    assert isinstance(get_denoiser("none"), NoPrior)
    tv = get_denoiser("tv", n_iter=7, mode="separate")
    assert tv.n_iter == 7 and tv.mode == "separate"
    with pytest.raises(ValueError, match=r"unknown prior / denoiser 'bm3d'.*none.*tv"):
        get_denoiser("bm3d")

    class Shrink(Denoiser):
        name = "shrink"

        def __init__(self, factor=0.5):
            self.factor = factor

        def denoise(self, x, strength):
            return x / (1 + self.factor * strength)

    register_denoiser("shrink", Shrink)
    assert "shrink" in available_denoisers()
    d = get_denoiser("shrink", factor=1.0)
    np.testing.assert_allclose(d.denoise(np.ones(3), 1.0), 0.5 * np.ones(3))
    assert np.isnan(d.value(np.ones(3)))  # no explicit functional
    with pytest.raises(ValueError, match="already registered"):
        register_denoiser("shrink", Shrink)
    register_denoiser("shrink", lambda: Shrink(2.0), overwrite=True)
    assert get_denoiser("shrink").factor == 2.0
    with pytest.raises(TypeError, match="callable"):
        register_denoiser("bad", 3)
    with pytest.raises(ValueError, match="non-empty"):
        register_denoiser(" ", Shrink)
    register_denoiser("broken", lambda: object())
    with pytest.raises(ValueError, match="no denoise"):
        get_denoiser("broken")
    # an object with denoise passes through unchanged
    obj = Shrink()
    assert get_denoiser(obj) is obj
    with pytest.raises(ValueError, match="keyword"):
        get_denoiser(obj, factor=2)
