"""``featurelens explain IMAGE...``: saliency maps of a classifier for image files.

Per image and method it writes an overlay PNG and the map as ``.npy`` (float32, at the image's
original resolution, values in [0, 1]), plus one ``manifest.json`` for the whole run. The work is
done by :func:`explain_files`, which Python users can call directly.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featurelens.cli import common
from featurelens.cli.common import positive_int
from featurelens.errors import MethodError, TargetError

DEFAULT_OUT = "featurelens-out"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "explain",
        help="saliency maps (overlay PNG + .npy) for image files",
        description="Explain a classifier's decision on image files with CAM-family methods. Writes per image "
        "and method <name>_<method>.png (overlay) and <name>_<method>.npy (float32 map at the image's "
        "resolution, in [0, 1]) and one manifest.json. All images are checked before any work starts.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, TIFF, BMP, WebP, ...)")
    p.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="registry name, torchvision:<name>, timm:<name> "
        "or a checkpoint path (default: efficientnet_lite0)",
    )
    p.add_argument(
        "--method",
        "-m",
        action="append",
        dest="methods",
        metavar="M",
        help="method name (repeatable or comma-separated; 'all' = every registered method; default gradcam)",
    )
    p.add_argument(
        "--layer",
        "-l",
        action="append",
        dest="layers",
        metavar="L",
        help="dotted layer name (repeatable; default: the model's last conv/feature layer)",
    )
    p.add_argument(
        "--target",
        "-t",
        default="top",
        metavar="CLASS|top",
        help="class to explain: 'top' (predicted, default), a class index, or a class name",
    )
    p.add_argument(
        "--fuse",
        choices=["mean", "max", "product", "refine"],
        default=None,
        help="fuse the maps of several --layer into one (refine: RefineCAM's product of the layer maps; "
        "default: one map per layer)",
    )
    smooth = p.add_argument_group("smoothing and meta-methods (any method)")
    smooth.add_argument(
        "--aug-smooth",
        action="store_true",
        help="test-time augmentation: horizontal flip x scales 0.9/1/1.1, maps mapped back and averaged (6x the work)",
    )
    smooth.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="first principal component of the weighted activations instead of their sum",
    )
    smooth.add_argument(
        "--sess",
        action="store_true",
        help="SESS: sliding windows at scales 1/1.5/2, the best half per scale explained, fused",
    )
    p.add_argument(
        "--trust", action="store_true", help="allow loading a pickled model checkpoint (runs its code)"
    )
    p.add_argument(
        "--out", "-o", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT}/)"
    )
    p.add_argument(
        "--batch-size", "-b", type=positive_int, default=8, metavar="N", help="images per batch (default 8)"
    )
    p.add_argument(
        "--scorecam-top-n",
        type=positive_int,
        default=None,
        metavar="N",
        help="Score-CAM fast mode: score only the N strongest channels (default: exact, all channels)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="with --method all: run every method exactly (by default 'all' runs the methods that have a "
        "fast mode in it: Score-CAM on its top 48 channels, SS-CAM and IS-CAM on 12 channels x 3 samples)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the map, 0..1 (default 0.5)")
    p.add_argument("--colormap", default="jet", help="matplotlib colormap of the overlay (default jet)")
    p.set_defaults(func=run)


def parse_methods(values: Sequence[str] | None) -> list[str]:
    """Method names from ``--method`` values (comma-separated, ``all``), canonical and de-duplicated."""
    from featurelens.methods import get_method, method_names

    raw = [v.strip() for value in (values or ["gradcam"]) for v in value.split(",") if v.strip()]
    if not raw:
        raise MethodError(f"no method given; valid methods: {', '.join(method_names())}")
    names: list[str] = []
    for v in raw:
        for name in method_names() if v.lower() == "all" else [get_method(v).name]:
            if name not in names:
                names.append(name)
    return names


def all_method_options(values: Sequence[str] | None, exact: bool = False) -> dict[str, dict[str, Any]]:
    """Options for ``--method all``: each method's ``fast_options`` (its fast mode, when it has one), unless
    ``exact`` or the method is also named on its own. ``{}`` when ``all`` is not asked for."""
    from featurelens.methods import METHODS, get_method, method_names

    raw = [v.strip() for value in (values or []) for v in value.split(",") if v.strip()]
    if exact or not any(v.lower() == "all" for v in raw):
        return {}
    named = {get_method(v).name for v in raw if v.lower() != "all"}
    return {m: dict(METHODS[m].fast_options) for m in method_names() if METHODS[m].fast_options and m not in named}


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise common.FeaturelensError(f"--alpha must be between 0 and 1, got {args.alpha}")
    import matplotlib

    if args.colormap not in matplotlib.colormaps:
        raise common.FeaturelensError(f"unknown colormap {args.colormap!r}")
    if args.fuse and len(args.layers or []) < 2:
        common.warn("--fuse has no effect with fewer than two --layer")
    methods = parse_methods(args.methods)
    options = all_method_options(args.methods, exact=getattr(args, "exact", False))
    if args.scorecam_top_n:
        options["scorecam"] = {"top_n": args.scorecam_top_n}
    if options and not args.exact:
        common.warn("--method all: fast modes for " + ", ".join(
            f"{m} ({', '.join(f'{k}={v}' for k, v in o.items())})" for m, o in options.items()
            if m != "scorecam" or not args.scorecam_top_n) + "; --exact runs them exactly")
    paths = common.collect_images(args.images).paths
    common.check_images(paths)  # fail fast, listing every bad file
    spec = common.load_spec(args.model, trust=args.trust)
    manifest = explain_files(
        spec,
        paths,
        methods,
        out_dir=args.out,
        layers=args.layers,
        target=args.target,
        fuse=args.fuse,
        batch_size=args.batch_size,
        alpha=args.alpha,
        colormap=args.colormap,
        method_options=options or None,
        smoothing=smoothing_options(args),
    )
    for entry in manifest["images"]:
        pred, expl = entry["predicted"], entry["explained"]
        line = f"{entry['file']}: {pred['class']} ({pred['probability']:.3f})"
        if expl["index"] != pred["index"]:
            line += f"; explained {expl['class']} ({expl['probability']:.3f})"
        common.echo(line)
    out = Path(args.out)
    common.echo(f"wrote {len(manifest['files'])} files to {out}/ (manifest: {out / 'manifest.json'})")
    return 0


def smoothing_options(args: argparse.Namespace) -> dict[str, bool]:
    """``Explainer.explain`` keyword arguments from ``--aug-smooth``, ``--eigen-smooth`` and ``--sess``."""
    names = ("aug_smooth", "eigen_smooth", "sess")
    return {n: True for n in names if getattr(args, n, False)}


def _class_info(spec: Any, index: int, probs: torch.Tensor) -> dict[str, Any]:
    return {
        "index": int(index),
        "class": spec.class_name(int(index)),
        "probability": round(float(probs[index]), 6),
    }


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def explain_files(
    spec: Any,
    paths: Sequence[str | Path],
    methods: Sequence[str],
    *,
    out_dir: str | Path,
    layers: Sequence[str] | None = None,
    target: str | int | None = "top",
    fuse: str | None = None,
    batch_size: int = 8,
    alpha: float = 0.5,
    colormap: str = "jet",
    method_options: dict[str, dict[str, Any]] | None = None,
    smoothing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Explain image files with ``spec``'s model and write overlays, maps and ``manifest.json``.

    Images are batched through the model (``batch_size``); each batch gets one no-grad forward for
    the class probabilities and one :meth:`Explainer.explain` call for all methods. Maps are resized
    to each image's original size. ``smoothing`` holds :meth:`Explainer.explain`'s ``aug_smooth``,
    ``eigen_smooth`` and ``sess`` options. Returns the manifest (also written to ``out_dir/manifest.json``).

    File names: ``<name>_<method>.png/.npy`` for one layer or fused layers, else
    ``<name>_<method>_<layer>.png/.npy``; ``<name>`` is the file stem, made unique.
    """
    from featurelens import __version__
    from featurelens.api import Explainer
    from featurelens.imaging import overlay
    from featurelens.targets import ClassTarget

    paths = [Path(p) for p in paths]
    layer_list = common.layer_names_for(spec, layers)
    index = parse_target(spec, target)
    out = common.output_dir(out_dir)
    names = common.unique_names(paths)
    fused = fuse if fuse and len(layer_list) > 1 else None
    explainer = Explainer(spec.model, layer_list)
    images_meta: list[dict[str, Any]] = []
    files: list[str] = []
    bar = common.progress_bar(len(paths), desc="explaining")
    try:
        for start in range(0, len(paths), batch_size):
            batch_paths = paths[start : start + batch_size]
            pils = [common._load(p) for p in batch_paths]
            x = spec.prepare(pils)
            with torch.no_grad():
                logits = spec.model(x)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise TargetError(
                    f"{spec.name}: explain needs a classifier with [B, classes] output, got {shape}"
                )
            if index is not None and index >= logits.shape[1]:
                raise TargetError(
                    f"class index {index} is out of range for a model with {logits.shape[1]} outputs"
                )
            probs = torch.softmax(logits.float(), dim=1).cpu()
            tgt = None if index is None else ClassTarget(index)
            exps = explainer.explain(
                x, list(methods), tgt, fuse=fused, method_options=method_options, **(smoothing or {})
            )
            for i, (path, pil) in enumerate(zip(batch_paths, pils)):
                name = names[start + i]
                top = torch.topk(probs[i], k=min(5, probs.shape[1]))
                predicted = int(top.indices[0])
                first = next(iter(exps.values()))
                explained = predicted if first.target_indices is None else int(first.target_indices[i])
                outputs = []
                for method, exp in exps.items():
                    variants = (
                        [(None, f"{name}_{method}")]
                        if fused or len(layer_list) == 1
                        else [(layer, f"{name}_{method}_{_safe(layer)}") for layer in layer_list]
                    )
                    for layer, stem in variants:
                        m = exp.map_at(i, (pil.height, pil.width), layer)
                        np.save(out / f"{stem}.npy", m.astype(np.float32))
                        Image.fromarray(overlay(pil, m, alpha=alpha, colormap=colormap)).save(
                            out / f"{stem}.png"
                        )
                        files += [f"{stem}.png", f"{stem}.npy"]
                        outputs.append(
                            {
                                "method": method,
                                "layers": [layer] if layer else list(layer_list),
                                "fused": fused,
                                "overlay": f"{stem}.png",
                                "map": f"{stem}.npy",
                                "target_score": round(float(exp.scores[i]), 6),
                            }
                        )
                images_meta.append(
                    {
                        "file": str(path),
                        "name": name,
                        "width": pil.width,
                        "height": pil.height,
                        "predicted": _class_info(spec, predicted, probs[i]),
                        "explained": _class_info(spec, explained, probs[i]),
                        "top5": [_class_info(spec, int(c), probs[i]) for c in top.indices],
                        "outputs": outputs,
                    }
                )
                bar.update(1)
    finally:
        bar.close()
    manifest = {
        "featurelens": __version__,
        "model": spec.name,
        "methods": list(methods),
        "layers": list(layer_list),
        "fuse": fused,
        "method_options": method_options or {},
        "smoothing": sorted(k for k, v in (smoothing or {}).items() if v),
        "target": "top" if index is None else index,
        "score": "softmax probability of the class; target_score is the explained logit",
        "map_format": "float32 .npy, shape [height, width] of the original image, values in [0, 1]",
        "images": images_meta,
        "files": [*files, "manifest.json"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def parse_target(spec: Any, target: str | int | None) -> int | None:
    if isinstance(target, int) and not isinstance(target, bool):
        return common.parse_target(spec, str(target))
    return common.parse_target(spec, target)
