"""Priors behind denoise(x, strength): the TV prox against a brute-force minimiser, identities, registry;
priors on slab-distributed volumes (1-3 thread-ranks) against the serial ones; ADMM's distributed
percentile."""
import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from hpc_pt.operators import divergence, gradient, tv_value
from hpc_pt.parallel import SerialComm, SlabSpace
from hpc_pt.priors import (
    Denoiser,
    NoPrior,
    TVDenoiser,
    available_denoisers,
    denoise,
    get_denoiser,
    is_slab_aware,
    prior_value,
    register_denoiser,
)
from hpc_pt.priors import registry as prior_base
from threadcomm import run_threads


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


# ---------------------------------------------------------------- priors on slab-distributed volumes
def on_ranks(size, fn):
    """fn(comm) on ``size`` thread-ranks; the list of their results (size 1: a SerialComm)."""
    if size == 1:
        return [fn(SerialComm())]
    return run_threads(size, fn)


def space_of(comm, shape):
    """A slab space over ``shape`` (the angles are irrelevant to the priors)."""
    angles = np.linspace(0, np.pi, comm.size, endpoint=False)
    return SlabSpace(comm, angles, [[r] for r in range(comm.size)], shape, n_det=shape[1] + 2,
                     dtype=np.complex128)


def gathered(size, shape, fn):
    """Run fn(space, slab_of) on ``size`` ranks; results' slabs concatenated (arrays) or rank 0's (else)."""
    def work(comm):
        sp = space_of(comm, shape)
        return sp, fn(sp, lambda full: full[sp.z0:sp.z1].copy())

    res = on_ranks(size, work)
    first = res[0][1]
    if isinstance(first, tuple):
        return tuple(np.concatenate([r[1][i] for r in res]) if hasattr(first[i], "shape") else first[i]
                     for i in range(len(first)))
    return np.concatenate([r[1] for r in res]) if hasattr(first, "shape") else first


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_tv_on_slabs_equals_serial(size, mode):
    """TV's prox and value on 1-3 slabs (7 rows: uneven slabs) equal the serial ones, warm start included
    (the stopping test uses global norms, so every rank stops at the serial iteration)."""
    rng = np.random.default_rng(3)
    shape = (7, 5, 5)
    x1 = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    x2 = x1 + 0.1 * rng.standard_normal(shape)
    serial = TVDenoiser(n_iter=200, tol=1e-5, mode=mode)
    ref1, ref2 = serial.denoise(x1, 0.3), serial.denoise(x2, 0.3)
    its, val, p_ref = serial.last_iterations, serial.value(ref2), serial.state()["p"]

    def run(sp, mine):
        den = TVDenoiser(n_iter=200, tol=1e-5, mode=mode)
        a = denoise(den, mine(x1), 0.3, space=sp)
        b = denoise(den, mine(x2), 0.3, space=sp)
        return a, b, den.last_iterations, prior_value(den, b, space=sp), np.moveaxis(den.state()["p"], 1, 0)

    a, b, it, v, p = gathered(size, shape, run)
    assert it == its
    np.testing.assert_allclose(a, ref1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b, ref2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.moveaxis(p, 0, 1), p_ref, rtol=0, atol=1e-12)  # the warm-start dual
    assert abs(v - val) <= 1e-12 * val


class Pointwise(Denoiser):
    """Soft shrinkage of every voxel (receptive field 0)."""

    name = "pointwise"

    def denoise(self, x, strength):
        mag = np.abs(x)
        return x * np.maximum(1 - strength / np.maximum(mag, 1e-30), 0)


class Box(Denoiser):
    """(1 - s) x + s * 3x3x3 mean (receptive field 1 row; 'nearest' edges at the volume's ends)."""

    name = "box"

    def denoise(self, x, strength):
        from scipy.ndimage import uniform_filter

        sm = uniform_filter(x.real, 3, mode="nearest") + 1j * uniform_filter(x.imag, 3, mode="nearest")
        return (1 - strength) * x + strength * sm

    def value(self, x):
        return float(np.abs(x).sum())


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("den,halo,exact", [(Pointwise(), 0, True), (Box(), 1, True), (Box(), 3, True),
                                            (Box(), None, True), (Box(), 0, False)])
def test_generic_denoiser_on_slabs_with_halo(size, den, halo, exact):
    """A denoiser without slab support gets its slab plus ``halo`` neighbouring rows: equal to the serial
    result when the halo covers its receptive field (3 rows over slabs of 2-3 rows: rows from two ranks
    away), and not equal when it does not (box filter, halo 0)."""
    rng = np.random.default_rng(5)
    shape = (7, 4, 4)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    den.halo = halo
    ref = den.denoise(x, 0.4)
    out = gathered(size, shape, lambda sp, mine: denoise(den, mine(x), 0.4, space=sp))
    if exact or size == 1:
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-14)
    else:
        assert np.abs(out - ref).max() > 1e-3
    val = gathered(size, shape, lambda sp, mine: prior_value(den, mine(x), space=sp))
    if isinstance(den, Box):
        assert val == pytest.approx(den.value(x), rel=1e-12)  # gathered volume
    else:
        assert np.isnan(val)  # no functional: no exchange, NaN


def test_registry_halo(monkeypatch):
    monkeypatch.setattr(prior_base, "_REGISTRY", dict(prior_base._REGISTRY))
    monkeypatch.setattr(prior_base, "_HALOS", dict(prior_base._HALOS))
    register_denoiser("box", Box, halo=1)
    assert get_denoiser("box").halo == 1
    register_denoiser("box", Box, overwrite=True)
    assert get_denoiser("box").halo is None
    with pytest.raises(ValueError, match="halo"):
        register_denoiser("box2", Box, halo=-1)
    assert is_slab_aware(get_denoiser("tv")) and is_slab_aware(get_denoiser("none"))
    assert not is_slab_aware(Box())


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_distributed_percentile_is_numpy_percentile(size, dtype):
    """ADMM's s_u: the exact percentile of |u| over all slabs, whatever the split."""
    from hpc_pt.solvers.admm import distributed_percentile

    rng = np.random.default_rng(11)
    shape = (7, 6, 6)
    u = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    u[2, 1] = 0  # ties and zeros
    u[4] = u[3]
    for q in (0, 37.5, 99, 100):
        ref = float(np.percentile(np.abs(u).astype(np.float64), q))
        got = gathered(size, shape, lambda sp, mine, q=q: distributed_percentile(mine(u), q, sp.comm))
        assert got == pytest.approx(ref, rel=1e-12, abs=0), q
