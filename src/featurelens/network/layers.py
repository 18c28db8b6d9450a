"""Which layers a network explanation covers: post-activation units, found by tracing a forward pass.

The unit of a network explanation (as in Bianchi et al., whose Keras VGG16 conv outputs include
the ReLU) is the output of the non-linearity that follows a convolution:
``conv → [norm] → activation``. :func:`trace_units` finds these generically: it runs one forward
pass with a pre-hook and a hook on every leaf module and records, for each call, which tensor
(by identity and in-place version counter) it consumed and produced. An activation call (a module of
:data:`ACTIVATIONS`) is a unit when its input is, unchanged, the output of a conv call, directly or
through one norm call (:data:`NORMS`) whose input is a conv's output. The version check makes an
in-place op between them (``out += identity`` of a ResNet block) break the chain, and an in-place
activation (``ReLU(inplace=True)``) is seen before it overwrites its input.

* A module called several times (torchvision's ResNet blocks reuse one ``relu``) gives one unit per
  qualifying call, named ``<module>@<call>`` (calls counted from 0); a module called once is named
  by its module name alone (``blocks.8.expand.act``).
* A conv with no activation after it (EfficientNet's linear ``project`` convs, a ResNet's last conv
  before the residual add) is **skipped** by the default selection. Naming it explicitly
  (``blocks.15.project.conv``) explains its raw output, recorded with ``activation: null``.
* Activations written as functions (``F.relu`` inside ``forward``) are not modules and cannot be
  seen: a model with no traced unit falls back to its raw conv outputs.

A selection is a list of items, each one of:

* ``default`` (the later half of the activated units, ``units[len(units) // 2:]``: 17 of the 33 of
  EfficientNet-Lite0, ``blocks.8.depthwise.act`` … ``head.act``), ``all`` (every activated unit);
* a unit name, or the name of its conv (``blocks.8.expand.conv`` means that conv's unit), its norm or
  its activation module (a reused module means all of its units);
* a container: every activated unit inside it (``blocks.12``);
* ``A..B``: the units from the first of ``A`` to the last of ``B`` (inclusive);
* ``i:j``: a Python slice of the unit list (``-10:``, ``0:5``), or a single index ``i``.

The result keeps forward order and has no duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from featurelens.engine import layer_names
from featurelens.errors import LayerNotFoundError, ModelError, NoConvLayerError

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid,
)
NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class Unit:
    """One explainable layer: the output of ``module``'s call number ``call`` in a forward pass.

    ``conv`` is the convolution it follows, ``norm`` the norm layer between them (or ``None``),
    ``activation`` the activation's class name, or ``None`` for a raw conv output.
    """

    name: str
    module: str
    call: int
    conv: str
    norm: str | None
    activation: str | None
    position: int = field(default=0, compare=False)  # forward position of its conv's call


@dataclass
class _Call:
    module: str
    kind: str  # "conv", "norm", "act", "other"
    index: int  # call number of this module
    input_key: tuple[int, int] | None
    output_key: tuple[int, int] | None


def _key(t: object) -> tuple[int, int] | None:
    return (id(t), t._version) if isinstance(t, Tensor) else None


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, NORMS):
        return "norm"
    if isinstance(module, ACTIVATIONS):
        return "act"
    return "other"


def _trace(model: nn.Module, sample: Tensor) -> list[_Call]:
    """Every call of every conv, norm and activation module in one forward pass, in call order."""
    calls: list[_Call] = []
    counts: dict[str, int] = {}
    pending: dict[int, list[tuple[int, int] | None]] = {}
    keep: list[Tensor] = []  # keeps tensors alive so that their ids are not reused during the trace
    handles = []
    training = [(m, m.training) for m in model.modules()]

    def pre(name: str):
        def hook(module: nn.Module, inputs: tuple[object, ...]) -> None:
            first = inputs[0] if inputs else None
            if isinstance(first, Tensor):
                keep.append(first)
            pending.setdefault(id(module), []).append(_key(first))

        return hook

    def post(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            n = counts.get(name, 0)
            counts[name] = n + 1
            if isinstance(output, Tensor):
                keep.append(output)
            calls.append(_Call(name, _kind(module), n, pending[id(module)].pop(), _key(output)))

        return hook

    try:
        model.eval()
        for name, module in model.named_modules():
            if name and _kind(module) != "other":
                handles.append(module.register_forward_pre_hook(pre(name)))
                handles.append(module.register_forward_hook(post(name)))
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    return calls


def trace_calls(model: nn.Module, sample: Tensor) -> list[_Call]:
    """Every call of every conv, norm and activation module of ``model`` on ``sample``, in call order:
    module name, kind (``"conv"``, ``"norm"``, ``"act"``), call number, and the ``(id, version)`` keys of
    the tensor it consumed and produced (equal keys: the same tensor, unmodified in between)."""
    return _trace(model, sample)


def _unit_name(module: str, call: int, n_calls: dict[str, int]) -> str:
    return module if n_calls[module] == 1 else f"{module}@{call}"


def trace_units(model: nn.Module, sample: Tensor) -> tuple[list[Unit], list[Unit]]:
    """``(activated, bare)``: the post-activation units and the convs with no activation after them,
    each in forward order (see the module docstring)."""
    calls = _trace(model, sample)
    n_calls: dict[str, int] = {}
    for c in calls:
        n_calls[c.module] = n_calls.get(c.module, 0) + 1
    produced: dict[tuple[int, int], _Call] = {}
    consumed: set[int] = set()  # positions (in ``calls``) of convs whose output an activation took
    pos_of: dict[int, int] = {id(c): i for i, c in enumerate(calls)}
    activated: list[Unit] = []
    for c in calls:
        if c.kind == "act" and c.input_key is not None:
            src = produced.get(c.input_key)
            norm = None
            if src is not None and src.kind == "norm" and src.input_key is not None:
                norm, src = src, produced.get(src.input_key)
            if src is not None and src.kind == "conv":
                consumed.add(pos_of[id(src)])
                activated.append(Unit(_unit_name(c.module, c.index, n_calls), c.module, c.index, src.module,
                                      None if norm is None else norm.module, type_name(model, c.module),
                                      pos_of[id(src)]))
        if c.output_key is not None:
            produced[c.output_key] = c
    bare = [
        Unit(_unit_name(c.module, c.index, n_calls), c.module, c.index, c.module, None, None, i)
        for i, c in enumerate(calls)
        if c.kind == "conv" and i not in consumed
    ]
    activated.sort(key=lambda u: u.position)  # forward order of the convs
    return activated, bare


def type_name(model: nn.Module, name: str) -> str:
    return type(model.get_submodule(name)).__name__


def conv_layers(model: nn.Module, sample: Tensor) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` that run on ``sample``, in forward order."""
    order: list[str] = []
    for c in _trace(model, sample):
        if c.kind == "conv" and c.module not in order:
            order.append(c.module)
    if not order:
        raise NoConvLayerError(f"{type(model).__name__} has no nn.Conv2d layer that runs in its forward pass")
    return order


