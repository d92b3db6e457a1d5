"""Physics operators (layer `operators`, docs/architecture.md). Each linear operator has ``fwd`` and ``adj`` and passes a dot test.

Linear operators compose: ``A @ B`` (:class:`ProductOperator`), ``A.H`` (:class:`AdjointOperator`), ``a * A``
(:class:`ScaledOperator`), ``A + B`` (:class:`SumOperator`); :class:`FunctionOperator` wraps a pair of callables.
"""
from .base import (AdjointOperator, FunctionOperator, LinearOperator, ProductOperator, ScaledOperator, SumOperator,
                   dot_test)
from .expmap import ExpMap
from .fd import Gradient, divergence, gradient, laplacian, tv_value
from .model import MODELS, ForwardModel
from .pad import Pad
from .projector import Projector
from .ptycho import STENCIL_OFFSETS, Ptychography, apply_stencil, intensity, validate_positions

__all__ = [
    "LinearOperator", "ProductOperator", "AdjointOperator", "ScaledOperator", "SumOperator", "FunctionOperator",
    "dot_test", "ExpMap", "Gradient", "divergence", "gradient", "laplacian", "tv_value",
    "ForwardModel", "MODELS", "Pad", "Projector", "Ptychography", "STENCIL_OFFSETS", "apply_stencil", "intensity",
    "validate_positions",
]
