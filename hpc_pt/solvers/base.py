"""What every solver shares: the local data shard, the iteration history, conjugate gradient.

Solvers take a :class:`Shard` (operators + this rank's measured frames) and a communicator, a
:class:`hpc_pt.comm.Comm` (the serial one, :class:`~hpc_pt.comm.SerialComm`, when none is given; the MPI
and Dask ones come from the parallel layer, which solvers never import: they know nothing of ranks, files
or devices).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import asarray_on, get_xp
from ..operators import ForwardModel


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
    """

    model: ForwardModel
    intensities: object
    angle_ids: np.ndarray
    mask: object = None
    space: object = None
    _amplitudes: object = field(default=None, repr=False)

    def projections(self, u):
        """Pad(P u) on the shard's angles: (A_r, H, W), per-angle layout (one transpose)."""
        return self.model.pad.fwd(self.space.project(u))

    def backproject(self, field_):
        """P^T Pad^T of per-angle fields (A_r, H, W), summed over ranks, on this slab (one transpose)."""
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
        return self.space.global_shape


class History:
    """Per-iteration records (objective, R-factor, residuals, CG iterations, time) as columns."""

    def __init__(self, rows: list[dict] | None = None):
        self.rows: list[dict] = [dict(r) for r in (rows or [])]
        self._t0 = time.perf_counter() - (self.rows[-1].get("time_s", 0.0) if self.rows else 0.0)

    def append(self, **row) -> dict:
        row.setdefault("time_s", time.perf_counter() - self._t0)
        self.rows.append({k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                          for k, v in row.items()})
        return self.rows[-1]

    def column(self, key) -> np.ndarray:
        return np.array([r.get(key, np.nan) for r in self.rows], dtype=np.float64)

    @property
    def keys(self) -> list[str]:
        ks: list[str] = []
        for r in self.rows:
            ks += [k for k in r if k not in ks]
        return ks

    def as_columns(self) -> dict:
        return {k: self.column(k) for k in self.keys}

    def __len__(self):
        return len(self.rows)


@dataclass
class CGInfo:
    iterations: int
    residual: float  # ||b - A x|| / ||b - A x0|| at exit


def conjugate_gradient(apply_a, b, x0, dot, tol: float = 1e-6, max_iter: int = 50):
    """Solve A x = b for Hermitian positive-definite A (seed 001 Step 1) by conjugate gradient.

    ``dot(a, b)`` returns Re <a, b> (a collective on distributed volumes). Warm-started from ``x0``; stops
    when ||r|| <= tol ||r0|| (relative to the warm start's residual, as inexact ADMM steps need) or after
    ``max_iter`` iterations. Returns (x, CGInfo) with the final ||r|| / ||r0||.
    """
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
    """Output of every solver: the volume, the (possibly refined) probe, the history, solver state."""

    volume: object
    probe: object
    history: History
    state: dict = field(default_factory=dict)


def frame_sum(comm, shard: Shard, x, mask=None) -> float:
    """Sum of ``x`` (F_local, m1, m2: one value per pixel of this shard's frames) over valid pixels and
    every rank's frames (a collective).

    In the communicator's deterministic mode the float64 sums of the frames (:func:`~hpc_pt.backend.
    leading_sums`) are accumulated per angle in frame order and combined by ``comm.sum_partials`` with the
    global angle indices, so the value does not depend on how whole angles are spread over ranks; otherwise
    the shard's sum goes through ``comm.sum_scalar``.
    """
    from ..backend import leading_sums
    from .prox import pixel_sum

    if not getattr(comm, "deterministic", False):
        return comm.sum_scalar(pixel_sum(x, mask))
    return per_frame_total(comm, shard, leading_sums(x * mask if mask is not None else x))


