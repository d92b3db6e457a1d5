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

from dataclasses import dataclass

from pydantic import Field

import numpy as np

from ..backend import get_xp, leading_sums
from ..comm import Comm
from .base import (
    History,
    IterativeSolver,
    Shard,
    SlabNormalStencil,
    SolverOptions,
    SolverResult,
    frame_sum,
    per_frame_total,
    power_lipschitz,
    solver_runner,
)
from .farfield import FarfieldPass, farfield_pass
from .prox import METRICS, data_residual, pixel_sum  # noqa: F401 (data_residual re-exported)
from .registry import SolverSpec

SCHEDULES = ("time", "constant")
INITS = ("auto", "zeros", "constant")


class GDOptions(SolverOptions):
    """Full-gradient descent options (seed 002 Algorithm 1; the module docstring explains the step size)."""

    iterations: int = Field(100, ge=0, description="gradient iterations")
    step: float | None = Field(None, description="absolute first step alpha_0 (None: step_rel / Lip, "
                               "scale-free)")
    step_rel: float = Field(1.0, description="first step in units of 1 / Lip")
    schedule: str = Field("time", description="time: alpha_{n+1} = alpha_n / (1 + eps n) (seed 002); constant")
    eps: float = Field(1e-6, ge=0, description="the time schedule's decay")
    line_search: bool = Field(True, description="backtracking Armijo line search")
    armijo_c1: float = Field(1e-4, gt=0, lt=1, description="Armijo's sufficient-decrease constant")
    growth: float = Field(1.5, gt=0, description="with line search: next trial = growth x the accepted step")
    max_backtracks: int = Field(30, ge=0, description="halvings of a trial step at most")
    metric: str = Field("gaussian", description="gaussian (amplitude, seed 002) or poisson")
    init: str = Field("auto", description="auto: zeros (free space) for exp, the energy-matched constant for "
                      "linear; zeros; constant")
    power_iterations: int = Field(15, ge=1, description="power iterations for Lip")


class IdentityMap:
    """psi = x: the linear (Rytov, seed 001) model's transmission, with the :class:`ExpMap` interface.

    ``c`` = 1: the Jacobian is the identity.
    """

    c = 1.0

    def fwd(self, x):
        """psi = x (no copy).

        Parameters
        ----------
        x : array
            Pad(P u), any shape.

        Returns
        -------
        array
            The input ``x``, not a copy.
        """
        return x

    def jvp(self, x, dx, psi=None):
        """J dx = dx.

        The identity's Jacobian is the identity: the direction comes back unchanged.

        Parameters
        ----------
        x, dx : array
            The point (unused) and the direction.
        psi : array, optional
            Unused (:meth:`ExpMap.jvp <hpc_pt.operators.ExpMap.jvp>`'s transmission at ``x``).

        Returns
        -------
        array
            ``dx`` itself.
        """
        return dx

    def vjp(self, x, g, psi=None):
        """J^H g = g.

        The adjoint of the identity, so ``g`` passes through.

        Parameters
        ----------
        x, g : array
            The point (unused), and the vector: a gradient with respect to psi.
        psi : array, optional
            Unused, as in :meth:`jvp`.

        Returns
        -------
        array
            ``g`` itself.
        """
        return g


