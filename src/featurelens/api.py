"""The Python entry point: :class:`Explainer` and :func:`explain`.

    import featurelens as fl
    spec = fl.load_model()                                  # EfficientNet-Lite0, offline
    x = spec.prepare(["cat.jpg", "dog.jpg"])
    exps = fl.Explainer(spec.model, spec.default_layer).explain(x, ["gradcam", "scorecam"])
    exps["gradcam"].map        # [2, 224, 224] in [0, 1]

All methods listed in one call share one forward pass and one backward pass; several layers are
captured in the same pass and can be fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from featurelens.engine import Capture, LayerRef, default_layer, resolve_layers
from featurelens.errors import MethodError
from featurelens.methods import LayerState, Method, MethodContext, get_method
from featurelens.methods.base import check_4d
from featurelens.result import Explanation, finish_maps, fuse_maps
from featurelens.targets import TargetLike, as_target, evaluate_target, target_indices


class Explainer:
    """Explain a model's decisions with one or several saliency methods.

    Args:
        model: any ``nn.Module`` (a classifier for the class targets; any output for custom targets).
        layers: dotted layer name(s) or module(s); default: the last spatial layer (found by tracing).
        call: which call of a layer to explain when a module runs several times per forward (default last).
    """

    def __init__(
        self, model: nn.Module, layers: LayerRef | Sequence[LayerRef] | None = None, *, call: int = -1
    ) -> None:
        self.model = model
        self._layers = layers
        self.call = call
        if layers is not None:
            resolve_layers(model, layers)  # fail early on a wrong name

    def layer_names(self, inputs: Tensor) -> list[str]:
        if self._layers is None:
            self._layers = default_layer(self.model, inputs[:1])
        return [n for n, _ in resolve_layers(self.model, self._layers)]

    def explain(
        self,
        inputs: Tensor,
        methods: str | Method | Sequence[str | Method] = "gradcam",
        target: TargetLike = None,
        *,
        fuse: str | None = None,
        method_options: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        """Explain ``inputs`` ``[B, C, H, W]``.

        Returns one :class:`Explanation` when ``methods`` is a single method, else a dict
        ``{method name: Explanation}`` in the order given.
        """
        single = isinstance(methods, (str, Method))
        method_list = [methods] if single else list(methods)  # type: ignore[list-item]
        if not method_list:
            raise MethodError("no method given")
        options = method_options or {}
        instances = [
            m if isinstance(m, Method) else get_method(m, **options.get(str(m), {}))
            for m in method_list  # type: ignore[arg-type]
        ]
        if inputs.ndim != 4:
            raise MethodError(f"inputs must be a [B, C, H, W] batch, got shape {tuple(inputs.shape)}")
        names = self.layer_names(inputs)
        tgt = as_target(target)
        need_grad = any(m.needs_gradients for m in instances)
        batch = inputs.shape[0]
        with Capture(self.model, names, gradients=need_grad) as cap:
            out = cap.forward(inputs)
            if need_grad:
                with torch.enable_grad():  # the caller may be inside torch.no_grad()
                    scores = evaluate_target(tgt, out, batch)
                grads = cap.gradients(scores)
            else:
                with torch.no_grad():
                    scores = evaluate_target(tgt, out, batch)
                grads = None
            acts = {n: cap.activation(n, self.call).detach() for n in names}
        out = out.detach()
        ctx = MethodContext(
            model=self.model,
            inputs=inputs.detach(),
            target=tgt,
            output=out,
            scores=scores.detach(),
            target_indices=target_indices(tgt, out),
        )
        size = tuple(inputs.shape[-2:])
        results: dict[str, Explanation] = {}
        for method in instances:
            raw_maps, weights, maps = {}, {}, {}
            for n in names:
                state = LayerState(n, acts[n], None if grads is None else grads[n][self.call])
                check_4d(state)
                with torch.no_grad():
                    raw, w = method(state, ctx)
                raw_maps[n] = raw.detach()
                weights[n] = None if w is None else w.detach()
                maps[n] = finish_maps(raw.detach(), size)
            fused = fuse_maps([maps[n] for n in names], fuse) if fuse and len(names) > 1 else None
            results[method.name] = Explanation(
                method=method.name,
                layers=list(names),
                maps=maps,
                raw_maps=raw_maps,
                weights=weights,
                scores=ctx.scores,
                target_indices=ctx.target_indices,
                fused=fused,
                meta={"fuse": fuse} if fused is not None else {},
            )
        return results[instances[0].name] if single else results


def explain(
    model: nn.Module,
    inputs: Tensor,
    method: str | Method | Sequence[str | Method] = "gradcam",
    *,
    layers: LayerRef | Sequence[LayerRef] | None = None,
    target: TargetLike = None,
    fuse: str | None = None,
) -> Any:
    """One-call form of :meth:`Explainer.explain`."""
    return Explainer(model, layers).explain(inputs, method, target, fuse=fuse)
