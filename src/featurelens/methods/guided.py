"""Guided Backpropagation and Guided Grad-CAM: pixel-space maps."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, lo, hi)`` whose backward passes only positive gradients where the clamp passes."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(min=lo, max=None if math.isinf(hi) else hi)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        keep = (x > ctx.lo) & (x < ctx.hi) & (grad > 0)
        return grad * keep.to(grad.dtype), None, None


def _bounds(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, nn.ReLU):
        return 0.0, math.inf
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:  # ReLU6
        return 0.0, float(module.max_val)
    return None


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Every ``nn.ReLU``/``nn.ReLU6`` module backpropagates with the guided rule inside the block
    (forward hooks, removed on exit, also on errors). Yields how many modules were changed."""
    handles = []
    try:
        for module in model.modules():
            bounds = _bounds(module)
            if bounds is not None:
                lo, hi = bounds
                handles.append(
                    module.register_forward_hook(
                        lambda m, inp, out, lo=lo, hi=hi: _GuidedClamp.apply(inp[0], lo, hi)
                    )
                )
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        for p in params:
            p.requires_grad_(True)


def guided_gradient(ctx: MethodContext) -> Tensor:
    """``[B, C, H, W]``: the guided-backpropagation gradient of the explained score w.r.t. the input."""
    from featurelens.engine import _check_not_inference_mode
    from featurelens.targets import evaluate_target

    _check_not_inference_mode()
    x = ctx.inputs.detach().clone().requires_grad_(True)
    with _frozen_eval(ctx.model), guided_relus(ctx.model) as changed, torch.enable_grad():
        if changed == 0:
            raise MethodError(
                "guided backpropagation needs nn.ReLU / nn.ReLU6 modules (functional relu calls cannot be guided)"
            )
        scores = evaluate_target(ctx.target, ctx.model(x), x.shape[0])
        (g,) = torch.autograd.grad(scores.sum(), x)
    return g


@register
class GuidedBackprop(Method):
    """Guided Backpropagation (Springenberg et al., "Striving for Simplicity: The All Convolutional
    Net", ICLR-W 2015, arXiv 1412.6806).

    The gradient of the score w.r.t. the input, where every ReLU (and ReLU6) passes back only
    positive gradients at positions where its input was active:
    ``R⁽ˡ⁾ = [z⁽ˡ⁾ > 0] · [R⁽ˡ⁺¹⁾ > 0] · R⁽ˡ⁺¹⁾`` (and ``z < 6`` for ReLU6). The pixel-space map is
    the largest magnitude over colour channels, ``L[i, j] = max_c |G_c[i, j]|`` (``[B, H, W]``).
    The ``layer`` argument is not used. Only ``nn.ReLU``/``nn.ReLU6`` modules are guided.
    """

    name = "guidedbackprop"
    aliases = ("guided-backprop", "guided-backpropagation", "guidedbackpropagation")
    needs_gradients = False
    # explained alone, the engine's own pass runs with the guided rules and a differentiable input
    uses_graph = True
    input_gradient = True
    reference = "Springenberg et al., Striving for Simplicity, ICLR Workshops 2015"

    def pass_rules(self, model: nn.Module) -> AbstractContextManager[int] | None:
        if not any(_bounds(m) is not None for m in model.modules()):
            return None  # the method's own pass then raises the clear error
        return guided_relus(model)

    def on_graph(self, activation: Tensor, output: Tensor, ctx: MethodContext) -> tuple[Tensor]:
        """``activation`` is the input here: the guided gradient ``∂y/∂x`` of the explained score."""
        from featurelens.targets import evaluate_target

        with torch.enable_grad():
            scores = evaluate_target(ctx.target, output, output.shape[0])
            (g,) = torch.autograd.grad(scores.sum(), activation)
        return (g,)

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        g = layer.extra[self.name][0] if self.name in layer.extra else guided_gradient(ctx)
        return g.abs().amax(dim=1), None


@register
class GuidedGradCAM(Method):
    """Guided Grad-CAM (Selvaraju et al., Grad-CAM, ICCV 2017): the guided-backpropagation pixel map
    (:class:`GuidedBackprop`) times the Grad-CAM map of the layer upsampled to the input size:

        ``L = max_c |G_c| ⊙ up(ReLU(Σ_k w_k A_k))``,  ``w_k = mean_ij ∂y/∂A_k[i, j]``

    The weights in the result are Grad-CAM's.
    """

    name = "guidedgradcam"
    aliases = ("guided-grad-cam", "guided-gradcam")
    reference = "Selvaraju et al., Grad-CAM, ICCV 2017 (Guided Grad-CAM)"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        from featurelens.imaging import resize_maps
        from featurelens.methods.gradcam import GradCAM

        cam, w = GradCAM()(layer, ctx)
        pixel = guided_gradient(ctx).abs().amax(dim=1)
        return pixel * resize_maps(cam, tuple(pixel.shape[-2:])).to(pixel.dtype), w
