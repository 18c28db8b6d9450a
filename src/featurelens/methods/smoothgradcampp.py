"""Smooth Grad-CAM++: Grad-CAM++ with gradients averaged over noisy copies of the input."""

from __future__ import annotations

import torch
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register, weighted_sum
from featurelens.methods.base import explained_class as _explained_class
from featurelens.methods.base import sample_scores as _sample_scores


@register
class SmoothGradCAMPlusPlus(Method):
    """Smooth Grad-CAM++ (Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
    Technique for Deep Convolutional Neural Network Models", arXiv 1908.01224, 2019).

    The gradients ``g⁽ⁿ⁾ = ∂y/∂A`` at ``N`` noisy inputs ``X + ε_n`` (``ε_n ~ 𝒩(0, σ²)``) give the
    averaged powers ``D_p = 1/N Σ_n (g⁽ⁿ⁾)^p``; with ``A`` the activation of the clean input,

        ``α_k[i, j] = D₂ / (2·D₂ + Σ_ab A_k[a, b] · D₃)``  (0 where the denominator is 0)
        ``w_k = Σ_ij α_k[i, j] · ReLU(D₁[i, j])``;  ``L = ReLU(Σ_k w_k A_k)``

    i.e. Grad-CAM++'s closed form (:mod:`~featurelens.methods.gradcampp`) with smoothed derivatives.
    The noise is drawn from a generator seeded with ``seed``, the same for every image. The ``N``
    noisy copies of an image go through one forward and one backward pass.

    Args:
        num_samples: ``N`` (default 4, as torchcam); std: ``σ`` on the model-ready input (0.3); seed: 0.
    """

    name = "smoothgradcampp"
    aliases = ("smooth-grad-cam++", "smoothgradcam++", "smoothgradcamplusplus")
    needs_gradients = False  # its own noisy passes; the shared pass's gradients are not used
    reference = "Omeiza et al., Smooth Grad-CAM++, arXiv 1908.01224"

    def __init__(self, num_samples: int = 4, std: float = 0.3, seed: int = 0) -> None:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise MethodError(f"Smooth Grad-CAM++ num_samples must be a positive integer, got {num_samples!r}")
        if not isinstance(std, (int, float)) or not std >= 0:
            raise MethodError(f"Smooth Grad-CAM++ std must be a non-negative number, got {std!r}")
        self.num_samples, self.std, self.seed = num_samples, float(std), int(seed)

    def __repr__(self) -> str:
        return f"SmoothGradCAMPlusPlus(num_samples={self.num_samples}, std={self.std}, seed={self.seed})"

    def noisy_gradients(self, layer: LayerState, ctx: MethodContext, b: int) -> Tensor:
        """``[N, K, h, w]``: the layer's gradient at the ``N`` noisy copies of image ``b``."""
        from featurelens.engine import Capture

        x = ctx.inputs[b : b + 1]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        eps = torch.randn((self.num_samples, *x.shape[1:]), generator=gen, dtype=torch.float32)
        noisy = x + (eps * self.std).to(device=x.device, dtype=x.dtype)
        with Capture(ctx.model, layer.name) as cap:
            out = cap.forward(noisy)
            with torch.enable_grad():
                scores = _sample_scores(out, _explained_class(ctx, b), ctx)
            return cap.gradients(scores)[layer.name][-1]

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        a = layer.activation
        rows = []
        for b in range(a.shape[0]):
            g = self.noisy_gradients(layer, ctx, b).to(a.dtype)
            d1, d2, d3 = g.mean(0), g.pow(2).mean(0), g.pow(3).mean(0)
            denom = 2 * d2 + a[b].sum(dim=(1, 2), keepdim=True) * d3
            safe = denom != 0
            alpha = torch.where(safe, d2 / torch.where(safe, denom, torch.ones_like(denom)), torch.zeros_like(d2))
            rows.append((alpha * torch.relu(d1)).sum(dim=(1, 2)))
        return torch.stack(rows)

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        w = self.weights(layer, ctx)
        return torch.relu(weighted_sum(w, layer.activation)), w
