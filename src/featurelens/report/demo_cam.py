"""Demo section: the classifier CAM family on real photos.

Explains scikit-image's bundled photos with EfficientNet-Lite0 and *every* registered classifier
method (:func:`featurelens.methods.method_names`), all methods of a batch sharing one forward and
one backward pass. The page shows each photo with its top-5 classes and probabilities, the overlay
of every method for the predicted class, and an images × methods comparison grid.

Quick mode (the test suite) uses two photos and Score-CAM's fast mode (top-N channels).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch
from PIL import Image

from featurelens.demo import DemoContext, DemoSection, SectionFailed
from featurelens.report.html import Raw, error_box, escape, figure, gallery, table

SUBDIR = "cam"
QUICK_PHOTOS = ["coffee", "chelsea"]
#: Score-CAM channels scored in quick mode (its fast mode); the full demo runs exact Score-CAM
QUICK_SCORECAM_TOP_N = 32


def _options(name: str, quick: bool) -> dict[str, Any]:
    """Per-method options for the demo: fast mode for methods that offer ``top_n`` (Score-CAM) in quick mode."""
    from featurelens.methods import METHODS

    if not quick:
        return {}
    params = inspect.signature(METHODS[name].__init__).parameters
    return {"top_n": QUICK_SCORECAM_TOP_N} if "top_n" in params else {}


def _bar(p: float) -> Raw:
    width = max(1, round(110 * p))
    return Raw(
        f'<span style="white-space:nowrap"><span class="bar" style="width:{width}px"></span> {p:.1%}</span>'
    )


def section(ctx: DemoContext) -> DemoSection:
    """Explain the sample photos with every registered method; write overlays and the grid."""
    from featurelens.api import Explainer
    from featurelens.methods import METHODS, method_names
    from featurelens.result import comparison_grid

    spec = ctx.spec()
    photos = ctx.photos()
    if ctx.quick:
        photos = {k: v for k, v in photos.items() if k in QUICK_PHOTOS} or dict(list(photos.items())[:3])
    names, images = list(photos), list(photos.values())
    methods = method_names()
    layer = spec.resolve_default_layer()
    out = ctx.out_dir / SUBDIR
    out.mkdir(parents=True, exist_ok=True)

    x = spec.prepare(images)
    with torch.no_grad():
        probs = torch.softmax(spec.model(x).float(), dim=1).cpu()
    top = torch.topk(probs, k=5, dim=1)

    explainer = Explainer(spec.model, layer)
    exps: dict[str, Any] = {}
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    for method in methods:  # one method at a time so a slow or failing one is measured and isolated
        ctx.log(f"  cam: {method} on {len(images)} photos")
        t0 = time.perf_counter()
        try:
            exps[method] = explainer.explain(
                x, method, None, method_options={method: _options(method, ctx.quick)}
            ).cpu()
        except Exception as exc:  # a broken method must not hide the others
            failures[method] = f"{type(exc).__name__}: {exc}"
        timings[method] = time.perf_counter() - t0

    files: list[str] = []
    cards: list[str] = []
    summary_images = []
    for i, (name, image) in enumerate(zip(names, images)):
        pred = int(top.indices[i, 0])
        pred_name, pred_p = spec.class_name(pred), float(top.values[i, 0])
        rows = [(spec.class_name(int(c)), _bar(float(p))) for c, p in zip(top.indices[i], top.values[i])]
        original = out / f"{name}.jpg"
        image.save(original, quality=90)
        files.append(f"{SUBDIR}/{original.name}")
        figs = [
            figure(
                image,
                f"{name} ({image.width}×{image.height})",
                max_size=260,
                fmt="jpeg",
                link=f"{SUBDIR}/{original.name}",
            )
        ]
        for method, exp in exps.items():
            ov = exp.overlay(image, i)
            path = out / f"{name}_{method}.png"
            Image.fromarray(ov).save(path)
            files.append(f"{SUBDIR}/{path.name}")
            figs.append(
                figure(
                    ov,
                    Raw(f"<b>{escape(method)}</b> · {escape(pred_name)} {pred_p:.0%}"),
                    max_size=260,
                    fmt="jpeg",
                    link=f"{SUBDIR}/{path.name}",
                )
            )
        cards.append(
            f"<h3>{escape(name)} → {escape(pred_name)} <span class='muted'>({pred_p:.1%})</span></h3>"
            f"<div style='display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap'>"
            f"<div style='width:290px'>{table(rows, ['top-5 class', 'probability'])}</div>"
            f"<div style='flex:1;min-width:300px'>{gallery(figs, cell=165)}</div></div>"
        )
        summary_images.append(
            {"photo": name, "class": pred_name, "index": pred, "probability": round(pred_p, 4)}
        )

    grid_html = ""
    if exps:
        grid = comparison_grid(images, exps, row_labels=names, cell=160)
        grid_path = out / "comparison_grid.png"
        grid.save(grid_path)
        files.append(f"{SUBDIR}/{grid_path.name}")
        grid_html = "<h3>Comparison grid (photos × methods)</h3>" + figure(
            grid,
            "Each row: the photo, then every method's map for the predicted class.",
            fmt="png",
            link=f"{SUBDIR}/{grid_path.name}",
        )

    method_rows = []
    for m in methods:
        opts = _options(m, ctx.quick)
        mode = "fast mode: " + ", ".join(f"{k}={v}" for k, v in opts.items()) if opts else "exact"
        if m in failures:
            mode = "FAILED"
        method_rows.append((m, getattr(METHODS[m], "reference", "") or "", mode, f"{timings[m]:.2f} s"))
    intro = (
        f"<p>Model <b>{escape(spec.name)}</b> (ImageNet-1k, offline), explained layer <code>{escape(layer)}</code>. "
        f"Each overlay shows where the evidence for the <b>predicted class</b> lies (red = strong), for every "
        f"registered method ({len(methods)}). Probabilities are the model's softmax outputs.</p>"
    )
    method_table = "<h3>Methods</h3>" + table(
        method_rows, ["method", "paper", "mode", f"time for {len(images)} photos"]
    )
    if failures:
        method_table += "".join(error_box(f"{m} failed", msg) for m, msg in failures.items())
    html = intro + "".join(cards) + grid_html + method_table
    summary = {
        "model": spec.name,
        "layer": layer,
        "methods": methods,
        "failed_methods": failures,
        "seconds": {m: round(t, 3) for m, t in timings.items()},
        "photos": summary_images,
    }
    if failures:
        raise SectionFailed(
            f"method(s) failed: {', '.join(failures)}", html=html, files=files, summary=summary
        )
    return DemoSection("Classifier saliency: the CAM family on real photos", html, files, summary)
