"""Layer-wise Relevance Propagation (LRP), torch-native, for Relevance-CAM and friends.

LRP (Bach et al., PLoS ONE 2015; Montavon et al., "Layer-Wise Relevance Propagation: An Overview",
2019) redistributes a start relevance ``R`` at the model output backwards, layer by layer, so that
each input of a layer receives the share of the layer's output relevance that it contributed.

How it is computed here
-----------------------
Forward hooks wrap the output of every rule-carrying module in a custom ``autograd.Function``
whose *backward* computes relevance instead of a gradient. One ``torch.autograd.grad`` from the
output (with ``grad_outputs`` = the start relevance) through the hooked model therefore yields the
relevance at any captured layer. A module's *whole forward* is treated as the map ``z = f(x)`` (so
``Conv2dStaticSamePadding``, which pads inside its forward, is handled as one linear map).

Rules (``x``: the module input, ``z = f(x)`` its output, ``R`` the relevance at the output):

* :class:`Epsilon` (ε-rule, the default)::

      R_in = x ⊙ J_fᵀ ( R / (z + ε·sign(z)) )          (sign(0) = +1)

  computed as ``x * autograd.grad(f(x), x, R / stab(z))``. With zero biases and ε → 0 it conserves
  relevance, ``Σ R_in = Σ R``; a bias ``b`` absorbs the share ``Σ_j b_j R_j / z_j``.
* :class:`AlphaBeta` (αβ-rule) and :class:`ZPlus` (= α1β0, the z⁺-rule)::

      R_in = α · Σ_j (x_i w_ij)⁺ / Σ_i' (x_i' w_i'j)⁺ · R_j  −  β · Σ_j (x_i w_ij)⁻ / Σ_i' (x_i' w_i'j)⁻ · R_j

  (biases ignored). The positive part is evaluated as ``f(x⁺; W⁺) + f(x⁻; W⁻)``, the negative
  part as ``f(x⁺; W⁻) + f(x⁻; W⁺)``, each with its own gradient pass.
* :class:`Pass`: ``R_in = R`` for element-wise activations (ReLU, ReLU6, GELU, ...). Relevance is
  *not* gated by the activation's derivative (ReLU6's saturation does not stop it); the gating
  happens in the next linear layer through ``x = 0``.

Module handling (see :data:`KINDS` for the types):

* ``linear`` / ``conv``: Linear, Conv1d/2d/3d and every subclass (whole forward, weights swapped
  with ``torch.func.functional_call``).
* ``batchnorm``: eval-mode BatchNorm as the affine map ``y = a·x + b`` with ``a = γ/√(σ²+ε_bn)``,
  ``b = β − a·μ``; by default (``merge_batchnorm=True``) a BatchNorm fed directly by a conv/linear
  is *merged* into it (``W' = a·W``, ``b' = a·b_conv + b``) and the conv's rule is applied to the
  merged map. For the ε-rule this is the same result as two separate steps (up to the
  stabiliser's effect where the conv output is within ε of zero); for z⁺ it is the usual
  canonisation (the sign of ``a·W`` decides which contributions are positive).
* ``pooling``: AvgPool/AdaptiveAvgPool (linear, ε-rule by default).
* ``add``: the residual add :class:`featurelens.models.efficientnet_lite.Add` (``add(x, skip)``),
  ε-rule over the sum, i.e. ``R_x = x/(x+skip)·R`` and ``R_skip = skip/(x+skip)·R`` – relevance is
  split, never duplicated. Extra sum modules can be passed as ``sum_types``.
* ``activation``: element-wise activations, :class:`Pass`.
* ``linear-reshape`` modules (Flatten, Unflatten, Dropout in eval, Identity, zero padding) and
  max pooling (winner-take-all) need no rule: their gradient *is* the relevance map.
* Any other module that owns parameters raises :class:`LRPUnsupportedError` listing the types
  (with ``strict=True`` also unknown parameter-free leaves). Functional operations written inline
  in a ``forward`` (``x + y``, ``F.relu``) are invisible to hooks and propagate as gradients: wrap
  sums in a module (as the package's EfficientNet-Lite0 does) to get them right.

Usage::

    with LRP(model, "epsilon") as lrp:
        res = lrp.relevance(x, ["head"], start="logit", classes=top)   # R at head's output
    res.relevance["head"]            # [B, 1280, 7, 7]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from featurelens.engine import LayerRef, resolve_layers
from featurelens.errors import InferenceModeError, ModelError, TargetError

__all__ = [
    "COMPOSITES",
    "LRP",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "LRPResult",
    "LRPUnsupportedError",
    "Pass",
    "Rule",
    "ZPlus",
    "get_composite",
    "lrp_relevance",
    "start_relevance",
]


class LRPUnsupportedError(ModelError):
    """The model contains modules for which no LRP rule is known."""


# ---------------------------------------------------------------------------
# maps: a module's forward seen as z = f(x; W, b), with swappable weights
# ---------------------------------------------------------------------------
Part = Literal["all", "pos", "neg"]


def _part(w: Tensor, part: Part) -> Tensor:
    if part == "pos":
        return w.clamp(min=0)
    if part == "neg":
        return w.clamp(max=0)
    return w


class _Map:
    """``z = f(xs; W, b)``; ``call(xs, part, bias)`` evaluates it with W replaced by W⁺ / W⁻."""

    has_weights = True

    def call(self, xs: Sequence[Tensor], part: Part, bias: bool) -> Tensor:
        raise NotImplementedError


class _ParamMap(_Map):
    """Linear / conv-like module: its own forward with ``weight`` (and ``bias``) swapped."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def call(self, xs: Sequence[Tensor], part: Part, bias: bool) -> Tensor:
        m = self.module
        params: dict[str, Tensor] = {"weight": _part(m.weight, part)}
        b = getattr(m, "bias", None)
        if b is not None and not bias:
            params["bias"] = torch.zeros_like(b)
        return functional_call(m, params, tuple(xs))


