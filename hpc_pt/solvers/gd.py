"""Full-gradient descent for joint ptycho-tomography (seed 002, Algorithm 1), with either forward model.

Loss (seed 002 Eq. 4, amplitude / Gaussian metric; masked detector pixels carry no term):

    L(u) = 1/2 sum_j || |D_j(psi(u))| - sqrt(f_j) ||^2,   D_j = F(w o S_j .),
    psi(u) = exp(i c Pad(P u))   (model "exp", seed 002)   or   psi(u) = Pad(P u)   (model "linear", seed 001)

Gradient (seed 002 Eq. 5, written as the chain of adjoints; u is complex, L real, and every map up to
psi is holomorphic, so the steepest-descent direction for (Re u, Im u) is the complex vector

    g_u = P^H Pad^H T.vjp( Ptycho^H ( z - sqrt(f) z / |z| ) ),   z = D psi(u),

i.e. g_u = 2 dL/d conj(u) and dL = Re <g_u, du>); T is the transmission map, :class:`ExpMap` for "exp" and
the identity (:class:`IdentityMap`) for "linear". ``metric="poisson"`` swaps in the Poisson loss
1/2 sum (|z|^2 - f log |z|^2) with residual z - f z / |z|^2.

Start. With "exp", u_0 = 0 is free space (psi = 1), seed 002's start. With "linear", u = 0 has no far field
and a zero gradient (a stationary point), so the start is the constant volume whose model matches the data
energy, ||D(s 1)||^2 = sum f (seed 001's u_0 = 1, as in APT): ``init="auto"`` picks zeros for "exp" and that
constant for "linear"; ``"zeros"`` with "linear" is refused.

Distribution (docs/architecture.md §3). The frames are sharded by angle, the volume u, the gradient g and
the search direction are this rank's slab (:class:`hpc_pt.parallel.SlabSpace`). P u and P g are kept in
the per-angle layout (A_r, N_z, W); since P is linear, the line search's trial points are
P(u - t g) = P u - t P g, formed locally. Per outer iteration the main data flow moves the projections
twice: one transpose angles -> slabs for the gradient (P^T of the shard's residual fields, summed over
ranks by the transpose itself) and one slabs -> angles for P g; trials of the line search cost no
communication beyond scalar sums, and a rejected step (no decrease at the smallest trial) skips the
gradient's transpose. Scalars (loss, R-factor, dot products) go through ``comm.sum_scalar``; there is no
volume all-reduce. Set-up adds one transpose for P u_0, one per non-zero map of the ptychographic normal
stencil (1 or 9, :func:`linearised_normal`, so that the power iteration for Lip below is local on the
slabs) and one for the first gradient. P u is carried (P u - t P g every step), not recomputed, so it
drifts from P u by float rounding only (relative ~1e-7 per step in complex64).

Iteration (seed 002): u_{n+1} = u_n - alpha_n g_u(u_n), u_0 = 0, alpha_{n+1} = alpha_n / (1 + eps n),
eps = 1e-6 (``schedule="time"``; ``"constant"`` keeps alpha fixed).

Step size. The seed's alpha_0 = 0.01 belongs to its own (unstated) scaling of u, c and the probe, so it
is not a default here. The default is scale-free: alpha_0 = ``step_rel`` / Lip with

    Lip = ||J||^2,   J = Ptycho o diag(i c psi_0) o Pad o P   (the linearised model at u_0; for "linear"
                                                            J = Ptycho o Pad o P, the model itself),

estimated by power iteration on J^H J (15 products, in the slab layout). Per detector pixel the
amplitude loss has curvature at most 1 along |z| and 1 - sqrt(f)/|z| <= 1 across it, so 1/Lip is the
classical safe step of gradient descent (up to the exponential's own curvature, which is of the order
of the residual). It is invariant to rescaling the data and probe, to the units of u (through c) and to
the problem size. A user-given ``step`` overrides it (absolute units, as in the seed).

Line search (default on): backtracking Armijo on L with c1 = 1e-4, halving the trial step. The trial
at iteration n is ``growth`` (1.5) times the last accepted step, decayed by the schedule, so the step
follows the local curvature up and down. Every trial costs one exponential map and one pass over the
frames (no projection: P u - t P g) that forms the loss and, in the same frame batches, the per-angle
gradient field (:func:`.farfield.farfield_pass`: the far fields of all frames are never held at once); the
accepted trial's field is the next gradient, so a line search that accepts at once costs nothing extra, and
each rejected trial one wasted Ptycho^H. With ``line_search=False`` the plain seed-002 iteration runs.

Checkpoints hold the loop state of this rank: u, the carried P u (per-angle), the gradient g, the loss,
the current and initial steps and Lip, so a resumed run continues bitwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..backend import get_xp, leading_sums
from .base import (
    NO_CHECKPOINTS,
    Checkpointer,
    History,
    Shard,
    SolverResult,
    frame_sum,
    per_frame_total,
    power_lipschitz,
)
from .farfield import FarfieldPass, farfield_pass
from .prox import METRICS, data_residual, pixel_sum  # noqa: F401 (data_residual re-exported)

SCHEDULES = ("time", "constant")
INITS = ("auto", "zeros", "constant")


@dataclass
class GDOptions:
    iterations: int = 100
    step: float | None = None  # absolute alpha_0; None: step_rel / Lip (scale-free, module docstring)
    step_rel: float = 1.0
    schedule: str = "time"  # "time": alpha_{n+1} = alpha_n / (1 + eps n) (seed 002); "constant"
    eps: float = 1e-6
    line_search: bool = True
    armijo_c1: float = 1e-4
    growth: float = 1.5  # with line search: next trial = growth x accepted step
    max_backtracks: int = 30
    metric: str = "gaussian"  # "gaussian" (amplitude, seed 002) or "poisson"
    init: str = "auto"  # "auto": zeros (free space) for "exp", the energy-matched constant for "linear"
    power_iterations: int = 15


class IdentityMap:
    """psi = x: the linear (Rytov, seed 001) model's transmission, with the :class:`ExpMap` interface
    (``c`` = 1: the Jacobian is the identity)."""

    c = 1.0

    def fwd(self, x):
        return x

    def jvp(self, x, dx, psi=None):
        return dx

    def vjp(self, x, g, psi=None):
        return g


class JointModel:
    """u -> x = Pad(P u) -> psi = T(x) -> z = D psi for one shard, with the pieces the solvers need; T is
    exp(i c x) (model "exp") or the identity (model "linear", :class:`IdentityMap`).

    Slab layout (docs/architecture.md §3): ``u`` is this rank's slab of the volume; ``x`` / ``psi`` / ``z`` are
    the shard's per-angle fields (A_r, H, W) and frames. :meth:`x` costs one transpose (slab -> angles),
    :meth:`xadj` one transpose (angles -> slab) and returns the adjoint SUMMED over every rank's angles on
    this slab (no further reduction is needed; on one rank it is the plain adjoint). Solvers that keep
    P u in the per-angle layout use :meth:`evaluate_at` (no communication).
    """

    def __init__(self, shard: Shard):
        m = shard.model
        self.linear = m.expmap is None
        self.shard, self.space = shard, shard.space
        self.pad, self.pt = m.pad, m.ptycho
        self.exp = IdentityMap() if self.linear else m.expmap
        self.c = self.exp.c

    def x(self, u):
        """Pad(P u) on the shard's angles (A_r, H, W) (one transpose)."""
        return self.shard.projections(u)

    def xadj(self, y):
        """(Pad P)^H y: per-angle fields (A_r, H, W), summed over ranks, -> this rank's slab (one transpose)."""
        return self.shard.backproject(y)

    def psi(self, u):
        return self.exp.fwd(self.x(u))

    def farfield(self, u):
        psi = self.psi(u)
        return psi, self.pt.fwd(psi)

    def evaluate(self, psi, f, sqrt_f, metric: str, mask=None, grad: bool = True) -> FarfieldPass:
        """Objective per frame, R-factor numerator and (``grad``) the per-angle gradient field
        ExpMap^H Ptycho^H r(z) at psi, one frame batch at a time (:func:`.farfield.farfield_pass`; no far
        field of every frame is held)."""
        ev = farfield_pass(self.pt, psi, f, sqrt_f, metric, mask, grad)
        if grad:
            ev.field = self.exp.vjp(psi, ev.field, psi=psi)
        return ev

    def evaluate_at(self, pu, f, sqrt_f, metric: str, mask=None, grad: bool = True) -> FarfieldPass:
        """:meth:`evaluate` at psi = T(Pad(P u)), P u in the per-angle layout: no communication."""
        return self.evaluate(self.exp.fwd(self.pad.fwd(pu)), f, sqrt_f, metric, mask, grad)

    def jtj(self, v, psi):
        """J^H J v for the linearisation at psi: c^2 (Pad P)^H [conj(psi) Pt^H Pt (psi Pad P v)] ("exp"; for
        "linear" (Pad P)^H Pt^H Pt Pad P v) (two transposes; :func:`linearised_normal` is the
        communication-free slab-layout version)."""
        xp = get_xp(v)
        pt = self.pt
        w2 = xp.abs(pt.probe) ** 2
        t = self.x(v) if self.linear else psi * self.x(v)
        t = pt.patches_adj(w2 * pt.patches(t))
        return self.xadj(t) if self.linear else (self.c ** 2) * self.xadj(xp.conj(psi) * t)

    def energy_matched_constant(self, u_shape, comm, f, mask=None, dtype=np.complex64):
        """The constant s with ||D(T(Pad P (s 1)))||^2 = sum f, for the linear model (where D T Pad P is
        linear, so s = sqrt(sum f / ||D Pad P 1||^2)); one transpose and one pass over the frames.
        Collective. Returns (s, P(s 1) in the per-angle layout)."""
        xp = get_xp(f)
        pu1 = self.space.project(xp.ones(u_shape, dtype=dtype))
        psi1 = self.pad.fwd(pu1)
        per = xp.zeros(self.pt.n_frames, dtype=np.float64)
        for sl in self.pt.batches():
            z = self.pt.fwd(psi1, sl)
            e = z.real ** 2 + z.imag ** 2
            per[sl] = xp.asarray(leading_sums(e * mask if mask is not None else e))
        energy = per_frame_total(comm, self.shard, per)
        data = frame_sum(comm, self.shard, f, mask)
        s = float(np.sqrt(data / energy)) if energy > 0 else 1.0
        return s, pu1 * pu1.real.dtype.type(s)  # a NumPy scalar: CuPy refuses a 0-d NumPy array operand


