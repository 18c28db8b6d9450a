"""XGrad-CAM."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class XGradCAM(Method):
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM", BMVC 2020, arXiv 2008.02312).

    Gradients weighted by the normalised activation of each channel:

        ``w_k = Σ_ij (A_k[i, j] / Σ_ab A_k[a, b]) · ∂y/∂A_k[i, j]``;  ``L = ReLU(Σ_k w_k A_k)``

    A channel whose activation sums to 0 gets ``w_k = 0`` (instead of 0/0).
    """

    name = "xgradcam"
    aliases = ("xgrad-cam", "axiom-gradcam")
    reference = "Fu et al., Axiom-based Grad-CAM, BMVC 2020"

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        assert layer.gradient is not None
        a, g = layer.activation, layer.gradient
        total = a.sum(dim=(2, 3))
        num = (a * g).sum(dim=(2, 3))
        safe = total != 0
        return torch.where(
            safe, num / torch.where(safe, total, torch.ones_like(total)), torch.zeros_like(num)
        )
