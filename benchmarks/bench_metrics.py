"""Metric anchors: batched vs unbatched deletion, and our CAM maps vs torchcam's.

1. Speed: the same deletion curve (same maps, same model, same steps) computed by
   :func:`featurelens.metrics.deletion_curve` (rows mixing samples and steps, ``batch_size`` per
   forward) and by a plain loop that scores one perturbed image per forward pass. Both are timed in
   the same run; the script prints the ratio and checks that the curves agree (``allclose``).
2. Agreement: when torchcam (0.5.0) is importable, our Grad-CAM, Grad-CAM++, Layer-CAM, XGrad-CAM
   (and Score-CAM with ``--scorecam``: exact, 1280 forwards per image) against torchcam's on the
   same layer ``head`` of our EfficientNet-Lite0, compared as the Pearson correlation of the raw
   7×7 maps per image (scale-free; torchcam normalises its maps). pytorch-grad-cam needs torchvision
   and is not installable here.

    .venv/bin/python benchmarks/bench_metrics.py [--images 4] [--steps 20] [--scorecam]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from featurelens import Explainer
from featurelens.imaging import sample_images
from featurelens.metrics import class_score_fn, deletion_curve, make_baseline
from featurelens.metrics.deletion import pixel_ranks, step_counts
from featurelens.models import load_model

NAMES = ["coffee", "chelsea", "astronaut", "rocket", "horse", "camera"]
TORCHCAM = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "layercam": "LayerCAM", "xgradcam": "XGradCAM", "scorecam": "ScoreCAM"}


def unbatched_deletion(score_fn, inputs, maps, steps, baseline="blur"):  # type: ignore[no-untyped-def]
    """The loop without batching: one forward per (image, step)."""
    base = make_baseline(inputs, baseline)
    b, _c, h, w = inputs.shape
    ranks = pixel_ranks(maps)
    counts = step_counts(h * w, steps)
    scores = torch.empty(b, steps + 1)
    for i in range(b):
        for k in range(steps + 1):
            top = (ranks[i] < counts[k]).view(1, 1, h, w)
            x = torch.where(top, base[i : i + 1], inputs[i : i + 1])
            scores[i, k] = score_fn(x, torch.tensor([i]))[0]
    return scores


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scorecam", action="store_true", help="also compare exact Score-CAM (slow)")
    args = ap.parse_args(argv)

    spec = load_model("efficientnet_lite0")
    model = spec.model.eval()
    x = spec.prepare(list(sample_images(NAMES[: args.images]).values()))
    with torch.no_grad():
        classes = model(x).argmax(1)
    maps = Explainer(model, "head").explain(x, "gradcam", classes).map
    score = class_score_fn(model, classes)

    print(f"== deletion curve, {args.images} images x {args.steps + 1} steps (Grad-CAM maps) ==")
    t = time.perf_counter()
    batched = deletion_curve(score, x, maps, steps=args.steps, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    loop = unbatched_deletion(score, x, maps, args.steps)
    t_loop = time.perf_counter() - t
    same = torch.allclose(batched.scores, loop, atol=1e-5)
    n_rows = args.images * (args.steps + 1)
    print(f"batched  ({-(-n_rows // args.batch_size)} forwards of <= {args.batch_size}): {t_batched:.2f} s")
    print(f"unbatched ({n_rows} forwards of 1): {t_loop:.2f} s")
    print(f"speed-up: {t_loop / t_batched:.2f}x  (same run; curves allclose: {same}, max diff {float((batched.scores - loop).abs().max()):.2e})")

    try:
        import torchcam.methods as tcm
    except ImportError:
        print("torchcam is not installed: map comparison skipped")
        return 0 if same else 1
    import torchcam

    methods = [m for m in TORCHCAM if m != "scorecam" or args.scorecam]
    print(f"\n== our maps vs torchcam {torchcam.__version__} on layer 'head' (Pearson r of raw 7x7 maps, per image) ==")
    ours = Explainer(model, "head").explain(x, methods, classes)
    for m in methods:
        cls = getattr(tcm, TORCHCAM[m])
        kwargs = {"batch_size": 32} if m == "scorecam" else {}
        extractor = cls(model, target_layer="head", input_shape=(3, 224, 224), **kwargs)
        try:
            if m == "scorecam":
                with torch.no_grad():
                    out = model(x)
            else:
                out = model(x)
            theirs = extractor(classes.tolist(), out, normalized=False)[0].detach()
        finally:
            extractor.remove_hooks()
        r = pearson(ours[m].raw_maps["head"], theirs)
        print(f"{m:10s} r = " + ", ".join(f"{v:.4f}" for v in r.tolist()) + f"   (min {float(r.min()):.4f})")
    if not args.scorecam:
        print("scorecam   not compared (exact Score-CAM needs 1280 forwards per image and method; use --scorecam)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
