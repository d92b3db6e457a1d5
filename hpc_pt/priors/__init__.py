"""Priors behind one interface (layer `priors`, docs/architecture.md): ``denoise(x, strength)`` = prox_{strength R}(x).

ADMM plugs any of them into its prior subproblem. Built in: ``"tv"`` (:class:`TVDenoiser`, isotropic 3D
TV by FGP on Chambolle's dual) and ``"none"`` (:class:`NoPrior`, the identity). Add one with
``register_denoiser(name, factory, halo=...)``; build one with ``get_denoiser(name, **options)``. On a
slab-distributed volume use :func:`denoise` / :func:`prior_value` with the SlabSpace (exact for the built-in
priors; for others within their declared ``halo``, see :mod:`hpc_pt.priors.registry`).
"""
from .registry import (
    Denoiser,
    NoPrior,
    available_denoisers,
    denoise,
    get_denoiser,
    is_slab_aware,
    prior_value,
    register_denoiser,
    slab_with_halo,
)
from .tv import TVDenoiser

register_denoiser("tv", TVDenoiser, overwrite=True)
register_denoiser("none", NoPrior, overwrite=True)

__all__ = ["Denoiser", "NoPrior", "TVDenoiser", "available_denoisers", "denoise", "get_denoiser",
           "is_slab_aware", "prior_value", "register_denoiser", "slab_with_halo"]
