"""featurelens: see why a CNN decides what it decides.

The public API:

* :func:`load_model` / :class:`ModelSpec` – the model registry (default: EfficientNet-Lite0, offline);
* :class:`Capture` / :func:`capture` – activations and gradients of any layers;
* :class:`Explainer` / :func:`explain` – CAM-family saliency maps;
* targets (:class:`ClassTarget`, :class:`Predicted`, :func:`Probability`, :func:`Logit`);
* :class:`Explanation` – maps, raw maps, weights, scores; overlay and save helpers.
"""

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

__version__ = "0.1.0"

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
