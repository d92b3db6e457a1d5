"""What every solver shares: the local data shard, the iteration history, conjugate gradient.

Solvers take a :class:`Shard` (operators + this rank's measured frames) and a communicator object with the
interface of :class:`hpc_pt.parallel.Comm` (passed in, never imported: solvers know nothing of ranks,
files or devices).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import asarray_on, get_xp
from ..operators import ForwardModel


class LocalReductions:
    """The reductions of one process holding every shard: what a solver uses when it is called without a
    communicator (the parallel layer's ``SerialComm`` behaves the same; solvers do not import that layer)."""

    rank, size = 0, 1

    def allreduce_sum(self, x):
        return x

    def sum_scalar(self, v) -> float:
        return float(v)

    def volume_dot(self, a, b) -> float:
        return float(get_xp(a).vdot(a, b).real)


@dataclass
class Shard:
    """This rank's part of the problem: its frames and the forward model restricted to them.

    ``model`` covers the shard's angles (``angle_ids``, global indices) and exactly the shard's frames,
    concatenated by angle, matching ``intensities`` (F_local, m1, m2), DC at index 0. ``mask`` (m1, m2)
    is True where a detector pixel is valid.
    """

    model: ForwardModel
    intensities: object
    angle_ids: np.ndarray
    mask: object = None
    _amplitudes: object = field(default=None, repr=False)

    @property
    def amplitudes(self):
        """sqrt(f), computed once."""
        if self._amplitudes is None:
            xp = get_xp(self.intensities)
            self._amplitudes = xp.sqrt(xp.maximum(self.intensities, 0))
        return self._amplitudes

    @property
    def volume_shape(self):
        return self.model.volume_shape


class History:
    """Per-iteration records (objective, R-factor, residuals, CG iterations, time) as columns."""

    def __init__(self):
        self.rows: list[dict] = []
        self._t0 = time.perf_counter()

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


def power_lipschitz(apply, shape, comm, dtype, n_iter: int = 15, seed: int = 0, like=None) -> float:
    """Largest eigenvalue of the Hermitian PSD map ``apply`` (a collective) by power iteration.

    The start vector is seeded, so every rank starts from the same one; it lives on ``like``'s backend.
    """
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if like is not None:
        x = asarray_on(x, like)
    lam = 0.0
    for _ in range(max(1, n_iter)):
        nx = np.sqrt(comm.volume_dot(x, x))
        if nx == 0:
            return 0.0
        x /= nx
        y = apply(x)
        lam = comm.volume_dot(x, y)
        x = y
    return float(lam)
