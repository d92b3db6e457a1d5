"""The one interface every prior implements, the registry that names them, and priors on slabs.

A prior (layer `priors`, docs/architecture.md; the prox-as-denoiser interface of scico) is any object with

    denoise(x, strength) -> argmin_v  strength * R(v) + 1/2 ||v - x||^2     (= prox_{strength R}(x))
    prox(v, lam)         -> the same map under its proximal name
    value(x)             -> R(x), or NaN where the prior has no explicit functional (learned denoisers)

``strength`` is in the units of ``x`` (for TV: the size of the jumps it removes). ``strength = 0`` is the
identity. A learned denoiser fits the same slot with ``strength`` playing its noise level; ADMM never asks
more of a prior than ``denoise`` (and ``value`` for its objective column).

Slab-distributed volumes (docs/architecture.md §3). The solvers hold only this rank's slab of rows of the
volume; :func:`denoise` / :func:`prior_value` apply a prior to the GLOBAL volume through its slabs:

* a slab-aware prior (class attribute ``slab_aware = True``: :class:`TVDenoiser`, :class:`NoPrior`) takes
  ``denoise(x, strength, space=...)`` / ``value(x, space=...)`` with the :class:`~hpc_pt.parallel.SlabSpace`
  and computes the serial result itself (one-row halos, global norms);
* any other prior gets its slab extended by ``halo`` rows from the neighbouring slabs (fetched with one
  ``alltoallv``; fewer rows at the volume's ends, so the volume's own boundary is where the serial run has
  it), denoises that block and keeps its own rows. This is EXACT only for denoisers whose output at a voxel
  depends on input rows within ``halo`` of it (receptive field <= halo along z: a pointwise map needs 0, a
  3x3x3 filter 1, a CNN with k layers of 3x3x3 convolutions k) and that act the same on every block (no
  global statistics such as a noise estimate over the whole input). ``halo`` is the denoiser's attribute
  ``halo`` or the one given to :func:`register_denoiser`; where neither says, the whole volume is fetched
  (exact for any denoiser, but N^3 values on every rank). Its ``value`` is computed on the gathered whole
  volume (unless the class keeps the base ``value``, i.e. NaN).

Warm starts: a prior that carries state between calls (TV's dual) exposes it through ``state()`` (a dict
of arrays) and ``load_state(d)``, so solvers can checkpoint it.

Registry: ``register_denoiser(name, factory, halo=None)`` binds a name to a zero-or-keyword-argument
factory; ``get_denoiser(name, **kw)`` builds one (unknown names raise a ValueError listing the known ones).
The registry is filled once at import with "tv" and "none"; it is the only module-level state and holds
factories, never arrays.
"""
from __future__ import annotations

import math
from collections.abc import Callable


