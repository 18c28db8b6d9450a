"""Metric anchors: batched vs unbatched deletion, and our CAM maps vs torchcam's.

1. Speed: the same deletion curve (same maps, same model, same steps) computed by
   :func:`featurelens.metrics.deletion_curve` (rows mixing samples and steps, ``batch_size`` per
   forward; several batch sizes) and by a plain loop that scores one perturbed image per forward
   pass. Each is run twice and the second (warm) run is timed, in the same process; the script
   prints the ratios and checks that the curves agree (``allclose``).
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
    n_rows = args.images * (args.steps + 1)

    def timed(fn):  # type: ignore[no-untyped-def]
        fn()  # warm-up run of the same shapes: neither side pays first-call allocation costs
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    loop, t_loop = timed(lambda: unbatched_deletion(score, x, maps, args.steps))
    print(f"unbatched loop: {n_rows} forwards of 1 image: {t_loop:.2f} s")
    same = True
    for bs in sorted({8, 16, args.batch_size}):
        curve, t_b = timed(lambda bs=bs: deletion_curve(score, x, maps, steps=args.steps, batch_size=bs))
        ok = torch.allclose(curve.scores, loop, atol=1e-5)
        same = same and ok
        print(
            f"batched, batch {bs:3d}: {-(-n_rows // bs):3d} forwards: {t_b:.2f} s  ->  {t_loop / t_b:.2f}x the loop's speed "
            f"(allclose {ok}, max diff {float((curve.scores - loop).abs().max()):.1e})"
        )

    # a small CNN, where the per-call overhead dominates: the case batching is for (and any GPU)
    torch.manual_seed(0)
    small = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).eval()
    xs = torch.randn(8, 3, 32, 32)
    ms = torch.rand(8, 32, 32)
    s_small = class_score_fn(small, torch.zeros(8, dtype=torch.long))
    small_loop, t_sl = timed(lambda: unbatched_deletion(s_small, xs, ms, 50))
    small_curve, t_sb = timed(lambda: deletion_curve(s_small, xs, ms, steps=50, batch_size=args.batch_size))
    ok = torch.allclose(small_curve.scores, small_loop, atol=1e-5)
    same = same and ok
    print(
        f"small CNN, 8 images 32x32 x 51 steps: loop 408 forwards {t_sl:.3f} s, batched {-(-408 // args.batch_size)} "
        f"forwards {t_sb:.3f} s  ->  {t_sl / t_sb:.1f}x (allclose {ok})"
    )

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
