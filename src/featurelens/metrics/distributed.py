"""``featurelens evaluate --ray``: the metrics of a folder of images, batch by batch, on the executors of
:mod:`featurelens.network.executor` (in-process or Ray workers that each load the model once).

Each batch of images is evaluated by :func:`featurelens.metrics.run.evaluate_classifier` in a worker;
the driver joins the per-sample values (a table value is the NaN-mean of its per-sample values, as in
one run) and concatenates the deletion / insertion curves. What differs from a single in-process run:
the random baseline's maps and ROAD's noise are drawn per batch (seeded), and the model-randomisation
sanity check and the pointing metrics (boxes) are not available here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featurelens.errors import ImageLoadError
from featurelens.metrics.evaluate import NEEDS_BOXES, EvaluationTable, MethodScores, _nanmean, resolve_metrics
from featurelens.metrics.run import EvaluationRun, method_options_for
from featurelens.metrics.scoring import MetricError


@dataclass(frozen=True)
class LoadSpec:
    """Worker factory: the model, loaded once per worker (``threads`` torch threads)."""

    model: str
    trust: bool = False
    threads: int | None = None

    def __call__(self) -> Any:
        from featurelens.models import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        return load_model(self.model, trust=self.trust)


@dataclass(frozen=True)
class EvaluateBatch:
    """Batch function: ``(spec, batch) -> [result, None, ...]``; the batch's table rides on the first slot."""

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    layer: str | None = None
    steps: int = 50
    baseline: str = "blur"
    batch_size: int = 16
    options: dict[str, Any] = field(default_factory=dict)
    road_percentiles: tuple[float, ...] | None = None

    def __call__(self, spec: Any, batch: Any) -> list[Any]:
        from featurelens.imaging import load_image
        from featurelens.metrics.run import evaluate_classifier

        names, images, failed = [], [], []
        for image_id, path in zip(batch.ids, batch.payloads):
            try:
                images.append(load_image(path))
                names.append(image_id)
            except ImageLoadError as exc:
                failed.append((image_id, str(exc).split(": ", 1)[-1]))
        table = None
        if images:
            table = evaluate_classifier(
                spec.model, spec.prepare(images), self.methods, self.metrics,
                layer=self.layer or spec.resolve_default_layer(), steps=self.steps, baseline=self.baseline,
                batch_size=self.batch_size, method_options=self.options, road_percentiles=self.road_percentiles)
        out: list[Any] = [None] * len(batch)
        out[0] = {"names": names, "failed": failed, "table": table}
        return out


def merge_tables(tables: Sequence[EvaluationTable]) -> EvaluationTable:
    """One table from per-batch tables of the same methods and columns: per-sample values and curves
    concatenated in order, values the NaN-mean of the joined per-sample values."""
    from featurelens.metrics.deletion import Curve

    first = tables[0]
    rows = []
    for r0 in first.rows:
        parts = [t.row(r0.method) for t in tables]
        per_sample = {c: torch.cat([torch.as_tensor(p.per_sample[c]).reshape(-1) for p in parts])
                      for c in r0.per_sample}
        curves = {m: Curve(c0.fractions, torch.cat([p.curves[m].scores for p in parts]),
                           torch.cat([p.curves[m].auc for p in parts]), c0.mode)
                  for m, c0 in r0.curves.items()}
        rows.append(MethodScores(r0.method, {c: _nanmean(per_sample[c]) for c in first.columns}, per_sample,
                                 curves, None, r0.is_baseline))
    return EvaluationTable(rows, list(first.columns), dict(first.meta))


def evaluate_folder_batched(
    model: str,
    folder: str | Path,
    methods: Sequence[str],
    metrics: str | Sequence[str],
    *,
    executor: Any,
    images_per_batch: int = 8,
    trust: bool = False,
    threads: int | None = None,
    layer: str | None = None,
    steps: int = 50,
    baseline: str = "blur",
    batch_size: int = 16,
    scorecam_top_n: int | None = None,
    road_percentiles: Sequence[float] | None = None,
    progress: Any = False,
) -> EvaluationRun:
    """Evaluate every usable image of ``folder`` in batches of ``images_per_batch`` on ``executor``."""
    from featurelens.network.datasets import read_files

    names = resolve_metrics(metrics)
    if any(m in NEEDS_BOXES for m in names) or "sanity" in names:
        raise MetricError("the pointing metrics and the sanity check are not available with --ray; "
                          "run them in-process")
    dataset = read_files([folder])
    items = [(it.path.name, str(it.path)) for it in dataset.items]
    job = EvaluateBatch(tuple(methods), tuple(names), layer, steps, baseline, batch_size,
                        method_options_for(scorecam_top_n), tuple(road_percentiles) if road_percentiles else None)
    results: dict[int, dict[str, Any]] = {}
    executor.run(items, LoadSpec(model, trust, threads), job, lambda b, r: results.__setitem__(b.index, r[0]),
                 batch_size=images_per_batch, progress=progress)
    done = [results[k] for k in sorted(results)]
    skipped = [(s.where, s.reason) for s in dataset.skipped] + [f for d in done for f in d["failed"]]
    tables = [d["table"] for d in done if d["table"] is not None]
    if not tables:
        raise ImageLoadError(f"{folder}: no usable image in the folder ({len(skipped)} file(s) skipped)")
    details = {"model": model, "layer": layer or "the model's default layer",
               "target": "predicted class, softmax probability",
               "execution": f"{type(executor).__name__}, {len(tables)} batch(es) of up to {images_per_batch} images"}
    return EvaluationRun(merge_tables(tables), [n for d in done for n in d["names"]], skipped, details)