def per_frame_total(comm, shard: Shard, per_frame) -> float:
    """Sum of ``per_frame`` (F_local,: one value per frame of this shard, e.g. a frame's objective) over every
    rank's frames (a collective). Deterministic mode: accumulated per angle in frame order (float64) and
    combined by ``comm.sum_partials`` in global angle order (:func:`frame_sum`); otherwise this shard's sum
    through ``comm.sum_scalar``."""
    from ..backend import to_numpy

    if not getattr(comm, "deterministic", False):
        return comm.sum_scalar(float(per_frame.sum()))
    local = np.asarray(shard.model.ptycho.angle_index, dtype=np.int64)
    ids = np.asarray(shard.angle_ids, dtype=np.int64)
    per_angle = np.zeros(len(ids), dtype=np.float64)
    np.add.at(per_angle, local, np.asarray(to_numpy(per_frame), dtype=np.float64))  # in frame order
    return comm.sum_partials(per_angle, ids, shard.space.n_angles)


def angle_sum(comm, shard: Shard, x) -> float:
    """Sum of the real array ``x`` (A_local, ...: one block per angle of this shard, e.g. |psi - T u|^2 on the
    per-angle fields) over every rank's angles (a collective). Deterministic mode: one float64 partial per
    angle (:func:`~hpc_pt.backend.leading_sums`) combined by ``comm.sum_partials`` in global angle order;
    otherwise this shard's sum through ``comm.sum_scalar``."""
    from ..backend import leading_sums

    if not getattr(comm, "deterministic", False):
        return comm.sum_scalar(float(x.sum()))
    return comm.sum_partials(leading_sums(x), np.asarray(shard.angle_ids, dtype=np.int64), shard.space.n_angles)


def frames_array_sum(comm, shard: Shard, x):
    """Sum over every rank's frames of ``x`` (F_local, ...: one array per frame of this shard), the same
    array on every rank (a collective).

    Deterministic mode: each angle's frames are summed in frame order, the per-angle sums are placed at
    their global angle indices in an (A, ...) array, summed over ranks (exact: one contributor per angle
    when ranks hold whole angles) and added up in angle order, so the result does not depend on how whole
    angles are spread over ranks. Otherwise this shard's sum goes through ``comm.allreduce_sum``.
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


def power_lipschitz(apply, shape, comm, dtype, n_iter: int = 15, seed: int = 0, like=None,
                    rows: tuple[int, int] | None = None, dot=None) -> float:
    """Largest eigenvalue of the Hermitian PSD map ``apply`` (a collective) by power iteration.

    The start vector is seeded and drawn at the global ``shape``; with ``rows`` = (z0, z1) each rank keeps
    its slab's rows of it, so the iteration is the serial one whatever the number of ranks. It lives on
    ``like``'s backend. ``dot(a, b)``: Re <a, b> over the global volume (default ``comm.volume_dot``; a
    :meth:`SlabSpace.dot <hpc_pt.parallel.SlabSpace.dot>` follows the communicator's deterministic mode).
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
    """How a solver hands its state out for checkpoints and takes it back on resume (the pipeline makes one;
    solvers know nothing of files).

    A solver calls :meth:`due` after finishing iteration ``k`` (1-based) and, when it says so, :meth:`save`
    with a dict of its whole loop state: this rank's arrays (volume slab, z, multipliers, probe, ...),
    Python scalars (penalties, step sizes, the iteration) and ``history`` (the rows so far). On resume the
    solver receives that dict back as ``resume`` and continues from iteration ``resume["iteration"]`` so
    that the end result is bitwise-equal to an uninterrupted run: every quantity the loop carries, and any
    set-up value that is not bitwise reproducible, must be in the dict.
    """

    def __init__(self, every: int = 0, save=None, resume: dict | None = None):
        self.every = int(every or 0)
        self._save = save
        self.resume = resume

    def due(self, k: int) -> bool:
        return self.every > 0 and self._save is not None and k % self.every == 0

    def save(self, state: dict) -> None:
        self._save(state)


NO_CHECKPOINTS = Checkpointer()
