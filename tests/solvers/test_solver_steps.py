"""Each seed equation's solver method on its own (issue: one solver shape), and the generic loop :func:`run`.

Small complex128 problems; every test asserts the property the equation promises (a sub-problem solved or
not made worse, an optimality condition, an update rule), not the code's own output.
"""
import copy
from dataclasses import dataclass

import numpy as np
import pytest

from hpc_pt.operators import ForwardModel
from hpc_pt.parallel import SerialComm, SlabSpace
from hpc_pt.priors import denoise, get_denoiser
from hpc_pt.simulate import SimulationConfig, simulate_dataset
from hpc_pt.solvers.admm import ADMM, ADMMOptions, balance_penalty, distributed_percentile
from hpc_pt.solvers.apt import APT, APTOptions
from hpc_pt.solvers.base import Checkpointer, History, IterativeSolver, Shard, run
from hpc_pt.solvers.gd import GD, GDOptions, JointModel, loss_and_gradient
from hpc_pt.solvers.prox import frame_objective
from hpc_pt.solvers.tomo import CGLS


@pytest.fixture(scope="module", autouse=True)
def _one_nufft_thread():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPC_PT_NUFFT_THREADS", "1")
        yield


def _shard(model: str, noise: str = "none"):
    cfg = SimulationConfig(size=10, angles=6, probe_size=8, probe_fwhm=3.0, step=2, field_pad=3, model=model,
                           phantom="shepp-logan", noise=noise, peak=1e3, seed=0)
    ds = simulate_dataset(cfg)
    t = ds.truth
    fm = ForwardModel(t["volume"].shape, ds.angles_rad, ds.probe.astype(np.complex128),
                      [a.positions for a in ds.angles], ds.geometry.field_shape, model=t["model"],
                      c=t.get("k_dz", 1.0), dtype=np.complex128)
    f = np.concatenate([a.frames for a in ds.angles]).astype(np.float64)
    A = len(ds.angles)
    space = SlabSpace(SerialComm(), ds.angles_rad, [list(range(A))], t["volume"].shape,
                      n_det=ds.geometry.field_shape[1], dtype=np.complex128)
    return Shard(model=fm, intensities=f, angle_ids=np.arange(A), space=space), t["volume"]


@pytest.fixture(scope="module")
def linear():
    return _shard("linear")


@pytest.fixture(scope="module")
def exp():
    return _shard("exp")


def _started(solver):
    solver.state = solver.start()
    solver.ready(resumed=False)
    return solver


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _rand_like(x, rng, scale=1.0):
    return scale * (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape))


# ---------------------------------------------------------------- APT (seed 001 Algorithm 1)
def test_apt_u_update_solves_eq6(linear):
    sh, _ = linear
    apt = _started(APT(sh, SerialComm(), APTOptions(cg_max_iter=400, cg_tol=1e-12)))
    st = apt.state
    rng = np.random.default_rng(0)
    st.z = st.z + _rand_like(st.z, rng, 0.1 * np.abs(st.z).max())
    st.p = _rand_like(st.p, rng, 0.1 * st.scale)
    rhs = apt.r2 * apt.D.adj(st.z + st.lambda2) - apt.r1 * sh.space.divergence(st.p + st.lambda1)
    # L is Hermitian positive definite (CG's premise)
    x, y = _rand_like(st.u, rng), _rand_like(st.u, rng)
    assert abs(np.vdot(x, apt.apply_l(y)) - np.vdot(apt.apply_l(x), y)) <= 1e-10 * abs(np.vdot(x, apt.apply_l(y)))
    assert np.vdot(x, apt.apply_l(x)).real > 0
    before = np.linalg.norm(apt.apply_l(st.u) - rhs)
    info = apt.u_update()
    after = np.linalg.norm(apt.apply_l(st.u) - rhs)
    assert after <= 1e-8 * np.linalg.norm(rhs) and after < before and info.iterations > 0


@pytest.mark.parametrize("metric", ["gaussian", "poisson"])
def test_apt_z_update_minimises_the_z_subproblem(linear, metric):
    sh, _ = linear
    apt = _started(APT(sh, SerialComm(), APTOptions(metric=metric)))
    st = apt.state
    rng = np.random.default_rng(1)
    du = apt.D.fwd(st.u) * 1.1
    st.lambda2 = _rand_like(st.lambda2, rng, 0.05 * np.abs(du).max())
    zt = du - st.lambda2
    apt.z_update(du)

    def phi(z):  # per-frame G(|z|) + r2/2 |z - zt|^2
        g = frame_objective(np.abs(z), sh.intensities, sh.amplitudes, metric)
        return g + 0.5 * apt.r2 * (np.abs(z - zt) ** 2).sum(axis=(1, 2))

    best = phi(st.z)
    for k in range(8):
        d = _rand_like(st.z, rng, 1e-3 * np.abs(st.z).max())
        assert np.all(best <= phi(st.z + d) + 1e-12 * np.abs(best)), k