def _matches(item: str, unit: Unit) -> bool:
    """``item`` names the unit, its conv, its norm or its activation module, or a container of them."""
    if item == unit.name:
        return True
    owned = [unit.conv, unit.module] + ([unit.norm] if unit.norm else [])
    return any(n == item or n.startswith(item + ".") for n in owned)


def _members(item: str, units: list[Unit], bare: list[Unit], all_names: list[str]) -> list[Unit]:
    found = [u for u in units if _matches(item, u)]
    if found:
        return found
    exact = [u for u in bare if item in (u.name, u.conv)]
    if exact:
        return exact  # a conv with no activation, named explicitly: its raw output
    inside = [u for u in bare if u.conv.startswith(item + ".")]
    if inside:
        return inside  # a container holding only convs without activation
    if item in all_names:
        raise ModelError(f"layer {item!r} is not a conv or activation layer and contains none; explained layers: "
                         f"{', '.join(u.name for u in units[:3])} … {', '.join(u.name for u in units[-3:])}")
    raise LayerNotFoundError(item, [u.name for u in units] + [u.conv for u in units + bare])


def resolve_units(model: nn.Module, sample: Tensor, items: Sequence[str] | str | None = None) -> list[Unit]:
    """Resolve a layer selection (see the module docstring) to units in forward order."""
    units, bare = trace_units(model, sample)
    if not units and not bare:
        raise NoConvLayerError(f"{type(model).__name__} has no nn.Conv2d layer that runs in its forward pass")
    if not units:  # no activation module seen (functional activations): fall back to the raw convs
        units, bare = bare, []
    if items is None:
        items = ["default"]
    if isinstance(items, str):
        items = [items]
    items = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not items:
        raise ModelError("an empty layer selection")
    order = {u.name: u.position for u in units + bare}
    all_names = layer_names(model)
    chosen: dict[str, Unit] = {}
    for item in items:
        if item == "default":
            picked = units[len(units) // 2:]
        elif item == "all":
            picked = units
        elif ".." in item:
            a, b = item.split("..", 1)
            first = _members(a.strip(), units, bare, all_names)[0]
            last = _members(b.strip(), units, bare, all_names)[-1]
            if order[last.name] < order[first.name]:
                raise ModelError(f"layer range {item!r} runs backwards ({a} comes after {b})")
            picked = [u for u in units if order[first.name] <= order[u.name] <= order[last.name]]
            picked += [u for u in (first, last) if u.activation is None]
        elif _is_index(item):
            picked = _slice(item, units)
        else:
            picked = _members(item, units, bare, all_names)
        for u in picked:
            chosen[u.name] = u
    return sorted(chosen.values(), key=lambda u: order[u.name])


def select_layers(model: nn.Module, sample: Tensor, items: Sequence[str] | str | None = None) -> list[str]:
    """Names of the units of a selection (see :func:`resolve_units`), in forward order."""
    return [u.name for u in resolve_units(model, sample, items)]


def _is_index(item: str) -> bool:
    parts = item.split(":")
    return len(parts) <= 3 and all(p.strip().lstrip("-").isdigit() or p.strip() == "" for p in parts) and any(
        p.strip() for p in parts
    )


def _slice(item: str, units: list[Unit]) -> list[Unit]:
    parts = [int(p) if p.strip() else None for p in item.split(":")]
    if len(parts) == 1:
        i = parts[0]
        assert i is not None
        if not -len(units) <= i < len(units):
            raise ModelError(f"layer index {i} is out of range (the model has {len(units)} explained layers)")
        return [units[i]]
    picked = units[slice(*parts)]
    if not picked:
        raise ModelError(f"layer slice {item!r} selects no layer (the model has {len(units)} explained layers)")
    return picked


def unit_call(name: str) -> tuple[str, int]:
    """``(module, call)`` of a unit name: ``"layer1.0.relu@1"`` → ``("layer1.0.relu", 1)``; a plain module
    name means its last call (``-1``)."""
    module, sep, call = name.rpartition("@")
    if sep and call.isdigit():
        return module, int(call)
    return name, -1
