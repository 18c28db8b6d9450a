"""Relevance-CAM: LRP relevance at the target layer as channel weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from featurelens.errors import MethodError
from featurelens.lrp import LRP, Composite, Rule, StartLike
from featurelens.methods.base import LayerState, Method, MethodContext, check_4d, register, weighted_sum

_STARTS = ("logit", "one", "contrastive")


@register
class RelevanceCAM(Method):
    """Relevance-CAM (Lee et al., CVPR 2021, "Relevance-CAM: Your Model Already Knows Where to Look").

    The start relevance at the output ``R⁽ᴸ⁾`` is propagated with LRP (:mod:`featurelens.lrp`) down
    to the output ``A`` of the target layer, giving ``R_k[i, j]`` for each channel ``k``; then ::

        α_k = Σ_ij R_k[i, j]          L = ReLU( Σ_k α_k · A_k )

    Args:
        rules: LRP rules (a composite name, :class:`~featurelens.lrp.Composite` or one
            :class:`~featurelens.lrp.Rule`). Default ``"zplus"`` (α1β0 for conv and linear layers, ε for
            pooling and residual sums, pass-through activations): the official implementation's rule.
            ``"epsilon-plus"`` (z⁺ convs, ε classifier) and ``"epsilon"`` are alternatives.
        start: the output relevance. ``"logit"`` (default): one-hot of the explained class × its
            logit, ``R_c = z_c``, the standard LRP start (the explained quantity is the logit);
            ``"one"``: one-hot; ``"contrastive"``: ``1`` on the class, ``−1/C`` on all classes (the
            official code's contrastive start). For targets without class indices (custom callables),
            the start is ``output ⊙ ∂target/∂output``, which equals the ``"logit"`` start for a logit target.
        sum_types: extra residual-sum module types for LRP.

    The method runs its own forward/backward pass (LRP hooks, removed on exit, also on errors); the
    relevance of the *last* call of a module called several times per forward is used.
    """

    name = "relevancecam"
    aliases = ("relevance-cam",)
    needs_gradients = False
    reference = "Lee et al., Relevance-CAM, CVPR 2021"

    def __init__(
        self,
        rules: str | Composite | Rule = "epsilon",
        start: str = "logit",
        sum_types: Sequence[type[nn.Module]] = (),
    ) -> None:
        if start not in _STARTS:
            raise MethodError(f"unknown Relevance-CAM start {start!r}; use one of {', '.join(_STARTS)}")
        self.rules = rules
        self.start = start
        self.sum_types = tuple(sum_types)

    def relevance(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        """LRP relevance ``R`` at the output of ``layer`` ``[B, K, h, w]``."""
        start: StartLike = self.start
        classes = ctx.target_indices
        if classes is None:
            start = _gradient_times_output(ctx)
        with LRP(ctx.model, self.rules, sum_types=self.sum_types) as lrp:
            res = lrp.relevance(ctx.inputs, [layer.name], start=start, classes=classes)
        rel = res.at(layer.name)
        if rel.shape != layer.activation.shape:
            raise MethodError(
                f"LRP relevance at {layer.name!r} has shape {tuple(rel.shape)}, activation {tuple(layer.activation.shape)}"
            )
        return rel

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        check_4d(layer)
        return self.relevance(layer, ctx).sum(dim=(2, 3))

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        w = self.weights(layer, ctx)
        return torch.relu(weighted_sum(w, layer.activation)), w

    def __repr__(self) -> str:
        return f"RelevanceCAM(rules={self.rules!r}, start={self.start!r})"


def _gradient_times_output(ctx: MethodContext) -> Tensor:
    out = ctx.output.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = ctx.target(out)
        if not isinstance(score, Tensor) or not score.requires_grad:
            raise MethodError("Relevance-CAM: the target score does not depend on the model output")
        (grad,) = torch.autograd.grad(score.sum(), out)
    return grad * out.detach()
