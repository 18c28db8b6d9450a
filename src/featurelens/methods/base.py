"""The method protocol: a saliency method is a small function of what the engine captured.

A method receives, per explained layer, a :class:`LayerState` (activation ``A`` of shape
``[B, K, h, w]`` and the gradient ``∂y/∂A`` of the target score ``y``), plus a
:class:`MethodContext` (model, inputs, target, output) for methods that need extra forward passes.
It returns the raw low-resolution map ``[B, h, w]`` and, when it has them, the channel weights
``[B, K]``. Most methods only define :meth:`Method.weights`; the map is then the classic

    L = ReLU( Σ_k w_k · A_k )

Registering a new method is one small class with a ``name`` and a ``weights`` function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from featurelens.errors import MethodError


@dataclass
class LayerState:
    """What the engine captured at one layer."""

    name: str
    activation: Tensor  # [B, K, h, w]
    gradient: Tensor | None  # [B, K, h, w], None for gradient-free methods
    # what a method with ``uses_graph`` computed inside the engine's pass, by method name
    extra: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)


@dataclass
class MethodContext:
    """Everything beyond one layer's tensors that a method may need."""

    model: nn.Module
    inputs: Tensor  # [B, C, H, W] model-ready batch
    target: Callable[[Tensor], Tensor]  # output -> [B] scores (the explained target)
    output: Tensor  # model output of the batch (detached)
    scores: Tensor  # target scores [B] (detached)
    target_indices: Tensor | None = None  # explained class per sample, when known
    options: dict[str, Any] = field(default_factory=dict)


def require_spatial(t: Tensor, method: str, layer: str) -> Tensor:
    """``t`` when it is a ``[B, K, h, w]`` output; a :class:`MethodError` otherwise. For methods that
    re-run the layer themselves (token outputs ``[B, N, C]`` are reshaped only in the Explainer's capture)."""
    if t.dim() != 4:
        raise MethodError(
            f"{method} re-runs layer {layer!r} itself and needs a [B, C, H, W] output, got shape "
            f"{tuple(t.shape)} (token layers of transformers are not supported by this method yet)"
        )
    return t


@contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[torch.memory_format]:
    """Run ``model``'s extra forwards in channels-last memory format inside the block; yields the format
    to give the inputs. Its 4-D parameters and buffers are converted, then the very tensors it had are
    put back (values never change: only the strides do). About 1.3-2x less CPU for depthwise CNNs."""
    if not enabled:
        yield torch.contiguous_format
        return
    saved = [(t, t.data) for t in [*model.parameters(), *model.buffers()] if t.ndim == 4]
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        for t, data in saved:
            t.data = data


def weighted_sum(weights: Tensor, activation: Tensor) -> Tensor:
    """``Σ_k w[b, k] · A[b, k, :, :]`` → ``[B, h, w]``."""
    return torch.einsum("bk,bkhw->bhw", weights.to(activation.dtype), activation)


class Method:
    """Base class of saliency methods. Subclasses set ``name`` and implement ``weights`` (or ``__call__``)."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    needs_gradients: ClassVar[bool] = True
    # True: the engine calls :meth:`on_graph` inside its own capture, while the forward graph is alive,
    # so a method needing more than ``∂y/∂A`` (a second derivative, another score) saves a forward pass
    uses_graph: ClassVar[bool] = False
    # with ``uses_graph``: ``on_graph`` is handed the (differentiable) input instead of each activation
    input_gradient: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    # Options of a cheaper approximate run ({} = the method has no fast mode); used by the demo.
    fast_options: ClassVar[dict[str, Any]] = {}

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        raise NotImplementedError

    def pass_rules(self, model: nn.Module) -> AbstractContextManager[Any] | None:
        """A context under which the engine runs its capture pass when this method is explained alone
        (modified backward rules, such as guided ReLUs); ``None``: the pass is the plain one."""
        return None

    def on_graph(self, activation: Tensor, output: Tensor, ctx: MethodContext) -> tuple[Tensor, ...]:
        """For ``uses_graph`` methods: tensors shaped like ``activation`` (the live, differentiable
        capture of one layer; ``output`` the model output on the same graph). The engine detaches
        them, reshapes them as it does the activation and hands them over as ``layer.extra[name]``."""
        raise NotImplementedError

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        w = self.weights(layer, ctx)
        return torch.relu(weighted_sum(w, layer.activation)), w

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


METHODS: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its name and aliases."""
    if not cls.name:
        raise ValueError("a method needs a name")
    METHODS[cls.name] = cls
    for key in (cls.name, *cls.aliases):
        _ALIASES[_key(key)] = cls.name
    return cls


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def method_names() -> list[str]:
    return list(METHODS)


def get_method(method: str | Method, **options: Any) -> Method:
    """A method instance from a name (case, ``-`` and ``_`` ignored) or an instance."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise MethodError(f"a method is a name or a Method instance, got {type(method).__name__}")
    name = _ALIASES.get(_key(method))
    if name is None:
        raise MethodError(f"unknown method {method!r}; valid methods: {', '.join(method_names())}")
    return METHODS[name](**options)


def check_4d(layer: LayerState) -> None:
    if layer.activation.ndim != 4:
        raise MethodError(
            f"layer {layer.name!r} has output shape {tuple(layer.activation.shape)}; CAM methods need a "
            "[B, C, H, W] feature map (choose a convolutional layer, see `featurelens inspect`)"
        )


def sample_scores(output: Tensor, cls: int | None, ctx: MethodContext) -> Tensor:
    """Scores ``[n]`` of extra forward passes made for ONE explained sample: the logit of its fixed
    class ``cls`` when the target is a class, else the target callable on ``output``."""
    if cls is not None:
        return output[:, cls].float()
    from featurelens.targets import evaluate_target

    return evaluate_target(ctx.target, output, output.shape[0]).float()


def explained_class(ctx: MethodContext, b: int) -> int | None:
    return None if ctx.target_indices is None else int(ctx.target_indices[b])
