"""Saliency methods for classifiers. Import order registers them by name."""

from featurelens.methods.base import (
    METHODS,
    LayerState,
    Method,
    MethodContext,
    get_method,
    method_names,
    register,
    weighted_sum,
)
from featurelens.methods.gradcam import GradCAM

__all__ = [
    "METHODS",
    "GradCAM",
    "LayerState",
    "Method",
    "MethodContext",
    "get_method",
    "method_names",
    "register",
    "weighted_sum",
]
