"""The capture engine: activations and gradients of named layers of any ``torch.nn.Module``.

Design:

* A forward hook on each requested layer stores the layer's output ``A`` and hands the rest of the
  network a *clone* of it, so in-place operations downstream (``ReLU(inplace=True)``) can never
  change the stored activation or its place in the graph.
* While capturing, the model's parameters are frozen (``requires_grad=False``); the stored
  activation is made a graph leaf when nothing before it requires grad. Backward therefore starts
  at the target score and stops at the earliest captured layer: nothing below it is recorded, and
  no parameter gradient is ever computed. Gradients come from ``torch.autograd.grad`` with respect
  to the stored activations only, so parameter ``.grad`` is never touched.
* A module called several times in one forward (shared backbones, siamese networks) contributes
  one activation per call, in call order.
* On exit, normal or by exception, every hook is removed and each module's ``training`` flag and
  each parameter's ``requires_grad`` flag are restored.

Two APIs::

    with Capture(model, ["blocks.12", "head"]) as cap:
        out = cap.forward(x)                 # grad enabled internally, even under no_grad()
        grads = cap.gradients(target(out))   # {layer: [grad per call]}
        acts = cap.activations               # {layer: [activation per call]}

    captured = capture(model, x, ["head"], target=None)   # one call, detached tensors
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from featurelens.errors import InferenceModeError, LayerNotFoundError, ModelError, NoConvLayerError

LayerRef = str | nn.Module


def layer_names(model: nn.Module) -> list[str]:
    """All dotted module names of ``model`` (the root module, named ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: LayerRef) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` for a dotted name or a module object of ``model``.

    Raises :class:`LayerNotFoundError` (with close matches) for an unknown name.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ModelError(f"the given {type(layer).__name__} module is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(f"a layer is a dotted name or a module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer and layer in modules:
        return layer, modules[layer]
    raise LayerNotFoundError(layer, layer_names(model))


def resolve_layers(model: nn.Module, layers: LayerRef | Sequence[LayerRef]) -> list[tuple[str, nn.Module]]:
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    resolved = [resolve_layer(model, layer) for layer in layers]
    if not resolved:
        raise ModelError("no layer given to capture")
    names = [n for n, _ in resolved]
    if len(set(names)) != len(names):
        raise ModelError(f"a layer is listed twice: {names}")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_not_inference_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise InferenceModeError(
            "gradient-based explanations cannot run inside torch.inference_mode(); "
            "use torch.no_grad() or no context (featurelens enables grad internally)"
        )


class Capture:
    """Context manager that records activations (and, on request, gradients) of layers.

    Args:
        model: any module; it is put in eval mode during the capture unless ``eval_mode=False``.
        layers: one or several dotted layer names or module objects.
        gradients: when False the forward runs without autograd (cheaper) and
            :meth:`gradients` is unavailable.
        eval_mode: call ``model.eval()`` while capturing (restored on exit).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerRef | Sequence[LayerRef],
        *,
        gradients: bool = True,
        eval_mode: bool = True,
    ) -> None:
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.names = [n for n, _ in self.layers]
        self.want_gradients = gradients
        self.eval_mode = eval_mode
        self.activations: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._training: list[tuple[nn.Module, bool]] = []
        self._requires_grad: list[tuple[nn.Parameter, bool]] = []
        self._active = False

    # -- context management -------------------------------------------------
    def __enter__(self) -> Capture:
        if self.want_gradients:
            _check_not_inference_mode()
        if self._active:
            raise RuntimeError("Capture is not re-entrant")
        # remember (and later restore) only what this capture changes: modules in training mode and,
        # when gradients are wanted, parameters that require grad (a gradient-free capture runs under
        # no_grad, so it leaves requires_grad alone and costs nothing per parameter)
        self._training = [(m, True) for m in self.model.modules() if m.training] if self.eval_mode else []
        self._requires_grad = (
            [(p, True) for p in self.model.parameters() if p.requires_grad] if self.want_gradients else []
        )
        try:
            for m, _ in self._training:
                m.training = False
            for p, _ in self._requires_grad:
                p.requires_grad_(False)
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m, flag in self._training:
            m.training = flag
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        self._training.clear()
        self._requires_grad.clear()
        self._active = False

    def _make_hook(self, name: str) -> Callable[[nn.Module, object, object], Tensor | None]:
        def hook(module: nn.Module, inputs: object, output: object) -> Tensor | None:
            if not isinstance(output, Tensor):
                raise ModelError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; choose a layer with a tensor output"
                )
            if not torch.is_grad_enabled() or not self.want_gradients:
                # a copy: an in-place op downstream (ReLU(inplace=True)) would overwrite `output`
                self.activations[name].append(output.detach().clone())
                return None
            act = output if output.requires_grad else output.detach().requires_grad_(True)
            self.activations[name].append(act)
            # downstream gets a copy: in-place ops after this layer cannot alter `act`
            return act.clone()

        return hook

    # -- running ------------------------------------------------------------
    def reset(self) -> None:
        for calls in self.activations.values():
            calls.clear()

    def forward(self, *inputs: Tensor, **kwargs: object) -> Tensor:
        """Run the model on ``inputs`` (grad enabled when gradients are wanted) and check every layer ran."""
        if not self._active:
            raise RuntimeError("use Capture as a context manager: `with Capture(model, layers) as cap:`")
        self.reset()
        inputs = tuple(x.clone() if isinstance(x, Tensor) and x.is_inference() else x for x in inputs)
        if self.want_gradients:
            _check_not_inference_mode()
            with torch.enable_grad():
                out = self.model(*inputs, **kwargs)
        else:
            with torch.no_grad():
                out = self.model(*inputs, **kwargs)
        missing = [n for n in self.names if not self.activations[n]]
        if missing:
            raise ModelError(f"layer(s) {missing} were not called during the forward pass")
        return out

    def gradients(self, scores: Tensor, *, retain_graph: bool = False) -> dict[str, list[Tensor]]:
        """``∂ scores.sum() / ∂A`` for every captured activation, as ``{layer: [grad per call]}``.

        ``scores`` is the per-sample target ``[B]``. Samples are independent in eval mode, so the
        gradient of the sum at sample ``i`` is the gradient of ``scores[i]``. Layers that the score
        does not depend on get zero gradients.
        """
        if not self.want_gradients:
            raise RuntimeError("this Capture was created with gradients=False")
        _check_not_inference_mode()
        flat = [(n, a) for n in self.names for a in self.activations[n]]
        if not scores.requires_grad:
            raise ModelError(
                "the target score does not depend on the captured layers (no gradient path); "
                "check that the layers lie between the input and the explained output"
            )
        with torch.enable_grad():
            grads = torch.autograd.grad(
                scores.sum(), [a for _, a in flat], allow_unused=True, retain_graph=retain_graph
            )
        out: dict[str, list[Tensor]] = {n: [] for n in self.names}
        for (n, a), g in zip(flat, grads):
            out[n].append(torch.zeros_like(a) if g is None else g.detach())
        return out

    def activation(self, name: str, call: int = -1) -> Tensor:
        return self.activations[name][call]


@dataclass
class Captured:
    """Detached result of :func:`capture`."""

    output: Tensor
    scores: Tensor | None
    activations: dict[str, list[Tensor]]
    gradients: dict[str, list[Tensor]] | None = None
    extra: dict[str, object] = field(default_factory=dict)


def capture(
    model: nn.Module,
    inputs: Tensor,
    layers: LayerRef | Sequence[LayerRef],
    target: Callable[[Tensor], Tensor] | int | Sequence[int] | None = None,
    *,
    gradients: bool = True,
) -> Captured:
    """One-call capture: forward ``inputs``, score ``target`` and take the gradients.

    ``target`` is anything :func:`featurelens.targets.as_target` accepts (default: predicted class).
    """
    from featurelens.targets import as_target, evaluate_target

    with Capture(model, layers, gradients=gradients) as cap:
        out = cap.forward(inputs)
        if not gradients:
            return Captured(output=out.detach(), scores=None, activations=cap.activations)
        with torch.enable_grad():  # the caller may be inside torch.no_grad()
            scores = evaluate_target(as_target(target), out, batch=inputs.shape[0])
        grads = cap.gradients(scores)
        acts = {n: [a.detach() for a in calls] for n, calls in cap.activations.items()}
    return Captured(output=out.detach(), scores=scores.detach(), activations=acts, gradients=grads)


# ---------------------------------------------------------------------------
# layer discovery
# ---------------------------------------------------------------------------
@dataclass
class LayerInfo:
    name: str
    type: str
    output_shape: tuple[int, ...] | None
    parameters: int
    calls: int


def trace_layers(model: nn.Module, sample: Tensor) -> list[LayerInfo]:
    """Run ``sample`` through ``model`` and report each module's type and output shape (first call),
    in the order modules finish their forward."""
    records: dict[str, LayerInfo] = {}
    handles = []
    training = [(m, m.training) for m in model.modules()]

    def make(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: object, out: object) -> None:
            if name in records:
                records[name].calls += 1
                return
            shape = tuple(out.shape) if isinstance(out, Tensor) else None
            records[name] = LayerInfo(
                name=name,
                type=type(mod).__name__,
                output_shape=shape,
                parameters=sum(p.numel() for p in mod.parameters()),
                calls=1,
            )

        return hook

    try:
        model.eval()
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make(name, module)))
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    order = list(records)
    # modules that never ran still get listed, at the end
    for name, module in model.named_modules():
        if name and name not in records:
            records[name] = LayerInfo(
                name, type(module).__name__, None, sum(p.numel() for p in module.parameters()), 0
            )
            order.append(name)
    return [records[n] for n in order]


def spatial_layers(infos: Iterable[LayerInfo]) -> list[LayerInfo]:
    """Layers with a 4-D output whose spatial size is larger than 1×1, in completion order."""
    return [
        i
        for i in infos
        if i.output_shape is not None
        and len(i.output_shape) == 4
        and i.output_shape[2] * i.output_shape[3] > 1
    ]


def default_layer(model: nn.Module, sample: Tensor) -> str:
    """The last layer (in forward order) with a spatial output: the feature map before pooling.

    Raises :class:`NoConvLayerError` when the model has no layer with a 4-D spatial output.
    """
    spatial = spatial_layers(trace_layers(model, sample))
    if not spatial:
        raise NoConvLayerError(
            f"{type(model).__name__} has no layer with a spatial [B, C, H, W] output; "
            "saliency maps need a convolutional feature map"
        )
    return spatial[-1].name