class JointModel:
    """The joint model u -> x = Pad(P u) -> psi = T(x) -> z = D psi of one shard, and the pieces solvers need.

    T is exp(i c x) (model "exp") or the identity (model "linear", :class:`IdentityMap`).

    Slab layout (docs/architecture.md §3): ``u`` is this rank's slab of the volume; ``x`` / ``psi`` / ``z`` are
    the shard's per-angle fields (A_r, H, W) and frames. :meth:`x` costs one transpose (slab -> angles),
    :meth:`xadj` one transpose (angles -> slab) and returns the adjoint SUMMED over every rank's angles on
    this slab (no further reduction is needed; on one rank it is the plain adjoint). Solvers that keep
    P u in the per-angle layout use :meth:`evaluate_at` (no communication).

    Parameters
    ----------
    shard : Shard
        This rank's shard: its forward model ("exp" or "linear") and slab space.
    """

    def __init__(self, shard: Shard):
        m = shard.model
        self.linear = m.expmap is None
        self.shard, self.space = shard, shard.space
        self.pad, self.pt = m.pad, m.ptycho
        self.exp = IdentityMap() if self.linear else m.expmap
        self.c = self.exp.c

    def x(self, u):
        """Pad(P u) on the shard's angles (A_r, H, W) (one transpose).

        Parameters
        ----------
        u : array
            This rank's slab of the volume (``space.shape``).

        Returns
        -------
        array
            x, per angle.
        """
        return self.shard.projections(u)

    def xadj(self, y):
        """(Pad P)^H y: per-angle fields (A_r, H, W), summed over ranks, -> this rank's slab (one transpose).

        Parameters
        ----------
        y : array
            Fields of the shard's angles.

        Returns
        -------
        array
            The slab of the sum over all ranks.
        """
        return self.shard.backproject(y)

    def psi(self, u):
        """psi = T(Pad(P u)), the transmission on the shard's angles (one transpose).

        Parameters
        ----------
        u : array
            The volume slab u, on this rank.

        Returns
        -------
        array
            The fields (A_r, H, W).
        """
        return self.exp.fwd(self.x(u))

    def farfield(self, u):
        """psi and z = D psi for every frame of the shard at once (:meth:`evaluate` batches the frames).

        Holds the far field of every frame: for tests and small problems, not the solvers' loops.

        Parameters
        ----------
        u : array
            Volume slab on this rank.

        Returns
        -------
        tuple
            (psi, z): the fields (A_r, H, W) and the far fields (F_local, m1, m2).
        """
        psi = self.psi(u)
        return psi, self.pt.fwd(psi)

    def evaluate(self, psi, f, sqrt_f, metric: str, mask=None, grad: bool = True) -> FarfieldPass:
        """Objective per frame, R-factor numerator and (``grad``) the per-angle gradient field at psi.

        The gradient field is ExpMap^H Ptycho^H r(z), formed one frame batch at a time
        (:func:`.farfield.farfield_pass`; no far field of every frame is held).

        Parameters
        ----------
        psi, f, sqrt_f, metric, mask, grad
            As for :func:`~hpc_pt.solvers.farfield.farfield_pass` (its ``pt`` is the model's).

        Returns
        -------
        FarfieldPass
            The pass, ``field`` (with ``grad``) pulled back through T.
        """
        ev = farfield_pass(self.pt, psi, f, sqrt_f, metric, mask, grad)
        if grad:
            ev.field = self.exp.vjp(psi, ev.field, psi=psi)
        return ev

    def evaluate_at(self, pu, f, sqrt_f, metric: str, mask=None, grad: bool = True) -> FarfieldPass:
        """:meth:`evaluate` at psi = T(Pad(P u)), P u in the per-angle layout: no communication.

        Parameters
        ----------
        pu : array
            P u on the shard's angles (A_r, N_z, W).
        f, sqrt_f, metric, mask, grad
            As for :meth:`evaluate`.

        Returns
        -------
        FarfieldPass
            The pass at T(Pad(P u)).
        """
        return self.evaluate(self.exp.fwd(self.pad.fwd(pu)), f, sqrt_f, metric, mask, grad)

    def energy_matched_constant(self, u_shape, comm: Comm, f, mask=None, dtype=np.complex64):
        """The constant s with ||D(T(Pad P (s 1)))||^2 = sum f, for the linear model (a collective).

        There D T Pad P is linear, so s = sqrt(sum f / ||D Pad P 1||^2): one transpose and one pass over the
        frames.

        Parameters
        ----------
        u_shape : tuple of int
            This rank's slab shape.
        comm : Comm
            The communicator.
        f : array
            This shard's frames (F_local, m1, m2).
        mask : array, optional
            (m1, m2), True where a detector pixel counts.
        dtype : dtype
            The volume's complex dtype.

        Returns
        -------
        s : float
            The constant (1.0 when the model has no energy).
        pu : array
            P(s 1) in the per-angle layout.
        """
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


