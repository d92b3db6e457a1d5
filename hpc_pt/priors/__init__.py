"""Priors behind one interface (DESIGN.md layer 5): ``denoise(x, strength)`` = prox_{strength R}(x).

ADMM plugs any of them into its prior subproblem. Built in: ``"tv"`` (:class:`TVDenoiser`, isotropic 3D
TV by FGP on Chambolle's dual) and ``"none"`` (:class:`NoPrior`, the identity). Add one with
``register_denoiser(name, factory)``; build one with ``get_denoiser(name, **options)``.
"""
from .registry import (
    Denoiser,
    NoPrior,
    available_denoisers,
    get_denoiser,
    register_denoiser,
)
from .tv import TVDenoiser

register_denoiser("tv", TVDenoiser, overwrite=True)
register_denoiser("none", NoPrior, overwrite=True)

__all__ = ["Denoiser", "NoPrior", "TVDenoiser", "available_denoisers", "get_denoiser", "register_denoiser"]
