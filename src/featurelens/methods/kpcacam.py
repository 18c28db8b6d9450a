"""KPCA-CAM: the first kernel principal component of a layer's activations."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register
from featurelens.methods.eigencam import fix_sign

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def kernel_matrix(x: Tensor, kernel: str, gamma: float, coef0: float, degree: int) -> Tensor:
    """``[B, n, K]`` samples → ``[B, n, n]`` kernel matrices (scikit-learn's definitions)."""
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(x, x).pow(2))
    if kernel == "cosine":
        unit = x / x.norm(dim=2, keepdim=True).clamp_min(1e-300)
        return unit @ unit.transpose(1, 2)
    dot = x @ x.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (gamma * dot + coef0).pow(degree)
    return torch.tanh(gamma * dot + coef0)


def first_kernel_component(
    x: Tensor, kernel: str = "sigmoid", gamma: float | None = None, coef0: float = 1.0, degree: int = 3
) -> Tensor:
    """``[B, K, h, w]`` → ``[B, h, w]``: each position's score on the first kernel principal component.

    Positions are samples: ``X̃`` is the centred ``[h·w, K]`` activation matrix, ``𝐊 = k(X̃, X̃)``,
    ``𝐊_c = (I − 𝟏/n) 𝐊 (I − 𝟏/n)`` and ``(λ₁, α₁)`` its top eigenpair; the score is
    ``√λ₁ · α₁`` (= ``𝐊_c α₁ / √λ₁``), with the sign rule of Eigen-CAM.
    """
    b, k, h, w = x.shape
    data = torch.nan_to_num(x.detach().double()).flatten(2).transpose(1, 2)
    centred = data - data.mean(dim=1, keepdim=True)
    g = 1.0 / k if gamma is None else float(gamma)
    gram = kernel_matrix(centred, kernel, g, coef0, degree)
    gram = gram - gram.mean(dim=1, keepdim=True) - gram.mean(dim=2, keepdim=True) + gram.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(gram)  # ascending
    top = values[:, -1].clamp_min(0)
    scores = vectors[:, :, -1] * top.sqrt()[:, None]
    return fix_sign(scores, centred).reshape(b, h, w).to(x.dtype)


@register
class KPCACAM(Method):
    """KPCA-CAM (Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models
    using Kernel PCA", MMSP 2024, arXiv 2410.00267).

    Eigen-CAM with kernel PCA: the ``h·w`` positions of the centred activation ``X̃`` are mapped by
    a kernel ``k`` (default ``sigmoid``: ``tanh(γ ⟨x, x'⟩ + c₀)``, ``γ = 1/K``, ``c₀ = 1``); with the
    double-centred kernel matrix ``𝐊_c`` and its top eigenpair ``(λ₁, α₁)``,

        ``L = ReLU( √λ₁ · α₁ )`` reshaped to ``h × w``

    The sign is fixed as in :class:`~featurelens.methods.eigencam.EigenCAM` (non-negative
    correlation with the channel sum of ``X̃``). Gradient-free and class-agnostic.

    Args:
        kernel: ``"sigmoid"`` (default), ``"rbf"``, ``"poly"``, ``"linear"`` (= Eigen-CAM) or ``"cosine"``.
        gamma: kernel coefficient (default ``1/K``); ``coef0``, ``degree``: for sigmoid/poly.
    """

    name = "kpcacam"
    aliases = ("kpca-cam", "kernel-pca-cam")
    needs_gradients = False
    reference = "Karmani et al., KPCA-CAM, arXiv 2410.00267"

    def __init__(
        self, kernel: str = "sigmoid", gamma: float | None = None, coef0: float = 1.0, degree: int = 3
    ) -> None:
        if kernel not in KERNELS:
            raise MethodError(f"unknown KPCA-CAM kernel {kernel!r}; use one of {', '.join(KERNELS)}")
        if gamma is not None and not gamma > 0:
            raise MethodError(f"KPCA-CAM gamma must be positive, got {gamma!r}")
        self.kernel, self.gamma, self.coef0, self.degree = kernel, gamma, float(coef0), int(degree)

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        proj = first_kernel_component(layer.activation, self.kernel, self.gamma, self.coef0, self.degree)
        return torch.relu(proj), None

    def __repr__(self) -> str:
        return f"KPCACAM(kernel={self.kernel!r}, gamma={self.gamma})"