def linearised_normal(model: JointModel, u, comm: Comm):
    """J^H J of the model linearised at ``u`` (this rank's slab), as a map on slabs with no transposes.

    J^H J = c^2 P^H Pad^H conj(psi) N psi Pad P with N = sum_j S_j^T |w|^2 S_j ("exp"; "linear":
    P^H Pad^H N Pad P, independent of ``u``), through the :class:`~.base.SlabNormalStencil`; psi on the
    volume rows in the slab layout is exp(i c P u), computed locally.

    Parameters
    ----------
    model : JointModel
        The shard's joint model.
    u : array
        The linearisation point (this rank's slab).
    comm : Comm
        The communicator (the stencil's set-up is a collective).

    Returns
    -------
    callable
        v -> J^H J v on slabs.
    """
    sp = model.space
    stencil = SlabNormalStencil(model.pt, model.pad, sp, comm)
    if model.linear:
        return stencil.normal
    return stencil.linearised(model.exp.fwd(sp.P.fwd(u)), model.c)


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
    """``"zeros"`` or ``"constant"`` for ``init`` and the model (module docstring).

    Parameters
    ----------
    init : str
        "auto", "zeros" or "constant".
    linear : bool
        The linear model (else the exponential one).
    method : str
        The solver's name, for the message.

    Returns
    -------
    str
        ``init``; for "auto", zeros with the exponential model and the constant with the linear one.

    Raises
    ------
    ValueError
        For a start the model cannot use: zeros with the linear model, the constant with the exponential.
    """
    if init == "auto":
        return "constant" if linear else "zeros"
    if linear and init == "zeros":
        raise ValueError(f"{method} with the linear model cannot start from zeros (no far field, zero gradient); "
                         "use init constant (the energy-matched constant, the default) or a given volume")
    if not linear and init == "constant":
        raise ValueError(f"{method} with the exponential model starts from zeros (free space) or a given volume; "
                         "use init zeros")
    return init


def loss_at(model: JointModel, shard: Shard, comm: Comm, pu, metric: str = "gaussian", grad: bool = True):
    """The global loss and the per-frame pass at P u (per-angle layout), GD's evaluation of a point.

    Parameters
    ----------
    model : JointModel
        The shard's joint model.
    shard : Shard
        This rank's frames.
    comm : Comm
        The communicator (the loss is a sum over ranks).
    pu : array
        P u on the shard's angles (A_r, N_z, W).
    metric : str
        "gaussian" (amplitude) or "poisson".
    grad : bool
        Also form the per-angle gradient field ExpMap^H Ptycho^H r(z).

    Returns
    -------
    tuple
        (L, :class:`~.farfield.FarfieldPass`).
    """
    ev = model.evaluate_at(pu, shard.intensities, shard.amplitudes, metric, shard.mask, grad)
    return per_frame_total(comm, shard, ev.per_frame), ev


def loss_and_gradient(model: JointModel, shard: Shard, comm: Comm, u, metric: str = "gaussian"):
    """(L(u), g_u): the global loss and the volume gradient (seed 002 Eqs. 4-5) on this rank's slab.

    By the same two pieces GD iterates with (:func:`loss_at`, then one transpose back to the slabs).

    Parameters
    ----------
    model, shard, comm, metric
        As for :func:`loss_at` (here the collectives are two transposes and the loss's sum).
    u : array
        The volume slab.

    Returns
    -------
    tuple
        (L, g_u) with g_u on this rank's slab.
    """
    loss, ev = loss_at(model, shard, comm, model.space.project(u), metric)
    return loss, model.xadj(ev.field)


@dataclass
class GDState:
    """GD's loop state (the checkpoint's keys).

    Parameters
    ----------
    u : array
        The volume slab.
    pu : array
        P u as carried in the per-angle layout (not recomputed: bitwise).
    g : array
        The gradient at u, on the slab.
    loss : float
        L(u).
    step, step0 : float
        The next trial step and the first one.
    lipschitz : float
        The power-iteration estimate behind the default step.
    """

    u: object
    pu: object
    g: object
    loss: float
    step: float
    step0: float
    lipschitz: float


