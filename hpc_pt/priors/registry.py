"""The one interface every prior implements, and the registry that names them.

A prior (DESIGN.md layer 5, scico style) is any object with

    denoise(x, strength) -> argmin_v  strength * R(v) + 1/2 ||v - x||^2     (= prox_{strength R}(x))
    prox(v, lam)         -> the same map under its proximal name
    value(x)             -> R(x), or NaN where the prior has no explicit functional (learned denoisers)

``strength`` is in the units of ``x`` (for TV: the size of the jumps it removes). ``strength = 0`` is the
identity. A learned denoiser fits the same slot with ``strength`` playing its noise level; ADMM never asks
more of a prior than ``denoise`` (and ``value`` for its objective column).

Registry: ``register_denoiser(name, factory)`` binds a name to a zero-or-keyword-argument factory;
``get_denoiser(name, **kw)`` builds one (unknown names raise a ValueError listing the known ones).
The registry is filled once at import with "tv" and "none"; it is the only module-level state and holds
factories, never arrays.
"""
from __future__ import annotations

import math
from collections.abc import Callable


class Denoiser:
    """Base class: subclasses implement :meth:`denoise` (and :meth:`value` where R is explicit)."""

    name = "abstract"

    def denoise(self, x, strength: float):  # pragma: no cover - abstract
        raise NotImplementedError

    def prox(self, v, lam: float):
        """prox_{lam R}(v): the proximal name for :meth:`denoise`."""
        return self.denoise(v, lam)

    def value(self, x) -> float:
        """R(x); NaN when the prior has no explicit functional."""
        return math.nan

    def __call__(self, x, strength: float):
        return self.denoise(x, strength)


class NoPrior(Denoiser):
    """R = 0: ``denoise`` is the identity (returns a copy, so callers may update it in place)."""

    name = "none"

    def denoise(self, x, strength: float):
        return x.copy()

    def value(self, x) -> float:
        return 0.0


_REGISTRY: dict[str, Callable[..., Denoiser]] = {}


def register_denoiser(name: str, factory: Callable[..., Denoiser], overwrite: bool = False) -> None:
    """Make ``get_denoiser(name, **kw)`` return ``factory(**kw)``.

    Names are case-insensitive; re-registering an existing name raises ValueError unless ``overwrite``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"denoiser name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"denoiser factory for {name!r} must be callable, got {type(factory).__name__}")
    key = name.strip().lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"denoiser {key!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = factory


def available_denoisers() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_denoiser(name, **kwargs) -> Denoiser:
    """Build the denoiser registered as ``name`` with ``kwargs``; an object with ``denoise`` passes through.

    Raises ValueError naming the known denoisers for an unknown name.
    """
    if hasattr(name, "denoise"):
        if kwargs:
            raise ValueError("keyword options apply to registered names, not to a denoiser object")
        return name
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown prior / denoiser {name!r}; known: {', '.join(available_denoisers())} "
                         "(register more with hpc_pt.priors.register_denoiser)")
    den = _REGISTRY[key](**kwargs)
    if not hasattr(den, "denoise"):
        raise ValueError(f"the factory registered as {key!r} returned {type(den).__name__}, "
                         "which has no denoise(x, strength) method")
    return den
