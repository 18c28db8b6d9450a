"""Layer-CAM."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class LayerCAM(Method):
    """Layer-CAM (Jiang et al., IEEE TIP 30, 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps").

    Element-wise weights, the positive gradient at each location:

        ``L[i, j] = ReLU( Σ_k ReLU(∂y/∂A_k[i, j]) · A_k[i, j] )``

    There is no per-channel weight (``weights`` is None in the result).
    """

    name = "layercam"
    aliases = ("layer-cam",)
    reference = "Jiang et al., LayerCAM, IEEE TIP 2021"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        assert layer.gradient is not None
        return torch.relu((torch.relu(layer.gradient) * layer.activation).sum(dim=1)), None

    def channel_maps(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        """Per-channel terms of the sum, ``C_k = ReLU(∂y/∂A_k) ⊙ A_k`` (used by ``eigen_smooth``)."""
        assert layer.gradient is not None
        return torch.relu(layer.gradient) * layer.activation
