"""Finite differences on a 3D volume (axis order z, y, x): gradient, divergence, Laplacian, isotropic TV.

Forward differences with a Neumann boundary (the difference across the last sample is 0), so
``Gradient.adj == -divergence`` exactly and ``laplacian = divergence(gradient)`` is symmetric negative
semi-definite, as seed 001 Eq. (5)-(6) need for the CG u-update.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from .base import LinearOperator, check_shape


def gradient(u):
    """(3, nz, ny, nx) forward differences of ``u`` along z, y, x (seed 001: p = grad u).

    Parameters
    ----------
    u : array (nz, ny, nx)
        The volume (NumPy or CuPy array).

    Returns
    -------
    array (3, nz, ny, nx)
        g[0], g[1], g[2]: the differences along z, y, x, zero across the last sample of each axis.
    """
    xp = get_xp(u)
    g = xp.zeros((3,) + u.shape, dtype=u.dtype)
    g[0, :-1] = u[1:] - u[:-1]
    g[1, :, :-1] = u[:, 1:] - u[:, :-1]
    g[2, :, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return g


def divergence(g):
    """Negative adjoint of :func:`gradient`: div g with div = -grad^H.

    Parameters
    ----------
    g : array (3, nz, ny, nx)

    Returns
    -------
    array (nz, ny, nx)
    """
    xp = get_xp(g)
    d = xp.zeros(g.shape[1:], dtype=g.dtype)
    gz, gy, gx = g[0], g[1], g[2]
    d[:-1] += gz[:-1]
    d[1:] -= gz[:-1]
    d[:, :-1] += gy[:, :-1]
    d[:, 1:] -= gy[:, :-1]
    d[:, :, :-1] += gx[:, :, :-1]
    d[:, :, 1:] -= gx[:, :, :-1]
    return d


def laplacian(u):
    """Delta u = div(grad u) (seed 001 Eq. 6 uses -r1 Delta u).

    Parameters
    ----------
    u : array (nz, ny, nx)

    Returns
    -------
    array (nz, ny, nx)
    """
    return divergence(gradient(u))


def tv_value(u) -> float:
    """Isotropic TV(u) = || sqrt(|grad_x u|^2 + |grad_y u|^2 + |grad_z u|^2) ||_1 (seed 001 Eq. 3).

    Parameters
    ----------
    u : array (nz, ny, nx)

    Returns
    -------
    float
    """
    xp = get_xp(u)
    g = gradient(u)
    return float(xp.sqrt((xp.abs(g) ** 2).sum(axis=0)).sum())


class Gradient(LinearOperator):
    """Linear-operator form of :func:`gradient`: (nz, ny, nx) -> (3, nz, ny, nx).

    Parameters
    ----------
    shape : tuple of int
        (nz, ny, nx).
    dtype : dtype, optional
        Complex dtype (default complex64).
    """

    def __init__(self, shape, dtype=np.complex64):
        self.shape_in = tuple(int(s) for s in shape)
        self.shape_out = (3,) + self.shape_in
        self.dtype = np.dtype(dtype)

    def fwd(self, u):
        """grad u.

        Parameters
        ----------
        u : array of shape ``shape_in``, (nz, ny, nx)

        Returns
        -------
        array (3, nz, ny, nx)
            ``gradient(u)``, after a check of the shape of ``u``.
        """
        check_shape(u, self.shape_in, "Gradient.fwd")
        return gradient(u)

    def adj(self, g):
        """grad^H g = -div g.

        Parameters
        ----------
        g : array (3, nz, ny, nx)
            A vector field, like :meth:`fwd`'s output.

        Returns
        -------
        array (nz, ny, nx)
        """
        check_shape(g, self.shape_out, "Gradient.adj")
        return -divergence(g)