class Denoiser:
    """Base class: subclasses implement :meth:`denoise` (and :meth:`value` where R is explicit).

    ``slab_aware``: True when ``denoise`` / ``value`` accept ``space=`` (a SlabSpace) and then act on the
    slab-distributed global volume exactly. ``halo``: rows of neighbouring slabs a non-slab-aware denoiser
    needs (its receptive field along z); None: unknown (the whole volume is gathered)."""

    name = "abstract"
    slab_aware = False
    halo: int | None = None

    def denoise(self, x, strength: float):  # pragma: no cover - abstract
        """prox_{strength R}(x) = argmin_v strength R(v) + 1/2 ||v - x||^2 (subclasses implement it).

        Parameters
        ----------
        x : array_like
            The input volume (NumPy or CuPy).
        strength : float
            The prox weight, in the units of ``x``; 0 is the identity.

        Returns
        -------
        array_like
            The denoised volume, of the shape of ``x``.
        """
        raise NotImplementedError

    def prox(self, v, lam: float):
        """prox_{lam R}(v): the proximal name for :meth:`denoise`.

        Parameters
        ----------
        v : array_like
            The input volume.
        lam : float
            The prox weight.

        Returns
        -------
        array_like
            ``self.denoise(v, lam)``.
        """
        return self.denoise(v, lam)

    def value(self, x) -> float:
        """R(x); NaN when the prior has no explicit functional.

        Parameters
        ----------
        x : array_like
            The volume.

        Returns
        -------
        float
            R(x); this base implementation returns NaN.
        """
        return math.nan

    def __call__(self, x, strength: float):
        """Same as :meth:`denoise`."""
        return self.denoise(x, strength)

    def state(self) -> dict:
        """Arrays the denoiser carries from one call to the next (warm starts), for checkpoints.

        Returns
        -------
        dict
            Name -> array; empty for a stateless denoiser (this base implementation).
        """
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned (arrays already on the right device).

        Parameters
        ----------
        state : dict
            A dict :meth:`state` returned.
        """


class NoPrior(Denoiser):
    """R = 0: ``denoise`` is the identity (returns a copy, so callers may update it in place)."""

    name = "none"
    slab_aware = True

    def denoise(self, x, strength: float, space=None):
        """The identity: a copy of ``x``.

        Parameters
        ----------
        x : array_like
            The volume (or this rank's slab of it).
        strength : float
            Ignored.
        space : SlabSpace, optional
            Ignored (the identity is exact on slabs).

        Returns
        -------
        array_like
            ``x.copy()``.
        """
        return x.copy()

    def value(self, x, space=None) -> float:
        """R = 0.

        Parameters
        ----------
        x : array_like
            Ignored.
        space : SlabSpace, optional
            Ignored.

        Returns
        -------
        float
            0.0.
        """
        return 0.0


_REGISTRY: dict[str, Callable[..., Denoiser]] = {}
_HALOS: dict[str, int] = {}


def register_denoiser(name: str, factory: Callable[..., Denoiser], overwrite: bool = False,
                      halo: int | None = None) -> None:
    """Make ``get_denoiser(name, **kw)`` return ``factory(**kw)``.

    Names are case-insensitive; re-registering an existing name raises ValueError unless ``overwrite``.
    ``halo``: for a denoiser that is not slab-aware, its receptive field along z in rows (module
    docstring); the built object gets it as its ``halo`` attribute unless it has its own.

    Parameters
    ----------
    name : str
        The name (stripped, lower-cased).
    factory : callable
        ``factory(**kw)`` builds the denoiser (a class, or a function).
    overwrite : bool, optional
        Replace an existing registration. Default False.
    halo : int, optional
        Rows >= 0 of the denoiser's receptive field along z; None: unknown (the whole volume is gathered).

    Raises
    ------
    ValueError
        For an empty name, a name already registered without ``overwrite``, or a ``halo`` that is not a whole
        number >= 0.
    TypeError
        When ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"denoiser name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"denoiser factory for {name!r} must be callable, got {type(factory).__name__}")
    key = name.strip().lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"denoiser {key!r} is already registered; pass overwrite=True to replace it")
    if halo is not None and (int(halo) != halo or halo < 0):
        raise ValueError(f"halo must be a whole number of rows >= 0, got {halo}")
    _REGISTRY[key] = factory
    _HALOS.pop(key, None)
    if halo is not None:
        _HALOS[key] = int(halo)


def available_denoisers() -> list[str]:
    """Registered names, sorted.

    Returns
    -------
    list of str
        The names ``get_denoiser`` accepts.
    """
    return sorted(_REGISTRY)


