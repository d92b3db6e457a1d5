"""Full-gradient descent for joint ptycho-tomography with the exponential model (seed 002, Algorithm 1).

Loss (seed 002 Eq. 4, amplitude / Gaussian metric; masked detector pixels carry no term):

    L(u) = 1/2 sum_j || |D_j(psi(u))| - sqrt(f_j) ||^2,   psi(u) = exp(i c Pad(P u)),  D_j = F(w o S_j .)

Gradient (seed 002 Eq. 5, written as the chain of adjoints; u is complex, L real, and every map up to
psi is holomorphic, so the steepest-descent direction for (Re u, Im u) is the complex vector

    g_u = P^H Pad^H ExpMap.vjp( Ptycho^H ( z - sqrt(f) z / |z| ) ),   z = D psi(u),

i.e. g_u = 2 dL/d conj(u) and dL = Re <g_u, du>). ``metric="poisson"`` swaps in the Poisson loss
1/2 sum (|z|^2 - f log |z|^2) with residual z - f z / |z|^2. Each rank back-projects its own frames; the
volume gradient is summed with ``comm.allreduce_sum`` and every scalar with ``comm.sum_scalar``.

Iteration (seed 002): u_{n+1} = u_n - alpha_n g_u(u_n), u_0 = 0, alpha_{n+1} = alpha_n / (1 + eps n),
eps = 1e-6 (``schedule="time"``; ``"constant"`` keeps alpha fixed).

Step size. The seed's alpha_0 = 0.01 belongs to its own (unstated) scaling of u, c and the probe, so it
is not a default here. The default is scale-free: alpha_0 = ``step_rel`` / Lip with

    Lip = ||J||^2,   J = Ptycho o diag(i c psi_0) o Pad o P   (the linearised model at u_0),

estimated by power iteration on J^H J (15 products). Per detector pixel the amplitude loss has curvature
at most 1 along |z| and 1 - sqrt(f)/|z| <= 1 across it, so 1/Lip is the classical safe step of gradient
descent (up to the exponential's own curvature, which is of the order of the residual). It is invariant
to rescaling the data and probe, to the units of u (through c) and to the problem size. A user-given
``step`` overrides it (absolute units, as in the seed).

Line search (default on): backtracking Armijo on L with c1 = 1e-4, halving the trial step. The trial
at iteration n is ``growth`` (1.5) times the last accepted step, decayed by the schedule, so the step
follows the local curvature up and down. Every trial costs one forward model; the accepted one is reused
as the next gradient's forward pass, so a line search that accepts at once costs nothing extra (the
loss is needed for the history anyway). With ``line_search=False`` the plain seed-002 iteration runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..backend import get_xp
from .base import History, Shard, SolverResult, power_lipschitz
from .prox import METRICS, data_objective, pixel_sum

SCHEDULES = ("time", "constant")
INITS = ("zeros",)


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
    init: str = "zeros"
    power_iterations: int = 15


def data_residual(z, f, sqrt_f, metric: str, mask=None):
    """2 dG/d conj(z) per detector pixel: z - sqrt(f) z/|z| (amplitude) or z - f z/|z|^2 (Poisson).

    Where z = 0 the amplitude residual takes phase 1 (the subgradient choice of :mod:`.prox`); the
    Poisson one floors |z|^2 at sqrt(smallest normal float) (1e-19 in float32), a constant, so the result
    does not depend on how frames are spread over ranks.
    """
    xp = get_xp(z)
    mag2 = z.real ** 2 + z.imag ** 2
    if metric == "gaussian":
        mag = xp.sqrt(mag2)
        unit = xp.where(mag > 0, z / xp.where(mag > 0, mag, 1), 1)
        g = z - sqrt_f * unit
    else:
        floor = float(np.sqrt(np.finfo(mag2.dtype).tiny))
        g = z - f * z / xp.maximum(mag2, floor)
    if mask is not None:
        g = g * mask
    return g.astype(z.dtype, copy=False)


class ExpJointModel:
    """u -> x = Pad(P u) -> psi = exp(i c x) -> z = D psi for one shard, with the pieces the solvers need."""

    def __init__(self, shard: Shard):
        m = shard.model
        if m.expmap is None:
            raise ValueError("GD / three-way ADMM use the exponential model; this dataset was set up with "
                             "model 'linear' (use APT for the linear model)")
        self.P, self.pad, self.pt, self.exp = m.projector, m.pad, m.ptycho, m.expmap
        self.c = self.exp.c

    def x(self, u):
        return self.pad.fwd(self.P.fwd(u))

    def xadj(self, y):
        """(Pad P)^H y: field stack (A, H, W) -> volume."""
        return self.P.adj(self.pad.adj(y))

    def psi(self, u):
        return self.exp.fwd(self.x(u))

    def farfield(self, u):
        psi = self.psi(u)
        return psi, self.pt.fwd(psi)

    def grad_from(self, psi, gz):
        """P^H Pad^H ExpMap^H Ptycho^H gz (this shard's part of the volume gradient)."""
        return self.xadj(self.exp.vjp(psi, self.pt.adj(gz), psi=psi))

    def jtj(self, v, psi):
        """J^H J v for the linearisation at psi: c^2 (Pad P)^H [conj(psi) Pt^H Pt (psi Pad P v)]."""
        xp = get_xp(v)
        pt = self.pt
        w2 = xp.abs(pt.probe) ** 2
        t = psi * self.x(v)
        t = pt.patches_adj(w2 * pt.patches(t))
        return (self.c ** 2) * self.xadj(xp.conj(psi) * t)


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


def loss_and_gradient(model: ExpJointModel, shard: Shard, comm, u, metric: str = "gaussian"):
    """(L(u), g_u, psi, z): the global loss and volume gradient (collectives over ``comm``)."""
    psi, z = model.farfield(u)
    f, sqrt_f, mask = shard.intensities, shard.amplitudes, shard.mask
    loss = comm.sum_scalar(data_objective(get_xp(z).abs(z), f, sqrt_f, metric, mask))
    g = comm.allreduce_sum(model.grad_from(psi, data_residual(z, f, sqrt_f, metric, mask)))
    return loss, g, psi, z


def run_gd(shard: Shard, comm, opts: GDOptions | None = None, callback=None, u0=None) -> SolverResult:
    """Seed 002 Algorithm 1 on this rank's shard (module docstring); ``u0`` warm-starts instead of zeros.

    ``callback(row, u)`` is called after every iteration with the history row and the volume.
    """
    opts = GDOptions() if opts is None else opts
    _check(opts)
    model = ExpJointModel(shard)
    xp = get_xp(shard.intensities)
    dtype = shard.model.dtype
    shape = shard.volume_shape
    f, sqrt_f, mask = shard.intensities, shard.amplitudes, shard.mask
    u = xp.zeros(shape, dtype=dtype) if u0 is None else xp.asarray(u0, dtype=dtype).copy()

    psi0 = model.psi(u)
    lip = power_lipschitz(lambda v: comm.allreduce_sum(model.jtj(v, psi0)), shape, comm, dtype,
                          opts.power_iterations, like=u)
    if opts.step is not None:
        alpha = float(opts.step)
    else:
        alpha = opts.step_rel / lip if lip > 0 else 1.0
    alpha0 = alpha

    def loss_at(v):
        p, z = model.farfield(v)
        return comm.sum_scalar(data_objective(xp.abs(z), f, sqrt_f, opts.metric, mask)), p, z

    sum_sqrt_f = comm.sum_scalar(pixel_sum(sqrt_f, shard.mask))
    loss, g, psi, z = loss_and_gradient(model, shard, comm, u, opts.metric)
    hist = History()
    for n in range(opts.iterations):
        t0 = time.perf_counter()
        gg = comm.volume_dot(g, g)
        backtracks = 0
        if opts.line_search:
            trial = alpha
            while True:
                u_new = u - trial * g
                new_loss, psi_new, z_new = loss_at(u_new)
                if new_loss <= loss - opts.armijo_c1 * trial * gg or backtracks >= opts.max_backtracks:
                    break
                trial *= 0.5
                backtracks += 1
            if new_loss > loss:  # no decrease even at the smallest trial: stay (gradient ~ 0 or noise)
                u_new, new_loss, psi_new, z_new = u, loss, psi, z
            step_used = trial
        else:
            step_used = alpha
            u_new = u - alpha * g
            new_loss, psi_new, z_new = loss_at(u_new)
        du = u_new - u
        change = np.sqrt(comm.volume_dot(du, du) / max(comm.volume_dot(u_new, u_new), 1e-300))
        u, loss, psi, z = u_new, new_loss, psi_new, z_new
        g = comm.allreduce_sum(model.grad_from(psi, data_residual(z, f, sqrt_f, opts.metric, mask)))
        # next step: the seed's time-based decay, applied to the accepted step (x growth) with line search
        base = step_used * opts.growth if opts.line_search else alpha
        alpha = base / (1.0 + opts.eps * n) if opts.schedule == "time" else base
        rf = comm.sum_scalar(pixel_sum(xp.abs(xp.abs(z) - sqrt_f), shard.mask)) / sum_sqrt_f
        row = hist.append(iteration=n + 1, objective=loss, r_factor=rf, step=step_used,
                          grad_norm=float(np.sqrt(gg)), backtracks=backtracks, rel_change=change,
                          iter_time_s=time.perf_counter() - t0)
        if callback is not None:
            callback(row, u)
    return SolverResult(volume=u, probe=model.pt.probe, history=hist,
                        state={"lipschitz": lip, "step0": alpha0, "step": alpha, "c": model.c})
