"""``featurelens inspect MODEL``: layer names, types and output shapes, to choose target layers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from featurelens.cli import common
from featurelens.errors import NoConvLayerError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "inspect",
        help="list a model's layers (names, types, output shapes) and its default target layer",
        description="Run one sample input through MODEL and list every layer with its type, output shape "
        "and parameter count. The default target layer (last layer with a spatial output) is marked with *.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default="efficientnet_lite0",
        help="registry name, torchvision:<name>, timm:<name> or checkpoint path (default: efficientnet_lite0)",
    )
    p.add_argument(
        "--trust", action="store_true", help="allow loading a pickled model checkpoint (runs its code)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--spatial", action="store_true", help="only layers with a [B, C, H, W] output (CAM candidates)"
    )
    p.set_defaults(func=run)


def inspect_model(spec: Any) -> dict[str, Any]:
    """A description of ``spec``'s layers: ``{"model", "input_shape", "default_layer", "layers": [...]}``."""
    from featurelens.engine import spatial_layers

    common.check_hookable(spec)
    infos = spec.layers()
    try:
        default = spec.resolve_default_layer()
    except NoConvLayerError:
        default = None
    spatial = {i.name for i in spatial_layers(infos)}
    return {
        "model": spec.name,
        "input_shape": list(spec.sample_input().shape),
        "default_layer": default,
        "classes": None if spec.class_names is None else len(spec.class_names),
        "layers": [
            {
                "name": i.name,
                "type": i.type,
                "output_shape": None if i.output_shape is None else list(i.output_shape),
                "parameters": i.parameters,
                "calls": i.calls,
                "spatial": i.name in spatial,
                "default": i.name == default,
            }
            for i in infos
        ],
    }


def run(args: argparse.Namespace) -> int:
    spec = common.load_spec(args.model, trust=args.trust)
    info = inspect_model(spec)
    layers = [layer for layer in info["layers"] if layer["spatial"] or not args.spatial]
    if args.json:
        common.echo(json.dumps({**info, "layers": layers}, indent=1))
        return 0
    rows = [
        (
            "*" if layer["default"] else "",
            layer["name"],
            layer["type"],
            "-" if layer["output_shape"] is None else "x".join(map(str, layer["output_shape"])),
            f"{layer['parameters']:,}",
        )
        for layer in layers
    ]
    headers = ("", "layer", "type", "output shape", "params")
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(headers)]
    shape = "x".join(map(str, info["input_shape"]))
    common.echo(f"{info['model']}: {len(info['layers'])} layers, sample input {shape}")
    common.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in rows:
        common.echo(
            "  ".join(c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()
        )
    if info["default_layer"]:
        common.echo(f"* default target layer: {info['default_layer']} (use --layer NAME to choose another)")
    else:
        common.echo("no layer has a spatial [B, C, H, W] output: CAM methods cannot explain this model")
    return 0
