"""featurelens: see why a CNN decides what it decides.

The public API (imported lazily, so that ``import featurelens.game`` or the CLI's help do not pay
for importing torch):

* :func:`load_model` / :class:`ModelSpec` – the model registry (default: EfficientNet-Lite0, offline);
* :class:`Capture` / :func:`capture` – activations and gradients of any layers;
* :class:`Explainer` / :func:`explain` – CAM-family saliency maps;
* targets (:class:`ClassTarget`, :class:`Predicted`, :func:`Probability`, :func:`Logit`);
* :class:`Explanation` – maps, raw maps, weights, scores; overlay and save helpers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Explainer": "featurelens.api",
    "explain": "featurelens.api",
    "Capture": "featurelens.engine",
    "capture": "featurelens.engine",
    "default_layer": "featurelens.engine",
    "resolve_layer": "featurelens.engine",
    "FeaturelensError": "featurelens.errors",
    "ImageLoadError": "featurelens.errors",
    "InferenceModeError": "featurelens.errors",
    "LayerNotFoundError": "featurelens.errors",
    "MethodError": "featurelens.errors",
    "ModelError": "featurelens.errors",
    "NoClassifierHeadError": "featurelens.errors",
    "NoConvLayerError": "featurelens.errors",
    "TargetError": "featurelens.errors",
    "load_image": "featurelens.imaging",
    "overlay": "featurelens.imaging",
    "get_method": "featurelens.methods",
    "method_names": "featurelens.methods",
    "ModelSpec": "featurelens.models",
    "load_model": "featurelens.models",
    "Explanation": "featurelens.result",
    "comparison_grid": "featurelens.result",
    "ClassTarget": "featurelens.targets",
    "Logit": "featurelens.targets",
    "Predicted": "featurelens.targets",
    "Probability": "featurelens.targets",
}

__all__ = [
    "Capture",
    "ClassTarget",
    "Explainer",
    "Explanation",
    "FeaturelensError",
    "ImageLoadError",
    "InferenceModeError",
    "LayerNotFoundError",
    "Logit",
    "MethodError",
    "ModelError",
    "ModelSpec",
    "NoClassifierHeadError",
    "NoConvLayerError",
    "Predicted",
    "Probability",
    "TargetError",
    "capture",
    "comparison_grid",
    "default_layer",
    "explain",
    "get_method",
    "load_image",
    "load_model",
    "method_names",
    "overlay",
    "resolve_layer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featurelens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # pragma: no cover - static analysers see the real names
    from featurelens.api import Explainer, explain
    from featurelens.engine import Capture, capture, default_layer, resolve_layer
    from featurelens.errors import (
        FeaturelensError,
        ImageLoadError,
        InferenceModeError,
        LayerNotFoundError,
        MethodError,
        ModelError,
        NoClassifierHeadError,
        NoConvLayerError,
        TargetError,
    )
    from featurelens.imaging import load_image, overlay
    from featurelens.methods import get_method, method_names
    from featurelens.models import ModelSpec, load_model
    from featurelens.result import Explanation, comparison_grid
    from featurelens.targets import ClassTarget, Logit, Predicted, Probability