#: the name before the linear model was supported (kept for callers)
ExpJointModel = JointModel


def linearised_normal(model: JointModel, u, comm):
    """J^H J of the model linearised at ``u`` (this rank's slab), as a map on slabs with no transposes.

    J^H J = c^2 P^H Pad^H conj(psi) N psi Pad P with N = sum_j S_j^T |w|^2 S_j ("exp"; "linear":
    P^H Pad^H N Pad P, independent of ``u``). N is a 3x3 stencil per
    angle (:meth:`~hpc_pt.operators.Ptychography.normal_stencil`); cropped to the volume's rows (the padded
    rows of Pad P v are zero) it is moved to the slab layout once (one transpose per non-zero map, 1 for
    integer scan positions, 9 otherwise; the parts of an angle split over ranks add up), and psi on the
    volume rows in the slab layout is exp(i c P u) computed locally. A product is then local except for a
    one-row halo of the stencil.
    """
    from ..operators import apply_stencil

    sp, r0 = model.space, model.pad.offset[0]
    nz = sp.global_shape[0]
    maps = model.pt.normal_stencil()[:, :, r0:r0 + nz]
    xp = get_xp(maps)
    off = comm.sum_scalar(float(xp.abs(maps[[0, 1, 2, 3, 5, 6, 7, 8]]).sum()))
    vert = comm.sum_scalar(float(xp.abs(maps[[0, 1, 2, 6, 7, 8]]).sum())) > 0
    keep = range(9) if off > 0 else (4,)
    maps = xp.stack([sp.to_slabs(xp.ascontiguousarray(maps[k])) for k in keep])
    if model.linear:
        def apply_linear(v):
            t = sp.P.fwd(v)
            lo, hi = sp.halo(t, axis=1) if vert else (None, None)
            return sp.P.adj(apply_stencil(maps, t, lo, hi))

        return apply_linear
    psi = model.exp.fwd(sp.P.fwd(u))  # (A, rows, W): every angle, this slab's rows
    psi_c = xp.conj(psi)
    c2 = model.c ** 2

    def apply(v):
        t = psi * sp.P.fwd(v)
        lo, hi = sp.halo(t, axis=1) if vert else (None, None)
        return c2 * sp.P.adj(psi_c * apply_stencil(maps, t, lo, hi))

    return apply


