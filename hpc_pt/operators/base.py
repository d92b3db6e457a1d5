"""Operator base class and the dot test every linear operator must pass."""
from __future__ import annotations

import numpy as np

from ..backend import get_xp


class LinearOperator:
    """A linear map with ``fwd`` (A x) and ``adj`` (A^H y).

    Subclasses set ``shape_in``, ``shape_out`` and ``dtype`` and implement ``fwd`` / ``adj``. Inputs may
    be NumPy or CuPy arrays; outputs live on the same backend.
    """

    shape_in: tuple
    shape_out: tuple
    dtype = np.dtype(np.complex64)

    def fwd(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def adj(self, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def normal(self, x):
        """A^H A x."""
        return self.adj(self.fwd(x))

    def norm(self, n_iter: int = 30, seed: int = 0, xp=np) -> float:
        """Operator 2-norm ||A|| estimated by power iteration on A^H A."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.shape_in) + 1j * rng.standard_normal(self.shape_in)
        x = xp.asarray(x.astype(self.dtype))
        lam = 0.0
        for _ in range(n_iter):
            x = x / xp.linalg.norm(x)
            y = self.normal(x)
            lam = float(xp.vdot(x, y).real)
            x = y
        return float(np.sqrt(max(lam, 0.0)))


def dot_test(op: LinearOperator, seed: int = 0, xp=np, dtype=None) -> float:
    """Relative adjoint mismatch |<A x, y> - <x, A^H y>| / (||A x|| ||y||) on random complex inputs."""
    dtype = np.dtype(dtype or op.dtype)
    rng = np.random.default_rng(seed)

    def rand(shape):
        return xp.asarray((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype))

    x = rand(op.shape_in)
    y = rand(op.shape_out)
    ax = op.fwd(x)
    ahy = op.adj(y)
    lhs = complex(xp.vdot(y, ax))  # <A x, y> = y^H A x
    rhs = complex(xp.vdot(ahy, x))  # <x, A^H y> = (A^H y)^H x
    return abs(lhs - rhs) / (float(xp.linalg.norm(ax)) * float(xp.linalg.norm(y)))


def check_shape(x, shape, what: str):
    """Raise a ValueError naming the operator input when ``x`` has the wrong shape."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{what}: expected array of shape {tuple(shape)}, got {tuple(x.shape)}")


def vdot_real(a, b) -> float:
    """Re <a, b> as a Python float, on either backend."""
    xp = get_xp(a)
    return float(xp.vdot(a, b).real)
