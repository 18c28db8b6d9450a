"""Demo section: layer-wise network explanations (Bianchi et al., IJCAI 2024) of the sample photos.

Writes an explanation bundle with its static viewer under ``<demo>/network/bundle`` and shows, per
photo, the layer strip (the heaviest cluster of each layer, early → late) and the clusters of the
last layer with their weights and measured effects, and how much the clusterings move under
float-sized noise (``stability_runs=1``). It runs the library's default mode
(``NetworkParams().mode``) on post-activation layers and says which mode and layers it used.
The dataset (:func:`demo_dataset`) is small: each real photo with augmented views (marked as such), so
that the labels section, which reuses this bundle, has >= 3 images per class. Layers: 4 of the default
layers, evenly spread (the demo's 90 s budget); quick mode: one photo's 3 images × the last 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from featurelens.demo import DemoContext, DemoSection

SUBDIR = "network"
#: re-clusterings per layer under float-sized noise: none in the demo (it doubles the clustering time of the
#: paper mode); ``featurelens network --stability N`` measures it (README: "Measure it on your own layers")
STABILITY_RUNS = 0
#: the demo's small dataset: real scikit-image photos, each with augmented views (its class: the model's
#: top-1 class for the real photo), so that every class has >= 3 images for the labels' global explanations
DATASET_PHOTOS = ["chelsea", "coffee"]
QUICK_PHOTOS = ["chelsea"]
AUGMENTATIONS = {"aug-flip": "AUGMENTED: horizontal flip of the photo",
                 "aug-crop": "AUGMENTED: crop of the central 80 % × 90 % of the photo"}
LAYERS = 4  # the default layers, evenly spread (first ... last): the demo's time budget
QUICK_LAYERS = 2


@dataclass
class DemoImage:
    id: str
    photo: str  # the scikit-image photo it comes from
    class_name: str
    augmented: str | None  # how the view was made, None for the real photo
    image: Image.Image = field(repr=False)

    def record(self) -> dict[str, Any]:
        return {"image": self.id, "photo": self.photo, "class": self.class_name, "augmented": self.augmented}


def augment(image: Image.Image, kind: str) -> Image.Image:
    """An augmented view: ``aug-flip`` (mirror left-right) or ``aug-crop`` (central 80 % × 90 %)."""
    if kind == "aug-flip":
        return ImageOps.mirror(image)
    if kind == "aug-crop":
        w, h = image.size
        return image.crop((round(0.1 * w), round(0.05 * h), round(0.9 * w), round(0.95 * h)))
    raise ValueError(f"unknown augmentation {kind!r}")


def demo_dataset(ctx: DemoContext) -> list[DemoImage]:
    """The demo's dataset: each photo of :data:`DATASET_PHOTOS` and its :data:`AUGMENTATIONS`; the class
    of all of them is the model's top-1 class for the real photo."""
    import torch

    spec = ctx.spec()
    photos = ctx.photos()
    names = [n for n in (QUICK_PHOTOS if ctx.quick else DATASET_PHOTOS) if n in photos]
    with torch.no_grad():
        top = spec.model(spec.prepare([photos[n] for n in names])).argmax(dim=1)
    out = []
    for name, index in zip(names, top.tolist()):
        cls = spec.class_name(int(index))
        out.append(DemoImage(name, name, cls, None, photos[name]))
        out += [DemoImage(f"{name}_{kind}", name, cls, how, augment(photos[name], kind))
                for kind, how in AUGMENTATIONS.items()]
    return out


def demo_layers(ctx: DemoContext) -> tuple[list[str], int]:
    """(the demo's layers, the number of default layers): :data:`LAYERS` of the default selection,
    evenly spread from the first to the last (quick: the last :data:`QUICK_LAYERS`)."""
    from featurelens.network.layers import select_layers

    spec = ctx.spec()
    default = select_layers(spec.model, spec.sample_input())
    if ctx.quick:
        return default[-QUICK_LAYERS:], len(default)
    n = min(LAYERS, len(default))
    picks = sorted({round(i * (len(default) - 1) / max(1, n - 1)) for i in range(n)})
    return [default[i] for i in picks], len(default)


