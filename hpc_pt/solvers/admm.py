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

from dataclasses import dataclass
from typing import Any

from pydantic import Field

import numpy as np

from ..backend import asarray_on, get_xp, to_numpy
from ..comm import Comm
from .base import (
    History,
    IterativeSolver,
    Shard,
    SolverOptions,
    SolverResult,
    angle_sum,
    conjugate_gradient,
    frame_sum,
    per_frame_total,
    power_lipschitz,
    restore_state,
    solver_runner,
    state_dict,
)
from .farfield import farfield_pass
from .gd import INITS, IdentityMap, JointModel, resolve_init
from .prox import METRICS
from .registry import SolverSpec

BALANCE_MODES = ("normalized", "relative")


class ADMMOptions(SolverOptions):
    """Three-way ADMM options (seed 000; the module docstring explains the scale-free penalties)."""

    iterations: int = Field(50, ge=0, description="outer ADMM iterations")
    metric: str = Field("gaussian", description="gaussian (amplitude) or poisson")
    prior: Any = Field("tv", description="tv, none, a registered denoiser's name, or an object with "
                       "denoise(x, strength)")
    prior_options: dict = Field(default_factory=dict, description="keyword options for the denoiser")
    prior_weight: float = Field(0.02, description="the denoiser's strength alpha / tau_0, in units of the "
                                "volume scale s_u")
    rho_rel: float = Field(0.5, description="rho_0 / mean illumination")
    tau_rel: float = Field(0.02, description="tau_0 / (rho_0 c^2 ||Pad P||^2)")
    ptycho_iterations: int = Field(4, description="psi-step gradient steps per iteration")
    tomo_cg_iterations: int = Field(4, description="CG iterations per Gauss-Newton step")
    tomo_gn_steps: int = Field(1, description="Gauss-Newton relinearisations per u-step")
    balance: bool = Field(True, description="residual balancing (Boyd 3.4.1)")
    balance_ratio: float = Field(10.0, description="balance when one residual exceeds this x the other")
    balance_factor: float = Field(2.0, description="the penalty's factor when balancing")
    balance_every: int = Field(1, description="balance every K iterations")
    balance_mode: str = Field("normalized", description="normalized (penalties in units of their start) or "
                              "relative")
    max_backtracks: int = Field(8, ge=0, description="psi-step halvings (the Poisson guard)")
    init: str = Field("auto", description="auto: zeros (free space) for exp, the energy-matched constant for "
                      "linear; zeros; constant")


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


