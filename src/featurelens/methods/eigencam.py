"""Eigen-CAM and EigenGrad-CAM: the first principal component of a layer's (weighted) activations."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.methods.base import LayerState, Method, MethodContext, register


def fix_sign(projection: Tensor, centred: Tensor) -> Tensor:
    """Flip each sample's ``[B, n]`` projection so it correlates non-negatively with the channel sum
    ``s_i = Σ_k X̃[i, k]`` of the centred data ``[B, n, K]`` (the principal axis points to *more*
    activation). For a first principal component ``v`` this is the sign making ``Σ_k v_k ≥ 0``."""
    agreement = (projection * centred.sum(dim=2)).sum(dim=1, keepdim=True)
    return torch.where(agreement < 0, -projection, projection)


def first_component(x: Tensor) -> Tensor:
    """``[B, K, h, w]`` → ``[B, h, w]``: each position's projection on the first principal axis.

    With ``X[i, k] = x[k, i]`` (positions as samples, channels as features), ``X̃ = X − mean_i X``
    and ``v`` the first right singular vector of ``X̃``, the map is ``p = X̃ v`` (sign fixed by
    :func:`fix_sign`).
    """
    b, _, h, w = x.shape
    data = torch.nan_to_num(x.detach().double()).flatten(2).transpose(1, 2)  # [B, hw, K]
    centred = data - data.mean(dim=1, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    projection = u[:, :, 0] * s[:, :1]  # X̃ v = σ₁ u₁
    return fix_sign(projection, centred).reshape(b, h, w).to(x.dtype)


@register
class EigenCAM(Method):
    """Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
    IJCNN 2020, arXiv 2008.00299).

    Class-agnostic and gradient-free: with the activation as a matrix ``X`` (``h·w`` positions ×
    ``K`` channels), centred per channel, ``X̃ = X − mean``, and ``v₁`` its first right singular vector,

        ``L = ReLU( X̃ v₁ )`` reshaped to ``h × w``

    SVD leaves the sign of ``v₁`` free; it is fixed so that the map correlates non-negatively with
    the channel sum of ``X̃`` (equivalently ``Σ_k v₁[k] ≥ 0``). There are no per-channel weights.
    """

    name = "eigencam"
    aliases = ("eigen-cam",)
    needs_gradients = False
    reference = "Muhammad & Yeasin, Eigen-CAM, IJCNN 2020"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        return torch.relu(first_component(layer.activation)), None


@register
class EigenGradCAM(Method):
    """EigenGrad-CAM (Eigen-CAM of ``∂y/∂A ⊙ A``, as in pytorch-grad-cam; Muhammad & Yeasin 2020).

    Class-specific: the first principal component (see :class:`EigenCAM`, same sign rule) of the
    element-wise product of the gradient ``g = ∂y/∂A`` and the activation ``A``:

        ``L = ReLU( X̃ v₁ )`` with ``X[i, k] = g_k[i] · A_k[i]``
    """

    name = "eigengradcam"
    aliases = ("eigengrad-cam", "eigen-grad-cam")
    reference = "Muhammad & Yeasin, Eigen-CAM, IJCNN 2020 (on gradient × activation)"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        assert layer.gradient is not None
        return torch.relu(first_component(layer.gradient * layer.activation)), None