def demo_bundle(ctx: DemoContext) -> dict[str, Any]:
    """The demo's explanation bundle (built once per demo run, shared by the network and labels sections):
    the dataset of :func:`demo_dataset`, the library's default mode (``NetworkParams()``), the layers of
    :func:`demo_layers`, effects on. Returns ``{"bundle", "dataset", "layers", "n_default", "params",
    "seconds", "root"}``."""
    if "network_bundle" in ctx.cache:
        return ctx.cache["network_bundle"]  # type: ignore[no-any-return]
    import shutil

    from featurelens.network.build import build_bundle
    from featurelens.network.pipeline import NetworkParams

    dataset = demo_dataset(ctx)
    layers, n_default = demo_layers(ctx)
    out = ctx.out_dir / SUBDIR / "bundle"
    if (out / "bundle.json").exists():
        shutil.rmtree(out)
    params = NetworkParams(stability_runs=STABILITY_RUNS)  # the default mode
    ctx.log(f"network: {len(dataset)} images x {len(layers)} layers ({params.mode} mode)")
    t0 = time.perf_counter()
    bundle = build_bundle(ctx.spec(), {d.id: d.image for d in dataset}, out, layers=layers, params=params,
                          labels={d.id: d.class_name for d in dataset})
    built = {"bundle": bundle, "dataset": dataset, "layers": layers, "n_default": n_default, "params": params,
             "seconds": time.perf_counter() - t0, "root": out}
    ctx.cache["network_bundle"] = built
    return built


def dataset_html(dataset: list[DemoImage]) -> str:
    """The dataset per class, augmented views marked."""
    from featurelens.report.html import dataset_list

    classes = {d.class_name for d in dataset}
    return (f"<p>Dataset: {len(dataset)} images, {len(classes)} class(es): real scikit-image photos plus "
            f"<b>augmented views (marked AUGMENTED)</b>, so that every class has at least 3 images. A class is "
            f"the model's top-1 class for its real photo.</p>" + dataset_list([d.record() for d in dataset]))


