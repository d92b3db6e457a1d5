"""Seed 002's full-gradient descent and seed 000's three-way ADMM on small exponential-model problems.

Setup (seconds per solve): 16^3 seed-002 wire phantom (Au, Pt, ZnO, TiO2 at 5 keV, 10 nm voxels; phase up
to 0.36 rad, absorption up to 0.07), model "exp", 48 angles over 360 degrees, 8x8 disc probe of diameter 6,
raster step 3 with seed 002's 1-pixel shift per angle, field_pad 4 (the beam covers the whole volume):
1,936 frames. 48 angles for a 16-pixel slice is slightly under the tomographic Nyquist rate, which is
what limits the unregularised solvers (about 19-20 dB).

Thresholds: each is a measured value (noted) minus a margin.
"""

import numpy as np
import pytest

from hpc_pt.metrics import evaluate
from hpc_pt.operators import ForwardModel
from hpc_pt.parallel import SerialComm, SlabSpace
from hpc_pt.simulate import SimulationConfig, simulate_dataset
from hpc_pt.solvers.admm import ADMMOptions, run_admm
from hpc_pt.solvers.base import Shard
from hpc_pt.solvers.gd import (
    GDOptions,
    JointModel,
    data_residual,
    loss_and_gradient,
    run_gd,
)
from hpc_pt.solvers.prox import data_objective
from gradcheck import assert_gradient
from threadcomm import run_threads


