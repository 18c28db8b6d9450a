"""Demo section: layer-wise network explanations (Bianchi et al., IJCAI 2024) of the sample photos.

Writes an explanation bundle with its static viewer under ``<demo>/network/bundle`` and shows, per
photo, the layer strip (the heaviest cluster of each layer, early → late) and the clusters of the
last layer with their weights and measured effects, and how much the clusterings move under
float-sized noise (``stability_runs=1``). It runs the library's default mode
(``NetworkParams().mode``) on post-activation layers and says which mode and layers it used.
Quick mode (the demo's 90 s budget): 2 photos × the last 4 of the default layers.
"""

from __future__ import annotations

import time
from html import escape

import numpy as np

from featurelens.demo import DemoContext, DemoSection

SUBDIR = "network"
QUICK_PHOTOS = ["chelsea", "coffee"]
STABILITY_RUNS = 1  # one re-clustering per layer under float-sized noise (README: "Measure it on your own layers")


def section(ctx: DemoContext) -> DemoSection:
    from featurelens.network.build import build_bundle
    from featurelens.network.layers import select_layers
    from featurelens.network.pipeline import NetworkParams
    from featurelens.network.viewer import write_viewer

    spec = ctx.spec()
    photos = ctx.photos()
    names = [n for n in QUICK_PHOTOS if n in photos] if ctx.quick else list(photos)[:4]
    images = {n: photos[n] for n in names}
    layers = select_layers(spec.model, spec.sample_input())
    n_default = len(layers)
    if ctx.quick:
        layers = layers[-4:]
    out = ctx.out_dir / SUBDIR / "bundle"
    if (out / "bundle.json").exists():
        import shutil

        shutil.rmtree(out)
    params = NetworkParams(stability_runs=STABILITY_RUNS)  # the default mode
    ctx.log(f"network: {len(images)} images x {len(layers)} layers ({params.mode} mode)")
    t0 = time.perf_counter()
    bundle = build_bundle(spec, images, out, layers=layers, params=params)
    seconds = time.perf_counter() - t0
    viewer = write_viewer(out)
    rel = lambda p: f"{SUBDIR}/bundle/{p}"  # noqa: E731 - paths relative to ctx.out_dir
    files = [f"{SUBDIR}/bundle/bundle.json", f"{SUBDIR}/bundle/{viewer.name}"]
    embedding = {"paper": "PCA → scikit-learn t-SNE, as the authors call it → Ward",
                 "faithful": "PCA → exact t-SNE → Ward", "stable": "PCA → spectral embedding of the t-SNE "
                 "affinities → Ward", "pca": "PCA → Ward"}[params.mode]
    subset = (f"the last {len(layers)} of the {n_default} default layers and {len(images)} photos, to keep the "
              "demo quick" if ctx.quick else f"the {len(layers)} default layers")
    parts = [
        "<p>Per image and post-activation layer (the output of the activation after a conv), channels are "
        "weighted by their positive gradients (w<sub>k</sub> = 100·α<sub>k</sub>/Σα), pruned with the authors' "
        "rule w<sub>k</sub> &gt; d(K), clustered by the similarity of their maps "
        f"({escape(embedding)}, best silhouette) and shown as one map per cluster (the weighted mean of "
        "the raw activations, not smoothed). "
        f"<b>Mode: {escape(params.mode)}</b>; layers: {escape(subset)}: "
        f"<code>{escape(', '.join(layer.name for layer in bundle.layers))}</code>. "
        "Under each cluster: its weight (% of the layer's gradient weight), its size in channels and the "
        "drop of the class score when its top 20 % pixels are blurred. "
        f"{len(bundle.images)} images × {len(bundle.layers)} layers in {seconds:.1f} s. "
        f'Open the <a href="{escape(rel(viewer.name))}">bundle viewer</a> for every layer and cluster.</p>'
    ]
    stab = bundle.layer_stat_values("stability")
    maps = bundle.layer_stat_values("map_stability")
    stability = float(np.median(stab)) if stab else None
    map_stability = float(np.median(maps)) if maps else None
    if stability is not None:
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
            f"<h4>{escape(im.id)}: predicted {escape(im.predicted_class)}</h4>"
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
            "median_stability_ari": None if stability is None else round(stability, 4),
            "median_map_stability": None if map_stability is None else round(map_stability, 4),
        },
    )
