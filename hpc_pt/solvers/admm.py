"""Three-way ADMM for joint ptycho-tomography (seed 000; Aslan et al. 2019, Nikitin et al. 2019), with
the prior behind hpc_pt.priors' ``denoise(x, strength)`` (plug-and-play), for the exponential model and,
with T the identity, the linear (Rytov, seed 001) model.

Linear model: T(u) = Pad(P u), so the u-subproblem (b) is linear least squares and one Gauss-Newton step
solves it exactly (up to CG): [rho (Pad P)^H (Pad P) + tau] du = rho (Pad P)^H (y - T_k) + tau (b - u_k),
i.e. the formulas below with c = 1 and the Jacobian i c T_k replaced by 1. u = 0 has no far field (psi = 0
is a stationary point of (a)), so ``init="auto"`` starts "linear" at the energy-matched constant
(||D(s 1)||^2 = sum f, seed 001's u_0 = 1) and "exp" at zeros (free space).

Problem, with T(u) = exp(i c Pad(P u)) the per-angle transmission (c = k dz) and D_j = F(w o S_j .):

    min_{u, psi, v}  F(psi) + alpha R(v)    s.t.  psi = T(u),  v = u

    F(psi) = sum_j G(|D_j psi|; f_j),   G = 1/2 (|z| - sqrt f)^2   (metric "gaussian", amplitude)
                                        G = 1/2 (|z|^2 - f log |z|^2)   (metric "poisson")

Augmented Lagrangian with unscaled complex multipliers lambda (per angle field) and mu (per voxel):

    F(psi) + alpha R(v) + Re<lambda, psi - T(u)> + rho/2 ||psi - T(u)||^2 + Re<mu, u - v> + tau/2 ||u - v||^2

One outer iteration (Gauss-Seidel over the three blocks, then the dual ascent):

(a) ptychography, per angle and batched over every frame of the shard (no communication):
        psi <- argmin F(psi) + rho/2 ||psi - (T(u) - lambda/rho)||^2
    by ``ptycho_iterations`` preconditioned gradient steps psi <- psi - grad / (W + rho), W = sum_j
    S_j^T |w|^2 the illumination. diag(W) majorises Ptycho^H Ptycho (its row sums; exact for integer
    positions) and the amplitude loss has curvature <= 1 per detector pixel, so for the Gaussian metric
    each step minimises a majoriser and cannot increase the subproblem (the same MM argument behind
    ePIE/RAAR-type updates); a backtracking check (halving) guards the Poisson metric, whose curvature is
    unbounded near |z| = 0.
(b) tomography, WITHOUT phase unwrapping: the subproblem
        min_u rho/2 ||T(u) - (psi + lambda/rho)||^2 + tau/2 ||u - (v - mu/tau)||^2
    is nonlinear in u through exp. Instead of taking log(psi + lambda/rho) (which needs the phase
    unwrapped whenever c P delta leaves (-pi, pi], and amplifies noise where |psi| is small) we linearise
    the exponential around the current iterate, x = Pad P u, x_k = Pad P u_k, T_k = exp(i c x_k):
        T(u) ~ T_k (1 + i c (x - x_k))
    and take Gauss-Newton steps: the linear least-squares problem in du = u - u_k
        min rho/2 ||i c T_k Pad P du - (y - T_k)||^2 + tau/2 ||u_k + du - b||^2,  y = psi + lambda/rho,
                                                                                  b = v - mu/tau,
    has the Hermitian positive-(semi)definite normal equations
        [rho c^2 (Pad P)^H |T_k|^2 (Pad P) + tau] du = rho (Pad P)^H conj(i c T_k)(y - T_k) + tau (b - u_k),
    solved by warm-started CG (``tomo_cg_iterations`` per step, ``tomo_gn_steps`` relinearisations). Only
    exp is ever evaluated; the phase enters through T_k, so wrapped phases are no problem, and the
    damping tau (and CG's early stop) keeps the step inside the region where the linearisation holds.
    Slabs (docs/architecture.md §3): u, v, mu and du are this rank's slab of rows. Since (Pad P)^H only sees
    the volume's rows of a field, the whole step runs in the slab layout (all angles, own rows): the
    target y, cropped to the volume's rows, moves to the slabs with ONE ``to_slabs`` per outer iteration;
    T_k on the volume rows is exp(i c q), q = space.P.fwd(u_k) computed locally, so the weights |T_k|^2
    and the right-hand side are built on the slab at every relinearisation without any transpose (no
    weight is ever moved), and CG is local except for its dot products. After the step, q = P u goes back
    to the angles with ONE ``to_angles`` to give T(u) on the field; that q is also the next iteration's
    first linearisation point. So the main data flow costs one transpose each way per outer iteration,
    whatever ``tomo_gn_steps`` (set-up: one ``to_angles`` for T(u_0)). Angles must be whole on a rank
    (the pipeline refuses split angles for ADMM): ``to_slabs`` sums the parts of a split angle.
(c) prior (plug-and-play): v <- denoise(u + mu/tau, alpha/tau) through hpc_pt.priors ("tv", "none" or a
    registered name / denoiser object), applied to the global volume through its slabs
    (:func:`hpc_pt.priors.denoise`: exact for TV / none; a third-party denoiser gets its slab with
    ``halo`` overlapping rows). TV costs two one-row halos and one 2-number all-reduce (its stopping test)
    per FGP iteration. With prior "none" the v-block is dropped (tau = 0, no mu).
(d) duals: lambda += rho (psi - T(u)), mu += tau (u - v).
(e) residual balancing (Boyd et al. 2011, section 3.4.1), separately for rho and tau: rho *= 2 when the
    primal residual exceeds 10 x the dual residual, rho /= 2 in the opposite case. Boyd's r and s have
    different units (s carries the penalty's), so the rule is applied to the problem normalised so that
    each penalty starts at 1 (``balance_mode="normalized"``, default): r = ||psi - T(u)|| against
    s / rho_0 = (rho / rho_0) ||T(u_new) - T(u_old)||, and ||u - v|| against (tau / tau_0) ||v_new - v_old||.
    Both sides are then in the constraint's own units (psi dimensionless, v in units of u), so the rule
    is independent of photon counts and of the units of u. ``balance_mode="relative"`` uses Wohlberg's
    (2017) relative residuals instead (r / max(||psi||, ||T(u)||) against s / ||lambda||); measured on the
    16^3 wire test it halves rho every iteration at the start, where lambda is still ~0, and ends 16 dB
    worse, so it is not the default. The history reports Boyd's absolute r and s and the relative forms.

Scale-free defaults. rho_0 = rho_rel x the mean illumination over illuminated field pixels (so the data
and coupling terms of (a) are balanced whatever the probe intensity); tau_0 = tau_rel x rho_0 c^2
||Pad P||^2 (power iteration), balancing the two terms of (b); the prior weight alpha = prior_weight x
tau_0 x s_u, where s_u is the 99th percentile of |u| after the first u-update (the first iteration runs
with v = u's start), so ``prior_weight`` is the denoiser strength in units of the volume's own scale at
the start and alpha is then fixed (the objective does not drift when tau is rebalanced). On slabs s_u is
the exact percentile of the global volume (:func:`distributed_percentile`: radix selection over the
floats' bit patterns, a few all-reduced 256-bin histograms, the same definition as ``np.percentile``).

Checkpoints: after iteration k, when ``checkpoints.due(k)``, the whole loop state is saved (u, psi,
lambda, v, mu slabs/fields, rho, tau, rho_0, tau_0, ||P||^2, alpha, s_u, the denoiser's warm-start dual,
the history); a run resumed from it ends bitwise-equal to an uninterrupted one on the CPU (T(u) and
P u are recomputed from u by the same code).

History columns: objective (F(T(u)) + alpha R(u), the consistent-point value), data_objective, prior_value,
r_factor, primal_residual / dual_residual (psi = T(u)), primal_residual_prior / dual_residual_prior
(v = u), their relative forms (``*_rel``), rho, tau, strength, cg_iterations, cg_residual, rel_change,
iter_time_s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import asarray_on, get_xp, to_numpy
from .base import (
    NO_CHECKPOINTS,
    Checkpointer,
    History,
    Shard,
    SolverResult,
    angle_sum,
    conjugate_gradient,
    frame_sum,
    per_frame_total,
    power_lipschitz,
)
from .farfield import farfield_pass
from .gd import INITS, IdentityMap, JointModel, resolve_init
from .prox import METRICS

BALANCE_MODES = ("normalized", "relative")


@dataclass
class ADMMOptions:
    iterations: int = 50
    metric: str = "gaussian"  # "gaussian" (amplitude) or "poisson"
    prior: object = "tv"  # "tv", "none", a registered name, or an object with denoise(x, strength)
    prior_options: dict = field(default_factory=dict)  # keyword options for get_denoiser
    prior_weight: float = 0.02  # denoiser strength in units of the volume scale s_u (module docstring)
    rho_rel: float = 0.5  # rho_0 / mean illumination
    tau_rel: float = 0.02  # tau_0 / (rho_0 c^2 ||Pad P||^2)
    ptycho_iterations: int = 4
    tomo_cg_iterations: int = 4
    tomo_gn_steps: int = 1
    balance: bool = True  # residual balancing (Boyd 3.4.1)
    balance_ratio: float = 10.0
    balance_factor: float = 2.0
    balance_every: int = 1
    balance_mode: str = "normalized"  # "normalized" (penalties in units of their start) or "relative"
    max_backtracks: int = 8  # psi-step halvings (Poisson guard)
    init: str = "auto"  # "auto": zeros (free space) for "exp", the energy-matched constant for "linear"



def _rel(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else np.inf)


def _check(opts: ADMMOptions):
    if opts.metric not in METRICS:
        raise ValueError(f"unknown noise metric {opts.metric!r}; use one of {METRICS}")
    for name in ("rho_rel", "tau_rel", "balance_factor", "balance_ratio"):
        if not getattr(opts, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(opts, name)}")
    if opts.balance_mode not in BALANCE_MODES:
        raise ValueError(f"unknown balance_mode {opts.balance_mode!r}; use one of {BALANCE_MODES}")
    if opts.prior_weight < 0:
        raise ValueError(f"prior_weight must be >= 0, got {opts.prior_weight}")
    for name in ("ptycho_iterations", "tomo_cg_iterations", "tomo_gn_steps", "balance_every"):
        if int(getattr(opts, name)) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(opts, name)}")
    if opts.init not in INITS:
        raise ValueError(f"unknown init {opts.init!r}; use one of {INITS} (or pass u0)")


def _get_prior(opts: ADMMOptions):
    from ..priors import (  # priors depend on operators only (no import cycle)
        NoPrior,
        get_denoiser,
    )

    den = get_denoiser(opts.prior, **dict(opts.prior_options))
    return den, isinstance(den, NoPrior)


def distributed_percentile(x, q: float, comm) -> float:
    """The ``q``-th percentile of |x| over the values of every rank's ``x`` (e.g. slabs of one volume),
    exactly as ``np.percentile`` of the gathered values ("linear": v_k + (h - k)(v_{k+1} - v_k), h =
    (N - 1) q / 100, v sorted), whatever the split, on every rank.

    Non-negative floats order like their bit patterns read as unsigned integers, so the two order
    statistics are found by radix selection: 8 bits at a time, every rank histograms the next byte of its
    candidates (values whose higher bytes match the prefix found so far) into 256 bins and the
    histograms are summed over ranks (``allreduce_sum`` of a (2, 256) array: 4 calls for float32, 8 for
    float64, plus one ``sum_scalar`` for N). Collective: every rank must call it.
    """
    a = np.abs(to_numpy(x)).ravel()
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    ut = np.uint32 if a.dtype == np.float32 else np.uint64
    nbits = 8 * a.dtype.itemsize
    keys = a.view(ut)
    n = round(comm.sum_scalar(float(a.size)))
    if n == 0:
        raise ValueError("percentile of an empty volume")
    h = (n - 1) * float(q) / 100.0
    k0 = min(int(np.floor(h)), n - 1)
    k1 = min(k0 + 1, n - 1)
    frac = h - k0
    targets, prefixes = [k0, k1], [0, 0]
    for shift in range(nbits - 8, -1, -8):
        hist = np.zeros((2, 256), dtype=np.float64)  # counts < 2^53: exact
        for i in range(2):
            if shift + 8 < nbits:
                sel = keys[(keys >> ut(shift + 8)) == ut(prefixes[i] >> (shift + 8))]
            else:
                sel = keys
            byte = ((sel >> ut(shift)) & ut(255)).astype(np.intp)
            hist[i] = np.bincount(byte, minlength=256)
        hist = np.asarray(comm.allreduce_sum(hist))
        for i in range(2):
            cum = np.cumsum(hist[i])
            b = int(np.searchsorted(cum, targets[i], side="right"))
            targets[i] -= int(cum[b - 1]) if b > 0 else 0
            prefixes[i] |= b << shift
    v0, v1 = (float(np.array([p], dtype=ut).view(a.dtype)[0]) for p in prefixes)
    return v0 + frac * (v1 - v0)


def run_admm(shard: Shard, comm, opts: ADMMOptions | None = None, callback=None, u0=None,
             checkpoints: Checkpointer = NO_CHECKPOINTS) -> SolverResult:
    """Three-way ADMM (module docstring) on this rank's shard and slab; ``u0`` (this rank's slab)
    warm-starts instead of zeros.

    ``callback(row, u)`` is called after every iteration with the history row and the volume slab;
    ``checkpoints`` hands the loop state out every K iterations and back on resume (bitwise continuation).
    """
    from ..priors import denoise, prior_value

    opts = ADMMOptions() if opts is None else opts
    _check(opts)
    denoiser, no_prior = _get_prior(opts)
    m = shard.model
    linear = m.expmap is None
    init = resolve_init(opts.init, linear, "admm") if u0 is None else "given"
    sp = shard.space
    P, pad, pt = sp.P, m.pad, m.ptycho
    expmap = IdentityMap() if linear else m.expmap
    c = expmap.c
    xp = get_xp(shard.intensities)
    dtype = m.dtype
    shape = shard.volume_shape
    f, sqrt_f, mask = shard.intensities, shard.amplitudes, shard.mask
    st = checkpoints.resume

    def transmission(q):
        """T(u) = exp(i c Pad(P u)) on the field (A_r, H, W) from P u in the slab layout (one to_angles)."""
        return expmap.fwd(pad.fwd(sp.to_angles(q)))

    # --- scale-free penalties (module docstring)
    W = pt.illumination()
    lit = W > 0
    n_lit = comm.sum_scalar(float(lit.sum()))  # a count: exact in any order
    w_mean = angle_sum(comm, shard, W * lit) / max(n_lit, 1.0)
    rho0 = opts.rho_rel * w_mean if w_mean > 0 else opts.rho_rel
    if st is None:
        with comm.phase("project"):
            lip_p = power_lipschitz(lambda x: P.adj(P.fwd(x)), sp.global_shape, comm, dtype, like=f,
                                    rows=(sp.z0, sp.z1), dot=sp.dot)
    else:
        lip_p = float(st["projector_norm2"])
    tau0 = 0.0 if no_prior else opts.tau_rel * rho0 * c * c * lip_p

    if st is None:
        rho, tau = rho0, tau0
        alpha, s_u = None, None  # fixed after the first u-update
        if init == "constant":  # linear model: s 1 with ||D(s 1)||^2 = sum f
            with comm.phase("project"):
                s1, _ = JointModel(shard).energy_matched_constant(shape, comm, f, mask, dtype)
            u = xp.full(shape, s1, dtype=dtype)
        else:
            u = xp.zeros(shape, dtype=dtype) if u0 is None else xp.asarray(u0, dtype=dtype).copy()
        with comm.phase("project"):
            q = P.fwd(u)
            Tu = transmission(q)
        psi = Tu.copy()
        lam = xp.zeros_like(psi)
        v = u.copy()
        mu = xp.zeros_like(u)
    else:
        rho, tau = float(st["rho"]), float(st["tau"])
        alpha = float(st["alpha"]) if st["alpha_set"] else None
        s_u = float(st["s_u"]) if st["alpha_set"] else None
        u, psi, lam, v, mu = (xp.asarray(st[k]) for k in ("u", "psi", "lambda", "v", "mu"))
        saved = {k[len("prior_"):]: xp.asarray(a) for k, a in st.items() if k.startswith("prior_")}
        if hasattr(denoiser, "load_state"):
            denoiser.load_state(saved)
        with comm.phase("project"):
            q = P.fwd(u)
            Tu = transmission(q)
    sum_sqrt_f = frame_sum(comm, shard, sqrt_f, shard.mask)

    n_angles = len(m.counts)
    frame_angle = asarray_on(np.repeat(np.arange(n_angles), m.counts), f)

    def evaluate(p, grad):
        """Per-frame data terms and (``grad``) Ptycho^H r(D p), one frame batch at a time."""
        return farfield_pass(pt, p, f, sqrt_f, opts.metric, mask, grad)

    def sub_obj(p, ev, t, r):
        """Per-angle values of F(psi) + r/2 ||psi - t||^2, shape (A,)."""
        data_a = xp.bincount(frame_angle, weights=ev.per_frame, minlength=n_angles)
        return data_a + 0.5 * r * (xp.abs(p - t) ** 2).sum(axis=(1, 2))

    def psi_step(psi, t, r):
        """(a): preconditioned gradient steps on F(psi) + r/2 ||psi - t||^2, every angle with its own
        backtracking step (so the result does not depend on how angles are spread over ranks). Each trial
        is one pass over the frames that also forms the next step's gradient (all but the last step)."""
        n_steps = opts.ptycho_iterations
        ev = evaluate(psi, n_steps > 0)
        phi = sub_obj(psi, ev, t, r)
        inv = (1.0 / (W + r)).astype(psi.real.dtype)
        for it in range(n_steps):
            grad_next = it < n_steps - 1
            d = -(ev.field + r * (psi - t)) * inv
            a = xp.ones(n_angles, dtype=inv.dtype)
            for _bt in range(opts.max_backtracks + 1):
                p_new = psi + a[:, None, None] * d
                ev_new = evaluate(p_new, grad_next)
                phi_new = sub_obj(p_new, ev_new, t, r)
                bad = phi_new > phi
                if not bool(bad.any()):
                    break
                a = xp.where(bad, 0.5 * a, a)
            else:  # angles with no decrease along d keep their psi (a = 0)
                a = xp.where(bad, 0, a)
                if not bool((a > 0).any()):
                    break
                p_new = psi + a[:, None, None] * d
                ev_new = evaluate(p_new, grad_next)
                phi_new = xp.where(bad, phi, sub_obj(p_new, ev_new, t, r))
            psi, ev, phi = p_new, ev_new, phi_new
        return psi

    def u_step(u, q, y, b, r, t_):
        """(b): Gauss-Newton steps on the linearised exponential, each solved by CG, all in the slab
        layout: y's volume rows move to the slabs once; T_k = exp(i c P u_k) on the slab's rows (local)."""
        with comm.phase("project"):
            y_s = sp.to_slabs(pad.adj(y))  # (A, rows, W): the one transpose to the slabs
        cg_it, cg_res = 0, 0.0
        for gn in range(opts.tomo_gn_steps):
            with comm.phase("cg"):
                if gn > 0:
                    q = P.fwd(u)
                Tk = expmap.fwd(q)
                # |J_k|^2 with J_k = i c T_k ("exp"); "linear": J_k = 1, no weight
                absT2 = None if linear else (Tk.real ** 2 + Tk.imag ** 2)

                def normal(x, absT2=absT2):
                    with comm.phase("cg"):
                        px = P.fwd(x)
                        out = (r * c * c) * P.adj(px if absT2 is None else absT2 * px)
                        if t_ > 0:
                            out += t_ * x
                        return out

                res_k = y_s - Tk
                rhs = r * P.adj(res_k if linear else (-1j * c) * xp.conj(Tk) * res_k)
                if t_ > 0:
                    rhs += t_ * (b - u)
            du, info = conjugate_gradient(normal, rhs.astype(dtype, copy=False), xp.zeros_like(u),
                                          sp.dot, tol=1e-6, max_iter=opts.tomo_cg_iterations)
            u = u + du
            cg_it += info.iterations
            cg_res = info.residual
        return u, cg_it, cg_res

    hist = History(st["history"] if st is not None else None)
    for k in range(len(hist), opts.iterations):
        t0 = time.perf_counter()
        # (a) ptychography
        with comm.phase("ptycho"):
            psi = psi_step(psi, Tu - lam / rho, rho)
        # (b) tomography (linearised exponential, no log)
        u_old, T_old = u, Tu
        b = v - mu / tau if tau > 0 else None
        u, cg_it, cg_res = u_step(u, q, psi + lam / rho, b, rho, tau)
        with comm.phase("project"):
            q = P.fwd(u)
            Tu = transmission(q)  # the one transpose back to the angles
        # (c) prior
        if no_prior:
            v_old = v = u
            strength = 0.0
        else:
            if alpha is None:
                s_u = distributed_percentile(u, 99, comm)
                alpha = opts.prior_weight * tau0 * s_u
            strength = alpha / tau
            v_old = v
            with comm.phase("prox"):
                v = denoise(denoiser, u + mu / tau, strength, space=sp)
        # (d) duals
        lam += rho * (psi - Tu)
        # residuals (absolute, Boyd) and relative (for balancing)
        r_psi = np.sqrt(angle_sum(comm, shard, xp.abs(psi - Tu) ** 2))
        s_psi = rho * np.sqrt(angle_sum(comm, shard, xp.abs(Tu - T_old) ** 2))
        n_psi = np.sqrt(angle_sum(comm, shard, xp.abs(psi) ** 2))
        n_T = np.sqrt(angle_sum(comm, shard, xp.abs(Tu) ** 2))
        n_lam = np.sqrt(angle_sum(comm, shard, xp.abs(lam) ** 2))
        r_psi_rel = _rel(r_psi, max(n_psi, n_T))
        s_psi_rel = _rel(s_psi, n_lam)
        s_psi_hat = s_psi / rho0  # dual residual of the problem normalised to rho_0 = 1
        r_v = s_v = r_v_rel = s_v_rel = s_v_hat = 0.0
        if not no_prior:
            mu += tau * (u - v)
            r_v = np.sqrt(sp.dot(u - v, u - v))
            s_v = tau * np.sqrt(sp.dot(v - v_old, v - v_old))
            r_v_rel = _rel(r_v, max(np.sqrt(sp.dot(u, u)), np.sqrt(sp.dot(v, v))))
            s_v_rel = _rel(s_v, np.sqrt(sp.dot(mu, mu)))
            s_v_hat = s_v / tau0
        # objective at the consistent point psi = T(u), v = u
        with comm.phase("ptycho"):
            ev = evaluate(Tu, False)
        dobj = per_frame_total(comm, shard, ev.per_frame)
        pval = 0.0 if no_prior else prior_value(denoiser, u, space=sp)
        obj = dobj + (alpha * pval if alpha else 0.0)
        rf = per_frame_total(comm, shard, ev.misfit_per_frame) / sum_sqrt_f
        du = u - u_old
        change = np.sqrt(sp.dot(du, du) / max(sp.dot(u, u), 1e-300))
        row = hist.append(iteration=k + 1, objective=obj, data_objective=dobj, prior_value=pval,
                          r_factor=rf, primal_residual=r_psi, dual_residual=s_psi,
                          primal_residual_prior=r_v, dual_residual_prior=s_v,
                          primal_residual_rel=r_psi_rel, dual_residual_rel=s_psi_rel,
                          primal_residual_prior_rel=r_v_rel, dual_residual_prior_rel=s_v_rel,
                          rho=rho, tau=tau, strength=strength, cg_iterations=cg_it, cg_residual=cg_res,
                          rel_change=change, iter_time_s=time.perf_counter() - t0)
        if callback is not None:
            callback(row, u)
        # (e) residual balancing (multipliers are unscaled, so they need no rescaling)
        if opts.balance and (k + 1) % opts.balance_every == 0:
            if opts.balance_mode == "relative":
                rho = _balance(rho, r_psi_rel, s_psi_rel, opts)
                if not no_prior:
                    tau = _balance(tau, r_v_rel, s_v_rel, opts)
            else:
                rho = _balance(rho, r_psi, s_psi_hat, opts)
                if not no_prior:
                    tau = _balance(tau, r_v, s_v_hat, opts)
        if checkpoints.due(k + 1):
            state = {"iteration": k + 1, "u": u, "psi": psi, "lambda": lam, "v": v, "mu": mu, "rho": rho,
                     "tau": tau, "rho0": rho0, "tau0": tau0, "projector_norm2": lip_p,
                     "alpha_set": alpha is not None, "alpha": alpha or 0.0, "s_u": s_u or 0.0,
                     "probe": pt.probe, "history": hist.rows}
            if hasattr(denoiser, "state"):  # the denoiser's warm start (TV's dual)
                state.update({"prior_" + key: a for key, a in denoiser.state().items()})
            checkpoints.save(state)
    state = {"rho": rho, "tau": tau, "rho0": rho0, "tau0": tau0, "alpha": alpha or 0.0, "s_u": s_u or 0.0,
             "c": c, "model": "linear" if linear else "exp", "psi": psi, "lambda": lam, "v": v, "mu": mu}
    return SolverResult(volume=u, probe=pt.probe, history=hist, state=state)


def _balance(pen: float, r: float, s: float, opts: ADMMOptions) -> float:
    """Boyd et al. (2011) section 3.4.1 on relative residuals."""
    if not (np.isfinite(r) and np.isfinite(s)):
        return pen
    if r > opts.balance_ratio * s:
        return pen * opts.balance_factor
    if s > opts.balance_ratio * r:
        return pen / opts.balance_factor
    return pen
