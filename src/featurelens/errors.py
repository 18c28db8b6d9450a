"""Typed exceptions of featurelens.

Every error a user can cause (a bad file, a wrong layer name, a model that does not fit a method)
is a :class:`FeaturelensError`. The CLI prints its message on one line and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeaturelensError(Exception):
    """Base class of every error featurelens raises on purpose."""


class ImageLoadError(FeaturelensError):
    """An image file is missing, unreadable, not an image, or too large."""


class LayerNotFoundError(FeaturelensError, KeyError):
    """A layer name does not exist in the model."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        valid = list(valid)
        close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
        if close:
            hint = "close matches: " + ", ".join(close)
        else:
            shown = valid[-12:]
            hint = "valid layers include: " + ", ".join(shown) + (" ..." if len(valid) > len(shown) else "")
        super().__init__(f"no layer named {name!r} in the model; {hint} (run `featurelens inspect` for all)")
        self.name = name
        self.valid = valid
        self.close_matches = close

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ModelError(FeaturelensError):
    """The model cannot be loaded or does not fit what was asked of it."""


class NoConvLayerError(ModelError):
    """The model has no layer with a spatial (4-D) output to explain."""


class NoClassifierHeadError(ModelError):
    """CAM needs a fully connected layer right after global pooling, and none was found."""


class TargetError(FeaturelensError, ValueError):
    """Targets do not match the model output or the batch."""


class InferenceModeError(FeaturelensError, RuntimeError):
    """Gradients were asked for inside ``torch.inference_mode()``."""


class MethodError(FeaturelensError, ValueError):
    """An unknown method name or a method that cannot run with the given inputs."""


class BundleError(FeaturelensError):
    """An explanation bundle is missing, invalid, or of an unknown version."""
