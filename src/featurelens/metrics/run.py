"""Evaluate saliency methods on a folder of images with a classifier (what ``featurelens evaluate`` runs).

    from featurelens.models import load_model
    run = evaluate_classifier_folder(load_model(), "photos/", ["gradcam", "scorecam"],
                                     ["deletion", "insertion", "adic"], steps=20)
    print(run.table.to_text()); write_run(run, "eval-out/")

Each image is explained for the class the model predicts (its top-1), and scored with that class's
softmax probability. Files in the folder without an image suffix, and image files that cannot be
decoded, are skipped and counted (listed in every output). Ground-truth boxes for the pointing
metrics come from a CSV ``image,x0,y0,x1,y1`` in the image's own pixel coordinates (rescaled to the
model input); several rows for one image are a union.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from featurelens.errors import FeaturelensError, ImageLoadError
from featurelens.imaging import list_images, load_image
from featurelens.metrics.evaluate import NEEDS_BOXES, EvaluationTable, evaluate_maps, resolve_metrics
from featurelens.metrics.scoring import MetricError, class_score_fn


@dataclass
class EvaluationRun:
    """An evaluated table plus what it was run on."""

    table: EvaluationTable
    sample_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    title: str = "featurelens evaluation"


def load_folder(folder: str | Path) -> tuple[list[Path], list[Image.Image], list[tuple[str, str]]]:
    """Images of ``folder`` (sorted), their RGB PIL images, and the skipped files with the reason."""
    paths, others = list_images(folder)
    skipped = [(p.name, "not an image file") for p in others]
    kept, images = [], []
    for p in paths:
        try:
            images.append(load_image(p))
            kept.append(p)
        except ImageLoadError as exc:
            skipped.append((p.name, str(exc).split(": ", 1)[-1]))
    if not kept:
        extra = f" ({len(skipped)} other file(s) skipped)" if skipped else ""
        raise ImageLoadError(f"{folder}: no usable image in the folder{extra}")
    return kept, images, skipped


def read_boxes(
    path: str | Path, images: dict[str, tuple[int, int]], input_size: tuple[int, int]
) -> list[list[list[float]]]:
    """Boxes from a CSV ``image,x0,y0,x1,y1`` rescaled from each image's size ``(w, h)`` to the model input.

    ``image`` is the file name (or stem); every image needs at least one box.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"{path}: boxes file not found")
    by_name: dict[str, list[list[float]]] = {n: [] for n in images}
    stems = {Path(n).stem: n for n in images}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        for line_no, row in enumerate(reader, 1):
            if not row or row[0].strip().lower() in ("image", "") or row[0].startswith("#"):
                continue
            if len(row) != 5:
                raise MetricError(f"{path}:{line_no}: expected image,x0,y0,x1,y1, got {row!r}")
            name = row[0].strip()
            key = name if name in by_name else stems.get(Path(name).stem)
            if key is None:
                continue  # a box for an image that is not evaluated
            try:
                by_name[key].append([float(v) for v in row[1:]])
            except ValueError:
                raise MetricError(
                    f"{path}:{line_no}: box coordinates must be numbers, got {row[1:]!r}"
                ) from None
    missing = [n for n, b in by_name.items() if not b]
    if missing:
        raise MetricError(f"{path}: no box for {len(missing)} image(s): {', '.join(missing)}")
    out = []
    ih, iw = input_size
    for name, boxes in by_name.items():
        w, h = images[name]
        out.append([[x0 * iw / w, y0 * ih / h, x1 * iw / w, y1 * ih / h] for x0, y0, x1, y1 in boxes])
    return out


def method_options_for(scorecam_top_n: int | None) -> dict[str, dict[str, Any]]:
    return {"scorecam": {"top_n": scorecam_top_n}} if scorecam_top_n else {}


def explain_maps(
    model: nn.Module,
    layer: str | Sequence[str],
    inputs: Tensor,
    methods: Sequence[str],
    classes: Tensor,
    *,
    batch_size: int = 8,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """``{method: maps[B, H, W]}`` explaining ``classes`` (one per sample), in batches of images."""
    from featurelens.api import Explainer
    from featurelens.targets import ClassTarget

    explainer = Explainer(model, layer)
    parts: dict[str, list[Tensor]] = {m: [] for m in methods}
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size]
        target = ClassTarget(classes[start : start + batch_size])
        exps = explainer.explain(x, list(methods), target, method_options=method_options)
        for name, exp in zip(methods, exps.values()):
            parts[name].append(exp.map.detach())
    return {m: torch.cat(v) for m, v in parts.items()}


