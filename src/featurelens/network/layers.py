"""Which layers a network explanation covers.

A *conv layer* is a module that is an ``nn.Conv2d`` (subclasses included, e.g. the
``Conv2dStaticSamePadding`` of EfficientNet) and runs during a forward pass; conv layers are
ordered by when they first run. The default selection is the later half of them
(``convs[len(convs) // 2:]``: 25 of the 49 convs of EfficientNet-Lite0, ``blocks.8.expand.conv`` …
``head.conv``).

A selection is a list of items, each one of:

* ``default`` (the later half), ``all``;
* a module name: a conv layer itself, or a container whose conv layers are all taken (``blocks.12``);
* ``A..B``: the conv layers from the first conv of ``A`` to the last conv of ``B`` (inclusive);
* ``i:j``: a Python slice of the conv list (``-10:``, ``0:5``), or a single index ``i``.

The result keeps forward order and has no duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from featurelens.engine import layer_names
from featurelens.errors import LayerNotFoundError, ModelError, NoConvLayerError


def conv_layers(model: nn.Module, sample: Tensor) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` that run on ``sample``, in forward order."""
    order: list[str] = []
    handles = []
    training = [(m, m.training) for m in model.modules()]

    def make(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if name not in order:
                order.append(name)

        return hook

    try:
        model.eval()
        for name, module in model.named_modules():
            if name and isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(make(name)))
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    if not order:
        raise NoConvLayerError(f"{type(model).__name__} has no nn.Conv2d layer that runs in its forward pass")
    return order


def _members(name: str, convs: list[str], all_names: list[str]) -> list[str]:
    if name in convs:
        return [name]
    inside = [c for c in convs if c.startswith(name + ".")]
    if inside:
        return inside
    if name in all_names:
        raise ModelError(f"layer {name!r} is not a conv layer and contains none; conv layers: "
                         f"{', '.join(convs[:3])} … {', '.join(convs[-3:])}")
    raise LayerNotFoundError(name, convs)


def select_layers(model: nn.Module, sample: Tensor, items: Sequence[str] | str | None = None) -> list[str]:
    """Resolve a layer selection (see the module docstring) to conv layer names in forward order."""
    convs = conv_layers(model, sample)
    if items is None:
        items = ["default"]
    if isinstance(items, str):
        items = [items]
    items = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not items:
        raise ModelError("an empty layer selection")
    all_names = layer_names(model)
    chosen: set[str] = set()
    for item in items:
        if item == "default":
            chosen.update(convs[len(convs) // 2:])
        elif item == "all":
            chosen.update(convs)
        elif ".." in item:
            a, b = item.split("..", 1)
            start = convs.index(_members(a.strip(), convs, all_names)[0])
            stop = convs.index(_members(b.strip(), convs, all_names)[-1])
            if stop < start:
                raise ModelError(f"layer range {item!r} runs backwards ({a} comes after {b})")
            chosen.update(convs[start: stop + 1])
        elif _is_index(item):
            chosen.update(_slice(item, convs))
        else:
            chosen.update(_members(item, convs, all_names))
    return [c for c in convs if c in chosen]


def _is_index(item: str) -> bool:
    parts = item.split(":")
    return len(parts) <= 3 and all(p.strip().lstrip("-").isdigit() or p.strip() == "" for p in parts) and any(
        p.strip() for p in parts
    )


def _slice(item: str, convs: list[str]) -> list[str]:
    parts = [int(p) if p.strip() else None for p in item.split(":")]
    if len(parts) == 1:
        i = parts[0]
        assert i is not None
        if not -len(convs) <= i < len(convs):
            raise ModelError(f"conv layer index {i} is out of range (the model has {len(convs)} conv layers)")
        return [convs[i]]
    picked = convs[slice(*parts)]
    if not picked:
        raise ModelError(f"layer slice {item!r} selects no conv layer (the model has {len(convs)})")
    return picked