def get_denoiser(name, **kwargs) -> Denoiser:
    """Build the denoiser registered as ``name`` with ``kwargs``; an object with ``denoise`` passes through.

    Raises ValueError naming the known denoisers for an unknown name.

    Parameters
    ----------
    name : str or Denoiser
        A registered name (case-insensitive), or an object with a ``denoise`` method (returned as is).
    **kwargs
        Options of the factory (not allowed with an object).

    Returns
    -------
    Denoiser
        The denoiser; it gets the registered ``halo`` when it has none of its own.

    Raises
    ------
    ValueError
        For an unknown name, options given with an object, or a factory that built no ``denoise`` method.
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
    if key in _HALOS and getattr(den, "halo", None) is None:
        try:
            den.halo = _HALOS[key]
        except AttributeError:  # an object that takes no attributes: it keeps halo None (whole volume)
            pass
    return den


# ---------------------------------------------------------------------------------------------------
# priors on slab-distributed volumes
# ---------------------------------------------------------------------------------------------------

def is_slab_aware(den) -> bool:
    """Whether ``den`` acts on slab-distributed volumes itself (class attribute ``slab_aware``).

    Parameters
    ----------
    den : object
        A denoiser.

    Returns
    -------
    bool
        ``den.slab_aware``, False when absent.
    """
    return bool(getattr(den, "slab_aware", False))


def slab_with_halo(space, x, halo: int | None):
    """This rank's slab ``x`` of the global volume extended by up to ``halo`` rows on each side.

    The rows come from the neighbouring slabs (None: the whole volume): :meth:`SlabSpace.with_halo
    <hpc_pt.parallel.SlabSpace.with_halo>`, the one place halos are exchanged. Returns (block, lo).

    Parameters
    ----------
    space : SlabSpace
        The slab decomposition (collective when it has several ranks).
    x : array_like
        This rank's slab, (rows, n, n).
    halo : int or None
        Rows wanted on each side; None: every row.

    Returns
    -------
    block : array_like
        The extended block, on the backend of ``x``.
    lo : int
        ``block[lo:lo + rows]`` is ``x``.
    """
    return space.with_halo(x, halo)


def denoise(den, x, strength: float, space=None):
    """``den``'s prox of the GLOBAL volume whose slab (this rank's rows) is ``x`` (module docstring).

    ``space=None``: ``x`` is the whole volume, plain ``den.denoise(x, strength)``. Otherwise every rank
    must call it (collectives): slab-aware priors get ``space``, others a block of ``x`` with ``halo``
    neighbouring rows on each side (exact within their receptive field).

    Parameters
    ----------
    den : Denoiser
        The prior (anything with ``denoise(x, strength)``).
    x : array_like
        The whole volume, or this rank's slab of it.
    strength : float
        The prox weight; 0 returns a copy without any exchange.
    space : SlabSpace, optional
        The slab decomposition of the global volume.

    Returns
    -------
    array_like
        The denoised volume (or this rank's slab of it), of the shape of ``x``.
    """
    if space is None:
        return den.denoise(x, strength)
    if is_slab_aware(den):
        return den.denoise(x, strength, space=space)
    if float(strength) == 0.0:  # identity by the interface's contract: no exchange needed
        return x.copy()
    block, lo = slab_with_halo(space, x, getattr(den, "halo", None))
    out = den.denoise(block, strength)
    return out[lo:lo + x.shape[0]].copy()


def prior_value(den, x, space=None) -> float:
    """R of the global volume whose slab is ``x`` (every rank gets it; collective when ``space`` is given).

    Slab-aware priors sum their slabs' parts; for others the whole volume is gathered (NaN without any
    exchange when the class keeps the base :meth:`Denoiser.value`).

    Parameters
    ----------
    den : Denoiser
        The prior.
    x : array_like
        The whole volume, or this rank's slab of it.
    space : SlabSpace, optional
        The slab decomposition of the global volume.

    Returns
    -------
    float
        R of the global volume; NaN when the prior has no explicit functional.
    """
    if space is None:
        return float(den.value(x)) if hasattr(den, "value") else math.nan
    if is_slab_aware(den):
        return float(den.value(x, space=space))
    if not hasattr(den, "value") or (isinstance(den, Denoiser) and type(den).value is Denoiser.value):
        return math.nan
    if space.comm.size == 1:
        return float(den.value(x))
    from ..backend import get_xp

    return float(den.value(get_xp(x).asarray(space.allgather(x))))
