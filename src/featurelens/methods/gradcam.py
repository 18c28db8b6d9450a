"""Grad-CAM."""

from __future__ import annotations

from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class GradCAM(Method):
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv 1610.02391).

    ``w_k = 1/(h·w) Σ_ij ∂y/∂A_k[i, j]``;  ``L = ReLU(Σ_k w_k A_k)``.
    """

    name = "gradcam"
    aliases = ("grad-cam",)
    reference = "Selvaraju et al., Grad-CAM, ICCV 2017"

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        assert layer.gradient is not None
        return layer.gradient.mean(dim=(2, 3))
