"""Local and global explanations from scored labels (defaults: the authors' aggregation).

Local (per image and layer): the labelled cluster maps, merged into regions. A cluster's *best labels* are
all labels whose score equals its highest score (ties included). With ``merge="transitive"`` (default)
clusters that share any best label are merged, transitively (connected components of the graph "shares a
best label"); with ``"best-label"`` only clusters with the same single best label (ties broken
alphabetically), with ``"none"`` never. A region of member clusters c with weights w_c and maps m_c::

    weight = Σ_c w_c,      map = Σ_c w_c · m_c / Σ_c w_c,
    score(r) = Σ_c w_c · s_c(r) / Σ_c w_c      (merged_score="weighted-mean"; s_c(r) = 0 if c lacks r)
    score(r) = Σ_c s_c(r)                      (merged_score="sum")

(plain means when Σ w_c = 0). Each region shows its top ``top_labels_local`` (3) labels. The *full-merge*
view merges all clusters of the layer (labelled or not) by the same formulas and shows the top
``top_labels_full_merge`` (6) labels.

Global (per class and layer), ``global_from="merged-best"`` (default): only the best labels of the merged
regions count; ``S(r) = Σ_{regions R whose best labels hold r} score_R(r)`` over the class's images, ranked by
S (then by the number of regions, then alphabetically); the top ``top_labels_global`` (5) with the mean
weight of those regions and up to ``examples_global`` example clusters from different images.
``global_from="all-labels"``: ``S(r) = Σ_clusters score(cluster, r)`` over every label of every cluster.

Trends (per class), ``trend="mean-score"`` (default): for each label r and layer L the mean score of r over
the class's cluster maps of L that carry r (``None`` where none does). ``trend="share-slope"``: the share
``S_L(r) / Σ_r' S_L(r')`` against the relative depth t ∈ [0, 1], with the least-squares slope saying
whether the concept rises (slope ≥ threshold), falls (≤ −threshold) or stays flat.
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
    scores: dict[str, float] = field(default_factory=dict, repr=False)  # every label's merged score

    @property
    def best_label(self) -> str | None:
        return self.labels[0][0] if self.labels else None

    @property
    def best_labels(self) -> list[str]:
        """All labels tied for the highest merged score (alphabetical)."""
        return sorted(best_labels(self.scores))

    @property
    def merged(self) -> bool:
        return len(self.cluster_ids) > 1

    def image_map(self, bundle: Bundle, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """The region's map at image resolution (``size_hw``, default the image's stored size): members
        as :meth:`Bundle.load_image_map` renders them (on demand from their feature-resolution maps in a
        sharded bundle), weight-averaged."""
        return merge_maps([bundle.load_image_map(c, size=size_hw) for c in self.clusters],
                          [c.weight for c in self.clusters])

    def feature_map(self, bundle: Bundle) -> np.ndarray:
        """The region's map at feature resolution: members weight-averaged."""
        return merge_maps([bundle.load_map(c) for c in self.clusters], [c.weight for c in self.clusters])


@dataclass
class LocalExplanation:
    image_id: str
    layer: str
    class_name: str
    clusters: list[LocalCluster]  # labelled first (by weight), then unlabelled
    full_merge: LocalCluster | None = None  # all clusters of the layer merged (None: no labels)


TIE_TOLERANCE = 1e-9


def best_labels(scores: dict[str, float], tol: float = TIE_TOLERANCE) -> set[str]:
    """The labels whose score is within ``tol`` of the highest (empty for no labels)."""
    if not scores:
        return set()
    top = max(scores.values())
    return {r for r, s in scores.items() if s >= top - tol}


