"""Relevance-CAM on EfficientNet-Lite0: the figures quoted in the README's Relevance-CAM section.

1. Conservation: with relevance 1 on the top class of skimage's ``coffee()``, the sum of the LRP
   relevance at several layers, for the ε and z⁺ composites, beside ``1 − b_fc/z`` (the share the
   FC bias absorbs).
2. Where the map lies: the share of each map's mass inside the cup box of the 224×224 coffee photo
   (rows 0–115, columns 55–170; a uniform map puts 0.26 there), Relevance-CAM and Grad-CAM at
   ``head`` and ``blocks.12``.
3. Cost: Relevance-CAM and Grad-CAM through ``Explainer`` on a batch of 8 photos, each as a ratio to a
   bare ``torch.no_grad()`` forward of the same batch measured in the same run (repetitions
   interleaved, medians), because the machine is shared and noisy.

    .venv/bin/python benchmarks/bench_relevancecam.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featurelens.api import Explainer
from featurelens.imaging import sample_images
from featurelens.lrp import lrp_relevance
from featurelens.models import load_model

CUP = (slice(0, 115), slice(55, 170))
LAYERS = ["head", "blocks.15", "blocks.14", "blocks.12", "blocks.11"]


def cup_share(m: torch.Tensor) -> float:
    return float(m[CUP].sum() / m.sum().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    spec = load_model()
    model = spec.model
    photos = sample_images(["coffee", "chelsea", "astronaut", "rocket"])
    coffee = spec.prepare([photos["coffee"]])

    print("## Conservation (relevance 1 on the top class of coffee)\n")
    print("| layer | ε sum | z⁺ sum |\n|---|---:|---:|")
    eps = lrp_relevance(model, coffee, LAYERS, rules="epsilon", start="one")
    zplus = lrp_relevance(model, coffee, LAYERS, rules="zplus", start="one")
    for layer in LAYERS:
        print(f"| `{layer}` | {float(eps.at(layer).sum()):.5f} | {float(zplus.at(layer).sum()):.5f} |")
    top = int(eps.output.argmax(1))
    z = float(eps.output[0, top])
    b = float(model.fc.bias[top].detach())
    print(f"\ntop class {spec.class_name(top)!r}: z = {z:.4f}, b_fc = {b:.4f}, 1 − b/z = {1 - b / z:.5f}\n")

    print("## Share of the map on the cup box (uniform map: 0.26)\n")
    exps = Explainer(model, ["head", "blocks.12"]).explain(coffee, ["relevancecam", "gradcam"])
    print("| layer | Relevance-CAM | Grad-CAM |\n|---|---:|---:|")
    for layer in ("head", "blocks.12"):
        rc = cup_share(exps["relevancecam"].maps[layer][0])
        gc = cup_share(exps["gradcam"].maps[layer][0])
        print(f"| `{layer}` | {rc:.2f} | {gc:.2f} |")

    print("\n## Cost, batch 8, ratio to a bare no_grad forward (same run, medians)\n")
    x = spec.prepare(list(photos.values()) * 2)

    def bare() -> None:
        with torch.no_grad():
            model(x)

    jobs = {"bare": bare}
    for layer in ("head", "blocks.12"):
        for method in ("relevancecam", "gradcam"):
            ex = Explainer(model, layer)
            jobs[f"{method} @ {layer}"] = lambda ex=ex, method=method: ex.explain(x, method)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for fn in jobs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["bare"])
    print(f"bare forward: {base * 1000:.0f} ms\n")
    print("| job | time / bare forward |\n|---|---:|")
    for name in jobs:
        if name != "bare":
            print(f"| {name} | {statistics.median(times[name]) / base:.2f}× |")


if __name__ == "__main__":
    main()
