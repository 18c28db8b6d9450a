"""Grad-CAM element-wise."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class GradCAMElementWise(Method):
    """Grad-CAM element-wise (pytorch-grad-cam's variant of Grad-CAM/HiRes-CAM; Selvaraju et al.,
    ICCV 2017, and Draelos & Carin, arXiv 2011.08891).

    Each channel's gradient-times-activation is rectified before the channels are summed, so a
    channel cannot cancel another's positive evidence:

        ``L[i, j] = Σ_k ReLU( ∂y/∂A_k[i, j] · A_k[i, j] )``

    There is no per-channel weight (``weights`` is None in the result).
    """

    name = "gradcamelementwise"
    aliases = ("gradcam-elementwise", "grad-cam-elementwise", "gradcamew")
    reference = "pytorch-grad-cam GradCAMElementWise (Grad-CAM, Selvaraju et al., ICCV 2017)"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        assert layer.gradient is not None
        return torch.relu(layer.gradient * layer.activation).sum(dim=1), None