class GD(IterativeSolver):
    """Seed 002 Algorithm 1 on this rank's shard and slab (module docstring).

    With the shard's forward model ("exp" or "linear").

    Each step is :meth:`line_search` (or the plain seed-002 step) along -g, :meth:`gradient_update` at the
    accepted point and the step schedule (:meth:`next_step`).

    Parameters
    ----------
    shard, comm, u0
        This rank's frames, forward model ("exp" or "linear") and slab space; the communicator; the initial
        volume slab (overrides ``opts.init``), as for :class:`~hpc_pt.solvers.apt.APT`.
    opts : GDOptions, optional
        The options (defaults: :class:`GDOptions`).

    Raises
    ------
    ValueError
        For invalid options, or a start the model cannot use (:func:`resolve_init`).
    """

    State = GDState

    def __init__(self, shard: Shard, comm: Comm, opts: GDOptions | None = None, u0=None):
        self.opts = opts = GDOptions() if opts is None else opts
        _check(opts)
        self.model = JointModel(shard)
        self.init = resolve_init(opts.init, self.model.linear) if u0 is None else "given"
        self.shard, self.comm, self.u0 = shard, comm, u0
        self.sp = shard.space
        self.xp = get_xp(shard.intensities)
        self.sum_sqrt_f = frame_sum(comm, shard, shard.amplitudes, shard.mask)

    def evaluate_at(self, pu, grad: bool = True):
        """(L, FarfieldPass) at P u (per-angle layout), timed as the ptycho phase.

        The loss, the R-factor terms and, with ``grad``, the per-angle gradient field (no communication but
        the loss's sum).

        Parameters
        ----------
        pu : array
            P u on the shard's angles.
        grad : bool
            Also form the gradient field.

        Returns
        -------
        tuple
            As for :func:`loss_at`.
        """
        with self.comm.phase("ptycho"):
            return loss_at(self.model, self.shard, self.comm, pu, self.opts.metric, grad)

    def gradient_update(self, ev):
        """g_u = P^H Pad^H T.vjp(Ptycho^H(z - sqrt(f) z / |z|)) (seed 002 Eq. 5).

        From the per-angle field of ``ev`` (one transpose: angles -> slabs).

        Parameters
        ----------
        ev : FarfieldPass
            A pass with the per-angle gradient field (``grad=True``).

        Returns
        -------
        array
            The gradient on this rank's slab.
        """
        with self.comm.phase("project"):
            return self.model.xadj(ev.field)

    def start(self) -> GDState:
        """The first state (see :meth:`IterativeSolver.start`).

        u_0 (zeros, the energy-matched constant or ``u0``), Lip = ||J||^2 by power iteration on the
        linearised normal operator, alpha_0 = ``step_rel`` / Lip (or ``step``), the loss and gradient at u_0.

        Returns
        -------
        GDState
            The state before the first iteration.
        """
        sh, comm, sp, xp, opts, model = self.shard, self.comm, self.sp, self.xp, self.opts, self.model
        dtype, shape = sh.model.dtype, sh.volume_shape
        with comm.phase("project"):
            if self.init == "constant":  # linear model: s 1 with ||D(s 1)||^2 = sum f (P(s 1) from the same transpose)
                s, pu = model.energy_matched_constant(shape, comm, sh.intensities, sh.mask, dtype)
                u = xp.full(shape, s, dtype=dtype)
            else:
                u = xp.zeros(shape, dtype=dtype) if self.u0 is None else xp.asarray(self.u0, dtype=dtype).copy()
                pu = sp.project(u)  # P u, per-angle layout (A_r, N_z, W): one transpose
            normal = linearised_normal(model, u, comm)
            lip = power_lipschitz(normal, sp.global_shape, comm, dtype, opts.power_iterations, like=u,
                                  rows=(sp.z0, sp.z1), dot=sp.dot)
        if opts.step is not None:
            alpha = float(opts.step)
        else:
            alpha = opts.step_rel / lip if lip > 0 else 1.0
        loss, self.ev = self.evaluate_at(pu)
        g = self.gradient_update(self.ev)
        return GDState(u=u, pu=pu, g=g, loss=loss, step=alpha, step0=alpha, lipschitz=lip)

    def ready(self, resumed: bool) -> None:
        """On resume: the R-factor terms at the saved point (the loss and gradient are in the state).

        Parameters
        ----------
        resumed : bool
            Whether there is a saved point (:meth:`IterativeSolver.ready`).
        """
        if resumed:
            _, self.ev = self.evaluate_at(self.state.pu, grad=False)

    def line_search(self, pg, gg):
        """Backtracking Armijo along -g from the trial step (halving, at most ``max_backtracks`` times).

        Accepts t when L(u - t g) <= L(u) - c1 t ||g||^2. Trial points are P u - t P g (no projection).

        Parameters
        ----------
        pg : array
            P g in the per-angle layout.
        gg : float
            ||g||^2.

        Returns
        -------
        tuple
            (t, P(u - t g), L there, its FarfieldPass, backtracks, moved): ``moved`` is False when even the
            smallest trial did not decrease L (the point then stays).
        """
        st, opts = self.state, self.opts
        trial, backtracks = st.step, 0
        while True:
            pu_new = st.pu - trial * pg
            new_loss, ev_new = self.evaluate_at(pu_new)  # with the gradient field: used if accepted
            if new_loss <= st.loss - opts.armijo_c1 * trial * gg or backtracks >= opts.max_backtracks:
                break
            trial *= 0.5
            backtracks += 1
        return trial, pu_new, new_loss, ev_new, backtracks, new_loss <= st.loss

    def next_step(self, step_used: float, n: int) -> float:
        """alpha_{n+1} = base / (1 + eps n) (seed 002's time-based decay; ``schedule="constant"``: base).

        base = ``growth`` x the accepted step with line search, else the current alpha_n.

        Parameters
        ----------
        step_used : float
            The step just taken.
        n : int
            The 0-based iteration.

        Returns
        -------
        float
            The next trial step.
        """
        opts = self.opts
        base = step_used * opts.growth if opts.line_search else self.state.step
        return base / (1.0 + opts.eps * n) if opts.schedule == "time" else base

    def step(self, n: int) -> dict:
        """One descent step along -g, with or without the line search (see :meth:`IterativeSolver.step`).

        A step that does not decrease L at the smallest trial keeps u and its gradient.

        Parameters
        ----------
        n : int
            The 0-based iteration (the schedule's n).

        Returns
        -------
        dict
            ``objective``, ``r_factor``, ``step``, ``grad_norm``, ``backtracks``, ``rel_change``.
        """
        st, sp, comm, opts = self.state, self.sp, self.comm, self.opts
        gg = sp.dot(st.g, st.g)
        with comm.phase("project"):
            pg = sp.project(st.g)  # P g at this rank's angles: one transpose; trial points P u - t P g
        backtracks = 0
        moved = True
        if opts.line_search:
            step_used, pu_new, new_loss, ev_new, backtracks, moved = self.line_search(pg, gg)
        else:
            step_used = st.step
            pu_new = st.pu - st.step * pg
            new_loss, ev_new = self.evaluate_at(pu_new)
        if moved:
            u_new = st.u - step_used * st.g
            du = u_new - st.u
            change = np.sqrt(sp.dot(du, du) / max(sp.dot(u_new, u_new), 1e-300))
            st.u, st.pu, st.loss, self.ev = u_new, pu_new, new_loss, ev_new
            st.g = self.gradient_update(self.ev)
        else:  # u, and so its gradient, unchanged (the branch is taken on every rank alike)
            change = 0.0
        st.step = self.next_step(step_used, n)
        rf = per_frame_total(comm, self.shard, self.ev.misfit_per_frame) / self.sum_sqrt_f
        return dict(objective=st.loss, r_factor=rf, step=step_used, grad_norm=float(np.sqrt(gg)),
                    backtracks=backtracks, rel_change=change)

    def iterate(self):
        """The current volume slab ``u``, for callbacks."""
        return self.state.u

    def result(self, history: History) -> SolverResult:
        """The volume slab, the probe and ``history`` (see :meth:`IterativeSolver.result`).

        ``state`` has Lip, the first and last steps, c and the model's name.

        Parameters
        ----------
        history : History
            The rows of the whole run.

        Returns
        -------
        SolverResult
            GD's output.
        """
        st, model = self.state, self.model
        return SolverResult(volume=st.u, probe=model.pt.probe, history=history,
                            state={"lipschitz": st.lipschitz, "step0": st.step0, "step": st.step, "c": model.c,
                                   "model": "linear" if model.linear else "exp"})


run_gd = solver_runner(GD, GDOptions, "Seed 002 Algorithm 1 (:class:`GD`) on this rank's shard and slab.")


SPEC = SolverSpec(name="gd", options=GDOptions, run=run_gd, models=("exp", "linear"), default_model="exp",
                  generic={"iterations": "iterations", "noise": "metric", "init": "init"}, deterministic="default",
                  summary="seed 002's full-gradient descent, either forward model")
