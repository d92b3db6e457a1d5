"""The compiled far-field step of APT / APTs equals the NumPy expressions it replaces (seed 001 Eqs. 7-10)."""
import numpy as np
import pytest

from hpc_pt.solvers._fused import far_field_step
from hpc_pt.solvers.prox import frame_objective, prox_amplitude, prox_poisson


def make(rng, shape):
    du = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    lam = (0.3 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(np.complex64)
    f = (rng.random(shape) * 4).astype(np.float32)
    f[0, 0, :3] = 0.0                      # zero counts
    lam[0, 1, 1] = du[0, 1, 1]             # zt = 0 exactly: the prox takes phase 1
    return du, lam, f, np.sqrt(f)


@pytest.mark.parametrize("metric", ["gaussian", "poisson"])
@pytest.mark.parametrize("masked", [False, True])
def test_far_field_step_matches_numpy_expressions(metric, masked):
    rng = np.random.default_rng(11)
    du, lam, f, sqrt_f = make(rng, (7, 12, 10))
    mask = None
    if masked:
        mask = np.ones((12, 10), dtype=bool)
        mask[3, 4:7] = False
    r = 0.37
    prox = prox_amplitude if metric == "gaussian" else prox_poisson
    z_ref = prox(du - lam, sqrt_f if metric == "gaussian" else f, r, mask)
    lam_ref = lam + (z_ref - du)
    primal_ref = (np.abs(z_ref.astype(np.complex128) - du) ** 2).reshape(7, -1).sum(1)
    mag = np.abs(du)
    obj_ref = frame_objective(mag.astype(np.float64), f.astype(np.float64), sqrt_f.astype(np.float64), metric,
                              mask)
    rn = np.abs(mag.astype(np.float64) - sqrt_f)
    rn_ref = (rn * mask if mask is not None else rn).reshape(7, -1).sum(1)

    lam_new = lam.copy()
    z, primal, obj, rnum = far_field_step(du, lam_new, sqrt_f, f, r, mask, metric)
    scale = np.abs(z_ref).max()
    assert np.abs(z - z_ref).max() < 1e-5 * scale
    assert z[0, 1, 1] == pytest.approx(z_ref[0, 1, 1], rel=1e-5) and z[0, 1, 1].imag == 0
    assert np.abs(lam_new - lam_ref).max() < 1e-5 * scale
    np.testing.assert_allclose(primal, primal_ref, rtol=1e-5)
    np.testing.assert_allclose(obj, obj_ref, rtol=1e-5, atol=1e-9 * np.abs(obj_ref).max())
    np.testing.assert_allclose(rnum, rn_ref, rtol=1e-5)
    if masked:  # invalid pixels keep zt, so their multiplier does not move... by more than z - du = -lam
        np.testing.assert_array_equal(z[:, 3, 4:7], (du - lam)[:, 3, 4:7])


def test_far_field_step_bitwise_for_any_thread_count_and_frame_split(monkeypatch):
    rng = np.random.default_rng(12)
    du, lam, f, sqrt_f = make(rng, (96, 64, 64))       # 393k pixels: above the threading threshold
    outs = []
    for workers in ("1", "2"):
        monkeypatch.setenv("HPC_PT_FFT_WORKERS", workers)
        lam_w = lam.copy()
        outs.append((lam_w,) + far_field_step(du, lam_w, sqrt_f, f, 0.5, None, "poisson"))
    for a, b in zip(outs[0], outs[1]):
        assert np.array_equal(a, b)
    lam_s = lam.copy()
    head = far_field_step(du[:5], lam_s[:5], sqrt_f[:5], f[:5], 0.5, None, "poisson")
    assert np.array_equal(head[1], outs[0][2][:5]) and np.array_equal(lam_s[:5], outs[0][0][:5])


@pytest.mark.parametrize("metric", ["gaussian", "poisson"])
@pytest.mark.parametrize("masked", [False, True])
def test_farfield_reduce_matches_objective_misfit_and_residual(metric, masked):
    from hpc_pt.solvers._fused import farfield_reduce
    from hpc_pt.solvers.prox import data_residual

    rng = np.random.default_rng(13)
    z, _, f, sqrt_f = make(rng, (6, 11, 9))
    z[1, 2, 3] = 0                          # |z| = 0: amplitude residual takes phase 1
    mask = None
    if masked:
        mask = np.ones((11, 9), dtype=bool)
        mask[:2, 5] = False
    mag = np.abs(z)
    obj_ref = frame_objective(mag.astype(np.float64), f.astype(np.float64), sqrt_f.astype(np.float64), metric,
                              mask)
    d = np.abs(mag.astype(np.float64) - sqrt_f)
    mis_ref = (d * mask if mask is not None else d).reshape(6, -1).sum(1)
    res_ref = data_residual(z, f, sqrt_f, metric, mask)
    zz = z.copy()
    obj, mis = farfield_reduce(zz, f, sqrt_f, mask, metric, grad=True)
    np.testing.assert_allclose(obj, obj_ref, rtol=1e-5, atol=1e-9 * np.abs(obj_ref).max())
    np.testing.assert_allclose(mis, mis_ref, rtol=1e-5)
    assert np.abs(zz - res_ref).max() < 1e-5 * np.abs(res_ref).max()
    zz2 = z.copy()
    obj2, _ = farfield_reduce(zz2, f, sqrt_f, mask, metric, grad=False)
    assert np.array_equal(zz2, z) and np.array_equal(obj2, obj)   # without grad z is left alone


def test_tv_step_matches_prox_tv_multiplier_and_sums(monkeypatch):
    from hpc_pt.operators import gradient
    from hpc_pt.solvers._fused import tv_step
    from hpc_pt.solvers.prox import prox_tv

    rng = np.random.default_rng(14)
    u = (rng.standard_normal((9, 8, 7)) + 1j * rng.standard_normal((9, 8, 7))).astype(np.complex64)
    gu = np.ascontiguousarray(gradient(u), dtype=np.complex64)
    lam1 = (0.2 * (rng.standard_normal(gu.shape) + 1j * rng.standard_normal(gu.shape))).astype(np.complex64)
    lam1[:, 0, 0, 0] = gu[:, 0, 0, 0]       # |grad u - Lambda1| = 0 at one voxel: p = 0 there
    thresh = 0.4
    p_ref = prox_tv(gu - lam1, thresh)
    lam_ref = lam1 + (p_ref - gu)
    primal_ref = (np.abs(p_ref.astype(np.complex128) - gu) ** 2).sum(axis=0).reshape(9, -1).sum(1)
    tv_ref = np.sqrt((np.abs(gu.astype(np.complex128)) ** 2).sum(axis=0)).reshape(9, -1).sum(1)
    lam_new = lam1.copy()
    p, primal, tv = tv_step(gu, lam_new, thresh)
    assert np.abs(p - p_ref).max() < 1e-5 * np.abs(p_ref).max()
    assert np.all(p[:, 0, 0, 0] == 0)
    assert np.abs(lam_new - lam_ref).max() < 1e-5 * np.abs(lam_ref).max()
    np.testing.assert_allclose(primal, primal_ref, rtol=1e-5)
    np.testing.assert_allclose(tv, tv_ref, rtol=1e-5)
    # rows are independent: a slab of rows gives those rows' bits
    lam_s = lam1[:, 3:7].copy()
    p_s, primal_s, tv_s = tv_step(np.ascontiguousarray(gu[:, 3:7]), lam_s, thresh)
    assert np.array_equal(p_s, p[:, 3:7]) and np.array_equal(tv_s, tv[3:7]) and np.array_equal(lam_s, lam_new[:, 3:7])
