"""What every solver shares: the local data shard, the iteration history, conjugate gradient, and the one
iterative-solver shape (:class:`IterativeSolver` + :func:`run`).

Solvers take a :class:`Shard` (operators + this rank's measured frames) and a communicator, a
:class:`hpc_pt.comm.Comm` (the serial one, :class:`~hpc_pt.comm.SerialComm`, when none is given; the MPI
and Dask ones come from the parallel layer, which solvers never import: they know nothing of ranks, files
or devices).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..backend import asarray_on, get_xp
from ..comm import Comm
from ..operators import ForwardModel


class SolverOptions(BaseModel):
    """Base of every solver's options model.

    Unknown names and non-finite numbers are refused, values are converted to the fields' types (``"3"`` ->
    3), and each field's description is what ``hpc-pt reconstruct --help`` and docs/solvers.md show.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True,
                              validate_assignment=True)


@dataclass
class Shard:
    """This rank's part of the problem: its frames, the forward model restricted to them, its volume slab.

    ``model`` covers the shard's angles (``angle_ids``, global indices) and exactly the shard's frames,
    concatenated by angle, matching ``intensities`` (F_local, m1, m2), DC at index 0. ``mask`` (m1, m2)
    is True where a detector pixel is valid. ``space`` (a :class:`hpc_pt.parallel.SlabSpace`) holds this
    rank's slab of the volume and the tomography operators on it: solvers take P and P^T from it
    (``space.project`` / ``space.backproject`` between the slab and the shard's angles, ``space.P`` inside
    the slab), never from ``model.projector``. Volumes in a solver are always this rank's slab
    (``volume_shape``).

    Parameters
    ----------
    model : ForwardModel
        The forward model on the shard's angles and frames.
    intensities : array
        The measured frames f (F_local, m1, m2).
    angle_ids : np.ndarray
        The global index of each of the shard's angles.
    mask : array, optional
        (m1, m2), True where a detector pixel is valid (None: every pixel).
    space : SlabSpace
        This rank's slab of the volume and its tomography operators.
    _amplitudes : array, optional
        The cache behind :attr:`amplitudes` (filled on first use).
    """

    model: ForwardModel
    intensities: object
    angle_ids: np.ndarray
    mask: object = None
    space: object = None
    _amplitudes: object = field(default=None, repr=False)

    def slab_projection(self):
        """P from this rank's slab to the shard's angles as a linear operator.

        ``space.project`` / ``space.backproject``: one transpose each way; the adjoint is summed over ranks,
        so the joint operator composes as ``ptycho @ pad @ shard.slab_projection()``.

        Returns
        -------
        FunctionOperator
            P, from the slab (``space.shape``) to the shard's projections (``space.angle_shape``).
        """
        from ..operators import FunctionOperator

        sp = self.space
        return FunctionOperator(sp.project, sp.backproject, tuple(sp.shape), tuple(sp.angle_shape), sp.dtype,
                                name="SlabProjection")

    def projections(self, u):
        """Pad(P u) on the shard's angles: (A_r, H, W), per-angle layout (one transpose).

        Parameters
        ----------
        u : array
            A volume slab (:attr:`volume_shape`).

        Returns
        -------
        array
            The padded projections of the shard's angles.
        """
        return self.model.pad.fwd(self.space.project(u))

    def backproject(self, field_):
        """P^T Pad^T of per-angle fields (A_r, H, W), summed over ranks, on this slab (one transpose).

        Parameters
        ----------
        field_ : array
            Fields of the shard's angles (A_r, H, W).

        Returns
        -------
        array
            This rank's slab of the sum over every rank's angles.
        """
        return self.space.backproject(self.model.pad.adj(field_))

    @property
    def amplitudes(self):
        """sqrt(f), computed once."""
        if self._amplitudes is None:
            xp = get_xp(self.intensities)
            self._amplitudes = xp.sqrt(xp.maximum(self.intensities, 0))
        return self._amplitudes

    @property
    def volume_shape(self):
        """This rank's slab: (rows, n, n)."""
        return self.space.shape

    @property
    def global_volume_shape(self):
        """The whole volume: (N_z, n, n)."""
        return self.space.global_shape


