"""FullGrad: input-gradient plus the bias-gradients of every layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register


def layer_bias(module: nn.Module) -> Tensor | None:
    """The (implicit) bias added per channel by a conv or an eval-mode batch-norm layer, else None.

    Batch norm: ``γ (z − μ)/√(σ² + ε) + β`` adds ``β − γ μ / √(σ² + ε)``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
        scale = torch.rsqrt(module.running_var + module.eps)
        gamma = module.weight if module.weight is not None else torch.ones_like(scale)
        beta = module.bias if module.bias is not None else torch.zeros_like(scale)
        return (beta - gamma * module.running_mean * scale).detach()
    if isinstance(module, nn.Conv2d) and module.bias is not None:
        return module.bias.detach()
    return None


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and layer_bias(m) is not None]


def psi(x: Tensor) -> Tensor:
    """FullGrad's post-processing of ``[B, C, h, w]``: ``|x|``, min-max rescaled per sample over all
    of its channels and positions together (a constant tensor gives zeros)."""
    x = x.abs()
    flat = x.flatten(1)
    lo = flat.amin(dim=1)[:, None, None, None]
    span = flat.amax(dim=1)[:, None, None, None] - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


@register
class FullGrad(Method):
    """FullGrad (Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization",
    NeurIPS 2019, arXiv 1905.00780).

    For the explained score ``y``, the input ``X`` and every layer ``l`` with a per-channel bias
    ``b_l`` (convolutions with a bias, batch norm with its implicit bias ``β − γμ/√(σ²+ε)``), with
    ``z_l`` the layer's output,

        ``S = Σ_c ψ(∇_X y ⊙ X)_c + Σ_l Σ_c up(ψ(∇_{z_l} y ⊙ b_l))_c``

    where ``ψ`` takes the absolute value and rescales each sample's tensor to [0, 1] (as the
    authors' code), and ``up`` is bilinear upsampling to the input size. The map is pixel-space
    ``[B, H, W]``; the ``layer`` argument is not used (every bias layer is). One extra forward and
    backward pass through the whole network.
    """

    name = "fullgrad"
    aliases = ("full-grad", "fullgradcam")
    needs_gradients = False
    reference = "Srinivas & Fleuret, Full-Gradient Representation, NeurIPS 2019"

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        from featurelens.engine import Capture
        from featurelens.imaging import resize_maps
        from featurelens.targets import evaluate_target

        layers = bias_layers(ctx.model)
        if not layers:
            raise MethodError("FullGrad needs layers with a bias (convolutions with bias or batch norm)")
        x = ctx.inputs.detach().clone().requires_grad_(True)
        size = tuple(x.shape[-2:])
        with Capture(ctx.model, [n for n, _ in layers]) as cap:
            out = cap.forward(x)
            with torch.enable_grad():
                scores = evaluate_target(ctx.target, out, x.shape[0])
                calls = [(m, a) for n, m in layers for a in cap.activations[n] if a.ndim == 4]
                grads = torch.autograd.grad(scores.sum(), [x, *(a for _, a in calls)], allow_unused=True)
        total = psi(grads[0].detach() * x.detach()).sum(dim=1)
        for (module, _), g in zip(calls, grads[1:]):
            if g is None:
                continue
            b = layer_bias(module).to(g.dtype)[None, :, None, None]
            total = total + resize_maps(psi(g * b).sum(dim=1), size).to(total.dtype)
        return total, None