def test_apt_p_update_is_the_tv_prox(linear):
    sh, _ = linear
    apt = _started(APT(sh, SerialComm(), APTOptions()))
    st = apt.state
    rng = np.random.default_rng(2)
    gu = _rand_like(st.p, rng, 0.2 * st.scale)  # |pt| on both sides of the threshold 0.5 c
    st.lambda1 = _rand_like(st.p, rng, 0.02 * st.scale)
    pt = gu - st.lambda1
    apt.p_update(gu)

    def phi(p):  # thresh ||p||_{2,1} + 1/2 ||p - pt||^2 (seed 001 Step 2)
        return apt.thresh * np.sqrt((np.abs(p) ** 2).sum(axis=0)).sum() + 0.5 * (np.abs(p - pt) ** 2).sum()

    best = phi(st.p)
    for _ in range(8):
        assert best <= phi(st.p + _rand_like(st.p, rng, 1e-3 * st.scale)) + 1e-12 * best
    assert np.count_nonzero(np.sqrt((np.abs(st.p) ** 2).sum(axis=0)) == 0) > 0  # thresholded to zero somewhere


def test_apt_multiplier_update_is_eq10(linear):
    sh, _ = linear
    apt = _started(APT(sh, SerialComm(), APTOptions()))
    st = apt.state
    rng = np.random.default_rng(3)
    du, gu = apt.D.fwd(st.u), sh.space.gradient(st.u)
    st.z, st.p = _rand_like(st.z, rng), _rand_like(st.p, rng)
    l2, l1 = st.lambda2.copy(), st.lambda1.copy()
    apt.multiplier_update(du, gu)
    assert _rel(st.lambda2 - l2, st.z - du) < 1e-12 and _rel(st.lambda1 - l1, st.p - gu) < 1e-12


def test_apt_probe_update_solves_its_least_squares(linear):
    """The probe update zeroes the gradient of sum_j ||F^H t_j - w S_j psi||^2 in w (up to its 1e-6
    regulariser)."""
    from hpc_pt.backend import ifft2c

    sh, _ = linear
    apt = _started(APT(sh, SerialComm(), APTOptions()))
    st = apt.state
    psi = apt.D.psi(st.u)
    rng = np.random.default_rng(4)
    st.z = apt.D.fwd(st.u) + _rand_like(st.z, rng, 0.01 * np.abs(st.z).max())
    apt.probe_update(psi)
    w, S = st.probe, apt.D.pt.patches(psi)
    grad = (np.conj(S) * (w * S - ifft2c(st.z + st.lambda2))).sum(axis=0)
    assert np.linalg.norm(grad) <= 1e-4 * np.linalg.norm((np.conj(S) * ifft2c(st.z)).sum(axis=0))
    assert st.probe is apt.D.pt.probe  # the state and the operator agree


# ---------------------------------------------------------------- ADMM (seed 000)
@pytest.mark.parametrize("metric", ["gaussian", "poisson"])
def test_admm_psi_update_does_not_increase_any_angles_subproblem(exp, metric):
    sh, _ = exp
    admm = _started(ADMM(sh, SerialComm(), ADMMOptions(metric=metric)))
    st = admm.state
    t = admm.Tu * 1.05
    before = admm.sub_objective(st.psi, admm.evaluate(st.psi, False), t, st.rho)
    new = admm.psi_update(st.psi, t, st.rho)
    after = admm.sub_objective(new, admm.evaluate(new, False), t, st.rho)
    assert np.all(after <= before) and np.any(after < before)


def test_admm_u_update_solves_the_linear_subproblem(linear):
    """Linear model: one Gauss-Newton step with enough CG iterations is the exact u-subproblem solution, so
    the normal equations' residual vanishes."""
    sh, truth = linear
    admm = _started(ADMM(sh, SerialComm(), ADMMOptions(tomo_cg_iterations=300)))
    st, sp = admm.state, sh.space
    y = sh.model.pad.fwd(sp.project(truth.astype(np.complex128)))
    b = truth.astype(np.complex128) * 0.9
    u, it, res = admm.u_update(st.u, admm.q, y, b, st.rho, st.tau)
    PtP = sp.backproject(sh.model.pad.adj(sh.model.pad.fwd(sp.project(u))))
    lhs = st.rho * PtP + st.tau * u
    rhs = st.rho * sp.backproject(sh.model.pad.adj(y)) + st.tau * b
    assert _rel(lhs, rhs) < 1e-6 and it > 0 and res < 1e-5


