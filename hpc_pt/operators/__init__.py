"""Physics operators (layer `operators`, docs/architecture.md). Each linear operator has ``fwd`` and ``adj`` and passes a dot test."""
from .base import LinearOperator, dot_test
from .expmap import ExpMap
from .fd import Gradient, divergence, gradient, laplacian, tv_value
from .model import MODELS, ForwardModel
from .pad import Pad
from .projector import Projector
from .ptycho import STENCIL_OFFSETS, Ptychography, apply_stencil, intensity, validate_positions

__all__ = [
    "LinearOperator", "dot_test", "ExpMap", "Gradient", "divergence", "gradient", "laplacian", "tv_value",
    "ForwardModel", "MODELS", "Pad", "Projector", "Ptychography", "STENCIL_OFFSETS", "apply_stencil", "intensity",
    "validate_positions",
]
