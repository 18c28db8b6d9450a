"""Ablation-CAM, batched: channels are zeroed at the target layer, the layers below are not re-run per channel."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featurelens.errors import MethodError
from featurelens.methods.base import (
    LayerState,
    Method,
    MethodContext,
    explained_class,
    register,
    require_spatial,
    sample_scores,
)
from featurelens.methods.scorecam import _eval_mode


@register
class AblationCAM(Method):
    """Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020).

    With ``y`` the explained score (the class logit, or the target callable's score) and ``y_k``
    the same score when channel ``k`` of the target layer is set to zero,

        ``w_k = (y − y_k) / y``;  ``L = ReLU(Σ_k w_k A_k)``

    (``w_k = y − y_k`` when ``y = 0``). Gradient-free.

    Batched: a forward hook on the target layer replaces its output by ``n`` copies of the captured
    activation, copy ``i`` with one channel zeroed, so one forward pass scores ``n`` channels while
    the layers below the target layer run once on the single image (not ``n`` times).

    Args:
        batch_size: channels ablated per forward pass (default 128); peak memory grows with it.
        share_lower: run the layers below on one image and widen the batch at the target layer
            (default). Set False for a model whose forward code depends on the input's batch size;
            the input is then repeated ``n`` times (same result, slower).
    """

    name = "ablationcam"
    aliases = ("ablation-cam",)
    needs_gradients = False
    reference = "Desai & Ramaswamy, Ablation-CAM, WACV 2020"

    def __init__(self, batch_size: int = 128, share_lower: bool = True) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise MethodError(f"Ablation-CAM batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.share_lower = bool(share_lower)

    def __repr__(self) -> str:
        return f"AblationCAM(batch_size={self.batch_size}, share_lower={self.share_lower})"

    def ablated_scores(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        """``[B, K]``: ``y_k``, the score with channel ``k`` zeroed at the layer."""
        from featurelens.engine import resolve_layer

        a, x = layer.activation, ctx.inputs
        batch, k = a.shape[:2]
        _, module = resolve_layer(ctx.model, layer.name)
        state: dict[str, object] = {"calls": 0}

        def replace(mod: nn.Module, inputs: object, output: object) -> Tensor:
            state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
            if state["calls"] > 1:
                raise MethodError(
                    f"Ablation-CAM: layer {layer.name!r} runs more than once per forward; "
                    "choose a layer that is called once"
                )
            if not isinstance(output, Tensor):
                raise MethodError(f"Ablation-CAM: layer {layer.name!r} does not return a tensor")
            require_spatial(output, "Ablation-CAM", layer.name)
            return state["replacement"]  # type: ignore[return-value]

        scores = torch.empty(batch, k, device=a.device, dtype=torch.float32)
        with _eval_mode(ctx.model), torch.no_grad():
            handle = module.register_forward_hook(replace)
            try:
                for b in range(batch):
                    cls = explained_class(ctx, b)
                    for start in range(0, k, self.batch_size):
                        idx = torch.arange(start, min(k, start + self.batch_size), device=a.device)
                        n = idx.numel()
                        ablated = a[b : b + 1].repeat(n, 1, 1, 1)
                        ablated[torch.arange(n, device=a.device), idx] = 0
                        state["replacement"], state["calls"] = ablated, 0
                        inp = x[b : b + 1] if self.share_lower else x[b : b + 1].expand(n, *x.shape[1:])
                        out = ctx.model(inp)
                        if not isinstance(out, Tensor) or out.shape[0] != n:
                            raise MethodError(
                                "Ablation-CAM: the model's output does not follow the batch widened at "
                                f"{layer.name!r}; use share_lower=False"
                            )
                        scores[b, idx] = sample_scores(out, cls, ctx)
            finally:
                handle.remove()
        return scores

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        batch = layer.activation.shape[0]
        base = torch.stack(
            [sample_scores(ctx.output[b : b + 1], explained_class(ctx, b), ctx)[0] for b in range(batch)]
        )[:, None]
        drop = base - self.ablated_scores(layer, ctx)
        return torch.where(base != 0, drop / torch.where(base != 0, base, torch.ones_like(base)), drop)