@pytest.fixture(scope="module", autouse=True)
def _one_nufft_thread():
    """finufft's 2-thread plans are 10-100x slower than 1 thread on these tiny transforms on a loaded
    2-core machine; plans are built lazily, so setting this before any dataset is built is enough."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPC_PT_NUFFT_THREADS", "1")
        yield


def simulate(n=16, angles=48, noise="none", peak=1.0, probe=8, fwhm=6, step=3, pad=4):
    cfg = SimulationConfig(phantom="wires", size=n, angles=angles, angle_range=360, probe_kind="disc",
                           probe_size=probe, probe_fwhm=fwhm, step=step, field_pad=pad, model="exp",
                           noise=noise, peak=peak, per_angle_offset=1, seed=0)
    return simulate_dataset(cfg)


def make_space(ds, comm=None, rank_angles=None, dtype=np.complex64):
    """The slab space of ``comm``'s rank over all of ``ds``'s angles (serial: one slab, every angle)."""
    comm = comm or SerialComm()
    rank_angles = rank_angles or [list(range(len(ds.angles)))]
    return SlabSpace(comm, np.deg2rad([a.angle_deg for a in ds.angles]), rank_angles, ds.truth["volume"].shape,
                     n_det=ds.geometry.field_shape[1], dtype=dtype)


def make_shard(ds, angle_ids=None, dtype=np.complex64, frame_batch=None):
    """The shard of angles ``angle_ids``; a serial slab space when it holds every angle (else set
    ``.space`` for the rank, see :func:`run_sharded`)."""
    ids = np.arange(len(ds.angles)) if angle_ids is None else np.asarray(angle_ids)
    sel = [ds.angles[i] for i in ids]
    fm = ForwardModel(ds.truth["volume"].shape, np.deg2rad([a.angle_deg for a in sel]), ds.probe.astype(dtype),
                      [a.positions for a in sel], ds.geometry.field_shape, model="exp", c=ds.truth["k_dz"],
                      dtype=dtype, frame_batch=frame_batch)
    rdt = np.float32 if dtype == np.complex64 else np.float64
    f = np.concatenate([a.frames for a in sel]).astype(rdt)
    space = make_space(ds, dtype=dtype) if angle_ids is None else None
    return Shard(model=fm, intensities=f, angle_ids=ids, space=space)


def quality(u, truth):
    """SNR (dB) of the complex volume and of its delta and beta parts, and the NRMSE."""
    e = evaluate(u, truth)
    return {"snr": e["snr_db"], "snr_delta": evaluate(u.real, truth.real)["snr_db"],
            "snr_beta": evaluate(u.imag, truth.imag)["snr_db"], "nrmse": e["nrmse"]}


@pytest.fixture(scope="module")
def clean():
    ds = simulate()
    return ds, make_shard(ds)


@pytest.fixture(scope="module")
def noisy():
    ds = simulate(noise="poisson", peak=1e4)  # intensity SNR 48 dB: the weak wires need high doses
    return ds, make_shard(ds)


# ---------------------------------------------------------------- gradient
@pytest.mark.parametrize("metric", ["gaussian", "poisson"])
def test_gd_gradient_matches_central_differences(metric):
    ds = simulate(n=8, angles=6, probe=6, fwhm=4, step=2, pad=3)
    sh = make_shard(ds, dtype=np.complex128)
    model = JointModel(sh)
    comm = SerialComm()
    rng = np.random.default_rng(3)
    truth = ds.truth["volume"].astype(np.complex128)
    scale = np.abs(truth).max()
    u = 0.6 * truth + 0.2 * scale * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))

    def loss(v):
        _, z = model.farfield(v)
        return data_objective(np.abs(z), sh.intensities, sh.amplitudes, metric)

    L0, g = loss_and_gradient(model, sh, comm, u, metric)
    assert L0 == pytest.approx(loss(u), rel=1e-14)
    assert_gradient(loss, u, g, rng, scale=scale)


def test_data_residual_amplitude_at_zero_is_finite():
    z = np.array([0, 1 + 1j, -2], dtype=np.complex64)
    f = np.array([4, 2, 1], dtype=np.float32)
    g = data_residual(z, f, np.sqrt(f), "gaussian")
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [-2, 0, -1], atol=1e-6)


# ---------------------------------------------------------------- GD
def test_gd_monotone_with_line_search_and_quality(clean):
    ds, sh = clean
    rows = []
    res = run_gd(sh, SerialComm(), GDOptions(iterations=150), callback=lambda row, u: rows.append(row))
    obj = res.history.column("objective")
    assert len(rows) == 150 and rows[-1]["iteration"] == 150
    assert np.all(np.diff(obj) <= 0), "line-search GD must not increase the loss"
    assert obj[-1] < 1e-3 * obj[0]  # measured 4.0e-5 (7.27 -> 2.9e-4)
    assert res.history.column("r_factor")[-1] < 1e-3  # measured 1.2e-4
    q = quality(res.volume, ds.truth["volume"])
    # measured: snr 18.8, delta 18.8, beta 17.8 dB, nrmse 0.115 (RMSE 2.4e-6 against an rms of 2.1e-5)
    assert q["snr"] > 16.5 and q["snr_delta"] > 16.5 and q["snr_beta"] > 15.5, q
    assert res.volume.dtype == np.complex64
    assert res.state["lipschitz"] > 0 and res.state["step0"] == pytest.approx(1 / res.state["lipschitz"])


def test_gd_seed002_schedule_without_line_search(clean):
    _, sh = clean
    opts = GDOptions(iterations=30, line_search=False, eps=1e-3)  # eps larger than the seed's to see decay
    res = run_gd(sh, SerialComm(), opts)
    steps = res.history.column("step")
    expect = [steps[0]]
    for n in range(len(steps) - 1):
        expect.append(expect[-1] / (1 + opts.eps * n))  # alpha_{n+1} = alpha_n / (1 + eps n)
    np.testing.assert_allclose(steps, expect, rtol=1e-12)
    obj = res.history.column("objective")
    assert np.all(np.diff(obj) <= 0), "the automatic step 1/Lip is safe without a line search"
    assert obj[-1] < 0.3 * obj[0]  # measured 0.076
    # an absolute step (the seed's alpha_0 style) is used as given
    res2 = run_gd(sh, SerialComm(), GDOptions(iterations=2, line_search=False, step=1e-9))
    assert res2.history.column("step")[0] == 1e-9


def test_gd_rejects_bad_input(clean):
    ds, sh = clean
    with pytest.raises(ValueError, match="schedule"):
        run_gd(sh, SerialComm(), GDOptions(iterations=1, schedule="cosine"))
    with pytest.raises(ValueError, match="step"):
        run_gd(sh, SerialComm(), GDOptions(iterations=1, step=-1.0))
    with pytest.raises(ValueError, match="metric"):
        run_gd(sh, SerialComm(), GDOptions(iterations=1, metric="l1"))
    lin = Shard(model=ForwardModel(sh.volume_shape, sh.model.angles, sh.model.ptycho.probe,
                                   [a.positions for a in ds.angles], sh.model.field_shape, model="linear"),
                intensities=sh.intensities, angle_ids=sh.angle_ids, space=sh.space)
    # the linear model has no far field at u = 0 (tests/solvers/test_models.py runs it from its constant start)
    with pytest.raises(ValueError, match="linear model cannot start from zeros"):
        run_gd(lin, SerialComm(), GDOptions(iterations=1, init="zeros"))
    with pytest.raises(ValueError, match="linear model cannot start from zeros"):
        run_admm(lin, SerialComm(), ADMMOptions(iterations=1, init="zeros"))
    with pytest.raises(ValueError, match="exponential model starts from zeros"):
        run_gd(sh, SerialComm(), GDOptions(iterations=1, init="constant"))


# ---------------------------------------------------------------- ADMM
def _mean(a, sl):
    return float(np.mean(a[sl]))


def test_admm_residuals_objective_and_quality(clean):
    ds, sh = clean
    rows = []
    res = run_admm(sh, SerialComm(), ADMMOptions(iterations=30, prior="tv"),
                   callback=lambda row, u: rows.append(row))
    h = res.history
    assert len(rows) == 30
    # measured ratios of the mean of the last 3 to the first 3: psi primal 5.6e-3, psi dual 3.2e-3,
    # prior primal 8.2e-2, prior dual 1.7e-3
    for key, ratio in (("primal_residual", 0.05), ("dual_residual", 0.05), ("primal_residual_prior", 0.25),
                       ("dual_residual_prior", 0.05)):
        col = h.column(key)
        assert _mean(col, slice(-3, None)) < ratio * _mean(col, slice(0, 3)), key
    obj = h.column("objective")
    assert obj[-1] < 0.1 * obj[0]  # measured 3.7 -> 0.047
    assert np.all(h.column("rho") > 0) and np.all(h.column("tau") > 0)
    q = quality(res.volume, ds.truth["volume"])
    # measured: snr 40.6, delta 40.6, beta 40.2 dB, nrmse 0.011 (TV suits the piecewise-constant wires)
    assert q["snr"] > 35 and q["snr_delta"] > 35 and q["snr_beta"] > 33, q
    assert res.volume.dtype == np.complex64
    assert res.state["alpha"] > 0


def test_admm_without_prior(clean):
    ds, sh = clean
    res = run_admm(sh, SerialComm(), ADMMOptions(iterations=20, prior="none"))
    h = res.history
    assert np.all(h.column("tau") == 0) and np.all(h.column("primal_residual_prior") == 0)
    r = h.column("primal_residual")
    assert _mean(r, slice(-3, None)) < 0.05 * _mean(r, slice(0, 3))
    q = quality(res.volume, ds.truth["volume"])
    assert q["snr"] > 16, q  # measured 19.2 dB at 20 iterations (null space of 48 angles limits it)


def test_admm_tv_beats_no_prior_on_poisson_data(noisy):
    ds, sh = noisy
    truth = ds.truth["volume"]
    q = {}
    for prior in ("none", "tv"):
        res = run_admm(sh, SerialComm(), ADMMOptions(iterations=25, prior=prior, metric="poisson"))
        obj = res.history.column("objective")
        assert obj[-1] < obj[0]
        q[prior] = quality(res.volume, truth)
    # measured: none 10.6 dB (delta 12.8, beta 2.9); tv 15.7 dB (delta 18.3, beta 6.1)
    assert q["tv"]["snr"] >= q["none"]["snr"] + 2.0, q
    assert q["tv"]["snr_beta"] >= q["none"]["snr_beta"], q


def test_admm_rejects_bad_options(clean):
    _, sh = clean
    with pytest.raises(ValueError, match="unknown prior / denoiser 'bm3d'"):
        run_admm(sh, SerialComm(), ADMMOptions(iterations=1, prior="bm3d"))
    with pytest.raises(ValueError, match="metric"):
        run_admm(sh, SerialComm(), ADMMOptions(iterations=1, metric="l2"))
    with pytest.raises(ValueError, match="rho_rel"):
        run_admm(sh, SerialComm(), ADMMOptions(iterations=1, rho_rel=0))
    with pytest.raises(ValueError, match="balance_mode"):
        run_admm(sh, SerialComm(), ADMMOptions(iterations=1, balance_mode="adaptive"))


def test_admm_residual_balancing_changes_rho(clean):
    """Boyd 3.4.1: with a far too stiff rho_0 the dual residual dominates (measured r / s ~ 0.07 - 0.15
    after two iterations), so rho is halved (to 1/8 of rho_0 by iteration 8); without balancing it stays."""
    _, sh = clean
    res = run_admm(sh, SerialComm(), ADMMOptions(iterations=8, prior="none", rho_rel=1e3))
    rho = res.history.column("rho")
    assert rho[-1] <= 0.25 * rho[0] and set(np.round(rho[1:] / rho[:-1], 12)) <= {0.5, 1.0, 2.0}
    fixed = run_admm(sh, SerialComm(), ADMMOptions(iterations=3, prior="none", rho_rel=1e3, balance=False))
    assert np.all(fixed.history.column("rho") == fixed.history.column("rho")[0])


# ---------------------------------------------------------------- shards and collectives
def run_sharded(run, shards, opts, ds):
    """Shard r on thread-rank r, with the slab space of that rank (angles dealt as the shards hold them)."""
    rank_angles = [list(map(int, sh.angle_ids)) for sh in shards]

    def work(comm):
        sh = shards[comm.rank]
        sh.space = make_space(ds, comm, rank_angles)
        return run(sh, comm, opts)

    return run_threads(len(shards), work)


@pytest.mark.parametrize("solver", ["gd", "admm", "admm-poisson"])
def test_two_shards_match_serial(clean, noisy, solver):
    """Angles dealt to two thread-ranks give the serial answer (psi-steps are local, every angle with its
    own backtracking; the volume is split into two slabs, projections move by alltoallv transposes).

    Gaussian: 2e-6 after 4 iterations (summation order only). Poisson: the serial solve itself moves by
    8e-4 (2 iterations) to 3e-3 (4) when the data are scaled by 1 + 1e-7 (curvature f/|z|^2 of dark
    pixels and discrete backtracking), so the check runs 2 iterations at a tolerance of 5e-3
    (measured 6e-6)."""
    ds, sh = noisy if solver == "admm-poisson" else clean
    run, opts = {"gd": (run_gd, GDOptions(iterations=5)),
                 "admm": (run_admm, ADMMOptions(iterations=4, prior="tv")),
                 "admm-poisson": (run_admm, ADMMOptions(iterations=2, prior="tv", metric="poisson"))}[solver]
    serial = run(sh, SerialComm(), opts)
    A = len(ds.angles)
    shards = [make_shard(ds, np.arange(0, A, 2)), make_shard(ds, np.arange(1, A, 2))]  # uneven frames
    parts = run_sharded(run, shards, opts, ds)
    for sh, part in zip(shards, parts):  # each rank returns its slab
        assert part.volume.shape == sh.volume_shape and sh.space.z1 - sh.space.z0 < len(serial.volume)
    u, us = np.concatenate([p.volume for p in parts]), serial.volume
    tol = 5e-3 if solver == "admm-poisson" else 1e-4
    assert np.linalg.norm(u - us) <= tol * np.linalg.norm(us)
    np.testing.assert_allclose(parts[0].history.column("objective"), serial.history.column("objective"),
                               rtol=tol)


def test_gd_two_transposes_per_iteration(clean):
    """Slab-decomposed GD moves the projections once each way per outer iteration (P g to the angles, the
    gradient's residual fields to the slabs), however many line-search trials it takes; the result is the
    serial one."""
    ds, sh = clean
    opts = GDOptions(iterations=4, step_rel=64.0)  # a too long first trial: the line search backtracks
    serial = run_gd(sh, SerialComm(), opts)

    def run(shard, comm, o):
        calls = []
        res = run_gd(shard, comm, o, callback=lambda row, u: calls.append(comm.stats.calls.get("alltoallv", 0)))
        res.state["calls"] = calls
        return res

    A = len(ds.angles)
    parts = run_sharded(run, [make_shard(ds, np.arange(0, A // 3)), make_shard(ds, np.arange(A // 3, A))],
                        opts, ds)
    for part in parts:
        assert list(np.diff(part.state["calls"])) == [2] * (opts.iterations - 1), part.state["calls"]
    assert sum(parts[0].history.column("backtracks")) > 0  # the line search did take several trials
    u = np.concatenate([p.volume for p in parts])
    assert np.linalg.norm(u - serial.volume) <= 1e-5 * np.linalg.norm(serial.volume)


@pytest.mark.parametrize("method", ["gd", "admm"])
def test_frame_batches_give_the_one_batch_result(clean, method):
    """With the frames cut into batches of 300 (7 batches of the 1,936 frames) the far fields are formed
    one batch at a time (hpc_pt.solvers.farfield); the iterates, objective and R-factor equal the one-batch
    run's up to float32 summation order."""
    ds, whole = clean
    batched = make_shard(ds, frame_batch=300)
    assert len(batched.model.ptycho.batches()) == 7 and len(whole.model.ptycho.batches()) == 1
    if method == "gd":
        run = lambda sh: run_gd(sh, SerialComm(), GDOptions(iterations=8))
    else:
        run = lambda sh: run_admm(sh, SerialComm(), ADMMOptions(iterations=4))
    a, b = run(whole), run(batched)
    assert np.abs(a.volume - b.volume).max() <= 1e-4 * np.abs(a.volume).max()
    for key in ("objective", "r_factor"):
        np.testing.assert_allclose(b.history.column(key), a.history.column(key), rtol=1e-4)
