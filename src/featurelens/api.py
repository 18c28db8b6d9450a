"""The Python entry point: :class:`Explainer` and :func:`explain`.

    import featurelens as fl
    spec = fl.load_model()                                  # EfficientNet-Lite0, offline
    x = spec.prepare(["cat.jpg", "dog.jpg"])
    exps = fl.Explainer(spec.model, spec.default_layer).explain(x, ["gradcam", "scorecam"])
    exps["gradcam"].map        # [2, 224, 224] in [0, 1]

All methods listed in one call share one forward pass and one backward pass; several layers are
captured in the same pass and can be fused. Smoothing and meta-methods (``aug_smooth``,
``eigen_smooth``, ``sess``, ``fuse="refine"``) work with every method: :mod:`featurelens.smoothing`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from featurelens.engine import Capture, LayerRef, default_layer, resolve_layers
from featurelens.errors import MethodError
from featurelens.imaging import normalize_maps
from featurelens.methods import LayerState, Method, MethodContext, get_method
from featurelens.methods.base import check_4d
from featurelens.result import Explanation, finish_maps, fuse_maps
from featurelens.smoothing import (
    SESS,
    AugSmooth,
    as_aug_smooth,
    as_sess,
    channel_maps,
    eigen_projection,
    refine_fuse,
)
from featurelens.targets import ClassTarget, TargetLike, as_target, evaluate_target, target_indices
from featurelens.tokens import ReshapeLike, to_spatial

#: layer-fusion rules of ``Explainer.explain(fuse=...)``
FUSE_RULES = ("mean", "max", "product", "refine")


def _detach(value: Any) -> Any:
    """Detach a model output: a tensor, or the tensors of a tuple / list / dict output."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_detach(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


class _Pass:
    """One forward/backward pass of every method at every layer."""

    def __init__(self) -> None:
        self.raw: dict[str, dict[str, Tensor]] = {}
        self.weights: dict[str, dict[str, Tensor | None]] = {}
        self.maps: dict[str, dict[str, Tensor]] = {}
        self.scores: Tensor | None = None
        self.indices: Tensor | None = None