def test_admm_u_update_decreases_the_exp_subproblem(exp):
    sh, truth = exp
    admm = _started(ADMM(sh, SerialComm(), ADMMOptions(tomo_cg_iterations=20)))
    st, sp = admm.state, sh.space
    y = admm.transmission(sp.P.fwd(0.5 * truth.astype(np.complex128)))
    b = st.v

    def phi(u):
        return 0.5 * st.rho * np.linalg.norm(admm.transmission(sp.P.fwd(u)) - y) ** 2 \
            + 0.5 * st.tau * np.linalg.norm(u - b) ** 2

    u, _, _ = admm.u_update(st.u, admm.q, y, b, st.rho, st.tau)
    assert phi(u) < 0.9 * phi(st.u)


def test_admm_prior_update_fixes_alpha_once(exp):
    sh, truth = exp
    admm = _started(ADMM(sh, SerialComm(), ADMMOptions(prior="tv", prior_weight=0.05)))
    st = admm.state
    u = truth.astype(np.complex128)
    mu = np.zeros_like(u)
    v, strength = admm.prior_update(u, mu, st.tau)
    alpha = admm.opts.prior_weight * admm.tau0 * np.percentile(np.abs(u), 99)
    assert st.alpha == pytest.approx(alpha, rel=1e-12) and strength == pytest.approx(alpha / st.tau, rel=1e-12)
    assert st.s_u == pytest.approx(distributed_percentile(u, 99, SerialComm()), rel=1e-15)
    ref = denoise(get_denoiser("tv"), u + mu / st.tau, alpha / st.tau, space=sh.space)  # a cold start, as its first
    assert _rel(v, ref) < 1e-12
    admm.prior_update(2 * u, mu, st.tau)
    assert st.alpha == pytest.approx(alpha, rel=1e-12)  # fixed after the first call


def test_admm_dual_update(exp):
    sh, _ = exp
    admm = _started(ADMM(sh, SerialComm(), ADMMOptions()))
    st = admm.state
    rng = np.random.default_rng(5)
    st.psi = _rand_like(st.psi, rng)
    st.v = _rand_like(st.v, rng)
    lam, mu = st.lam.copy(), st.mu.copy()
    admm.dual_update()
    assert _rel(st.lam - lam, st.rho * (st.psi - admm.Tu)) < 1e-12
    assert _rel(st.mu - mu, st.tau * (st.u - st.v)) < 1e-12


def test_admm_balance_rules(exp):
    opts = ADMMOptions()
    assert balance_penalty(1.0, 100.0, 1.0, opts) == 2.0
    assert balance_penalty(1.0, 1.0, 100.0, opts) == 0.5
    assert balance_penalty(1.0, 5.0, 1.0, opts) == 1.0
    assert balance_penalty(1.0, np.nan, 1.0, opts) == 1.0
    sh, _ = exp
    admm = _started(ADMM(sh, SerialComm(), opts))
    st = admm.state
    rho, tau = st.rho, st.tau
    res = dict(primal_residual=1.0, dual_residual=1e-3 * admm.rho0, primal_residual_prior=1e-3,
               dual_residual_prior=admm.tau0, primal_residual_rel=0, dual_residual_rel=0,
               primal_residual_prior_rel=0, dual_residual_prior_rel=0)
    admm.balance(res)  # the normalised rule: rho up, tau down
    assert st.rho == 2 * rho and st.tau == tau / 2


# ---------------------------------------------------------------- GD (seed 002)
def test_gd_line_search_meets_armijo_and_gradient_is_the_models(exp):
    sh, truth = exp
    gd = _started(GD(sh, SerialComm(), GDOptions()))
    st = gd.state
    L, g = loss_and_gradient(JointModel(sh), sh, SerialComm(), st.u)
    assert st.loss == pytest.approx(L, rel=1e-12) and _rel(st.g, g) < 1e-12
    gg = sh.space.dot(st.g, st.g)
    t, pu_new, new_loss, _, _, moved = gd.line_search(sh.space.project(st.g), gg)
    assert moved and new_loss <= st.loss - gd.opts.armijo_c1 * t * gg
    assert gd.next_step(t, 3) == pytest.approx(t * gd.opts.growth / (1 + gd.opts.eps * 3), rel=1e-15)


