"""Demo section: the classifier CAM family on real photos.

Explains scikit-image's bundled photos with EfficientNet-Lite0 and *every* registered classifier
method (:func:`featurelens.methods.method_names`; methods registered later appear automatically).
The page shows each photo with its top-5 classes and probabilities, one photos × methods grid of
every method's map for the predicted class, and a table of the methods with their mode and time.

Modes: the default run uses the fast mode of every method that has one (its ``fast_options``:
Score-CAM scores its top-48 channels; SS-CAM and IS-CAM their top-12 with 3 samples), and says so on the page; ``full`` runs every
method exactly (exact Score-CAM); ``quick`` (the test suite) is the default mode on two photos.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from featurelens.demo import DemoContext, DemoSection, SectionFailed
from featurelens.report.html import Raw, error_box, escape, figure, table

SUBDIR = "cam"
QUICK_PHOTOS = ["coffee", "chelsea"]


def demo_options(name: str, full: bool) -> dict[str, Any]:
    """Per-method options for the demo: the method's ``fast_options`` (its fast mode, if it has one),
    unless ``full`` (exact everything)."""
    from featurelens.methods import METHODS

    return {} if full else dict(METHODS[name].fast_options)


def _mode(name: str, full: bool) -> str:
    """How a method runs in the demo, for the page: ``exact`` or its fast mode's settings."""
    from featurelens.methods import get_method

    if not demo_options(name, full):
        return "exact"
    method = get_method(name, **demo_options(name, full))
    parts = [f"top {method.top_n} channels"] if getattr(method, "top_n", None) else []
    if "num_samples" in demo_options(name, full):
        parts.append(f"{method.num_samples} samples")
    return f"fast mode ({', '.join(parts)})" if parts else "fast mode"


def _bar(p: float) -> Raw:
    width = max(1, round(110 * p))
    return Raw(
        f'<span style="white-space:nowrap"><span class="bar" style="width:{width}px"></span> {p:.1%}</span>'
    )


def section(ctx: DemoContext) -> DemoSection:
    """Explain the sample photos with every registered method; write the photos and one grid."""
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
                x, method, None, method_options={method: demo_options(method, ctx.full)}
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
        photo = figure(
            image, f"{name} ({image.width}×{image.height})", max_size=200, fmt="jpeg",
            link=f"{SUBDIR}/{original.name}",
        )
        cards.append(
            f"<div style='width:420px'><h3>{escape(name)} → {escape(pred_name)} "
            f"<span class='muted'>({pred_p:.1%})</span></h3>"
            f"<div style='display:flex;gap:10px;align-items:flex-start'>{photo}"
            f"<div>{table(rows, ['top-5 class', 'probability'])}</div></div></div>"
        )
        summary_images.append(
            {"photo": name, "class": pred_name, "index": pred, "probability": round(pred_p, 4)}
        )

    grid_html = ""
    if exps:
        grid = comparison_grid(images, exps, row_labels=names, cell=128 if len(exps) > 10 else 160)
        grid_path = out / "comparison_grid.png"
        grid.save(grid_path)
        files.append(f"{SUBDIR}/{grid_path.name}")
        grid_html = f"<h3>Comparison grid (photos × {len(exps)} methods)</h3>" + figure(
            grid,
            "Each row: the photo, then every method's map for the predicted class (red = strong). "
            "Click for the full-size PNG.",
            max_size=max(grid.width, grid.height),
            fmt="jpeg",
            link=f"{SUBDIR}/{grid_path.name}",
        )

    modes = {m: _mode(m, ctx.full) for m in methods}
    method_rows = []
    for m in methods:
        mode = "FAILED" if m in failures else modes[m]
        method_rows.append(
            (Raw(f"<b>{escape(m)}</b>"), getattr(METHODS[m], "reference", "") or "", mode, f"{timings[m]:.2f} s")
        )
    fast = [m for m in methods if modes[m] != "exact"]
    if ctx.full:
        mode_note = "<p><b>Full run</b>: every method runs exactly (exact Score-CAM scores every channel).</p>"
    elif fast:
        mode_note = (
            f"<p><b>Fast mode</b> for {', '.join(f'<code>{escape(m)}</code>' for m in fast)} "
            f"({'; '.join(escape(f'{m}: {modes[m]}') for m in fast)}); every other method is exact. "
            "Run <code>featurelens demo --full</code> for the exact maps.</p>"
        )
    else:
        mode_note = "<p>Every method runs exactly.</p>"
    intro = (
        f"<p>Model <b>{escape(spec.name)}</b> (ImageNet-1k, offline), explained layer <code>{escape(layer)}</code>. "
        f"The grid shows where the evidence for the <b>predicted class</b> lies (red = strong), for every "
        f"registered method ({len(methods)}). Probabilities are the model's softmax outputs.</p>" + mode_note
    )
    method_table = "<h3>Methods</h3>" + table(
        method_rows, ["method", "paper", "mode", f"time for {len(images)} photos"]
    )
    if failures:
        method_table += "".join(error_box(f"{m} failed", msg) for m, msg in failures.items())
    photos_html = "<div style='display:flex;gap:18px;flex-wrap:wrap'>" + "".join(cards) + "</div>"
    html = intro + photos_html + grid_html + method_table
    summary = {
        "model": spec.name,
        "layer": layer,
        "methods": methods,
        "modes": modes,
        "full": ctx.full,
        "failed_methods": failures,
        "seconds": {m: round(t, 3) for m, t in timings.items()},
        "photos": summary_images,
    }
    if failures:
        raise SectionFailed(
            f"method(s) failed: {', '.join(failures)}", html=html, files=files, summary=summary
        )
    return DemoSection("Classifier saliency: the CAM family on real photos", html, files, summary)