def distributed_percentile(x, q: float, comm: Comm) -> float:
    """The ``q``-th percentile of |x| over the values of every rank's ``x`` (e.g. slabs of one volume).

    Exactly as ``np.percentile`` of the gathered values ("linear": v_k + (h - k)(v_{k+1} - v_k), h =
    (N - 1) q / 100, v sorted), whatever the split, on every rank.

    Non-negative floats order like their bit patterns read as unsigned integers, so the two order
    statistics are found by radix selection: 8 bits at a time, every rank histograms the next byte of its
    candidates (values whose higher bytes match the prefix found so far) into 256 bins and the
    histograms are summed over ranks (``allreduce_sum`` of a (2, 256) array: 4 calls for float32, 8 for
    float64, plus one ``sum_scalar`` for N). Collective: every rank must call it.

    Parameters
    ----------
    x : array
        This rank's values, any shape and backend (copied to the host; not float32 / float64: as float64).
    q : float
        The percentile, from 0 to 100.
    comm : Comm
        The communicator.

    Returns
    -------
    float
        The percentile, the same on every rank.

    Raises
    ------
    ValueError
        When no rank has a value.
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


@dataclass
class ADMMState:
    """ADMM's loop state (the checkpoint's keys, besides the denoiser's warm start ``prior_*``).

    Parameters
    ----------
    u : array
        The volume slab.
    psi, lam : array
        The per-angle fields and their multiplier lambda.
    v, mu : array
        The prior's splitting and its multiplier (slabs).
    rho, tau : float
        The penalties.
    alpha, s_u : float or None
        The prior weight and the volume scale behind it (None until the first u-update fixes them).
    projector_norm2 : float
        ||Pad P||^2, a power-iteration estimate behind tau_0.
    """

    u: object
    psi: object
    lam: object
    v: object
    mu: object
    rho: float
    tau: float
    alpha: float | None
    s_u: float | None
    projector_norm2: float


class ADMM(IterativeSolver):
    """Three-way ADMM (seed 000; module docstring) on this rank's shard and slab.

    One step is seed 000's sub-problems in order: (a) :meth:`psi_update`, (b) :meth:`u_update`, (c)
    :meth:`prior_update`, (d) :meth:`dual_update`, then the residuals and (e) :meth:`balance`.

    Parameters
    ----------
    shard : Shard
        This rank's frames (whole angles), forward model ("exp" or "linear") and slab space.
    comm : Comm
        The communicator.
    opts : ADMMOptions, optional
        The options (defaults: :class:`ADMMOptions`).
    u0 : array, optional
        The initial volume slab (instead of ``opts.init``).

    Raises
    ------
    ValueError
        For invalid options or a start the model cannot use.
    """

    State = ADMMState

    def __init__(self, shard: Shard, comm: Comm, opts: ADMMOptions | None = None, u0=None):
        self.opts = opts = ADMMOptions() if opts is None else opts
        _check(opts)
        self.denoiser, self.no_prior = _get_prior(opts)
        m = shard.model
        self.shard, self.comm, self.u0 = shard, comm, u0
        self.linear = m.expmap is None
        self.init = resolve_init(opts.init, self.linear, "admm") if u0 is None else "given"
        self.sp, self.pad, self.pt = shard.space, m.pad, m.ptycho
        self.expmap = IdentityMap() if self.linear else m.expmap
        self.c = self.expmap.c
        self.xp = get_xp(shard.intensities)
        # rho_0 from the mean illumination over lit field pixels (module docstring)
        self.W = W = self.pt.illumination()
        lit = W > 0
        n_lit = comm.sum_scalar(float(lit.sum()))  # a count: exact in any order
        w_mean = angle_sum(comm, shard, W * lit) / max(n_lit, 1.0)
        self.rho0 = opts.rho_rel * w_mean if w_mean > 0 else opts.rho_rel
        self.n_angles = len(m.counts)
        self.frame_angle = asarray_on(np.repeat(np.arange(self.n_angles), m.counts), shard.intensities)
        self.sum_sqrt_f = frame_sum(comm, shard, shard.amplitudes, shard.mask)

    # -- the model pieces -------------------------------------------------------------------------------
    def transmission(self, q):
        """T(u) = exp(i c Pad(P u)) on the field (A_r, H, W) from P u in the slab layout (one to_angles).

        Parameters
        ----------
        q : array
            P u in the slab layout (``space.P.fwd(u)``).

        Returns
        -------
        array
            T(u) on the shard's angles.
        """
        return self.expmap.fwd(self.pad.fwd(self.sp.to_angles(q)))

    def project(self, u):
        """(P u on the slab, T(u) on the field): one transpose.

        Parameters
        ----------
        u : array
            The volume slab (every row of this rank).

        Returns
        -------
        tuple
            (q, T(u)): P u in the slab layout and its :meth:`transmission`.
        """
        with self.comm.phase("project"):
            q = self.sp.P.fwd(u)
            return q, self.transmission(q)

    def evaluate(self, p, grad: bool):
        """Per-frame data terms and (``grad``) Ptycho^H r(D p), one frame batch at a time.

        Parameters
        ----------
        p : array
            Per-angle fields psi (A_r, H, W).
        grad : bool
            Also form the field-space gradient.

        Returns
        -------
        FarfieldPass
            The pass over the frames (:func:`~hpc_pt.solvers.farfield.farfield_pass`).
        """
        sh = self.shard
        return farfield_pass(self.pt, p, sh.intensities, sh.amplitudes, self.opts.metric, sh.mask, grad)

    def sub_objective(self, p, ev, t, r):
        """Per-angle values of F(psi) + r/2 ||psi - t||^2, shape (A,).

        Parameters
        ----------
        p : array
            The fields psi.
        ev : FarfieldPass
            :meth:`evaluate` at ``p`` (its per-frame objective is used).
        t : array
            The target fields.
        r : float
            The penalty.

        Returns
        -------
        array
            One value per angle of this shard.
        """
        xp = self.xp
        data_a = xp.bincount(self.frame_angle, weights=ev.per_frame, minlength=self.n_angles)
        return data_a + 0.5 * r * (xp.abs(p - t) ** 2).sum(axis=(1, 2))

    # -- set-up -----------------------------------------------------------------------------------------
    def start(self) -> ADMMState:
        """The first state (see :meth:`IterativeSolver.start`).

        u_0 (zeros, the energy-matched constant or ``u0``), ||P||^2 by power iteration, psi = T(u_0), zero
        multipliers, v = u_0, rho = rho_0, tau = tau_0.

        Returns
        -------
        ADMMState
            The state before the first iteration (alpha and s_u still None).
        """
        sh, comm, sp, xp = self.shard, self.comm, self.sp, self.xp
        dtype, shape, P = sh.model.dtype, sh.volume_shape, sp.P
        with comm.phase("project"):
            lip_p = power_lipschitz(lambda x: P.adj(P.fwd(x)), sp.global_shape, comm, dtype, like=sh.intensities,
                                    rows=(sp.z0, sp.z1), dot=sp.dot)
        if self.init == "constant":  # linear model: s 1 with ||D(s 1)||^2 = sum f
            with comm.phase("project"):
                s1, _ = JointModel(sh).energy_matched_constant(shape, comm, sh.intensities, sh.mask, dtype)
            u = xp.full(shape, s1, dtype=dtype)
        else:
            u = xp.zeros(shape, dtype=dtype) if self.u0 is None else xp.asarray(self.u0, dtype=dtype).copy()
        self.q, self.Tu = self.project(u)
        psi = self.Tu.copy()
        return ADMMState(u=u, psi=psi, lam=xp.zeros_like(psi), v=u.copy(), mu=xp.zeros_like(u), rho=self.rho0,
                         tau=self.tau0_for(lip_p), alpha=None, s_u=None, projector_norm2=lip_p)

    def tau0_for(self, lip_p: float) -> float:
        """tau_0 = tau_rel rho_0 c^2 ||Pad P||^2 (0 without a prior).

        Parameters
        ----------
        lip_p : float
            ||Pad P||^2.

        Returns
        -------
        float
            tau_0.
        """
        return 0.0 if self.no_prior else self.opts.tau_rel * self.rho0 * self.c * self.c * lip_p

    def ready(self, resumed: bool) -> None:
        """tau_0 from the state's ||P||^2; on resume P u and T(u) from u (the same code as in the loop).

        Parameters
        ----------
        resumed : bool
            As for :meth:`IterativeSolver.ready`.
        """
        self.tau0 = self.tau0_for(self.state.projector_norm2)
        if resumed:
            self.q, self.Tu = self.project(self.state.u)

    def save_state(self) -> dict:
        """The state's fields and the denoiser's warm start, as ``prior_*`` keys (:meth:`IterativeSolver.save_state`).

        Returns
        -------
        dict
            The checkpoint's loop state.
        """
        out = state_dict(self.state)
        if hasattr(self.denoiser, "state"):  # the denoiser's warm start (TV's dual)
            out.update({"prior_" + key: a for key, a in self.denoiser.state().items()})
        return out

    def load_state(self, saved: dict) -> ADMMState:
        """The state from ``saved``; its ``prior_*`` keys go back to the denoiser (its warm start).

        Parameters
        ----------
        saved : dict
            What :meth:`save_state` gave (see :meth:`IterativeSolver.load_state`).

        Returns
        -------
        ADMMState
            The restored state.
        """
        st = restore_state(ADMMState, saved, self.xp)
        prior = {k[len("prior_"):]: self.xp.asarray(a) for k, a in saved.items() if k.startswith("prior_")}
        if hasattr(self.denoiser, "load_state"):
            self.denoiser.load_state(prior)
        return st

    # -- seed 000's sub-problems ----------------------------------------------------------------------
    def psi_update(self, psi, t, r):
        """(a) psi <- argmin_psi F(psi) + r/2 ||psi - t||^2 (seed 000, the ptychography sub-problem).

        t = T(u) - lambda / rho; by ``ptycho_iterations`` preconditioned gradient steps psi <- psi - (grad) /
        (W + r), every angle with its own backtracking step (so the result does not depend on how angles
        are spread over ranks). Each trial is one pass over the frames that also forms the next step's
        gradient (all but the last step).

        Parameters
        ----------
        psi : array
            The current fields (A_r, H, W).
        t : array
            The target T(u) - lambda / rho.
        r : float
            The penalty rho.

        Returns
        -------
        array
            The new fields.
        """
        xp, opts, n_angles = self.xp, self.opts, self.n_angles
        n_steps = opts.ptycho_iterations
        ev = self.evaluate(psi, n_steps > 0)
        phi = self.sub_objective(psi, ev, t, r)
        inv = (1.0 / (self.W + r)).astype(psi.real.dtype)
        for it in range(n_steps):
            grad_next = it < n_steps - 1
            d = -(ev.field + r * (psi - t)) * inv
            a = xp.ones(n_angles, dtype=inv.dtype)
            for _bt in range(opts.max_backtracks + 1):
                p_new = psi + a[:, None, None] * d
                ev_new = self.evaluate(p_new, grad_next)
                phi_new = self.sub_objective(p_new, ev_new, t, r)
                bad = phi_new > phi
                if not bool(bad.any()):
                    break
                a = xp.where(bad, 0.5 * a, a)
            else:  # angles with no decrease along d keep their psi (a = 0)
                a = xp.where(bad, 0, a)
                if not bool((a > 0).any()):
                    break
                p_new = psi + a[:, None, None] * d
                ev_new = self.evaluate(p_new, grad_next)
                phi_new = xp.where(bad, phi, self.sub_objective(p_new, ev_new, t, r))
            psi, ev, phi = p_new, ev_new, phi_new
        return psi

    def u_update(self, u, q, y, b, r, t_):
        """(b) min_u r/2 ||T(u) - y||^2 + t_/2 ||u - b||^2 (seed 000, the tomography sub-problem).

        y = psi + lambda / rho, b = v - mu / tau; by Gauss-Newton steps on the linearised exponential, each solved by
        CG on [r c^2 (Pad P)^H |T_k|^2 (Pad P) + t_] du = r (Pad P)^H conj(i c T_k)(y - T_k) + t_ (b - u_k),
        all in the slab layout: y's volume rows move to the slabs once; T_k = exp(i c P u_k) on the slab's
        rows (local).

        Parameters
        ----------
        u, q : array
            The current slab and P u on it.
        y : array
            The per-angle target (A_r, H, W).
        b : array or None
            The prior's target (None without a prior).
        r, t_ : float
            rho and tau.

        Returns
        -------
        tuple
            (u, CG iterations in all, CG's last relative residual).
        """
        sp, comm, xp, P, expmap, c = self.sp, self.comm, self.xp, self.sp.P, self.expmap, self.c
        linear, dtype = self.linear, self.shard.model.dtype
        with comm.phase("project"):
            y_s = sp.to_slabs(self.pad.adj(y))  # (A, rows, W): the one transpose to the slabs
        cg_it, cg_res = 0, 0.0
        for gn in range(self.opts.tomo_gn_steps):
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
            du, info = conjugate_gradient(normal, rhs.astype(dtype, copy=False), None,
                                          sp.dot, tol=1e-6, max_iter=self.opts.tomo_cg_iterations)
            u = u + du
            cg_it += info.iterations
            cg_res = info.residual
        return u, cg_it, cg_res

    def prior_update(self, u, mu, tau):
        """(c) v <- denoise(u + mu / tau, alpha / tau) (seed 000's plug-and-play prior step).

        The first call fixes alpha = ``prior_weight`` tau_0 s_u, s_u the 99th percentile of |u| (module docstring).

        Parameters
        ----------
        u, mu : array
            The new volume slab and the prior's multiplier.
        tau : float
            The prior's penalty.

        Returns
        -------
        tuple
            (v, the strength alpha / tau).
        """
        from ..priors import denoise

        st = self.state
        if st.alpha is None:
            st.s_u = distributed_percentile(u, 99, self.comm)
            st.alpha = self.opts.prior_weight * self.tau0 * st.s_u
        strength = st.alpha / tau
        with self.comm.phase("prox"):
            return denoise(self.denoiser, u + mu / tau, strength, space=self.sp), strength

    def dual_update(self):
        """(d) lambda += rho (psi - T(u)) and, with a prior, mu += tau (u - v) (unscaled multipliers)."""
        st = self.state
        st.lam += st.rho * (st.psi - self.Tu)
        if not self.no_prior:
            st.mu += st.tau * (st.u - st.v)

    def balance(self, res: dict) -> None:
        """(e) residual balancing (Boyd et al. 2011, section 3.4.1) of rho and tau, in the state.

        On the normalised (default) or relative residuals of ``res``; see :func:`balance_penalty`.

        Parameters
        ----------
        res : dict
            The row's residual columns (:meth:`residuals`).
        """
        st, opts = self.state, self.opts
        if opts.balance_mode == "relative":
            st.rho = balance_penalty(st.rho, res["primal_residual_rel"], res["dual_residual_rel"], opts)
            if not self.no_prior:
                st.tau = balance_penalty(st.tau, res["primal_residual_prior_rel"], res["dual_residual_prior_rel"],
                                         opts)
        else:
            st.rho = balance_penalty(st.rho, res["primal_residual"], res["dual_residual"] / self.rho0, opts)
            if not self.no_prior:
                st.tau = balance_penalty(st.tau, res["primal_residual_prior"],
                                         res["dual_residual_prior"] / self.tau0, opts)

    # -- one iteration ----------------------------------------------------------------------------------
    def residuals(self, T_old, v_old) -> dict:
        """Boyd's absolute primal / dual residuals of both constraints and Wohlberg's relative ones.

        Parameters
        ----------
        T_old : array
            T(u) before this iteration's u-update.
        v_old : array
            v before the prior step.

        Returns
        -------
        dict
            ``primal_residual``, ``dual_residual``, ``primal_residual_prior``, ``dual_residual_prior`` and
            their ``*_rel`` forms.
        """
        st, sh, comm, sp, xp = self.state, self.shard, self.comm, self.sp, self.xp
        Tu = self.Tu
        r_psi = np.sqrt(angle_sum(comm, sh, xp.abs(st.psi - Tu) ** 2))
        s_psi = st.rho * np.sqrt(angle_sum(comm, sh, xp.abs(Tu - T_old) ** 2))
        n_psi = np.sqrt(angle_sum(comm, sh, xp.abs(st.psi) ** 2))
        n_T = np.sqrt(angle_sum(comm, sh, xp.abs(Tu) ** 2))
        n_lam = np.sqrt(angle_sum(comm, sh, xp.abs(st.lam) ** 2))
        r_v = s_v = r_v_rel = s_v_rel = 0.0
        if not self.no_prior:
            u, v = st.u, st.v
            r_v = np.sqrt(sp.dot(u - v, u - v))
            s_v = st.tau * np.sqrt(sp.dot(v - v_old, v - v_old))
            r_v_rel = _rel(r_v, max(np.sqrt(sp.dot(u, u)), np.sqrt(sp.dot(v, v))))
            s_v_rel = _rel(s_v, np.sqrt(sp.dot(st.mu, st.mu)))
        return dict(primal_residual=r_psi, dual_residual=s_psi, primal_residual_prior=r_v,
                    dual_residual_prior=s_v, primal_residual_rel=_rel(r_psi, max(n_psi, n_T)),
                    dual_residual_rel=_rel(s_psi, n_lam), primal_residual_prior_rel=r_v_rel,
                    dual_residual_prior_rel=s_v_rel)

    def step(self, k: int) -> dict:
        """One outer iteration, (a) to (e) (see :meth:`IterativeSolver.step`).

        Parameters
        ----------
        k : int
            The 0-based iteration: after it the penalties are rebalanced every ``balance_every`` iterations.

        Returns
        -------
        dict
            The history columns of the module docstring, but ``iter_time_s`` (which :func:`~.base.run` adds).
        """
        from ..priors import prior_value

        st, sh, comm, sp = self.state, self.shard, self.comm, self.sp
        rho, tau = st.rho, st.tau
        with comm.phase("ptycho"):  # (a)
            st.psi = self.psi_update(st.psi, self.Tu - st.lam / rho, rho)
        u_old, T_old = st.u, self.Tu  # (b)
        b = st.v - st.mu / tau if tau > 0 else None
        st.u, cg_it, cg_res = self.u_update(st.u, self.q, st.psi + st.lam / rho, b, rho, tau)
        self.q, self.Tu = self.project(st.u)  # the one transpose back to the angles
        v_old = st.v  # (c)
        if self.no_prior:
            st.v = v_old = st.u
            strength = 0.0
        else:
            st.v, strength = self.prior_update(st.u, st.mu, tau)
        self.dual_update()  # (d) (the residuals below use the new multipliers)
        res = self.residuals(T_old, v_old)
        with comm.phase("ptycho"):  # objective at the consistent point psi = T(u), v = u
            ev = self.evaluate(self.Tu, False)
        dobj = per_frame_total(comm, sh, ev.per_frame)
        pval = 0.0 if self.no_prior else prior_value(self.denoiser, st.u, space=sp)
        obj = dobj + (st.alpha * pval if st.alpha else 0.0)
        rf = per_frame_total(comm, sh, ev.misfit_per_frame) / self.sum_sqrt_f
        du = st.u - u_old
        change = np.sqrt(sp.dot(du, du) / max(sp.dot(st.u, st.u), 1e-300))
        row = dict(objective=obj, data_objective=dobj, prior_value=pval, r_factor=rf, **res, rho=rho, tau=tau,
                   strength=strength, cg_iterations=cg_it, cg_residual=cg_res, rel_change=change)
        if self.opts.balance and (k + 1) % self.opts.balance_every == 0:  # (e), for the next iteration
            self.balance(res)
        return row

    def iterate(self):
        """The volume slab ``u``, what callbacks receive (:meth:`IterativeSolver.iterate`)."""
        return self.state.u

    def result(self, history: History) -> SolverResult:
        """The volume slab, the probe and ``history`` (see :meth:`IterativeSolver.result`).

        ``state``: the penalties and their starts, alpha, s_u, c, the model, and psi, lambda, v, mu at the end.

        Parameters
        ----------
        history : History
            Every row of the run.

        Returns
        -------
        SolverResult
            What the ADMM run gives back.
        """
        st = self.state
        state = {"rho": st.rho, "tau": st.tau, "rho0": self.rho0, "tau0": self.tau0, "alpha": st.alpha or 0.0,
                 "s_u": st.s_u or 0.0, "c": self.c, "model": "linear" if self.linear else "exp", "psi": st.psi,
                 "lambda": st.lam, "v": st.v, "mu": st.mu}
        return SolverResult(volume=st.u, probe=self.pt.probe, history=history, state=state)


run_admm = solver_runner(ADMM, ADMMOptions, "Three-way ADMM (:class:`ADMM`, module docstring) on this rank's shard and slab.")


def balance_penalty(pen: float, r: float, s: float, opts: ADMMOptions) -> float:
    """Residual balancing (Boyd et al. 2011, section 3.4.1) of one penalty.

    The penalty times ``balance_factor`` when the primal residual ``r`` exceeds ``balance_ratio`` x the dual
    ``s``, divided by it in the opposite case, else unchanged (also when either is not finite).

    Parameters
    ----------
    pen : float
        The penalty (rho or tau).
    r, s : float
        The primal and dual residuals, in comparable units (normalised or relative).
    opts : ADMMOptions
        ``balance_ratio`` and ``balance_factor``.

    Returns
    -------
    float
        The next penalty.
    """
    if not (np.isfinite(r) and np.isfinite(s)):
        return pen
    if r > opts.balance_ratio * s:
        return pen * opts.balance_factor
    if s > opts.balance_ratio * r:
        return pen / opts.balance_factor
    return pen


SPEC = SolverSpec(name="admm", options=ADMMOptions, run=run_admm, models=("exp", "linear"), default_model="exp",
                  generic={"iterations": "iterations", "noise": "metric", "prior": "prior",
                           "prior_weight": "prior_weight", "penalty": "rho_rel", "init": "init"},
                  whole_angles=True, deterministic="optional",
                  summary="seed 000's three-way ADMM with a plug-in denoiser, either forward model")
