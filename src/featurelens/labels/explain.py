"""Local and global explanations from scored labels.

Local (per image and layer): each cluster map with its top labels by score. Clusters whose best label is
the same concept are merged into one region::

    weight = Σ_i w_i,        map = Σ_i w_i · m_i / Σ_i w_i        (plain mean if Σ w_i = 0)

and the merged cluster's label scores are the sums of its members' scores.

Global (per class and layer): for each concept r, ``S(r) = Σ_clusters score(cluster, r)`` over the class's
images; the top ``top_labels_global`` concepts by S, each with the mean weight of the clusters it was given
to and up to ``examples_global`` example clusters from different images (highest score first).

Trends (per class): the share of each concept in a layer, ``S_layer(r) / Σ_r' S_layer(r')``, against the
layer's relative depth ``t ∈ [0, 1]`` (bundle layer order); the least-squares slope says whether the concept
rises (slope ≥ threshold), falls (≤ −threshold) or stays flat with depth.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from featurelens.labels.pipeline import LabelParams, ProcessedLabels
from featurelens.network.bundle import Bundle, Cluster


@dataclass
class LocalCluster:
    """One region of a local explanation: a bundle cluster or several merged ones."""

    cluster_ids: list[str]
    weight: float
    labels: list[tuple[str, float]]  # (representative, score), best first, top-N
    clusters: list[Cluster] = field(default_factory=list, repr=False)

    @property
    def best_label(self) -> str | None:
        return self.labels[0][0] if self.labels else None

    @property
    def merged(self) -> bool:
        return len(self.cluster_ids) > 1

    def image_map(self, bundle: Bundle) -> np.ndarray:
        """The region's map at image resolution: members weight-averaged."""
        return merge_maps(
            [bundle.load_image_map(c) for c in self.clusters], [c.weight for c in self.clusters]
        )

    def feature_map(self, bundle: Bundle) -> np.ndarray:
        """The region's map at feature resolution: members weight-averaged."""
        return merge_maps([bundle.load_map(c) for c in self.clusters], [c.weight for c in self.clusters])


@dataclass
class LocalExplanation:
    image_id: str
    layer: str
    class_name: str
    clusters: list[LocalCluster]  # labelled first (by weight), then unlabelled


