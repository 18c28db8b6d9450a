"""ShapleyCAM: gradient plus Hessian-vector product."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register, require_spatial


@register
class ShapleyCAM(Method):
    """ShapleyCAM (Cai et al., "CAMs as Shapley Value-based Explainers", arXiv 2501.06261, 2025).

    A second-order (Shapley-value) estimate of each channel's contribution: with ``g = ∂s/∂A`` and
    the Hessian-vector product ``H A = ∂(g · A)/∂A`` (``A`` held fixed as the vector),

        ``w_k = 1/(h·w) Σ_ij (g − ½ · H A)_k[i, j]``;  ``L = ReLU(Σ_k w_k A_k)``

    The score ``s`` is, by default, the paper's ReST (residual softmax target) for class targets,
    ``s = y_c − CE(y, c) = y_c + log softmax(y)_c``: for a piecewise-linear network the Hessian of a
    logit is 0 and ShapleyCAM would reduce to Grad-CAM. With ``rest=False``, or a custom target
    callable, ``s`` is the explained target itself. Through the :class:`~featurelens.api.Explainer`
    both derivatives come from the engine's own forward (``uses_graph``): two extra backward passes and
    no extra forward; called on a bare :class:`LayerState`, it runs one forward of its own.
    """

    name = "shapleycam"
    aliases = ("shapley-cam",)
    needs_gradients = False  # its own differentiable gradient, of its own score
    uses_graph = True
    reference = "Cai et al., CAMs as Shapley Value-based Explainers, arXiv 2501.06261"

    def __init__(self, rest: bool = True) -> None:
        self.rest = bool(rest)

    def __repr__(self) -> str:
        return f"ShapleyCAM(rest={self.rest})"

    def score(self, out: Tensor, ctx: MethodContext) -> Tensor:
        from featurelens.targets import evaluate_target

        if self.rest and ctx.target_indices is not None:
            idx = ctx.target_indices.to(out.device)[:, None]
            return (out.gather(1, idx) + F.log_softmax(out, dim=1).gather(1, idx))[:, 0]
        return evaluate_target(ctx.target, out, out.shape[0])

    def on_graph(self, activation: Tensor, output: Tensor, ctx: MethodContext) -> tuple[Tensor, Tensor]:
        """``(g, H A)`` of the score at the live ``activation``: ``g`` with ``create_graph``, then
        ``∂(g · A)/∂A`` with ``A`` detached as the vector (graph kept for other layers)."""
        with torch.enable_grad():
            scores = self.score(output, ctx)
            if not scores.requires_grad:
                raise MethodError("ShapleyCAM: the target score does not depend on the layer")
            (g,) = torch.autograd.grad(scores.sum(), activation, create_graph=True, allow_unused=True)
            if g is None:
                raise MethodError("ShapleyCAM: the target score does not depend on the layer")
            hvp = None
            if g.requires_grad:
                (hvp,) = torch.autograd.grad(
                    g, activation, grad_outputs=activation.detach(), allow_unused=True, retain_graph=True
                )
        return g.detach(), (torch.zeros_like(g) if hvp is None else hvp.detach())

    def gradient_and_hvp(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor]:
        if self.name in layer.extra:
            g, hvp = layer.extra[self.name]
            return g, hvp
        from featurelens.engine import Capture

        with Capture(ctx.model, layer.name) as cap, torch.enable_grad():
            out = cap.forward(ctx.inputs)
            act = require_spatial(cap.activation(layer.name), "ShapleyCAM", layer.name)
            return self.on_graph(act, out, ctx)

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        g, hvp = self.gradient_and_hvp(layer, ctx)
        return (g - 0.5 * hvp).mean(dim=(2, 3)).to(layer.activation.dtype)