class Explainer:
    """Explain a model's decisions with one or several saliency methods.

    Args:
        model: any ``nn.Module`` (a classifier for the class targets; any output for custom targets).
        layers: dotted layer name(s) or module(s); default: the last spatial layer (found by tracing).
        call: which call of a layer to explain when a module runs several times per forward (default last).
        reshape: how token outputs ``[B, N, C]`` (ViT, Swin) become ``[B, C, H, W]``; default
            automatic (see :mod:`featurelens.tokens`): an int (prefix tokens), ``(H, W)``, ``"nhwc"``
            or a function.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerRef | Sequence[LayerRef] | None = None,
        *,
        call: int = -1,
        reshape: ReshapeLike = None,
    ) -> None:
        self.model = model
        self._layers = layers
        self.call = call
        self.reshape = reshape
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
        aug_smooth: bool | AugSmooth = False,
        eigen_smooth: bool = False,
        sess: bool | SESS = False,
    ) -> Any:
        """Explain ``inputs`` ``[B, C, H, W]``.

        Options (any method, see :mod:`featurelens.smoothing`):

        * ``fuse``: ``"mean"``, ``"max"``, ``"product"`` or ``"refine"`` (RefineCAM's rule: the product
          of the per-layer maps, each scaled to [0, 1]) to fuse several layers;
        * ``aug_smooth``: ``True`` or an :class:`AugSmooth` (test-time flips and scales, averaged);
        * ``eigen_smooth``: the first principal component of the weighted activations instead of
          their sum;
        * ``sess``: ``True`` or a :class:`SESS` (windows at several scales, fused).

        Returns one :class:`Explanation` when ``methods`` is a single method, else a dict
        ``{method name: Explanation}`` in the order given. With ``aug_smooth`` or ``sess``,
        ``raw_maps`` are the averaged maps at the input resolution and ``weights`` are None.
        """
        single = isinstance(methods, (str, Method))
        method_list = [methods] if single else list(methods)  # type: ignore[list-item]
        if not method_list:
            raise MethodError("no method given")
        if fuse is not None and fuse not in FUSE_RULES:
            raise MethodError(f"unknown fusion rule {fuse!r}; use one of {', '.join(FUSE_RULES)}")
        options = method_options or {}
        instances = [
            m if isinstance(m, Method) else get_method(m, **options.get(str(m), {}))
            for m in method_list  # type: ignore[arg-type]
        ]
        if inputs.ndim != 4:
            raise MethodError(f"inputs must be a [B, C, H, W] batch, got shape {tuple(inputs.shape)}")
        aug, windows = as_aug_smooth(aug_smooth), as_sess(sess)
        names = self.layer_names(inputs)
        tgt = as_target(target)
        base = self._pass(inputs, instances, names, tgt, eigen_smooth)
        raw_maps, weights, maps = base.raw, base.weights, base.maps
        meta: dict[str, Any] = {}
        if eigen_smooth:
            meta["eigen_smooth"] = True
        if aug is not None or windows is not None:
            fixed = tgt if base.indices is None else ClassTarget(base.indices, getattr(tgt, "kind", "logit"))

            def fn(x: Tensor, t: Any) -> dict[str, dict[str, Tensor]]:
                return self._pass(x, instances, names, t, eigen_smooth).maps

            if aug is not None:
                fn = aug.wrap(fn)
                meta["aug_smooth"] = {"flips": list(aug.flips), "scales": list(aug.scales)}
            if windows is not None:
                fn = windows.wrap(fn, self._confidence(tgt, base.indices))
                meta["sess"] = {"scales": list(windows.scales), "stride": windows.stride, "keep": windows.keep}
            smoothed = fn(inputs, fixed)
            raw_maps = {m: {n: v.detach() for n, v in layers.items()} for m, layers in smoothed.items()}
            maps = {m: {n: normalize_maps(v) for n, v in layers.items()} for m, layers in raw_maps.items()}
            weights = {m: dict.fromkeys(names) for m in raw_maps}
        assert base.scores is not None
        results: dict[str, Explanation] = {}
        for method in instances:
            per_layer = maps[method.name]
            fused = None
            if fuse and len(names) > 1:
                layer_maps = [per_layer[n] for n in names]
                fused = refine_fuse(layer_maps) if fuse == "refine" else fuse_maps(layer_maps, fuse)
            results[method.name] = Explanation(
                method=method.name,
                layers=list(names),
                maps=per_layer,
                raw_maps=raw_maps[method.name],
                weights=weights[method.name],
                scores=base.scores,
                target_indices=base.indices,
                fused=fused,
                meta={**meta, "fuse": fuse} if fused is not None else dict(meta),
            )
        return results[instances[0].name] if single else results

    def _pass(
        self,
        inputs: Tensor,
        instances: Sequence[Method],
        names: Sequence[str],
        tgt: Any,
        eigen_smooth: bool,
    ) -> _Pass:
        """One capture (forward, and backward when a method needs gradients) and every method's maps."""
        need_grad = any(m.needs_gradients for m in instances)
        # a method with its own backward rules (guided ReLUs) shares the pass only when it is alone
        rules = instances[0].pass_rules(self.model) if len(instances) == 1 else None
        on_graph = [m for m in instances if m.uses_graph and (rules is not None or not m.input_gradient)]
        batch = inputs.shape[0]
        extra: dict[str, dict[str, tuple[Tensor, ...]]] = {n: {} for n in names}
        x = inputs.detach().clone().requires_grad_(True) if rules is not None else inputs
        with contextlib.ExitStack() as stack:
            if rules is not None:
                stack.enter_context(rules)
            cap = stack.enter_context(Capture(self.model, list(names), gradients=need_grad or bool(on_graph)))
            out = cap.forward(x)
            if need_grad:
                with torch.enable_grad():  # the caller may be inside torch.no_grad()
                    scores = evaluate_target(tgt, out, batch)
                grads = cap.gradients(scores, retain_graph=bool(on_graph))
            else:
                with torch.no_grad():
                    scores = evaluate_target(tgt, out, batch)
                grads = None
            live = {n: cap.activation(n, self.call) for n in names}
            acts = {n: a.detach() for n, a in live.items()}
            out_live = out
            out = _detach(out)
            ctx = MethodContext(
                model=self.model,
                inputs=inputs.detach(),
                target=tgt,
                output=out,
                scores=scores.detach(),
                target_indices=target_indices(tgt, out),
            )
            for method in on_graph:  # second derivatives etc. on this pass's graph: no extra forward
                if method.input_gradient:
                    terms = tuple(t.detach() for t in method.on_graph(x, out_live, ctx))
                    for n in names:
                        extra[n][method.name] = terms
                    continue
                for n in names:
                    extra[n][method.name] = tuple(t.detach() for t in method.on_graph(live[n], out_live, ctx))
            del live, out_live
        size = tuple(inputs.shape[-2:])
        states = {}
        for n in names:
            a = to_spatial(acts[n], self.reshape, model=self.model, layer=n)
            g = None if grads is None else to_spatial(grads[n][self.call], self.reshape, model=self.model, layer=n)
            ex = {
                m.name: extra[n][m.name]
                if m.input_gradient
                else tuple(to_spatial(t, self.reshape, model=self.model, layer=n) for t in extra[n][m.name])
                for m in on_graph
            }
            states[n] = LayerState(n, a, g, ex)
            check_4d(states[n])
        result = _Pass()
        result.scores, result.indices = ctx.scores, ctx.target_indices
        for method in instances:
            raw_maps, weights, maps = {}, {}, {}
            for n in names:
                with torch.no_grad():
                    if eigen_smooth:
                        raw, w = eigen_projection(channel_maps(method, states[n], ctx)), None
                    else:
                        raw, w = method(states[n], ctx)
                raw_maps[n] = raw.detach()
                weights[n] = None if w is None else w.detach()
                maps[n] = finish_maps(raw.detach(), size)
            result.raw[method.name], result.weights[method.name] = raw_maps, weights
            result.maps[method.name] = maps
        return result

    def _confidence(self, tgt: Any, indices: Tensor | None) -> Any:
        """SESS's window score: the softmax probability of the explained class (else the target score)."""
        model = self.model

        def confidence(x: Tensor) -> Tensor:
            flags = [(m, m.training) for m in model.modules()]
            model.eval()
            try:
                with torch.no_grad():
                    out = model(x)
                    if indices is not None:
                        idx = indices.to(out.device).view(-1, 1)
                        return torch.softmax(out.float(), dim=1).gather(1, idx).squeeze(1)
                    return evaluate_target(tgt, out, x.shape[0]).float()
            finally:
                for m, flag in flags:
                    m.training = flag

        return confidence


def explain(
    model: nn.Module,
    inputs: Tensor,
    method: str | Method | Sequence[str | Method] = "gradcam",
    *,
    layers: LayerRef | Sequence[LayerRef] | None = None,
    target: TargetLike = None,
    fuse: str | None = None,
    reshape: ReshapeLike = None,
    **options: Any,
) -> Any:
    """One-call form of :meth:`Explainer.explain` (``options``: ``method_options``, ``aug_smooth``,
    ``eigen_smooth``, ``sess``)."""
    return Explainer(model, layers, reshape=reshape).explain(inputs, method, target, fuse=fuse, **options)