def evaluate_classifier(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[str],
    metrics: str | Sequence[str],
    *,
    layer: str | Sequence[str],
    classes: Tensor | None = None,
    steps: int = 50,
    baseline: str = "blur",
    batch_size: int = 64,
    explain_batch_size: int = 8,
    boxes: Any = None,
    tolerance: int = 0,
    method_options: dict[str, dict[str, Any]] | None = None,
    road_percentiles: Sequence[float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvaluationTable:
    """Explain ``inputs`` with every method (the predicted class unless ``classes``) and evaluate.

    The model is put in eval mode (batch norm must not mix the perturbed copies of a batch).
    """
    from featurelens.methods import get_method

    names = resolve_metrics(metrics)
    canonical = [get_method(m).name for m in methods]  # unknown names: MethodError listing the valid ones
    if not canonical:
        raise MetricError("no method given")
    model.eval()
    if classes is None:
        with torch.no_grad():
            classes = model(inputs[:explain_batch_size]).argmax(1)
            for start in range(explain_batch_size, inputs.shape[0], explain_batch_size):
                classes = torch.cat([classes, model(inputs[start : start + explain_batch_size]).argmax(1)])
    maps = explain_maps(
        model, layer, inputs, canonical, classes, batch_size=explain_batch_size, method_options=method_options
    )
    fns = None
    if "sanity" in names:
        fns = {}
        for m in canonical:

            def fn(mod: nn.Module, x: Tensor, m: str = m) -> Tensor:
                return explain_maps(
                    mod, layer, x, [m], classes, batch_size=explain_batch_size, method_options=method_options
                )[m]

            fns[m] = fn
    score = class_score_fn(model, classes, kind="probability")
    return evaluate_maps(
        score,
        inputs,
        maps,
        names,
        steps=steps,
        baseline=baseline,  # type: ignore[arg-type]
        batch_size=batch_size,
        boxes=boxes,
        tolerance=tolerance,
        model=model,
        model_explain_fns=fns,
        progress=progress,
        **({"road_percentiles": road_percentiles} if road_percentiles else {}),
    )


def evaluate_classifier_folder(
    spec: Any,
    folder: str | Path,
    methods: Sequence[str],
    metrics: str | Sequence[str],
    *,
    layer: str | Sequence[str] | None = None,
    steps: int = 50,
    baseline: str = "blur",
    batch_size: int = 64,
    boxes_file: str | Path | None = None,
    tolerance: int = 0,
    scorecam_top_n: int | None = None,
    road_percentiles: Sequence[float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvaluationRun:
    """Load every usable image of ``folder`` and run :func:`evaluate_classifier` with ``spec``'s model."""
    names = resolve_metrics(metrics)
    if any(m in NEEDS_BOXES for m in names) and boxes_file is None:
        raise MetricError(
            "the pointing metrics need ground-truth boxes: give --boxes FILE (CSV image,x0,y0,x1,y1)"
        )
    paths, images, skipped = load_folder(folder)
    sizes = {p.name: im.size for p, im in zip(paths, images)}
    boxes = read_boxes(boxes_file, sizes, spec.input_size) if boxes_file is not None else None
    inputs = spec.prepare(images)
    layer = layer or spec.resolve_default_layer()
    table = evaluate_classifier(
        spec.model,
        inputs,
        methods,
        names,
        layer=layer,
        steps=steps,
        baseline=baseline,
        batch_size=batch_size,
        boxes=boxes,
        tolerance=tolerance,
        method_options=method_options_for(scorecam_top_n),
        road_percentiles=road_percentiles,
        progress=progress,
    )
    details = {
        "model": spec.name,
        "layer": layer if isinstance(layer, str) else ", ".join(layer),
        "target": "predicted class, softmax probability",
    }
    if scorecam_top_n:
        details["Score-CAM"] = f"fast mode, top {scorecam_top_n} channels"
    return EvaluationRun(table, [p.name for p in paths], skipped, details)


def read_pairs(path: str | Path) -> list[tuple[Path, Path]]:
    """Pairs from a CSV ``image_a,image_b`` (paths relative to the CSV's folder unless absolute).

    Raises :class:`MetricError` listing every missing file at once.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"{path}: pairs file not found")
    pairs: list[tuple[Path, Path]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), 1):
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) != 2:
                raise MetricError(f"{path}:{line_no}: expected two columns image_a,image_b, got {len(cells)}")
            if line_no == 1 and [c.lower() for c in cells] == ["image_a", "image_b"]:
                continue
            a, b = (Path(c) if Path(c).is_absolute() else path.parent / c for c in cells)
            pairs.append((a, b))
    if not pairs:
        raise MetricError(f"{path}: no pairs in the file")
    missing = sorted({str(p) for pair in pairs for p in pair if not p.is_file()})
    if missing:
        raise MetricError(
            f"{path}: {len(missing)} file(s) named in the pairs do not exist: {', '.join(missing)}"
        )
    return pairs


def write_run(run: EvaluationRun, out_dir: str | Path) -> dict[str, Path]:
    """Write every output file of ``run`` (see :func:`featurelens.metrics.output.write_outputs`)."""
    from featurelens.metrics.output import write_outputs

    try:
        return write_outputs(
            run.table,
            out_dir,
            sample_names=run.sample_names,
            title=run.title,
            skipped=run.skipped,
            details=run.details,
        )
    except OSError as exc:
        raise FeaturelensError(f"{out_dir}: cannot write the results ({exc.strerror or exc})") from None