def merge_transitive(best: dict[str, set[str]]) -> list[list[str]]:
    """Connected components of "shares a best label" (union-find), in first-member order.

    ``best``: cluster id -> its best labels. Clusters without labels stay alone.
    """
    parent = {c: c for c in best}

    def root(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    owner: dict[str, str] = {}
    for c, labels in best.items():
        for r in sorted(labels):
            if r in owner:
                a, b = root(owner[r]), root(c)
                if a != b:
                    parent[b] = a
            else:
                owner[r] = c
    groups: dict[str, list[str]] = {}
    for c in best:
        groups.setdefault(root(c), []).append(c)
    return list(groups.values())


def merged_scores(members: list[tuple[float, dict[str, float]]], rule: str = "weighted-mean") -> dict[str, float]:
    """Per label: ``Σ_c w_c·s_c(r) / Σ_c w_c`` ("weighted-mean"; plain mean if Σ w = 0) or ``Σ_c s_c(r)``
    ("sum"); ``members`` = (weight, label -> score) per cluster, a missing label scoring 0."""
    labels = sorted({r for _, sc in members for r in sc})
    if rule == "sum":
        return {r: float(sum(sc.get(r, 0.0) for _, sc in members)) for r in labels}
    w = np.array([max(0.0, float(wc)) for wc, _ in members])
    if w.sum() <= 0:
        w = np.ones_like(w)
    return {r: float(sum(wi * sc.get(r, 0.0) for wi, (_, sc) in zip(w, members)) / w.sum()) for r in labels}


def _top(scores: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _region(group: list[Cluster], labels: dict[str, dict[str, float]], rule: str, n: int) -> LocalCluster:
    sc = merged_scores([(c.weight, labels.get(c.id, {})) for c in group], rule)
    return LocalCluster([c.id for c in group], float(sum(c.weight for c in group)), _top(sc, n), group, sc)


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
    bundle: Bundle, processed: ProcessedLabels, params: LabelParams | None = None, merge: bool | str | None = None
) -> list[LocalExplanation]:
    """Per image and layer (bundle order): merged regions with their top labels, and the full-merge view.

    ``merge`` overrides ``params.merge`` (``False`` = ``"none"``, ``True`` = the params' rule).
    """
    p = params or processed.params
    rule = p.merge if merge is None or merge is True else ("none" if merge is False else str(merge))
    labels = _cluster_labels(processed)
    classes = _image_class(processed, bundle)
    out = []
    for im in bundle.images:
        for layer in bundle.layers:
            members = [c for c in im.clusters if c.layer == layer.name]
            if not members:
                continue
            labelled = [c for c in members if labels.get(c.id)]
            unlabelled = [LocalCluster([c.id], c.weight, [], [c]) for c in members if not labels.get(c.id)]
            by_id = {c.id: c for c in labelled}
            if rule == "transitive":
                groups = merge_transitive({c.id: best_labels(labels[c.id]) for c in labelled})
            elif rule == "best-label":
                single: dict[str, list[str]] = {}
                for c in labelled:
                    single.setdefault(_top(labels[c.id], 1)[0][0], []).append(c.id)
                groups = list(single.values())
            else:
                groups = [[c.id] for c in labelled]
            regions = [
                _region([by_id[cid] for cid in g], labels, p.merged_score, p.top_labels_local) for g in groups
            ]
            regions.sort(key=lambda r: -r.weight)
            full = _region(members, labels, p.merged_score, p.top_labels_full_merge) if labelled else None
            out.append(
                LocalExplanation(im.id, layer.name, classes.get(im.id, ""), regions + unlabelled, full)
            )
    return out


@dataclass
class GlobalLabel:
    representative: str
    score: float  # S(r), summed over the class's regions (merged-best) or clusters (all-labels) in this layer
    mean_weight: float  # mean weight of the regions/clusters it was counted for
    clusters: int  # how many regions/clusters it was counted for
    examples: list[str]  # cluster ids, from different images, best first


@dataclass
class GlobalExplanation:
    class_name: str
    layer: str
    labels: list[GlobalLabel]  # top-N by score
    total_score: float  # of all concepts counted in this layer (for shares)


@dataclass
class Trend:
    representative: str
    values: list[float | None]  # per layer: mean score (mean-score) or share (share-slope); None: absent
    slope: float  # least-squares slope of the values against relative depth
    direction: str  # share-slope: "rises" | "falls" | "flat"; mean-score: ""

    @property
    def shares(self) -> list[float | None]:
        return self.values


def _counted(bundle: Bundle, processed: ProcessedLabels, p: LabelParams) -> dict[tuple[str, str], list]:
    """(class, layer) -> [(representative, score, weight, example cluster id, image id)] that global counts."""
    cells: dict[tuple[str, str], list] = defaultdict(list)
    if p.global_from == "all-labels":
        for s in processed.scores:
            cells[(s.class_name, s.layer)].append((s.representative, s.score, s.weight, s.cluster_id, s.image_id))
        return cells
    own = _cluster_labels(processed)
    for le in local_explanations(bundle, processed, p):
        for region in le.clusters:
            for r in region.best_labels:
                # the example is the member that gave r the highest score (then the heaviest)
                ex = max(region.clusters, key=lambda c: (own.get(c.id, {}).get(r, 0.0), c.weight, c.id))
                cells[(le.class_name, le.layer)].append((r, region.scores[r], region.weight, ex.id, le.image_id))
    return cells


def global_explanations(
    bundle: Bundle, processed: ProcessedLabels, params: LabelParams | None = None
) -> dict[str, list[GlobalExplanation]]:
    """class -> per-layer global explanations (bundle layer order; layers without labels are skipped)."""
    p = params or processed.params
    cells = _counted(bundle, processed, p)
    out: dict[str, list[GlobalExplanation]] = {}
    for class_name in sorted({s.class_name for s in processed.scores}):
        per_layer = []
        for layer in bundle.layers:
            cell = cells.get((class_name, layer.name))
            if not cell:
                continue
            by_rep: dict[str, list] = defaultdict(list)
            for item in cell:
                by_rep[item[0]].append(item)
            ranked = sorted(by_rep.items(), key=lambda kv: (-sum(x[1] for x in kv[1]), -len(kv[1]), kv[0]))
            top = []
            for rep, xs in ranked[: p.top_labels_global]:
                examples, seen = [], set()
                for x in sorted(xs, key=lambda x: (-x[1], -x[2], x[3])):
                    if x[4] in seen:
                        continue
                    seen.add(x[4])
                    examples.append(x[3])
                    if len(examples) >= p.examples_global:
                        break
                top.append(
                    GlobalLabel(
                        representative=rep,
                        score=float(sum(x[1] for x in xs)),
                        mean_weight=float(np.mean([x[2] for x in xs])),
                        clusters=len(xs),
                        examples=examples,
                    )
                )
            per_layer.append(GlobalExplanation(class_name, layer.name, top, float(sum(x[1] for x in cell))))
        out[class_name] = per_layer
    return out


def _slope(depth: np.ndarray, values: list[float | None]) -> float:
    xs = np.array([d for d, v in zip(depth, values) if v is not None])
    ys = np.array([v for v in values if v is not None], dtype=np.float64)
    return float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 and np.ptp(xs) > 0 else 0.0


def concept_trends(
    bundle: Bundle,
    processed: ProcessedLabels,
    class_name: str,
    params: LabelParams | None = None,
    concepts: list[str] | None = None,
) -> tuple[list[str], list[Trend]]:
    """(layer names, trends) of a class's concepts across the bundle's layers (see the module docstring).

    By default the concepts are the union of the per-layer global top labels (in rank order).
    """
    p = params or processed.params
    layers = [layer.name for layer in bundle.layers]
    totals: dict[str, float] = defaultdict(float)
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in processed.scores:
        if s.class_name == class_name:
            totals[s.layer] += s.score
            cells[(s.layer, s.representative)].append(s.score)
    if concepts is None:
        seen: dict[str, None] = {}
        for g in global_explanations(bundle, processed, p).get(class_name, []):
            for lab in g.labels:
                seen.setdefault(lab.representative, None)
        concepts = list(seen)
    depth = np.linspace(0.0, 1.0, len(layers)) if len(layers) > 1 else np.zeros(1)
    trends = []
    for rep in concepts:
        values: list[float | None] = []
        for layer in layers:
            xs = cells.get((layer, rep), [])
            if p.trend == "mean-score":
                values.append(float(np.mean(xs)) if xs else None)
            else:
                values.append(sum(xs) / totals[layer] if totals[layer] > 0 else None)
        slope = _slope(depth, values)
        if p.trend == "mean-score":
            direction = ""
        else:
            direction = (
                "rises" if slope >= p.trend_threshold else "falls" if slope <= -p.trend_threshold else "flat"
            )
        trends.append(Trend(rep, values, slope, direction))
    if p.trend != "mean-score":
        trends.sort(key=lambda t: -t.slope)
    return layers, trends