def _check(opts: GDOptions):
    if opts.metric not in METRICS:
        raise ValueError(f"unknown noise metric {opts.metric!r}; use one of {METRICS}")
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown step schedule {opts.schedule!r}; use one of {SCHEDULES}")
    if opts.init not in INITS:
        raise ValueError(f"unknown init {opts.init!r}; use one of {INITS} (or pass u0)")
    if opts.step is not None and not opts.step > 0:
        raise ValueError(f"step must be positive (or None for the automatic step), got {opts.step}")
    if not opts.step_rel > 0:
        raise ValueError(f"step_rel must be positive, got {opts.step_rel}")


def resolve_init(init: str, linear: bool, method: str = "gd") -> str:
    """``"zeros"`` or ``"constant"`` for ``init`` ("auto", "zeros", "constant") and the model (module
    docstring); ValueError for a start the model cannot use."""
    if init == "auto":
        return "constant" if linear else "zeros"
    if linear and init == "zeros":
        raise ValueError(f"{method} with the linear model cannot start from zeros (no far field, zero gradient); "
                         "use init constant (the energy-matched constant, the default) or a given volume")
    if not linear and init == "constant":
        raise ValueError(f"{method} with the exponential model starts from zeros (free space) or a given volume; "
                         "use init zeros")
    return init


