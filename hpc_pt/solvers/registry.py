"""The solver registry: what the pipeline, the CLI and the config files know of each reconstruction method.

Each solver module exports its options model (pydantic) and a :class:`SolverSpec`: which forward models the
method supports, whether its ranks must hold whole angles, which generic settings it takes and which of its
options each one sets (the one vocabulary: ``noise`` is every method's data metric, ``penalty`` its data
penalty, ``prior_weight`` its prior's threshold over the prior's coupling penalty in units of the volume's
scale, ...), whether it has a deterministic mode, and the function that runs it. The pipeline derives its
tables from the specs, and ``hpc-pt reconstruct --help`` lists every method's options from their models.

Adding a method is one new module with an options model, a solver (an
:class:`~hpc_pt.solvers.base.IterativeSolver` run by :func:`~hpc_pt.solvers.base.run`) and a spec, plus one
line: its ``"module:SPEC"`` in :data:`BUILTIN_SOLVERS` (or ``register_solver(SPEC)`` from outside the
package, as ``tests/solvers/test_solver_registry.py`` does with a toy solver).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: the built-in methods, in the order the help lists them ("module:attribute" of each spec)
BUILTIN_SOLVERS = (
    "hpc_pt.solvers.apt:APT_SPEC",
    "hpc_pt.solvers.apt:APTS_SPEC",
    "hpc_pt.solvers.admm:SPEC",
    "hpc_pt.solvers.gd:SPEC",
    "hpc_pt.solvers.twostep:SPEC",
)

#: generic settings (hpc_pt.pipeline.ReconConfig's fields) a spec may map to its options
GENERIC = ("iterations", "noise", "prior", "prior_weight", "penalty", "probe_refine", "init", "support_width")

#: deterministic modes: on by default, on request, not implemented
DETERMINISM = ("default", "optional", "no")


@dataclass(frozen=True)
class SolverSpec:
    """What the rest of hpc-pt knows of a reconstruction method.

    Parameters
    ----------
    name : str
        The method's name (``--method NAME``).
    options : type
        Its options model (a pydantic ``BaseModel``): every field is an ``--option KEY=VALUE``.
    run : callable
        ``run(shard, comm, opts, callback=None, u0=None, checkpoints=NO_CHECKPOINTS) -> SolverResult``.
    models : tuple of str
        The forward models it supports ("linear", "exp").
    default_model : str or None
        The model it uses when neither the user nor the input says (None: the input's, else linear).
    generic : Mapping
        Generic setting -> the option it sets (e.g. ``{"noise": "metric", "penalty": "r2"}``); a generic
        setting given explicitly to a method that does not take it is refused.
    fixed : Mapping
        Options the method pins whatever the settings say (APTs: ``{"prior": "none"}``).
    whole_angles : bool
        Every rank must hold whole angles (the pipeline plans shards so).
    deterministic : str
        "default" (on unless turned off), "optional" (on request) or "no" (refused).
    refines_probe : bool
        An estimated probe (no probe in the input) turns ``probe_refine`` on.
    takes_u0 : bool
        Accepts an initial volume (``--init FILE``).
    prepare : callable, optional
        ``prepare(shard, comm, opts, noise_free) -> (opts, note)``: data-dependent defaults applied to the
        validated options (APT's r2 from the noise level); ``note`` (or None) is told to the user.
    summary : str
        One line for the help.
    """

    name: str
    options: type
    run: Callable
    models: tuple = ("linear",)
    default_model: str | None = "linear"
    generic: Mapping = field(default_factory=dict)
    fixed: Mapping = field(default_factory=dict)
    whole_angles: bool = False
    deterministic: str = "no"
    refines_probe: bool = False
    takes_u0: bool = True
    prepare: Callable | None = None
    summary: str = ""

    def __post_init__(self):
        bad = sorted(set(self.generic) - set(GENERIC))
        if bad:
            raise ValueError(f"solver {self.name!r}: unknown generic settings {bad}; known: {list(GENERIC)}")
        names = set(self.options.model_fields)
        missing = sorted((set(self.generic.values()) | set(self.fixed)) - names)
        if missing:
            raise ValueError(f"solver {self.name!r}: its options model has no {missing}")
        if self.deterministic not in DETERMINISM:
            raise ValueError(f"solver {self.name!r}: deterministic must be one of {DETERMINISM}")
        if not self.models or (self.default_model is not None and self.default_model not in self.models):
            raise ValueError(f"solver {self.name!r}: default_model {self.default_model!r} not in {self.models}")
        object.__setattr__(self, "generic", MappingProxyType(dict(self.generic)))
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))


class _Registry:
    """Name -> spec: the built-ins (imported on first use) and those added by :func:`register_solver`."""

    def __init__(self):
        self._specs: dict[str, SolverSpec] | None = None

    def specs(self) -> dict[str, SolverSpec]:
        if self._specs is None:
            specs = {}
            for ref in BUILTIN_SOLVERS:
                mod, attr = ref.split(":")
                spec = getattr(importlib.import_module(mod), attr)
                specs[spec.name] = spec
            self._specs = specs
        return self._specs


_REGISTRY = _Registry()  # the one registry (like hpc_pt.priors' denoisers): a plug-in point, not state


def register_solver(spec: SolverSpec, overwrite: bool = False) -> SolverSpec:
    """Make ``spec``'s method available to the pipeline, the CLI and config files.

    Parameters
    ----------
    spec : SolverSpec
        The method.
    overwrite : bool
        Replace a method of the same name (else that is an error).

    Returns
    -------
    SolverSpec
        ``spec``.

    Raises
    ------
    ValueError
        When the name is taken and ``overwrite`` is False.
    """
    specs = _REGISTRY.specs()
    if spec.name in specs and not overwrite:
        raise ValueError(f"a solver named {spec.name!r} is already registered (pass overwrite=True to replace it)")
    specs[spec.name] = spec
    return spec


def unregister_solver(name: str) -> None:
    """Remove a method added by :func:`register_solver` (built-ins included; tests use it to clean up).

    Parameters
    ----------
    name : str
        The method's name.
    """
    _REGISTRY.specs().pop(name, None)


def available_solvers() -> tuple[str, ...]:
    """The registered methods' names, built-ins first.

    Returns
    -------
    tuple of str
        The names.
    """
    return tuple(_REGISTRY.specs())


def solver_spec(name: str) -> SolverSpec:
    """The spec of method ``name``.

    Parameters
    ----------
    name : str
        The method's name.

    Returns
    -------
    SolverSpec
        Its spec.

    Raises
    ------
    KeyError
        For an unknown method (the message lists the known ones).
    """
    specs = _REGISTRY.specs()
    if name not in specs:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(specs)}")
    return specs[name]


def all_specs() -> Mapping[str, SolverSpec]:
    """Every registered spec, by name (read-only view).

    Returns
    -------
    Mapping
        Name -> spec.
    """
    return MappingProxyType(_REGISTRY.specs())