# ---------------------------------------------------------------- tomography CGLS
def test_cgls_step_decreases_the_objective_and_stops_at_tol(linear):
    sh, truth = linear
    sp = sh.space
    p = sp.P.fwd(truth.astype(np.complex128))
    cg = _started(CGLS(sp.P, p, SerialComm(), tol=1e-3, space=sp))
    objs = []
    for k in range(200):
        if cg.converged():
            break
        objs.append(cg.step(k)["objective"])
    assert cg.converged() and len(objs) < 200
    assert all(b <= a * (1 + 1e-12) for a, b in zip(objs, objs[1:]))


# ---------------------------------------------------------------- the generic loop
@dataclass
class _CountState:
    x: object
    n: float


class _Halving(IterativeSolver):
    """x <- x / 2 until |x| < tol (a stopping rule), with a breakdown at ``fail_at``."""

    State = _CountState

    def __init__(self, tol=0.0, fail_at=None):
        self.tol, self.fail_at = tol, fail_at

    def start(self):
        return _CountState(x=np.ones(3), n=0.0)

    def converged(self):
        return float(np.abs(self.state.x).max()) < self.tol

    def step(self, k):
        if k == self.fail_at:
            return None
        self.state.x = self.state.x / 2
        self.state.n += 1
        return {"value": float(self.state.x[0])}

    def iterate(self):
        return self.state.x

    def result(self, history):
        return self.state.x, history


def test_run_owns_rows_callbacks_stopping_and_checkpoints():
    rows, saved = [], {}
    x, hist = run(_Halving(), 6, lambda row, it: rows.append((row["iteration"], it[0])),
                  Checkpointer(2, lambda st: saved.setdefault(st["iteration"], copy.deepcopy(st))))
    assert [r["iteration"] for r in hist.rows] == [1, 2, 3, 4, 5, 6] and x[0] == 1 / 64
    assert rows == [(k, 0.5 ** k) for k in range(1, 7)]
    assert sorted(saved) == [2, 4, 6] and set(saved[4]) == {"iteration", "x", "n", "history"}
    assert all(r["iter_time_s"] >= 0 and r["time_s"] >= 0 for r in hist.rows)
    # resume: continues at the saved iteration, the saved dict is left untouched
    before = copy.deepcopy(saved[2])
    x2, hist2 = run(_Halving(), 6, None, Checkpointer(resume=saved[2]))
    assert np.array_equal(x2, x) and len(hist2) == 6 and hist2.rows[:2] == hist.rows[:2]
    assert np.array_equal(saved[2]["x"], before["x"])
    # stopping rule and breakdown
    assert len(run(_Halving(tol=0.1), 50)[1]) == 4
    assert len(run(_Halving(fail_at=2), 50)[1]) == 2
    with pytest.raises(KeyError, match="no n for _CountState"):
        run(_Halving(), 3, None, Checkpointer(resume={"x": np.ones(3), "history": []}))


def test_every_iterative_solver_declares_its_state_once():
    """Every solver class has a dataclass State; its checkpoint keys are exactly the state's fields."""
    from dataclasses import fields, is_dataclass

    from hpc_pt.solvers import admm, apt, gd, ptycho2d, tomo

    classes = [c for m in (admm, apt, gd, ptycho2d, tomo) for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, IterativeSolver) and c is not IterativeSolver]
    assert {c.__name__ for c in classes} >= {"ADMM", "APT", "GD", "EPIE", "DM", "MLCG", "CGLS"}
    for c in classes:
        assert is_dataclass(c.State) and len(fields(c.State)) >= 2, c
    assert isinstance(History(), History)


def test_frame_batch_reaches_the_2d_solvers():
    """The run's frame batch reaches the 2D solvers' window operator (the 2-step passes its shard's); batching
    changes the order of the adjoint's sums only."""
    from hpc_pt.solvers.ptycho2d import DM, dm

    sh, _ = _shard("linear")
    pt = sh.model.ptycho
    f, pos = sh.intensities[:pt.n_frames // 6], np.asarray(pt.positions)[:pt.n_frames // 6]
    probe = np.asarray(pt.probe)
    assert DM(f, pos, probe, frame_batch=3).pb.op.frame_batch == 3
    a = dm(f, pos, probe, iterations=5, frame_batch=3, dtype=np.complex128)
    b = dm(f, pos, probe, iterations=5, dtype=np.complex128)
    assert _rel(a.obj, b.obj) < 1e-10