def section(ctx: DemoContext) -> DemoSection:
    from featurelens.network.viewer import write_viewer

    built = demo_bundle(ctx)
    bundle, params, out = built["bundle"], built["params"], built["root"]
    layers, n_default, seconds = built["layers"], built["n_default"], built["seconds"]
    viewer = write_viewer(out)
    rel = lambda p: f"{SUBDIR}/bundle/{p}"  # noqa: E731 - paths relative to ctx.out_dir
    files = [f"{SUBDIR}/bundle/bundle.json", f"{SUBDIR}/bundle/{viewer.name}"]
    embedding = {"paper": "PCA → scikit-learn t-SNE, as the authors call it → Ward",
                 "faithful": "PCA → exact t-SNE → Ward", "stable": "PCA → spectral embedding of the t-SNE "
                 "affinities → Ward", "pca": "PCA → Ward"}[params.mode]
    subset = (f"the last {len(layers)} of the {n_default} default layers, to keep the test quick" if ctx.quick
              else f"{len(layers)} of the {n_default} default layers, evenly spread from the first to the last, "
              "to keep the demo within its time budget (<code>featurelens network</code> explains all of them)")
    parts = [
        "<p>Per image and post-activation layer (the output of the activation after a conv), channels are "
        "weighted by their positive gradients (w<sub>k</sub> = 100·α<sub>k</sub>/Σα), pruned with the authors' "
        "rule w<sub>k</sub> &gt; d(K), clustered by the similarity of their maps "
        f"({escape(embedding)}, best silhouette) and shown as one map per cluster (the weighted mean of "
        "the raw activations, not smoothed). "
        f"<b>Mode: {escape(params.mode)}</b> (the library's default); layers: {subset}: "
        f"<code>{escape(', '.join(layer.name for layer in bundle.layers))}</code>. "
        "Under each cluster: its weight (% of the layer's gradient weight), its size in channels and the "
        "drop of the class score when its top 20 % pixels are blurred. "
        f"{len(bundle.images)} images × {len(bundle.layers)} layers in {seconds:.1f} s. "
        f'Open the <a href="{escape(rel(viewer.name))}">bundle viewer</a> for every layer and cluster. '
        "The labels section below reuses this bundle.</p>",
        dataset_html(built["dataset"]),
    ]
    stab = bundle.layer_stat_values("stability")
    maps = bundle.layer_stat_values("map_stability")
    stability = float(np.median(stab)) if stab else None
    map_stability = float(np.median(maps)) if maps else None
    if stability is None:
        parts.append("<p>How firm are the cluster boundaries? Not measured here (it doubles the clustering "
                     "time); <code>featurelens network IMAGES --stability 1</code> re-clusters every layer under "
                     "float-sized noise and reports the agreement per layer.</p>")
    else:
        parts.append(
            "<p><b>How firm are the cluster boundaries?</b> Each layer was clustered once more with its maps "
            "multiplied by 1 + 10<sup>−6</sup>·noise (a few float32 rounding steps). Median adjusted Rand index "
            f"between the two clusterings: <b>{stability:.2f}</b> over {len(stab)} layers (1 = identical); "
            f"the cluster <i>maps</i> agree better (median weighted correlation "
            f"{'n/a' if map_stability is None else f'{map_stability:.2f}'}). "
            + ("The stable mode has no iterated descent, so noise of that size leaves its clusters in place."
               if params.mode == "stable" else
               "t-SNE on weakly clustered channels is chaotic: read a layer's clusters as one plausible grouping "
               "of its features, and trust the maps more than the exact memberships.") + "</p>"
        )
    last = bundle.layers[-1].name
    augmented = {d.id: d.augmented for d in built["dataset"]}
    for im in bundle.images:
        by_layer = {}
        for c in im.clusters:
            if c.layer not in by_layer or c.weight > by_layer[c.layer].weight:
                by_layer[c.layer] = c
        strip = "".join(
            f'<figure style="display:inline-block;margin:2px;text-align:center;font-size:11px">'
            f'<img src="{escape(rel(by_layer[layer.name].overlay_png))}" width="96" height="96" '
            f'alt="{escape(layer.name)}"><figcaption>{escape(layer.name.removesuffix(".act").removesuffix(".conv"))}</figcaption></figure>'
            for layer in bundle.layers
            if layer.name in by_layer
        )
        cl = sorted((c for c in im.clusters if c.layer == last), key=lambda c: -c.weight)
        row = "".join(
            f'<figure style="display:inline-block;margin:2px;font-size:12px">'
            f'<img src="{escape(rel(c.overlay_png))}" width="128" height="128" alt="{escape(c.id)}">'
            f"<figcaption><b>{c.weight:.1f}%</b> · {len(c.channels)} ch · drop "
            f'{"n/a" if c.effect is None else f"{c.effect:.2f}"}</figcaption></figure>'
            for c in cl
        )
        parts.append(
            f"<h4>{escape(im.id)}: predicted {escape(im.predicted_class)}"
            + ("" if not augmented.get(im.id) else f" <span style='color:#b45309'>[{escape(augmented[im.id])}]</span>")
            + "</h4>"
            f"<div><i>layer strip, early → late</i><br>{strip}</div>"
            f"<div><i>clusters of {escape(last)}</i><br>{row}</div>"
        )
        files += [c.overlay_png and rel(c.overlay_png) for c in im.clusters]
    return DemoSection(
        title="Network explanations: clustered feature maps per layer",
        html="\n".join(parts),
        files=files,
        summary={
            "images": len(bundle.images),
            "layers": len(bundle.layers),
            "clusters": sum(len(im.clusters) for im in bundle.images),
            "seconds": round(seconds, 2),
            "mode": params.mode,
            "layers_used": [layer.name for layer in bundle.layers],
            "default_layers": n_default,
            "dataset": [d.record() for d in built["dataset"]],
            "median_stability_ari": None if stability is None else round(stability, 4),
            "median_map_stability": None if map_stability is None else round(map_stability, 4),
        },
    )
