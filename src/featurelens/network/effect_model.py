"""An eval-only, fused copy of a model for the many forward passes of the deletion effects.

The per-cluster deletion effects (:func:`featurelens.network.pipeline.batched_effects`) run the
model once per kept cluster (about 55 forwards per image over EfficientNet-Lite0's 17 default
layers), so they dominate the cost of a network explanation. They need only the model's output,
never its intermediate maps, so they can run on a copy rewritten for inference:

* **BatchNorm folded into its conv.** An eval-mode ``BatchNorm2d`` whose input is the output of a
  conv call is ``y = γ (z − μ) / √(σ² + ε) + β`` with ``z = W ∗ x + b``, i.e. a conv with
  ``W' = s W`` and ``b' = s (b − μ) + β``, ``s = γ / √(σ² + ε)`` (per output channel); the norm
  module becomes an ``Identity``.
* **Symmetric "same" padding folded into the conv.** A conv module with a ``static_padding``
  ``ZeroPad2d`` child (the TF-"same" convs of the EfficientNet packages) pads, then convolves
  unpadded; when the pad is symmetric it is the conv's own zero ``padding`` (asymmetric pads of
  strided convs stay as they are).
* **In-place activations** for activation modules whose every call consumes a conv (or folded
  norm) output, which nothing else reads.
* **Channels-last** memory format, converted once (about 2× for convs on CPU).

The rewrite is structural; it is checked, not assumed: the copy's output on a sample must match
the original's (``allclose``), otherwise the effects run on a plain channels-last copy. Copies are
cached per model and invalidated when any parameter or buffer changes (in place or replaced).
A model in training mode is used as it is (its batch norms depend on the batch).
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from featurelens.network.layers import trace_calls

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, nn.Module]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _state_key(model: nn.Module, sample: Tensor, fuse: bool, channels_last: bool) -> tuple[Any, ...]:
    tensors = [*model.parameters(), *model.buffers()]
    return (fuse, channels_last, tuple(sample.shape[1:]), sample.dtype, sample.device,
            tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors))


def effect_model(model: nn.Module, sample: Tensor, *, fuse: bool = True, channels_last: bool = True) -> nn.Module:
    """The model the effect forwards run on: :func:`fused_copy` (``fuse``) or a plain copy, in
    channels-last format if asked, cached per ``model``; ``model`` itself in training mode or when
    neither option is on. ``sample``: one input ``[1, C, H, W]`` (traced and used for the check)."""
    if model.training or not (fuse or channels_last):
        return model
    key = _state_key(model, sample, fuse, channels_last)
    with _LOCK:
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        made = fused_copy(model, sample, channels_last=channels_last) if fuse else None
        if made is None:
            made = _plain_copy(model, channels_last)
        _CACHE[model] = (key, made)
        return made


def _plain_copy(model: nn.Module, channels_last: bool) -> nn.Module:
    out = copy.deepcopy(model).eval().requires_grad_(False)
    return out.to(memory_format=torch.channels_last) if channels_last else out


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``W ← s W``, ``b ← s (b − μ) + β``,
    ``s = γ / √(σ² + ε)``."""
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shift = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def _foldable_bn(module: nn.Module) -> bool:
    return (type(module) is nn.BatchNorm2d and module.track_running_stats
            and module.running_mean is not None and module.running_var is not None)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def fused_copy(model: nn.Module, sample: Tensor, *, channels_last: bool = True) -> nn.Module | None:
    """An eval-only copy of ``model`` with the rewrites of the module docstring, or ``None`` when its
    output on ``sample`` differs from the original's (or is not a tensor)."""
    new = copy.deepcopy(model).eval().requires_grad_(False)
    calls = trace_calls(new, sample)
    n_calls: dict[str, int] = {}
    for c in calls:
        n_calls[c.module] = n_calls.get(c.module, 0) + 1
    produced = {}
    folded: set[str] = set()  # norms turned into Identity
    feeds_act: dict[str, bool] = {}  # activation module -> every call consumes a conv / folded-norm output
    for c in calls:
        src = produced.get(c.input_key) if c.input_key is not None else None
        if c.kind == "norm" and src is not None and src.kind == "conv" and n_calls[c.module] == 1 \
                and n_calls[src.module] == 1 and _foldable_bn(new.get_submodule(c.module)):
            conv = new.get_submodule(src.module)
            if isinstance(conv, nn.Conv2d) and conv.weight.shape[0] == new.get_submodule(c.module).num_features:
                fold_batchnorm(conv, new.get_submodule(c.module))  # type: ignore[arg-type]
                _set_module(new, c.module, nn.Identity())
                folded.add(c.module)
        if c.kind == "act":
            ok = src is not None and (src.kind == "conv" or (src.kind == "norm" and src.module in folded))
            feeds_act[c.module] = feeds_act.get(c.module, True) and ok
        if c.output_key is not None:
            produced[c.output_key] = c
    for name, ok in feeds_act.items():
        act = new.get_submodule(name)
        if ok and hasattr(act, "inplace"):
            act.inplace = True
    for module in new.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and module.padding_mode == "zeros" \
                and tuple(module.padding) == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    if channels_last:
        new = new.to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(sample)
        got = new(sample.contiguous(memory_format=torch.channels_last) if channels_last else sample)
    if not (isinstance(ref, Tensor) and isinstance(got, Tensor) and ref.shape == got.shape):
        return None
    tol = 1e-4 * (1.0 + float(ref.abs().max()))
    return new if torch.allclose(got, ref, rtol=1e-4, atol=tol) else None

