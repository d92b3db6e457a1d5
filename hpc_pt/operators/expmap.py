"""The exponential transmission map of the projection approximation (seeds 000 / 002, Eq. 1 of seed 002):

    psi = T(x) = exp(i c x),   c = k dz = 2 pi dz / wavelength,   x = P u = P(delta + i beta).

So |psi| = exp(-c P beta) (absorption) and arg psi = c P delta (phase). T is holomorphic, so its
Jacobian is multiplication by J = i c psi; the vector-Jacobian product for a real loss L(psi) with
g = 2 dL/d conj(psi) is J^H g = conj(i c psi) g, which is the gradient dL/d conj(x) times 2.
"""
from __future__ import annotations

from ..backend import get_xp


class ExpMap:
    """psi = exp(i c x) with Jacobian-vector (``jvp``) and vector-Jacobian (``vjp``) products.

    Parameters
    ----------
    c : float
        k dz = 2 pi dz / wavelength.
    """

    def __init__(self, c: float):
        self.c = float(c)

    def fwd(self, x):
        """psi = exp(i c x), element-wise.

        Parameters
        ----------
        x : complex array
            P u (delta + i beta projected), any shape.

        Returns
        -------
        complex array
            psi, of the shape and dtype of ``x``.
        """
        xp = get_xp(x)
        return xp.exp(1j * self.c * x).astype(x.dtype, copy=False)

    def jvp(self, x, dx, psi=None):
        """J dx = i c psi dx (directional derivative of psi along dx).

        Parameters
        ----------
        x : complex array
            The point of linearisation.
        dx : complex array
            The direction, of the shape of ``x``.
        psi : complex array, optional
            ``fwd(x)`` when already computed.

        Returns
        -------
        complex array
            J dx, of the shape of ``x``.
        """
        psi = self.fwd(x) if psi is None else psi
        return (1j * self.c) * psi * dx

    def vjp(self, x, g, psi=None):
        """J^H g = conj(i c psi) g.

        Parameters
        ----------
        x : complex array
            As for :meth:`jvp`.
        g : complex array
            The vector (a gradient with respect to psi), of the shape of ``x``.
        psi : complex array, optional
            As for :meth:`jvp`.

        Returns
        -------
        complex array
            J^H g, of the shape of ``x``.
        """
        xp = get_xp(x)
        psi = self.fwd(x) if psi is None else psi
        return (-1j * self.c) * xp.conj(psi) * g
