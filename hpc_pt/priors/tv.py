"""Isotropic 3D total-variation denoiser: the TV prox solved on Chambolle's dual by FGP.

Problem (x, v complex volumes (z, y, x); grad = forward differences with Neumann boundary, fd.py):

    v* = argmin_v  1/2 ||v - x||^2 + s TV(v),      TV(v) = sum_voxels |grad v|

Dual (Chambolle 2004): TV(v) = max_{|p| <= 1} Re <p, grad v>, so v = x + s div p with p minimising
1/2 ||x + s div p||^2 over the pointwise unit ball. We solve that smooth, ball-constrained problem by the
fast gradient projection (FGP) of Beck & Teboulle (2009): a projected gradient step of length
1 / (12 s^2) (||div||^2 <= 12 in 3D, 4 per axis) with Nesterov momentum, O(1/k^2) on the dual. It is
Chambolle's projection algorithm with the optimal step and acceleration; every iterate's v is feasible,
and the dual p is kept for a warm start of the next call on a volume of the same shape (ADMM calls the
denoiser once per outer iteration on slowly changing inputs).

Complex volumes, ``mode``:

* ``"joint"`` (default): |grad v|^2 = |grad Re v|^2 + |grad Im v|^2 per voxel, one ball for the six
  components. Edges of delta and beta coincide in a sample (same material boundaries), so they are
  shrunk together, proportionally to their size; the weaker beta part is not wiped out by a threshold
  sized for delta. This is ``hpc_pt.operators.tv_value`` and seed 001's isotropic TV.
* ``"separate"``: TV(Re v) + TV(Im v), two independent problems with the same strength.

Real input is denoised as real (both modes agree). Stopping: relative change of the dual below ``tol``
(||p_new - p|| <= tol ||p_new||, norms over the whole volume) or ``n_iter`` iterations.

Slabs: ``denoise(x, s, space=sp)`` / ``value(x, space=sp)`` with a
:class:`~hpc_pt.parallel.SlabSpace` treat ``x`` as this rank's slab of the global volume: the gradient and
divergence are the slab ones (one-row halos, ``sp.gradient`` / ``sp.divergence``) and the two norms of the
stopping test are summed over ranks (one ``allreduce_sum`` of two numbers per FGP iteration), so every
rank stops at the same iteration and the result is the serial one up to rounding (summation order). Every
rank must call it (collectives). The warm-start dual is then this rank's slab of the global dual.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp
from ..operators import divergence, gradient
from .registry import Denoiser

MODES = ("joint", "separate")

#: ||grad||^2 bound for 3D forward differences (4 per axis)
GRAD_NORM2 = 12.0


class TVDenoiser(Denoiser):
    """prox of ``strength * TV`` (isotropic 3D), see the module docstring.

    Parameters
    ----------
    n_iter : int, optional
        Max FGP iterations per call, at least 1. Default 50.
    tol : float, optional
        Relative dual change to stop: stop when ``||p_new - p|| / ||p_new||`` is at most this. Default 1e-4.
    mode : {"joint", "separate"}, optional
        One ball for the real and imaginary parts, or two independent problems. Default "joint".
    warm_start : bool, optional
        Reuse the last dual for a same-shaped input (and the same dtype). Default True.

    Raises
    ------
    ValueError
        For an unknown ``mode`` or ``n_iter`` < 1.
    """

    name = "tv"
    slab_aware = True

    def __init__(self, n_iter: int = 50, tol: float = 1e-4, mode: str = "joint", warm_start: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown TV mode {mode!r}; use one of {MODES}")
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be at least 1, got {n_iter}")
        self.n_iter = int(n_iter)
        self.tol = float(tol)
        self.mode = mode
        self.warm_start = bool(warm_start)
        self._p = None
        self.last_iterations = 0

    def _project(self, p, xp):
        """Pointwise projection onto |p| <= 1 (joint over all components, or per real/imaginary part)."""
        if not xp.iscomplexobj(p) or self.mode == "joint":
            mag = xp.sqrt((xp.abs(p) ** 2).sum(axis=0))
            return p / xp.maximum(mag, 1)[None]
        re, im = p.real, p.imag
        mr = xp.maximum(xp.sqrt((re ** 2).sum(axis=0)), 1)[None]
        mi = xp.maximum(xp.sqrt((im ** 2).sum(axis=0)), 1)[None]
        return (re / mr + 1j * (im / mi)).astype(p.dtype, copy=False)

    def value(self, x, space=None) -> float:
        """TV of ``x`` (the global volume whose slab ``x`` is, summed over ranks, when ``space`` is given).

        Parameters
        ----------
        x : array_like
            A 3D volume (NumPy or CuPy), or this rank's slab of it.
        space : SlabSpace, optional
            The slab decomposition (collective: every rank must call it).

        Returns
        -------
        float
            sum_voxels |grad x| (per ``mode``), over the global volume.
        """
        xp = get_xp(x)
        g = gradient(x) if space is None else space.gradient(x)
        if xp.iscomplexobj(x) and self.mode == "separate":
            tv = xp.sqrt((g.real ** 2).sum(axis=0)) + xp.sqrt((g.imag ** 2).sum(axis=0))
        else:
            tv = xp.sqrt((xp.abs(g) ** 2).sum(axis=0))
        if space is None:
            return float(tv.sum())
        if getattr(space.comm, "deterministic", False):  # per global volume row, in row order
            return space.sum_rows(tv)
        return space.comm.sum_scalar(float(tv.sum()))

    def state(self) -> dict:
        """The warm-start dual, for checkpoints.

        Returns
        -------
        dict
            ``{"p": dual}`` (shape (3,) + the input's), or empty before the first call.
        """
        return {} if self._p is None else {"p": self._p}

    def load_state(self, state: dict) -> None:
        """Restore the warm-start dual that :meth:`state` returned.

        Parameters
        ----------
        state : dict
            ``{"p": dual}``, or empty (no warm start).
        """
        self._p = state.get("p")

    def denoise(self, x, strength: float, space=None):
        """argmin_v 1/2 ||v - x||^2 + strength TV(v), by FGP on the dual (module docstring).

        Sets ``last_iterations``; keeps the dual for the next call with ``warm_start``.

        Parameters
        ----------
        x : array_like
            A 3D (z, y, x) volume, real or complex, NumPy or CuPy; or this rank's slab of it.
        strength : float
            The TV weight s, finite and >= 0; 0 returns a copy.
        space : SlabSpace, optional
            The slab decomposition: ``x`` is then this rank's slab (of shape ``space.shape``) and every rank must
            call it.

        Returns
        -------
        array_like
            v, of the shape and dtype of ``x``.

        Raises
        ------
        ValueError
            For a negative or non-finite ``strength``, a non-3D ``x``, or a slab whose shape is not the space's.
        """
        s = float(strength)
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"TV strength must be a finite number >= 0, got {strength}")
        if x.ndim != 3:
            raise ValueError(f"TVDenoiser works on 3D volumes (z, y, x), got shape {tuple(x.shape)}")
        if s == 0:
            return x.copy()
        xp = get_xp(x)
        if space is None:
            grad, div = gradient, divergence

            def norms2(a, b):
                return float(xp.vdot(a, a).real), float(xp.vdot(b, b).real)
        else:
            if tuple(x.shape) != tuple(space.shape):
                raise ValueError(f"TVDenoiser: a slab of shape {tuple(x.shape)} for a space whose slab is "
                                 f"{tuple(space.shape)}")
            grad, div = space.gradient, space.divergence

            if getattr(space.comm, "deterministic", False):
                def norms2(a, b):  # per global volume row (a, b: (3, rows, ...) duals), in row order
                    return (space.sum_rows((xp.abs(a) ** 2).sum(axis=0)),
                            space.sum_rows((xp.abs(b) ** 2).sum(axis=0)))
            else:
                def norms2(a, b):  # one collective for both sums
                    s2 = space.comm.allreduce_sum(np.array([float(xp.vdot(a, a).real),
                                                            float(xp.vdot(b, b).real)]))
                    return float(s2[0]), float(s2[1])
        shape = (3,) + tuple(x.shape)
        if self.warm_start and self._p is not None and self._p.shape == shape and self._p.dtype == x.dtype:
            p = self._p
        else:
            p = xp.zeros(shape, dtype=x.dtype)
        r = p.copy()
        t = 1.0
        step = 1.0 / (GRAD_NORM2 * s)
        it = 0
        for it in range(1, self.n_iter + 1):
            v = x + s * div(r)
            p_new = self._project(r + step * grad(v), xp)
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            dp = p_new - p
            r = p_new + ((t - 1.0) / t_new) * dp
            num2, den2 = norms2(dp, p_new)
            p, t = p_new, t_new
            if math.sqrt(num2) <= self.tol * max(math.sqrt(den2), 1e-30):
                break
        self.last_iterations = it
        if self.warm_start:
            self._p = p
        return (x + s * div(p)).astype(x.dtype, copy=False)