class SlabNormalStencil:
    """N = sum_j S_j^T |w|^2 S_j, the ptychographic normal operator, as 3x3 stencils in the slab layout.

    A 3x3 stencil per angle moved to the slab layout, and the normal operators of the joint model built on
    it (no transposes per product).

    N is local to each angle (:meth:`~hpc_pt.operators.Ptychography.normal_stencil`); cropped to the
    volume's rows (the padded rows of Pad P v are zero) it moves to the slab layout once (one transpose per
    non-zero map: 1 for integer scan positions, 9 otherwise; the parts of an angle split over ranks add
    up). A product is then local except for a one-row halo of the stencil (only when it has vertical taps).

    Parameters
    ----------
    pt : Ptychography
        The shard's ptychography operator (its probe is read on every :meth:`refresh`).
    pad : Pad
        The field padding (its row offset crops the stencil to the volume rows).
    space : SlabSpace
        This rank's slab space.
    comm : Comm
        The communicator (whether any rank has off-centre / vertical taps).
    """

    def __init__(self, pt, pad, space, comm: Comm):
        self.pt, self.pad, self.space, self.comm = pt, pad, space, comm
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the slab-layout maps, after a probe change (a collective)."""
        sp, r0 = self.space, self.pad.offset[0]
        maps = self.pt.normal_stencil()[:, :, r0:r0 + sp.global_shape[0]]
        xp = get_xp(maps)
        off = self.comm.sum_scalar(float(xp.abs(maps[[0, 1, 2, 3, 5, 6, 7, 8]]).sum()))
        self.vertical = self.comm.sum_scalar(float(xp.abs(maps[[0, 1, 2, 6, 7, 8]]).sum())) > 0
        keep = range(9) if off > 0 else (4,)
        self.maps = xp.stack([sp.to_slabs(xp.ascontiguousarray(maps[k])) for k in keep])

    def apply_fields(self, t):
        """N t for per-angle fields ``t`` in the slab layout (every angle, this slab's rows).

        Parameters
        ----------
        t : array
            (A, rows, W) fields.

        Returns
        -------
        array
            N t, of ``t``'s shape (a one-row halo exchange when the stencil has vertical taps).
        """
        from ..operators import apply_stencil

        lo, hi = self.space.halo(t, axis=1) if self.vertical else (None, None)
        return apply_stencil(self.maps, t, lo, hi)

    def normal(self, v):
        """P^H Pad^H N Pad P v on the slab: sum_j D_j^H D_j of the linear model.

        Parameters
        ----------
        v : array
            A volume slab.

        Returns
        -------
        array
            sum_j D_j^H D_j v, on the same slab.
        """
        P = self.space.P
        return P.adj(self.apply_fields(P.fwd(v)))

    def linearised(self, psi, c: float):
        """J^H J of the exponential model linearised at the transmission ``psi``: v -> c^2 P^H [conj(psi) N (psi P v)].

        Parameters
        ----------
        psi : array
            The transmission on this slab's rows, every angle (A, rows, W), slab layout.
        c : float
            The exponential's factor (k dz).

        Returns
        -------
        callable
            The map on slabs.
        """
        P, psi_c, c2 = self.space.P, get_xp(psi).conj(psi), c * c

        def apply(v):
            return c2 * P.adj(psi_c * self.apply_fields(psi * P.fwd(v)))

        return apply


class History:
    """Per-iteration records (objective, R-factor, residuals, CG iterations, time) as columns.

    Parameters
    ----------
    rows : list of dict, optional
        Rows to start with (copied), e.g. a resumed run's: ``time_s`` then goes on from the last row's.
    """

    def __init__(self, rows: list[dict] | None = None):
        self.rows: list[dict] = [dict(r) for r in (rows or [])]
        self._t0 = time.perf_counter() - (self.rows[-1].get("time_s", 0.0) if self.rows else 0.0)

    def append(self, **row) -> dict:
        """Add a row; numbers become Python floats, and ``time_s`` defaults to the seconds since the start.

        Parameters
        ----------
        **row
            The row's values by column name.

        Returns
        -------
        dict
            The stored row.
        """
        row.setdefault("time_s", time.perf_counter() - self._t0)
        self.rows.append({k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                          for k, v in row.items()})
        return self.rows[-1]

    def column(self, key) -> np.ndarray:
        """One column as float64 values, NaN in the rows that lack it.

        Parameters
        ----------
        key : str
            The column's name.

        Returns
        -------
        np.ndarray
            One value per row.
        """
        return np.array([r.get(key, np.nan) for r in self.rows], dtype=np.float64)

    @property
    def keys(self) -> list[str]:
        """Every column's name, in the order the columns first appear."""
        ks: list[str] = []
        for r in self.rows:
            ks += [k for k in r if k not in ks]
        return ks

    def as_columns(self) -> dict:
        """Every column (:meth:`column`) by name."""
        return {k: self.column(k) for k in self.keys}

    def __len__(self):
        return len(self.rows)


@dataclass
class CGInfo:
    """How a :func:`conjugate_gradient` solve ended.

    Parameters
    ----------
    iterations : int
        The CG iterations done.
    residual : float
        ||b - A x|| / ||b - A x0|| at exit.
    """

    iterations: int
    residual: float  # ||b - A x|| / ||b - A x0|| at exit


def conjugate_gradient(apply_a, b, x0, dot, tol: float = 1e-6, max_iter: int = 50):
    """Solve A x = b for Hermitian positive-definite A (seed 001 Step 1) by conjugate gradient.

    Warm-started from ``x0``; stops when ||r|| <= tol ||r0|| (relative to the warm start's residual, as
    inexact ADMM steps need), after ``max_iter`` iterations, or where the curvature p^H A p is not positive.
    ``x0=None`` starts from zero without applying A to it (r0 = b): one application of A fewer than an
    explicit zero start, with the same iterates.

    Parameters
    ----------
    apply_a : callable
        x -> A x.
    b : array
        The right-hand side.
    x0 : array or None
        The warm start (copied, not modified); None for x0 = 0.
    dot : callable
        ``dot(a, b)`` returns Re <a, b> (a collective on distributed volumes).
    tol : float
        The relative residual to reach.
    max_iter : int
        The most iterations.

    Returns
    -------
    x : array
        The approximate solution.
    info : CGInfo
        The iterations and the final ||r|| / ||r0|| (0 and 0.0 when the warm start solves it exactly).
    """
    if x0 is None:
        x = b.copy()
        x[...] = 0
        r = b.copy()
    else:
        x = x0.copy()
        r = b - apply_a(x)
    p = r.copy()
    rr = dot(r, r)
    bb = rr
    if bb == 0.0:
        return x, CGInfo(0, 0.0)
    it = 0
    while it < max_iter and rr > tol * tol * bb:
        ap = apply_a(p)
        pap = dot(p, ap)
        if pap <= 0:
            break
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = dot(r, r)
        p *= rr_new / rr
        p += r
        rr = rr_new
        it += 1
    return x, CGInfo(it, float(np.sqrt(rr / bb)))


@dataclass
class SolverResult:
    """Output of every solver: the volume, the (possibly refined) probe, the history, solver state.

    Parameters
    ----------
    volume : array
        This rank's slab of the reconstruction.
    probe : array
        The probe (m1, m2) at the end, refined when the method refines it.
    history : History
        The per-iteration rows.
    state : dict
        Method-specific values: penalties, step sizes, scales and the like.
    """

    volume: object
    probe: object
    history: History
    state: dict = field(default_factory=dict)


def frame_sum(comm: Comm, shard: Shard, x, mask=None) -> float:
    """Sum of ``x`` over valid pixels and every rank's frames (a collective).

    In the communicator's deterministic mode the float64 sums of the frames (:func:`~hpc_pt.backend.
    leading_sums`) are accumulated per angle in frame order and combined by ``comm.sum_partials`` with the
    global angle indices, so the value does not depend on how whole angles are spread over ranks; otherwise
    the shard's sum goes through ``comm.sum_scalar``.

    Parameters
    ----------
    comm : Comm
        The communicator (its ``deterministic`` flag picks the reduction).
    shard : Shard
        This rank's shard: the angle of each frame, and the angles' global indices.
    x : array
        One value per pixel of this shard's frames (F_local, m1, m2).
    mask : array, optional
        (m1, m2), True where a detector pixel counts (None: all of them).

    Returns
    -------
    float
        The sum, the same on every rank.
    """
    from ..backend import leading_sums
    from .prox import pixel_sum

    if not getattr(comm, "deterministic", False):
        return comm.sum_scalar(pixel_sum(x, mask))
    return per_frame_total(comm, shard, leading_sums(x * mask if mask is not None else x))


def per_frame_total(comm: Comm, shard: Shard, per_frame) -> float:
    """Sum of ``per_frame`` over every rank's frames (a collective).

    Deterministic mode: accumulated per angle in frame order (float64) and combined by ``comm.sum_partials``
    in global angle order (:func:`frame_sum`); otherwise this shard's sum through ``comm.sum_scalar``.

    Parameters
    ----------
    comm, shard
        As for :func:`frame_sum`.
    per_frame : array
        (F_local,) one value per frame of this shard, e.g. a frame's objective.

    Returns
    -------
    float
        The total over all frames of all ranks.
    """
    from ..backend import to_numpy

    if not getattr(comm, "deterministic", False):
        return comm.sum_scalar(float(per_frame.sum()))
    local = np.asarray(shard.model.ptycho.angle_index, dtype=np.int64)
    ids = np.asarray(shard.angle_ids, dtype=np.int64)
    per_angle = np.zeros(len(ids), dtype=np.float64)
    np.add.at(per_angle, local, np.asarray(to_numpy(per_frame), dtype=np.float64))  # in frame order
    return comm.sum_partials(per_angle, ids, shard.space.n_angles)


def angle_sum(comm: Comm, shard: Shard, x) -> float:
    """Sum of the real array ``x`` over every rank's angles (a collective).

    Deterministic mode: one float64 partial per angle (:func:`~hpc_pt.backend.leading_sums`) combined by
    ``comm.sum_partials`` in global angle order; otherwise this shard's sum through ``comm.sum_scalar``.

    Parameters
    ----------
    comm, shard
        As for :func:`frame_sum`.
    x : array
        (A_local, ...) one block per angle of this shard, e.g. |psi - T u|^2 on the per-angle fields.

    Returns
    -------
    float
        The sum over every angle.
    """
    from ..backend import leading_sums

    if not getattr(comm, "deterministic", False):
        return comm.sum_scalar(float(x.sum()))
    return comm.sum_partials(leading_sums(x), np.asarray(shard.angle_ids, dtype=np.int64), shard.space.n_angles)


def frames_array_sum(comm: Comm, shard: Shard, x):
    """Sum over every rank's frames of the per-frame arrays ``x``, the same array on every rank (a collective).

    Deterministic mode: each angle's frames are summed in frame order, the per-angle sums are placed at
    their global angle indices in an (A, ...) array, summed over ranks (exact: one contributor per angle
    when ranks hold whole angles) and added up in angle order, so the result does not depend on how whole
    angles are spread over ranks. Otherwise this shard's sum goes through ``comm.allreduce_sum``.

    Parameters
    ----------
    comm, shard
        As for :func:`frame_sum`.
    x : array
        (F_local, ...) one array per frame of this shard.

    Returns
    -------
    array
        The sum, of shape ``x.shape[1:]``, on ``x``'s backend.
    """
    xp = get_xp(x)
    if not getattr(comm, "deterministic", False):
        return comm.allreduce_sum(x.sum(axis=0))
    local = np.asarray(shard.model.ptycho.angle_index, dtype=np.int64)
    ids = np.asarray(shard.angle_ids, dtype=np.int64)
    dense = xp.zeros((shard.space.n_angles,) + tuple(x.shape[1:]), dtype=x.dtype)
    for i, a in enumerate(ids):
        sel = np.flatnonzero(local == i)
        if sel.size:  # an angle's frames are normally contiguous: a view, else a copy in frame order
            part = x[int(sel[0]):int(sel[-1]) + 1] if sel[-1] - sel[0] + 1 == sel.size else x[xp.asarray(sel)]
            dense[a] += part.sum(axis=0)
    if comm.size > 1:
        dense = comm.allreduce_sum(dense)
    out = dense[0].copy()
    for a in range(1, dense.shape[0]):
        out += dense[a]
    return out


def power_lipschitz(apply, shape, comm: Comm, dtype, n_iter: int = 15, seed: int = 0, like=None,
                    rows: tuple[int, int] | None = None, dot=None) -> float:
    """Largest eigenvalue of the Hermitian PSD map ``apply`` (a collective) by power iteration.

    The start vector is seeded and drawn at the global ``shape``; with ``rows`` = (z0, z1) each rank keeps
    its slab's rows of it, so the iteration is the serial one whatever the number of ranks. It lives on
    ``like``'s backend.

    Parameters
    ----------
    apply : callable
        x -> A x, Hermitian positive semi-definite.
    shape : tuple of int
        The global shape of the start vector.
    comm : Comm
        The communicator (its ``volume_dot`` is the default ``dot``).
    dtype : dtype
        The start vector's complex dtype.
    n_iter : int
        Power iterations (at least one is done).
    seed : int
        Seeds the start vector.
    like : array, optional
        An array of the backend to run on (None: NumPy).
    rows : tuple of int, optional
        (z0, z1), this rank's rows of the start vector (None: all of it).
    dot : callable, optional
        ``dot(a, b)``: Re <a, b> over the global volume (default ``comm.volume_dot``; a
        :meth:`SlabSpace.dot <hpc_pt.parallel.SlabSpace.dot>` follows the communicator's deterministic mode).

    Returns
    -------
    float
        The Rayleigh quotient after the last iteration (0.0 when an iterate vanishes).
    """
    dot = comm.volume_dot if dot is None else dot
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if rows is not None:
        x = np.ascontiguousarray(x[rows[0]:rows[1]])
    if like is not None:
        x = asarray_on(x, like)
    lam = 0.0
    for _ in range(max(1, n_iter)):
        nx = np.sqrt(dot(x, x))
        if nx == 0:
            return 0.0
        x /= nx
        y = apply(x)
        lam = dot(x, y)
        x = y
    return float(lam)


class Checkpointer:
    """How a solver hands its state out for checkpoints and takes it back on resume.

    The pipeline makes one; solvers know nothing of files.

    A solver calls :meth:`due` after finishing iteration ``k`` (1-based) and, when it says so, :meth:`save`
    with a dict of its whole loop state: this rank's arrays (volume slab, z, multipliers, probe, ...),
    Python scalars (penalties, step sizes, the iteration) and ``history`` (the rows so far). On resume the
    solver receives that dict back as ``resume`` and continues from iteration ``resume["iteration"]`` so
    that the end result is bitwise-equal to an uninterrupted run: every quantity the loop carries, and any
    set-up value that is not bitwise reproducible, must be in the dict.

    Parameters
    ----------
    every : int
        Save every K iterations (0 or None: never).
    save : callable, optional
        ``save(state)`` stores a state dict (None: no checkpoints).
    resume : dict, optional
        A saved state to continue from (None: a fresh start).
    """

    def __init__(self, every: int = 0, save=None, resume: dict | None = None):
        self.every = int(every or 0)
        self._save = save
        self.resume = resume

    def due(self, k: int) -> bool:
        """Whether to save after iteration ``k``.

        Parameters
        ----------
        k : int
            The iteration just finished (1-based).

        Returns
        -------
        bool
            True every ``every`` iterations when there is a ``save``.
        """
        return self.every > 0 and self._save is not None and k % self.every == 0

    def save(self, state: dict) -> None:
        """Hand ``state`` to the ``save`` callable.

        Parameters
        ----------
        state : dict
            The solver's whole loop state (class docstring), with ``iteration`` and ``history``.
        """
        self._save(state)


NO_CHECKPOINTS = Checkpointer()


# ----------------------------------------------------------------------------------------------------
# the one iterative-solver shape
# ----------------------------------------------------------------------------------------------------

class IterativeSolver:
    """The shape every iterative solver has: set-up, a loop state, one step, a result.

    A solver class declares its loop state once, as a dataclass ``State`` whose field names are the
    checkpoint's keys: every array and scalar the loop carries from one iteration to the next, and any
    set-up value that is not bitwise reproducible (a power-iteration norm, a data-matched scale). The
    constructor does the set-up that does not depend on the state (operators, options, data statistics);
    :func:`run` owns everything around the iterations: the loop, the :class:`History`, callbacks, the
    stopping rule, and checkpoint save / resume.

    Subclasses implement :meth:`start`, :meth:`step`, :meth:`iterate` and :meth:`result`, and may override
    :meth:`ready`, :meth:`converged`, :meth:`save_state` / :meth:`load_state` (for state that is not a
    dataclass field, such as a denoiser's warm start).

    Attributes
    ----------
    State : type
        The loop-state dataclass (class attribute).
    state : State
        The current loop state (set by :func:`run`).
    xp : module
        The array namespace (NumPy or CuPy) arrays are restored on.
    """

    State: ClassVar[type]
    state: object = None
    xp = np

    def start(self):
        """The initial loop state (a ``State``); may run collectives.

        Returns
        -------
        State
            The state before the first iteration.
        """
        raise NotImplementedError

    def ready(self, resumed: bool) -> None:
        """Derive what the iterations need from ``self.state`` (after :meth:`start` or :meth:`load_state`).

        Parameters
        ----------
        resumed : bool
            True when the state came from a checkpoint.
        """

    def step(self, k: int) -> dict | None:
        """One iteration: update ``self.state`` and return the history row's values.

        Parameters
        ----------
        k : int
            The iteration's 0-based index (the row gets ``iteration = k + 1``).

        Returns
        -------
        dict or None
            The row's values (without ``iteration`` and the times, which :func:`run` adds), or None to stop
            without a row (a breakdown of the iteration, such as a non-positive curvature).
        """
        raise NotImplementedError

    def converged(self) -> bool:
        """The stopping rule, tested before every iteration (default: never; run the iterations asked for).

        Returns
        -------
        bool
            True to stop before the next iteration.
        """
        return False

    def iterate(self):
        """What callbacks receive after every iteration (the volume slab, the object field, ...)."""
        raise NotImplementedError

    def result(self, history: History):
        """The solver's output once the loop ends.

        Parameters
        ----------
        history : History
            Every row so far (those of a resumed run included).

        Returns
        -------
        object
            What the solver returns (:class:`SolverResult` for the joint solvers).
        """
        raise NotImplementedError

    def save_state(self) -> dict:
        """The loop state as a flat dict for a checkpoint (arrays, Python scalars, None, small dicts).

        Returns
        -------
        dict
            ``State``'s fields by name.
        """
        return state_dict(self.state)

    def load_state(self, saved: dict):
        """The loop state from a checkpoint's dict (:meth:`save_state`'s keys).

        Parameters
        ----------
        saved : dict
            The checkpoint's values (arrays as NumPy arrays).

        Returns
        -------
        State
            The state, with arrays copied onto ``self.xp``'s backend (``saved`` is left untouched).
        """
        return restore_state(self.State, saved, self.xp)


def state_dict(state) -> dict:
    """A state dataclass as a flat dict (field name -> value, no copies).

    Parameters
    ----------
    state : dataclass instance
        A solver's loop state.

    Returns
    -------
    dict
        One entry per field.
    """
    return {f.name: getattr(state, f.name) for f in fields(state)}


def restore_state(cls, saved: dict, xp=np):
    """A ``cls`` state dataclass from a checkpoint dict: arrays copied onto ``xp``, other values as saved.

    Parameters
    ----------
    cls : type
        The state dataclass.
    saved : dict
        The checkpoint's values; it must have every field of ``cls`` (extra keys are ignored).
    xp : module
        NumPy or CuPy: where arrays go.

    Returns
    -------
    cls
        The restored state.

    Raises
    ------
    KeyError
        When ``saved`` lacks a field (a checkpoint of another solver or version).
    """
    missing = [f.name for f in fields(cls) if f.name not in saved]
    if missing:
        raise KeyError(f"the checkpoint has no {', '.join(missing)} for {cls.__name__}")
    vals = {}
    for f in fields(cls):
        v = saved[f.name]
        vals[f.name] = xp.array(v, copy=True) if hasattr(v, "shape") and hasattr(v, "dtype") else v
    return cls(**vals)


def run(solver: IterativeSolver, iterations: int, callback=None, checkpoints: Checkpointer = NO_CHECKPOINTS):
    """Run ``solver`` for ``iterations`` iterations: the one loop every iterative solver shares.

    Starts from :meth:`IterativeSolver.start` or, when ``checkpoints.resume`` holds a saved state, from that
    state and its history (continuing at its iteration, so that the end result is bitwise-equal to an
    uninterrupted run on the CPU). Before every iteration the solver's stopping rule
    (:meth:`~IterativeSolver.converged`) may end the loop; after it the row gets ``iteration`` (1-based),
    ``iter_time_s`` and ``time_s`` (the run's wall time, resumed runs included), ``callback(row, iterate)``
    runs, and the state is checkpointed when ``checkpoints.due(k)``.

    Parameters
    ----------
    solver : IterativeSolver
        The set-up solver.
    iterations : int
        The total number of iterations (a resumed run does the remaining ones).
    callback : callable, optional
        ``callback(row, iterate)`` after every iteration.
    checkpoints : Checkpointer
        Where the state goes every K iterations and where a resumed state comes from.

    Returns
    -------
    object
        The solver's :meth:`~IterativeSolver.result`.
    """
    saved = checkpoints.resume
    if saved is None:
        solver.state = solver.start()
        hist = History()
    else:
        solver.state = solver.load_state(saved)
        hist = History(saved["history"])
    solver.ready(resumed=saved is not None)
    for k in range(len(hist), int(iterations)):
        if solver.converged():
            break
        t0 = time.perf_counter()
        values = solver.step(k)
        if values is None:
            break
        row = hist.append(iteration=k + 1, **values, iter_time_s=time.perf_counter() - t0)
        if callback is not None:
            callback(row, solver.iterate())
        if checkpoints.due(k + 1):
            checkpoints.save({"iteration": k + 1, **solver.save_state(), "history": hist.rows})
    return solver.result(hist)


def run_solver(cls, shard: Shard, comm: Comm, opts, callback=None, u0=None, checkpoints: Checkpointer = NO_CHECKPOINTS):
    """Set up the joint solver class ``cls`` on this rank's shard and :func:`run` it for ``opts.iterations``.

    What ``run_apt``, ``run_gd`` and ``run_admm`` do (the registry's ``run`` signature).

    Parameters
    ----------
    cls : type
        An :class:`IterativeSolver` taking ``(shard, comm, opts, u0)``.
    shard : Shard
        This rank's part of the problem.
    comm : Comm
        The communicator.
    opts : SolverOptions
        The solver's options (``iterations`` among them).
    callback : callable, optional
        ``callback(row, u)`` after every iteration with the history row and the volume slab.
    u0 : array, optional
        The initial volume slab (instead of ``opts.init``).
    checkpoints : Checkpointer
        Hands the loop state (``cls.State``) out every K iterations and back on resume (bitwise continuation).

    Returns
    -------
    SolverResult
        The solver's result.
    """
    return run(cls(shard, comm, opts, u0), opts.iterations, callback, checkpoints)


def solver_runner(cls, options_cls, summary: str):
    """The ``run_<method>`` function of a joint solver class.

    ``run_<method>(shard, comm, opts=None, callback=None, u0=None, checkpoints=NO_CHECKPOINTS)``:
    :func:`run_solver` with ``options_cls()`` as the default options.

    Parameters
    ----------
    cls : type
        The :class:`IterativeSolver`.
    options_cls : type
        Its options model.
    summary : str
        The first line of the function's docstring.

    Returns
    -------
    callable
        The runner (its docstring names ``cls``, its state and options).
    """
    def runner(shard: Shard, comm: Comm, opts=None, callback=None, u0=None, checkpoints: Checkpointer = NO_CHECKPOINTS):
        return run_solver(cls, shard, comm, options_cls() if opts is None else opts, callback, u0, checkpoints)

    runner.__doc__ = (f"{summary}\n\n    Parameters\n    ----------\n    shard, comm, opts, callback, u0, checkpoints\n"
                      f"        As for :func:`~hpc_pt.solvers.base.run_solver` (``opts``: :class:`{options_cls.__name__}`"
                      f", default ``{options_cls.__name__}()``; the loop state: :class:`{cls.State.__name__}`).\n")
    runner.__qualname__ = runner.__name__ = f"run_{cls.__name__.lower()}"
    runner.__module__ = cls.__module__
    return runner