class _FusedMap(_Map):
    """conv/linear followed by eval BatchNorm, merged: ``W' = a·W``, ``b' = a·b_conv + b_bn``."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        self.conv = conv
        a, shift = _bn_affine(bn)
        w = conv.weight
        self.weight = a.view(-1, *([1] * (w.ndim - 1))) * w
        b = getattr(conv, "bias", None)
        self.bias = shift + (a * b if b is not None else 0)

    def call(self, xs: Sequence[Tensor], part: Part, bias: bool) -> Tensor:
        b = self.bias if bias else torch.zeros_like(self.bias)
        return functional_call(self.conv, {"weight": _part(self.weight, part), "bias": b}, tuple(xs))


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise LRPUnsupportedError(
            f"{type(bn).__name__} without running statistics cannot be seen as an affine map for LRP"
        )
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    shift = -a * bn.running_mean
    if bn.bias is not None:
        shift = shift + bn.bias
    return a.detach(), shift.detach()


class _BNMap(_Map):
    """Eval BatchNorm as the per-channel affine map ``y = a·x + b`` (channels on dim 1)."""

    def __init__(self, bn: nn.Module) -> None:
        self.a, self.shift = _bn_affine(bn)

    def call(self, xs: Sequence[Tensor], part: Part, bias: bool) -> Tensor:
        (x,) = xs
        shape = (1, -1) + (1,) * (x.ndim - 2)
        z = x * _part(self.a, part).view(shape)
        return z + self.shift.view(shape) if bias else z


class _FixedMap(_Map):
    """A parameter-free linear map with non-negative weights (average pooling, sums)."""

    has_weights = False

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn

    def call(self, xs: Sequence[Tensor], part: Part, bias: bool) -> Tensor:
        z = self.fn(*xs)
        return z * 0 if part == "neg" else z


# ---------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------
class Rule:
    """An LRP rule: relevance at a module's inputs from the relevance ``R`` at its output."""

    def propagate(self, fmap: _Map, xs: Sequence[Tensor], relevance: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _stabilize(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _leaves(xs: Sequence[Tensor]) -> list[Tensor]:
    return [x.detach().requires_grad_(True) for x in xs]


class Epsilon(Rule):
    """ε-rule: ``R_in = x ⊙ J_fᵀ (R / (z + ε·sign z))`` with the bias in ``z``."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        if epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        self.epsilon = float(epsilon)

    def propagate(self, fmap: _Map, xs: Sequence[Tensor], relevance: Tensor) -> list[Tensor]:
        leaves = _leaves(xs)
        with torch.enable_grad():
            z = fmap.call(leaves, "all", bias=True)
            grads = torch.autograd.grad(z, leaves, relevance / _stabilize(z, self.epsilon), allow_unused=True)
        return [x * (g if g is not None else 0) for x, g in zip(leaves, grads)]


class AlphaBeta(Rule):
    """αβ-rule (α − β = 1): positive and negative contributions propagated separately, no bias."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, stabilizer: float = 1e-12) -> None:
        if abs(alpha - beta - 1.0) > 1e-9 or beta < 0:
            raise ValueError(f"the αβ-rule needs α − β = 1 and β ≥ 0, got α={alpha}, β={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stabilizer = float(stabilizer)

    def _share(self, fmap: _Map, xs: Sequence[Tensor], relevance: Tensor, positive: bool) -> list[Tensor]:
        xp = _leaves([x.clamp(min=0) for x in xs])
        xn = _leaves([x.clamp(max=0) for x in xs])
        first, second = ("pos", "neg") if positive else ("neg", "pos")
        with torch.enable_grad():
            z = fmap.call(xp, first, bias=False) + fmap.call(xn, second, bias=False)
            stab = z + self.stabilizer if positive else z - self.stabilizer
            grads = torch.autograd.grad(z, xp + xn, relevance / stab, allow_unused=True)
        n = len(xs)
        out = []
        for i in range(n):
            gp, gn = grads[i], grads[n + i]
            out.append(xp[i] * (gp if gp is not None else 0) + xn[i] * (gn if gn is not None else 0))
        return out

    def propagate(self, fmap: _Map, xs: Sequence[Tensor], relevance: Tensor) -> list[Tensor]:
        pos = self._share(fmap, xs, relevance, positive=True)
        if self.beta == 0:
            return [self.alpha * r for r in pos] if self.alpha != 1 else pos
        neg = self._share(fmap, xs, relevance, positive=False)
        return [self.alpha * p - self.beta * q for p, q in zip(pos, neg)]


class ZPlus(AlphaBeta):
    """z⁺-rule = α1β0: ``R_i = Σ_j (x_i w_ij)⁺ / Σ_i' (x_i' w_i'j)⁺ · R_j``."""

    def __init__(self, stabilizer: float = 1e-12) -> None:
        super().__init__(1.0, 0.0, stabilizer)

    def __repr__(self) -> str:
        return "ZPlus()"


class Pass(Rule):
    """``R_in = R`` (element-wise activations: relevance passes unchanged)."""

    def propagate(self, fmap: _Map, xs: Sequence[Tensor], relevance: Tensor) -> list[Tensor]:
        (x,) = xs
        if relevance.shape != x.shape:
            raise LRPUnsupportedError(
                f"the pass rule needs an element-wise module (input {tuple(x.shape)}, output {tuple(relevance.shape)})"
            )
        return [relevance]

    def __repr__(self) -> str:
        return "Pass()"


# ---------------------------------------------------------------------------
# module kinds and composites
# ---------------------------------------------------------------------------
_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.LogSigmoid, nn.Tanhshrink,
)  # fmt: skip
_GRADIENT_OK: tuple[type[nn.Module], ...] = (
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_POOLING: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
_CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = nn.modules.batchnorm._BatchNorm

#: The kinds of modules LRP knows, and how it treats each.
KINDS = {
    "linear": "nn.Linear (and subclasses): rule of the composite",
    "conv": "nn.Conv1d/2d/3d (and subclasses, whole forward): rule of the composite",
    "batchnorm": "eval BatchNorm: affine map, merged into a preceding conv/linear by default",
    "pooling": "AvgPool / AdaptiveAvgPool: linear map",
    "add": "residual sum module (featurelens Add, or sum_types): split in proportion",
    "activation": "element-wise activation: pass-through",
    "gradient": "Flatten/Dropout/Identity/padding/max-pool: the gradient is the relevance",
}


def _sum_types() -> tuple[type[nn.Module], ...]:
    from featurelens.models.efficientnet_lite import Add

    return (Add,)


def module_kind(module: nn.Module, sum_types: tuple[type[nn.Module], ...] = ()) -> str | None:
    """The LRP kind of ``module`` (a key of :data:`KINDS`), ``"container"``, or None if unknown."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, _BATCHNORM):
        return "batchnorm"
    if isinstance(module, _POOLING):
        return "pooling"
    if isinstance(module, _sum_types() + tuple(sum_types)):
        return "add"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(module, _GRADIENT_OK):
        return "gradient"
    has_children = next(module.children(), None) is not None
    has_own_params = next(module.parameters(recurse=False), None) is not None
    if has_children and not has_own_params:
        return "container"
    return None


@dataclass
class Composite:
    """Which rule each kind of module gets; ``layers`` overrides by dotted module name.

    Good defaults (Montavon et al. 2019, Kohlbrenner et al. 2020): z⁺ (or α2β1) in the convolutional
    features, ε in the dense classifier — see :data:`COMPOSITES`.
    """

    linear: Rule = field(default_factory=Epsilon)
    conv: Rule = field(default_factory=Epsilon)
    batchnorm: Rule = field(default_factory=Epsilon)
    pooling: Rule = field(default_factory=Epsilon)
    add: Rule = field(default_factory=Epsilon)
    activation: Rule = field(default_factory=Pass)
    layers: dict[str, Rule] = field(default_factory=dict)
    merge_batchnorm: bool = True
    name: str = "custom"

    def rule_for(self, name: str, kind: str) -> Rule:
        if name in self.layers:
            return self.layers[name]
        return getattr(self, kind)


def _epsilon(eps: float = 1e-6) -> Composite:
    return Composite(name="epsilon", linear=Epsilon(eps), conv=Epsilon(eps))


def _zplus() -> Composite:
    return Composite(name="zplus", linear=ZPlus(), conv=ZPlus())


def _epsilon_plus() -> Composite:
    return Composite(name="epsilon-plus", linear=Epsilon(), conv=ZPlus())


def _epsilon_alpha2beta1() -> Composite:
    return Composite(name="epsilon-alpha2beta1", linear=Epsilon(), conv=AlphaBeta(2.0, 1.0))


#: Named composites. ``epsilon``: ε everywhere; ``zplus`` (alias ``alpha1beta0``): z⁺ for conv and
#: linear (the official Relevance-CAM code's choice); ``epsilon-plus``: z⁺ for convs, ε for linear;
#: ``epsilon-alpha2beta1``: α2β1 for convs, ε for linear. Pooling and sums use ε, activations pass.
COMPOSITES: dict[str, Callable[[], Composite]] = {
    "epsilon": _epsilon,
    "zplus": _zplus,
    "alpha1beta0": _zplus,
    "epsilon-plus": _epsilon_plus,
    "epsilon-alpha2beta1": _epsilon_alpha2beta1,
}


def get_composite(rules: str | Composite | Rule | None) -> Composite:
    """A :class:`Composite` from a name in :data:`COMPOSITES`, a composite, or one rule for conv+linear."""
    if rules is None:
        return _epsilon()
    if isinstance(rules, Composite):
        return rules
    if isinstance(rules, Rule):
        return Composite(name=repr(rules), linear=rules, conv=rules)
    if isinstance(rules, str):
        key = rules.lower().replace("_", "-").replace(" ", "")
        if key in COMPOSITES:
            return COMPOSITES[key]()
        raise ModelError(f"unknown LRP rules {rules!r}; valid: {', '.join(COMPOSITES)}")
    raise ModelError(f"LRP rules are a name, a Composite or a Rule, got {type(rules).__name__}")


# ---------------------------------------------------------------------------
# the autograd plumbing
# ---------------------------------------------------------------------------
@dataclass
class _Node:
    lrp: LRP
    name: str
    rule: Rule
    fmap: _Map

    def propagate(self, xs: Sequence[Tensor], relevance: Tensor) -> list[Tensor]:
        self.lrp._busy += 1
        try:
            return self.rule.propagate(self.fmap, xs, relevance)
        finally:
            self.lrp._busy -= 1


class _RelevanceFunction(torch.autograd.Function):
    """Identity on the module output in forward; LRP rule in backward."""

    @staticmethod
    def forward(ctx: Any, node: _Node, out: Tensor, *xs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.node = node
        ctx.save_for_backward(*xs)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xs = ctx.saved_tensors
        rins = ctx.node.propagate(xs, relevance.detach())
        return (None, None, *[r.detach() for r in rins])


@dataclass
class LRPResult:
    """Relevance (and activations) at the requested layers, per call; ``output`` of the model."""

    output: Tensor
    start: Tensor
    relevance: dict[str, list[Tensor]]
    activations: dict[str, list[Tensor]]
    input_relevance: Tensor | None = None

    def at(self, name: str, call: int = -1) -> Tensor:
        return self.relevance[name][call]


StartLike = Literal["logit", "one", "contrastive"] | Callable[[Tensor], Tensor] | Tensor


def start_relevance(output: Tensor, classes: Tensor | int | Sequence[int] | None, kind: StartLike = "logit") -> Tensor:
    """The relevance placed on the model output ``[B, C]`` to start LRP.

    * ``"logit"``: one-hot of the explained class × its logit, ``R_c = z_c`` (standard LRP: the
      explained quantity is the logit, which LRP then decomposes);
    * ``"one"``: one-hot (``R_c = 1``): relevances are fractions of the explained output;
    * ``"contrastive"``: ``1`` on the class and ``−1/C`` on every class (the start of the official
      Relevance-CAM code, after Gu et al.'s contrastive LRP);
    * a tensor shaped like ``output``, or a callable ``output -> tensor``.
    """
    if isinstance(kind, Tensor):
        if kind.shape != output.shape:
            raise TargetError(f"start relevance of shape {tuple(kind.shape)} for output {tuple(output.shape)}")
        return kind.to(output)
    if callable(kind):
        r = kind(output)
        if not isinstance(r, Tensor) or r.shape != output.shape:
            raise TargetError("a start-relevance callable must return a tensor shaped like the model output")
        return r.detach()
    if output.ndim != 2:
        raise TargetError(f"class start relevance needs a [B, C] output, got {tuple(output.shape)}")
    batch, n_classes = output.shape
    if classes is None:
        idx = output.argmax(dim=1)
    else:
        idx = torch.as_tensor(classes, device=output.device).long().flatten()
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() != batch:
            raise TargetError(f"{idx.numel()} classes for a batch of {batch}")
        if (idx < 0).any() or (idx >= n_classes).any():
            raise TargetError(f"class index out of range for {n_classes} classes")
    onehot = torch.zeros_like(output).scatter_(1, idx.view(-1, 1), 1.0)
    if kind == "logit":
        return onehot * output.detach()
    if kind == "one":
        return onehot
    if kind == "contrastive":
        return onehot - 1.0 / n_classes
    raise TargetError(f"unknown start relevance {kind!r}; use 'logit', 'one', 'contrastive', a tensor or a callable")


# ---------------------------------------------------------------------------
# the context manager
# ---------------------------------------------------------------------------
class LRP:
    """Context manager that makes ``model`` propagate relevance instead of gradients.

    Args:
        model: the network (put in eval mode while active; restored on exit).
        rules: a composite name (see :data:`COMPOSITES`), a :class:`Composite`, or one :class:`Rule`
            for all conv and linear layers. Default: ``"epsilon"``.
        sum_types: extra module types that compute ``x + y`` of their inputs (residual adds).
        strict: also refuse unknown parameter-free leaf modules (they otherwise pass the gradient).

    On exit (also on exceptions) every hook is removed and ``training``, ``requires_grad`` and
    ``inplace`` flags are restored; parameter ``.grad`` is never touched.
    """

    def __init__(
        self,
        model: nn.Module,
        rules: str | Composite | Rule | None = "epsilon",
        *,
        sum_types: Sequence[type[nn.Module]] = (),
        strict: bool = False,
    ) -> None:
        self.model = model
        self.composite = get_composite(rules)
        self.sum_types = tuple(sum_types)
        self.strict = strict
        self.plan = self._plan()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._produced: dict[int, tuple[Tensor, str, nn.Module, tuple[Tensor, ...]]] = {}
        self._busy = 0
        self._active = False

    # -- planning -------------------------------------------------------------
    def _plan(self) -> list[tuple[str, nn.Module, str]]:
        """``(name, module, kind)`` of every module that gets a hook; errors on unknown modules."""
        plan: list[tuple[str, nn.Module, str]] = []
        unknown: dict[str, list[str]] = {}

        def visit(prefix: str, module: nn.Module) -> None:
            kind = module_kind(module, self.sum_types)
            if kind == "container":
                for child_name, child in module.named_children():
                    visit(f"{prefix}.{child_name}" if prefix else child_name, child)
                return
            if kind is None:
                has_params = next(module.parameters(), None) is not None
                if has_params or self.strict:
                    unknown.setdefault(type(module).__name__, []).append(prefix or "<model>")
                return
            if kind != "gradient":
                plan.append((prefix, module, kind))

        visit("", self.model)
        if unknown:
            listing = "; ".join(f"{t} (e.g. {names[0]!r})" for t, names in sorted(unknown.items()))
            raise LRPUnsupportedError(
                f"no LRP rule for module type(s): {listing}. Supported: Linear, Conv1d/2d/3d, BatchNorm, "
                "AvgPool/AdaptiveAvgPool, residual Add, element-wise activations, Flatten/Dropout/Identity/"
                "padding/MaxPool; pass extra sum modules as sum_types"
            )
        return plan

    # -- context management ---------------------------------------------------
    def __enter__(self) -> LRP:
        if self._active:
            raise RuntimeError("LRP is not re-entrant")
        if torch.is_inference_mode_enabled():
            raise InferenceModeError("LRP cannot run inside torch.inference_mode(); use torch.no_grad() or nothing")
        try:
            for m in self.model.modules():
                self._saved.append((m, "training", m.training))
                if isinstance(getattr(m, "inplace", None), bool):
                    self._saved.append((m, "inplace", m.inplace))
                    m.inplace = False
            for p in self.model.parameters():
                self._saved.append((p, "requires_grad", p.requires_grad))
                p.requires_grad_(False)
            self.model.eval()
            for name, module, kind in self.plan:
                self._handles.append(module.register_forward_hook(self._make_hook(name, module, kind)))
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
        for obj, attr, value in reversed(self._saved):
            if attr == "requires_grad":
                obj.requires_grad_(value)
            else:
                setattr(obj, attr, value)
        self._saved.clear()
        self._produced.clear()
        self._active = False

    def _make_hook(self, name: str, module: nn.Module, kind: str) -> Callable[..., Tensor | None]:
        comp = self.composite

        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> Tensor | None:
            if self._busy or not torch.is_grad_enabled():
                return None
            if not isinstance(output, Tensor):
                raise LRPUnsupportedError(f"module {name!r} ({type(mod).__name__}) does not return a tensor")
            xs = tuple(x for x in inputs if isinstance(x, Tensor))
            if len(xs) != len(inputs):
                raise LRPUnsupportedError(f"module {name!r} ({type(mod).__name__}) has non-tensor inputs")
            rule = comp.rule_for(name, kind)
            fmap: _Map
            if kind in ("linear", "conv"):
                fmap = _ParamMap(mod)
            elif kind == "batchnorm":
                src = self._produced.get(id(xs[0]))
                if comp.merge_batchnorm and src is not None and src[0] is xs[0]:
                    _, conv_name, conv, conv_inputs = src
                    fmap = _FusedMap(conv, mod)
                    rule = comp.layers.get(name, comp.rule_for(conv_name, module_kind(conv, self.sum_types) or "conv"))
                    xs = conv_inputs
                else:
                    fmap = _BNMap(mod)
            elif kind in ("pooling", "add"):
                fmap = _FixedMap(lambda *a, _m=mod: _m(*a))
            else:  # activation
                fmap = _FixedMap(lambda *a, _m=mod: _m(*a))
                rule = comp.rule_for(name, "activation")
            if not any(x.requires_grad for x in xs):
                return None
            node = _Node(self, name, rule, fmap)
            wrapped = _RelevanceFunction.apply(node, output.detach(), *xs)
            if kind in ("linear", "conv") and isinstance(mod, (nn.Linear, *_CONV)):
                self._produced[id(wrapped)] = (wrapped, name, mod, xs)
            return wrapped

        return hook

    # -- running ----------------------------------------------------------------
    def relevance(
        self,
        inputs: Tensor,
        layers: LayerRef | Sequence[LayerRef] = (),
        *,
        start: StartLike = "logit",
        classes: Tensor | int | Sequence[int] | None = None,
        input_relevance: bool = False,
    ) -> LRPResult:
        """Forward ``inputs``, put the start relevance on the output and propagate it.

        Returns the relevance arriving at the *output* of each layer in ``layers`` (one tensor per
        call of the module), the layer activations, and optionally the relevance at the input.
        """
        if not self._active:
            raise RuntimeError("use LRP as a context manager: `with LRP(model) as lrp:`")
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        resolved = resolve_layers(self.model, layers) if layers else []
        names = [n for n, _ in resolved]
        acts: dict[str, list[Tensor]] = {n: [] for n in names}
        handles = []

        def make(n: str) -> Callable[..., Tensor | None]:
            def hook(mod: nn.Module, inp: Any, out: Any) -> Tensor | None:
                if self._busy or not isinstance(out, Tensor):
                    return None
                a = out if out.requires_grad else out.detach().requires_grad_(True)
                acts[n].append(a)
                return a.clone()

            return hook

        x = inputs.detach().clone().requires_grad_(True) if input_relevance else inputs.detach()
        try:
            for n, m in resolved:
                handles.append(m.register_forward_hook(make(n)))
            self._produced.clear()
            with torch.enable_grad():
                out = self.model(x)
                if not isinstance(out, Tensor):
                    raise ModelError(f"LRP needs a tensor model output, got {type(out).__name__}")
                missing = [n for n in names if not acts[n]]
                if missing:
                    raise ModelError(f"layer(s) {missing} were not called during the forward pass")
                r0 = start_relevance(out.detach(), classes, start)
                wrt = [a for n in names for a in acts[n]] + ([x] if input_relevance else [])
                if wrt and not out.requires_grad:
                    raise ModelError("the model output does not depend on the requested layers")
                grads = torch.autograd.grad(out, wrt, r0, allow_unused=True) if wrt else ()
        finally:
            for h in handles:
                h.remove()
            self._produced.clear()
        rel: dict[str, list[Tensor]] = {}
        i = 0
        for n in names:
            rel[n] = []
            for a in acts[n]:
                g = grads[i]
                rel[n].append(torch.zeros_like(a).detach() if g is None else g.detach())
                i += 1
        inp = None
        if input_relevance:
            g = grads[-1]
            inp = torch.zeros_like(x) if g is None else g.detach()
        return LRPResult(
            output=out.detach(),
            start=r0,
            relevance=rel,
            activations={n: [a.detach() for a in calls] for n, calls in acts.items()},
            input_relevance=inp,
        )


def lrp_relevance(
    model: nn.Module,
    inputs: Tensor,
    layers: LayerRef | Sequence[LayerRef] = (),
    *,
    rules: str | Composite | Rule | None = "epsilon",
    start: StartLike = "logit",
    classes: Tensor | int | Sequence[int] | None = None,
    input_relevance: bool = False,
    sum_types: Sequence[type[nn.Module]] = (),
) -> LRPResult:
    """One-call LRP: relevance at the output of ``layers`` (and optionally at the input)."""
    with LRP(model, rules, sum_types=sum_types) as lrp:
        return lrp.relevance(inputs, layers, start=start, classes=classes, input_relevance=input_relevance)


def composite_summary(composite: Composite) -> Mapping[str, str]:
    """``{kind: rule}`` for reports."""
    return {k: repr(getattr(composite, k)) for k in ("conv", "linear", "batchnorm", "pooling", "add", "activation")}
