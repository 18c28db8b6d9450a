"""Grad-CAM++."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class GradCAMPlusPlus(Method):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, arXiv 1710.11063).

    With ``g = ∂y/∂A`` (``y`` the pre-softmax class score) and the paper's closed form for
    ``Y = exp(y)`` in a piecewise-linear (ReLU) network, where the second and third derivatives
    of ``Y`` are ``exp(y)·g²`` and ``exp(y)·g³`` and the ``exp(y)`` factors cancel:

        ``α_k[i, j] = g_k[i, j]² / (2·g_k[i, j]² + Σ_ab A_k[a, b] · g_k[i, j]³)``
        ``w_k = Σ_ij α_k[i, j] · ReLU(g_k[i, j])``;  ``L = ReLU(Σ_k w_k A_k)``

    Where the denominator is 0 (then ``g = 0`` too) ``α`` is set to 0 rather than 0/0.
    """

    name = "gradcampp"
    aliases = ("grad-cam++", "gradcam++", "gradcamplusplus")
    reference = "Chattopadhyay et al., Grad-CAM++, WACV 2018"

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        assert layer.gradient is not None
        a, g = layer.activation, layer.gradient
        g2 = g.pow(2)
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g.pow(3)
        safe = denom != 0
        alpha = torch.where(safe, g2 / torch.where(safe, denom, torch.ones_like(denom)), torch.zeros_like(g2))
        return (alpha * torch.relu(g)).sum(dim=(2, 3))
