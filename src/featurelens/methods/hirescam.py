"""HiRes-CAM."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class HiResCAM(Method):
    """HiRes-CAM (Draelos & Carin, arXiv 2011.08891, 2020).

    The element-wise product of gradient and activation, summed over channels (no spatial
    averaging of the gradient, so the map is faithful to the score for a GAP+FC head):

        ``L[i, j] = ReLU( Σ_k ∂y/∂A_k[i, j] · A_k[i, j] )``

    There is no per-channel weight (``weights`` is None in the result).
    """

    name = "hirescam"
    aliases = ("hires-cam",)
    reference = "Draelos & Carin, Use HiResCAM instead of Grad-CAM, arXiv 2011.08891"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        assert layer.gradient is not None
        return torch.relu((layer.gradient * layer.activation).sum(dim=1)), None

    def channel_maps(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        """Per-channel terms of the sum, ``C_k = ∂y/∂A_k ⊙ A_k`` (used by ``eigen_smooth``)."""
        assert layer.gradient is not None
        return layer.gradient * layer.activation
