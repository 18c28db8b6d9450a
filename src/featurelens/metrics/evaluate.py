"""Evaluate several methods' maps with several metrics into one table (baselines included).

    table = evaluate_maps(score_fn, inputs, {"gradcam": maps, "scorecam": explain_fn},
                          ["deletion", "insertion", "adic"], steps=50)
    print(table.to_text()); table.to_markdown(); table.write_csv("results.csv")

Each entry of ``maps`` is either a ``[B, H, W]`` tensor or an explanation function
``explain_fn(inputs) -> maps[B, H, W]``; the random and centre-Gaussian baselines are added as rows
unless ``include_baselines=False``. Metric names (case and ``-``/``_`` ignored):

========================  ===========================================  =========
name (aliases)            columns                                      better
========================  ===========================================  =========
deletion                  ``deletion_auc``                             lower
insertion                 ``insertion_auc``                            higher
adic (adcc, drop, ad/ic)  ``average_drop`` %, ``increase_confidence`` %  lower / higher
pointing                  ``pointing``  (accuracy, needs boxes/masks)  higher
energy-pointing (ebpg)    ``energy_pointing`` (needs boxes/masks)      higher
sanity (randomisation)    ``sanity_rho`` (needs the model)             lower
road                      ``road_morf``, ``road_lerf``,                lower / higher
                          ``road_combined`` (score changes)            / higher
confidence-change (cc)    ``confidence_change`` (score(x·m) − score(x)) higher
========================  ===========================================  =========
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from featurelens.metrics.baselines import centre_gaussian_maps, random_maps
from featurelens.metrics.confidence import average_drop_increase
from featurelens.metrics.deletion import BaselineLike, Curve, deletion_curve, prepare_maps
from featurelens.metrics.pointing import BoxesLike, energy_pointing_game, pointing_game
from featurelens.metrics.road import DEFAULT_PERCENTILES, confidence_change, road
from featurelens.metrics.sanity import ModelExplainFn, SanityResult, model_randomisation_check
from featurelens.metrics.scoring import MetricError, ScoreFn

ExplainFn = Callable[[Tensor], Tensor]
MapsLike = Tensor | ExplainFn

METRICS: dict[str, tuple[str, ...]] = {
    "deletion": ("deletion_auc",),
    "insertion": ("insertion_auc",),
    "adic": ("average_drop", "increase_confidence"),
    "pointing": ("pointing",),
    "energy-pointing": ("energy_pointing",),
    "sanity": ("sanity_rho",),
    "road": ("road_morf", "road_lerf", "road_combined"),
    "confidence-change": ("confidence_change",),
}
_ALIASES = {
    "adcc": "adic",
    "drop": "adic",
    "averagedrop": "adic",
    "adic": "adic",
    "ad": "adic",
    "ic": "adic",
    "ebpg": "energy-pointing",
    "energy": "energy-pointing",
    "energypointing": "energy-pointing",
    "pointinggame": "pointing",
    "randomisation": "sanity",
    "randomization": "sanity",
    "roadcombined": "road",
    "removeanddebias": "road",
    "cc": "confidence-change",
    "confidencechange": "confidence-change",
    "cammultimage": "confidence-change",
}
#: +1 when higher is better, -1 when lower is better
DIRECTION = {
    "deletion_auc": -1,
    "insertion_auc": 1,
    "average_drop": -1,
    "increase_confidence": 1,
    "pointing": 1,
    "energy_pointing": 1,
    "sanity_rho": -1,
    "road_morf": -1,
    "road_lerf": 1,
    "road_combined": 1,
    "confidence_change": 1,
}
BASELINE_ROWS = ("random", "centre")
NEEDS_BOXES = ("pointing", "energy-pointing")


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "").replace("/", "")


def resolve_metrics(names: str | Sequence[str]) -> list[str]:
    """Canonical metric names; raises :class:`MetricError` listing the valid ones for an unknown name."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        raise MetricError(f"no metric given; valid metrics: {', '.join(METRICS)}")
    table = {_key(m): m for m in METRICS} | _ALIASES
    out: list[str] = []
    for n in names:
        canon = table.get(_key(n))
        if canon is None:
            raise MetricError(
                f"unknown metric {n!r}; valid metrics: {', '.join(METRICS)} (aliases: adcc/drop → adic, ebpg → energy-pointing)"
            )
        if canon not in out:
            out.append(canon)
    return out