def loss_and_gradient(model: JointModel, shard: Shard, comm, u, metric: str = "gaussian"):
    """(L(u), g_u): the global loss and the volume gradient on this rank's slab (collectives over ``comm``;
    two transposes; the far fields are formed one frame batch at a time)."""
    ev = model.evaluate(model.psi(u), shard.intensities, shard.amplitudes, metric, shard.mask, grad=True)
    return per_frame_total(comm, shard, ev.per_frame), model.xadj(ev.field)


def run_gd(shard: Shard, comm, opts: GDOptions | None = None, callback=None, u0=None,
           checkpoints: Checkpointer = NO_CHECKPOINTS) -> SolverResult:
    """Seed 002 Algorithm 1 on this rank's shard and slab (module docstring), with the shard's forward
    model ("exp" or "linear"); ``u0`` (this rank's slab) warm-starts instead of ``opts.init``.

    ``callback(row, u)`` is called after every iteration with the history row and the volume slab;
    ``checkpoints`` hands the loop state out every K iterations and back on resume (bitwise continuation).
    """
    opts = GDOptions() if opts is None else opts
    _check(opts)
    model = JointModel(shard)
    init = resolve_init(opts.init, model.linear) if u0 is None else "given"
    sp = shard.space
    xp = get_xp(shard.intensities)
    dtype = shard.model.dtype
    shape = shard.volume_shape
    f, sqrt_f, mask = shard.intensities, shard.amplitudes, shard.mask
    st = checkpoints.resume

    def evaluate_at(pu, grad=True):
        """The loss and R-factor terms at P u and, with ``grad``, the per-angle gradient field (local)."""
        with comm.phase("ptycho"):
            ev = model.evaluate_at(pu, f, sqrt_f, opts.metric, mask, grad)
        return per_frame_total(comm, shard, ev.per_frame), ev

    def gradient(ev):
        with comm.phase("project"):
            return model.xadj(ev.field)  # one transpose: angles -> slabs

    if st is None:
        with comm.phase("project"):
            if init == "constant":  # linear model: s 1 with ||D(s 1)||^2 = sum f (P(s 1) from the same transpose)
                s, pu = model.energy_matched_constant(shape, comm, f, mask, dtype)
                u = xp.full(shape, s, dtype=dtype)
            else:
                u = xp.zeros(shape, dtype=dtype) if u0 is None else xp.asarray(u0, dtype=dtype).copy()
                pu = sp.project(u)  # P u, per-angle layout (A_r, N_z, W): one transpose
            normal = linearised_normal(model, u, comm)
            lip = power_lipschitz(normal, sp.global_shape, comm, dtype, opts.power_iterations, like=u,
                                  rows=(sp.z0, sp.z1), dot=sp.dot)
        if opts.step is not None:
            alpha = float(opts.step)
        else:
            alpha = opts.step_rel / lip if lip > 0 else 1.0
        alpha0 = alpha
        loss, ev = evaluate_at(pu)
        g = gradient(ev)
    else:  # the whole loop state: u, P u as carried (not recomputed: bitwise), the gradient, the steps
        u, pu, g = (xp.asarray(st[k]) for k in ("u", "pu", "g"))
        lip, alpha, alpha0, loss = (float(st[k]) for k in ("lipschitz", "step", "step0", "loss"))
        _, ev = evaluate_at(pu, grad=False)  # the R-factor terms at the current point

    sum_sqrt_f = frame_sum(comm, shard, sqrt_f, shard.mask)
    hist = History(st["history"] if st is not None else None)
    for n in range(len(hist), opts.iterations):
        t0 = time.perf_counter()
        gg = sp.dot(g, g)
        with comm.phase("project"):
            pg = sp.project(g)  # P g at this rank's angles: one transpose; trial points P u - t P g
        backtracks = 0
        moved = True
        if opts.line_search:
            trial = alpha
            while True:
                pu_new = pu - trial * pg
                new_loss, ev_new = evaluate_at(pu_new)  # with the gradient field: used if accepted
                if new_loss <= loss - opts.armijo_c1 * trial * gg or backtracks >= opts.max_backtracks:
                    break
                trial *= 0.5
                backtracks += 1
            moved = new_loss <= loss  # else no decrease even at the smallest trial: stay (gradient ~ 0)
            step_used = trial
        else:
            step_used = alpha
            pu_new = pu - alpha * pg
            new_loss, ev_new = evaluate_at(pu_new)
        if moved:
            u_new = u - step_used * g
            du = u_new - u
            change = np.sqrt(sp.dot(du, du) / max(sp.dot(u_new, u_new), 1e-300))
            u, pu, loss, ev = u_new, pu_new, new_loss, ev_new
            g = gradient(ev)
        else:  # u, and so its gradient, unchanged (the branch is taken on every rank alike)
            change = 0.0
        # next step: the seed's time-based decay, applied to the accepted step (x growth) with line search
        base = step_used * opts.growth if opts.line_search else alpha
        alpha = base / (1.0 + opts.eps * n) if opts.schedule == "time" else base
        rf = per_frame_total(comm, shard, ev.misfit_per_frame) / sum_sqrt_f
        row = hist.append(iteration=n + 1, objective=loss, r_factor=rf, step=step_used,
                          grad_norm=float(np.sqrt(gg)), backtracks=backtracks, rel_change=change,
                          iter_time_s=time.perf_counter() - t0)
        if callback is not None:
            callback(row, u)
        if checkpoints.due(n + 1):
            checkpoints.save({"iteration": n + 1, "u": u, "pu": pu, "g": g, "loss": loss, "step": alpha,
                              "step0": alpha0, "lipschitz": lip, "history": hist.rows})
    return SolverResult(volume=u, probe=model.pt.probe, history=hist,
                        state={"lipschitz": lip, "step0": alpha0, "step": alpha, "c": model.c,
                               "model": "linear" if model.linear else "exp"})