def merge_maps(maps: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Σ w_i m_i / Σ w_i (the plain mean when all weights are 0)."""
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in maps])
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    return (np.tensordot(w, stack, axes=1) / w.sum()).astype(np.float32)


def _cluster_labels(processed: ProcessedLabels) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for s in processed.scores:
        out[s.cluster_id][s.representative] = s.score
    return out


def _image_class(processed: ProcessedLabels, bundle: Bundle) -> dict[str, str]:
    classes = {s.image_id: s.class_name for s in processed.scores}
    for im in bundle.images:
        classes.setdefault(im.id, im.true_class or im.predicted_class)
    return classes


def local_explanations(
    bundle: Bundle, processed: ProcessedLabels, params: LabelParams | None = None, merge: bool = True
) -> list[LocalExplanation]:
    """Per image and layer (bundle order): clusters with their top labels, merged by shared best label."""
    p = params or processed.params
    labels = _cluster_labels(processed)
    classes = _image_class(processed, bundle)
    out = []
    for im in bundle.images:
        for layer in bundle.layers:
            members = [c for c in im.clusters if c.layer == layer.name]
            if not members:
                continue
            by_best: dict[str, list[Cluster]] = {}
            regions: list[LocalCluster] = []
            unlabelled: list[LocalCluster] = []
            for c in members:
                lab = labels.get(c.id, {})
                if not lab:
                    unlabelled.append(LocalCluster([c.id], c.weight, [], [c]))
                    continue
                best = sorted(lab.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
                if merge:
                    by_best.setdefault(best, []).append(c)
                else:
                    by_best[c.id] = [c]
            for group in by_best.values():
                summed: dict[str, float] = defaultdict(float)
                for c in group:
                    for rep, s in labels[c.id].items():
                        summed[rep] += s
                top = sorted(summed.items(), key=lambda kv: (-kv[1], kv[0]))[: p.top_labels_local]
                regions.append(
                    LocalCluster([c.id for c in group], float(sum(c.weight for c in group)), top, group)
                )
            regions.sort(key=lambda r: -r.weight)
            out.append(LocalExplanation(im.id, layer.name, classes.get(im.id, ""), regions + unlabelled))
    return out


@dataclass
class GlobalLabel:
    representative: str
    score: float  # summed over the class's clusters in this layer
    mean_weight: float  # mean weight of the clusters the concept was given to
    clusters: int
    examples: list[str]  # cluster ids, from different images, best first


@dataclass
class GlobalExplanation:
    class_name: str
    layer: str
    labels: list[GlobalLabel]  # top-N by score
    total_score: float  # of all concepts in this layer (for shares)


@dataclass
class Trend:
    representative: str
    shares: list[float | None]  # per layer (None: no labels in that layer)
    slope: float
    direction: str  # "rises" | "falls" | "flat"


def global_explanations(
    bundle: Bundle, processed: ProcessedLabels, params: LabelParams | None = None
) -> dict[str, list[GlobalExplanation]]:
    """class -> per-layer global explanations (bundle layer order; layers without labels are skipped)."""
    p = params or processed.params
    out: dict[str, list[GlobalExplanation]] = {}
    classes = sorted({s.class_name for s in processed.scores})
    for class_name in classes:
        per_layer = []
        for layer in bundle.layers:
            cell = [s for s in processed.scores if s.class_name == class_name and s.layer == layer.name]
            if not cell:
                continue
            by_rep: dict[str, list] = defaultdict(list)
            for s in cell:
                by_rep[s.representative].append(s)
            ranked = sorted(by_rep.items(), key=lambda kv: (-sum(s.score for s in kv[1]), kv[0]))
            top = []
            for rep, ss in ranked[: p.top_labels_global]:
                examples, seen = [], set()
                for s in sorted(ss, key=lambda s: (-s.score, -s.weight, s.cluster_id)):
                    if s.image_id in seen:
                        continue
                    seen.add(s.image_id)
                    examples.append(s.cluster_id)
                    if len(examples) >= p.examples_global:
                        break
                top.append(
                    GlobalLabel(
                        representative=rep,
                        score=float(sum(s.score for s in ss)),
                        mean_weight=float(np.mean([s.weight for s in ss])),
                        clusters=len(ss),
                        examples=examples,
                    )
                )
            per_layer.append(
                GlobalExplanation(class_name, layer.name, top, float(sum(s.score for s in cell)))
            )
        out[class_name] = per_layer
    return out


def concept_trends(
    bundle: Bundle,
    processed: ProcessedLabels,
    class_name: str,
    params: LabelParams | None = None,
    concepts: list[str] | None = None,
) -> tuple[list[str], list[Trend]]:
    """(layer names, trends) of a class's concepts across the bundle's layers.

    By default the concepts are the union of the per-layer global top labels.
    """
    p = params or processed.params
    layers = [layer.name for layer in bundle.layers]
    totals: dict[str, float] = defaultdict(float)
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for s in processed.scores:
        if s.class_name == class_name:
            totals[s.layer] += s.score
            sums[(s.layer, s.representative)] += s.score
    if concepts is None:
        seen: dict[str, None] = {}
        for g in global_explanations(bundle, processed, p).get(class_name, []):
            for lab in g.labels:
                seen.setdefault(lab.representative, None)
        concepts = list(seen)
    depth = np.linspace(0.0, 1.0, len(layers)) if len(layers) > 1 else np.zeros(1)
    trends = []
    for rep in concepts:
        shares: list[float | None] = []
        for layer in layers:
            shares.append(sums[(layer, rep)] / totals[layer] if totals[layer] > 0 else None)
        xs = np.array([d for d, v in zip(depth, shares) if v is not None])
        ys = np.array([v for v in shares if v is not None], dtype=np.float64)
        slope = float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 and np.ptp(xs) > 0 else 0.0
        direction = (
            "rises" if slope >= p.trend_threshold else "falls" if slope <= -p.trend_threshold else "flat"
        )
        trends.append(Trend(rep, shares, slope, direction))
    trends.sort(key=lambda t: -t.slope)
    return layers, trends