@dataclass
class MethodScores:
    """One row of the table: a method's mean metrics, per-sample values and curves."""

    method: str
    values: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, Tensor] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    sanity: SanityResult | None = None
    is_baseline: bool = False


@dataclass
class EvaluationTable:
    """Rows of :class:`MethodScores` with the metric columns in order, plus run metadata."""

    rows: list[MethodScores]
    columns: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self, method: str) -> MethodScores:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)

    def value(self, method: str, column: str) -> float:
        return self.row(method).values[column]

    def best(self, column: str) -> str | None:
        """The best non-baseline method on ``column`` (None when no finite value; first on ties)."""
        rows = [r for r in self.rows if not r.is_baseline and math.isfinite(r.values.get(column, math.nan))]
        if not rows:
            return None
        return max(rows, key=lambda r: DIRECTION[column] * r.values[column]).method

    def best_methods(self, column: str) -> set[str]:
        """Every non-baseline method tied for the best value on ``column`` (empty when all rows,
        baselines included, have the same value: nothing to highlight)."""
        best = self.best(column)
        if best is None:
            return set()
        values = [r.values.get(column, math.nan) for r in self.rows]
        top = self.value(best, column)
        if all(v == top for v in values):
            return set()
        return {r.method for r in self.rows if not r.is_baseline and r.values.get(column) == top}

    def header(self) -> list[str]:
        arrows = {1: "↑", -1: "↓"}
        return ["method", *[f"{c} {arrows[DIRECTION[c]]}" for c in self.columns]]

    def formatted(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            name = f"{r.method} (baseline)" if r.is_baseline else r.method
            out.append([name, *[_fmt(r.values.get(c, math.nan), c) for c in self.columns]])
        return out

    def to_text(self) -> str:
        rows = [self.header(), *self.formatted()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))
            )
            for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A Markdown table; the best method per column in bold."""
        best = {c: self.best_methods(c) for c in self.columns}
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", *["---:"] * len(self.columns)]) + "|"]
        for r, cells in zip(self.rows, self.formatted()):
            shown = [cells[0]] + [
                f"**{cells[i + 1]}**" if r.method in best[c] else cells[i + 1]
                for i, c in enumerate(self.columns)
            ]
            lines.append("| " + " | ".join(shown) + " |")
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> Path:
        """One row per method: ``method, baseline, <columns>`` (full precision)."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["method", "baseline", *self.columns])
            for r in self.rows:
                w.writerow(
                    [
                        r.method,
                        str(r.is_baseline).lower(),
                        *[_num(r.values.get(c, math.nan)) for c in self.columns],
                    ]
                )
        return path

    def write_per_sample_csv(self, path: str | Path, sample_names: Sequence[str]) -> Path:
        """One row per (method, sample) with the per-sample value of every column."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["method", "sample", *self.columns])
            for r in self.rows:
                for i, s in enumerate(sample_names):
                    vals = [r.per_sample[c][i] if c in r.per_sample else math.nan for c in self.columns]
                    w.writerow([r.method, s, *[_num(float(v)) for v in vals]])
        return path


def _fmt(v: float, column: str) -> str:
    if not math.isfinite(v):
        return "n/a"
    if column in ("average_drop", "increase_confidence"):
        return f"{v:.1f}"
    return f"{v:.3f}"


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.6g}"


def as_maps(maps: MapsLike, inputs: Tensor) -> Tensor:
    """Precomputed maps, or the result of ``explain_fn(inputs)``, checked and at the input size."""
    return prepare_maps(maps, inputs)


def evaluate_maps(
    score_fn: ScoreFn,
    inputs: Tensor,
    maps: Mapping[str, MapsLike],
    metrics: str | Sequence[str] = ("deletion", "insertion", "adic"),
    *,
    steps: int = 50,
    baseline: BaselineLike = "blur",
    adic_baseline: BaselineLike = "constant",
    batch_size: int = 64,
    boxes: BoxesLike | None = None,
    masks: Tensor | None = None,
    tolerance: int = 0,
    model: nn.Module | None = None,
    model_explain_fns: Mapping[str, ModelExplainFn] | None = None,
    sanity_stages: Sequence[str] | None = None,
    include_baselines: bool = True,
    road_percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    road_noise: float = 0.01,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> EvaluationTable:
    """Every metric for every method (and the random / centre baselines); see the module docstring.

    ``boxes``/``masks`` are in input (model) pixel coordinates and are needed for the pointing
    metrics; ``model`` and ``model_explain_fns`` (``{method: (model, inputs) -> maps}``) for the
    sanity check.
    """
    names = resolve_metrics(metrics)
    if any(m in NEEDS_BOXES for m in names) and boxes is None and masks is None:
        raise MetricError("the pointing metrics need ground-truth boxes or masks")
    if "sanity" in names and (model is None or model_explain_fns is None):
        raise MetricError(
            "the sanity check needs the model and a (model, inputs) -> maps function per method"
        )
    if not maps:
        raise MetricError("no method maps to evaluate")
    b = inputs.shape[0]
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    entries: list[tuple[str, MapsLike, bool]] = [(k, v, False) for k, v in maps.items()]
    if include_baselines:
        entries.append(("random", random_maps(b, size, seed=seed, device=inputs.device), True))
        entries.append(("centre", centre_gaussian_maps(b, size, device=inputs.device), True))
    columns = [c for m in names for c in METRICS[m]]
    rows = []
    for method, source, is_base in entries:
        if progress:
            progress(method)
        m = as_maps(source, inputs)
        row = MethodScores(method=method, is_baseline=is_base)
        for metric in names:
            if metric in ("deletion", "insertion"):
                curve = deletion_curve(
                    score_fn, inputs, m, steps=steps, mode=metric, baseline=baseline, batch_size=batch_size
                )  # type: ignore[arg-type]
                row.curves[metric] = curve
                row.per_sample[f"{metric}_auc"] = curve.auc.cpu()
            elif metric == "adic":
                res = average_drop_increase(
                    score_fn, inputs, m, baseline=adic_baseline, batch_size=batch_size
                )
                row.per_sample["average_drop"] = 100.0 * res.drop
                row.per_sample["increase_confidence"] = 100.0 * res.increase.float()
            elif metric == "road":
                res = road(
                    score_fn, inputs, m, percentiles=road_percentiles, noise=road_noise, seed=seed,
                    batch_size=batch_size,
                )
                row.per_sample["road_morf"] = res.morf_mean
                row.per_sample["road_lerf"] = res.lerf_mean
                row.per_sample["road_combined"] = res.combined
            elif metric == "confidence-change":
                row.per_sample["confidence_change"] = confidence_change(score_fn, inputs, m, batch_size=batch_size)
            elif metric == "pointing":
                row.per_sample["pointing"] = pointing_game(m, boxes, masks, tolerance=tolerance).hits.float()
            elif metric == "energy-pointing":
                row.per_sample["energy_pointing"] = energy_pointing_game(m, boxes, masks)
            elif metric == "sanity":
                assert model is not None and model_explain_fns is not None
                fn = model_explain_fns.get(method)
                if fn is None:  # baselines ignore the model: their maps cannot change
                    fixed = m

                    def fn(_model: nn.Module, _x: Tensor, fixed: Tensor = fixed) -> Tensor:
                        return fixed

                row.sanity = model_randomisation_check(model, fn, inputs, stages=sanity_stages, seed=seed)
                row.per_sample["sanity_rho"] = row.sanity.correlations[-1]
        row.values = {c: _nanmean(row.per_sample[c]) for c in columns}
        rows.append(row)
    meta = {
        "steps": steps,
        "baseline": baseline if isinstance(baseline, (str, int, float)) else "tensor",
        "samples": b,
        "metrics": names,
    }
    return EvaluationTable(rows=rows, columns=columns, meta=meta)


def _nanmean(t: Tensor) -> float:
    t = t.float()
    valid = ~torch.isnan(t)
    return float(t[valid].mean()) if bool(valid.any()) else math.nan
