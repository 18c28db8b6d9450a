"""Reference tests of the authors' aggregation against hand-worked examples (issue 13): transitive merging
with ties, the weighted-mean merged score, the full-merge view, the global top labels from the best labels of
merged clusters, and the trend values. Scores are written by hand on a tiny bundle with known weights."""

from __future__ import annotations

import numpy as np
import pytest

from featurelens.labels.explain import (
    best_labels,
    concept_trends,
    global_explanations,
    local_explanations,
    merge_transitive,
    merged_scores,
)
from featurelens.labels.pipeline import LabelParams, ProcessedLabels
from featurelens.labels.score import ClusterScore
from featurelens.network.bundle import BundleWriter

# image -> layer -> cluster weights (each layer sums to 100)
WEIGHTS = {
    "im1": {"L1": [40, 30, 20, 10], "L2": [30, 30, 40], "L3": [100]},
    "im2": {"L1": [50, 50], "L2": [100], "L3": [100]},
}
# hand-written scores: (image, layer, index) -> {label: score}
SCORES = {
    ("im1", "L1", 0): {"ear": 2.0, "eye": 2.0, "tail": 0.3},  # a tie between ear and eye
    ("im1", "L1", 1): {"eye": 3.0, "fur": 1.0},
    ("im1", "L1", 2): {"ear": 1.5, "fur": 1.4},
    ("im1", "L1", 3): {"sky": 0.5, "fur": 0.4},
    ("im2", "L1", 0): {"eye": 1.0, "fur": 0.9},
    ("im2", "L1", 1): {"fur": 2.0, "ear": 2.0, "tail": 0.3},
    ("im1", "L2", 0): {"ear": 2.0},
    ("im1", "L2", 1): {"ear": 1.0, "eye": 3.0},
    ("im2", "L2", 0): {"ear": 4.0, "eye": 1.5},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    w = BundleWriter(
        tmp_path_factory.mktemp("agg") / "bundle",
        model={"name": "hand", "input_size": [16, 16]},
        target={"kind": "true-class", "description": "hand-worked example"},
        class_names=["cat"],
        params={},
    )
    for layer in ("L1", "L2", "L3"):
        w.add_layer(layer, channels=8, feature_size=(4, 4))
    rng = np.random.default_rng(0)
    for iid, layers in WEIGHTS.items():
        w.add_image(
            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            source="hand", true_class="cat", predicted_class="cat", predicted_index=0, score=1.0, image_id=iid,
        )
        for layer, weights in layers.items():
            for k, wt in enumerate(weights):
                w.add_cluster(
                    iid, layer, channels=[k], weight=float(wt),
                    feature_map=rng.random((4, 4)).astype(np.float32),
                    image_map=rng.random((16, 16)).astype(np.float32),
                )
    bundle = w.close()
    return bundle


def _processed(bundle, params):
    scores = []
    for (iid, layer, k), labels in SCORES.items():
        c = bundle.cluster(f"{iid}/{layer}/{k}")
        for rep, s in labels.items():
            scores.append(
                ClusterScore(c.id, iid, layer, "cat", rep, 1, 0.0, True, 1, s, c.weight)
            )
    return ProcessedLabels(params, "hand", [], [], scores, {}, [])


def _local(bundle, params, iid, layer):
    return {(x.image_id, x.layer): x for x in local_explanations(bundle, _processed(bundle, params))}[(iid, layer)]


def test_best_labels_keep_ties():
    assert best_labels({"ear": 2.0, "eye": 2.0, "tail": 0.3}) == {"ear", "eye"}
    assert best_labels({"eye": 3.0, "fur": 1.0}) == {"eye"}
    assert best_labels({}) == set()


def test_transitive_merging_with_ties():
    # a–b share "eye" (a tie in a), a–c share "ear": a, b, c form one component although b and c share nothing
    groups = merge_transitive({"a": {"ear", "eye"}, "b": {"eye"}, "c": {"ear"}, "d": {"sky"}, "e": set()})
    assert sorted(map(sorted, groups)) == [["a", "b", "c"], ["d"], ["e"]]
    # a chain: x–y through "p", y–z through "q"
    assert merge_transitive({"x": {"p"}, "y": {"p", "q"}, "z": {"q"}}) == [["x", "y", "z"]]


def test_local_merge_and_weighted_mean_score(tiny):
    le = _local(tiny, LabelParams(), "im1", "L1")
    region = le.clusters[0]
    assert region.cluster_ids == ["im1/L1/0", "im1/L1/1", "im1/L1/2"] and region.weight == 90
    # Σ_c w_c s_c(r) / Σ_c w_c, by hand: ear (40·2 + 20·1.5)/90, eye (40·2 + 30·3)/90, fur (30·1 + 20·1.4)/90
    want = {"eye": 170 / 90, "ear": 110 / 90, "fur": 58 / 90, "tail": 12 / 90}
    assert region.scores == pytest.approx(want)
    assert [r for r, _ in region.labels] == ["eye", "ear", "fur"]  # top 3
    assert [v for _, v in region.labels] == pytest.approx([170 / 90, 110 / 90, 58 / 90])
    assert region.best_labels == ["eye"]
    assert le.clusters[1].cluster_ids == ["im1/L1/3"] and le.clusters[1].best_labels == ["sky"]
    # the merged map is the weight-weighted mean of the members' maps
    maps = [tiny.load_image_map(tiny.cluster(f"im1/L1/{k}")) for k in range(3)]
    np.testing.assert_allclose(region.image_map(tiny), (40 * maps[0] + 30 * maps[1] + 20 * maps[2]) / 90, rtol=1e-5)


def test_legacy_merge_rules(tiny):
    sum_rule = _local(tiny, LabelParams(merged_score="sum"), "im1", "L1").clusters[0]
    assert sum_rule.scores == pytest.approx({"eye": 5.0, "ear": 3.5, "fur": 2.4, "tail": 0.3})
    # one best label per cluster (tie → alphabetical: cluster 0 is "ear"), no transitivity
    legacy = _local(tiny, LabelParams.legacy(), "im1", "L1")
    assert [r.cluster_ids for r in legacy.clusters] == [["im1/L1/0", "im1/L1/2"], ["im1/L1/1"], ["im1/L1/3"]]
    assert legacy.clusters[0].scores == pytest.approx({"ear": 3.5, "eye": 2.0, "fur": 1.4, "tail": 0.3})
    none = _local(tiny, LabelParams(merge="none"), "im1", "L1")
    assert not any(r.merged for r in none.clusters)


def test_full_merge_view(tiny):
    fm = _local(tiny, LabelParams(), "im1", "L1").full_merge
    assert fm.cluster_ids == [f"im1/L1/{k}" for k in range(4)] and fm.weight == 100
    # all four clusters, weights 40/30/20/10: eye (80 + 90)/100, ear (80 + 30)/100, fur (30 + 28 + 4)/100,
    # tail 40·0.3/100, sky 10·0.5/100 (top 6 shows all five)
    assert [r for r, _ in fm.labels] == ["eye", "ear", "fur", "tail", "sky"]
    assert [v for _, v in fm.labels] == pytest.approx([1.7, 1.1, 0.62, 0.12, 0.05])
    assert len(_local(tiny, LabelParams(top_labels_full_merge=2), "im1", "L1").full_merge.labels) == 2
    assert _local(tiny, LabelParams(), "im1", "L3").full_merge is None  # no labels in that layer


def test_global_top_labels_only_from_best_labels_of_merged_clusters(tiny):
    glob = {g.layer: g for g in global_explanations(tiny, _processed(tiny, LabelParams()))["cat"]}
    l1 = glob["L1"]
    # regions: im1 {0,1,2} best eye 170/90 (w 90), im1 {3} best sky 0.5 (w 10),
    #          im2 {0} best eye 1.0 (w 50), im2 {1} best ear = fur = 2.0 (a tie, w 50); "tail" is never best
    got = [(lab.representative, lab.score, lab.clusters, lab.mean_weight) for lab in l1.labels]
    assert [g[0] for g in got] == ["eye", "ear", "fur", "sky"]  # ear/fur tie: alphabetical
    assert [g[1] for g in got] == pytest.approx([170 / 90 + 1.0, 2.0, 2.0, 0.5])
    assert [g[2] for g in got] == [2, 1, 1, 1] and [g[3] for g in got] == pytest.approx([70, 50, 50, 10])
    assert l1.labels[0].examples == ["im1/L1/1", "im2/L1/0"]  # the member that gave "eye" most, per image
    # the former rule sums every label of every cluster: fur (1 + 1.4 + 0.4 + 0.9 + 2) overtakes ear, tail enters
    old = {g.layer: g for g in global_explanations(tiny, _processed(tiny, LabelParams.legacy()))["cat"]}["L1"]
    assert [(x.representative, round(x.score, 6)) for x in old.labels] == [
        ("eye", 6.0), ("fur", 5.7), ("ear", 5.5), ("tail", 0.6), ("sky", 0.5)
    ]
    # top-5 is a cut of the ranking
    two = global_explanations(tiny, _processed(tiny, LabelParams(top_labels_global=2)))["cat"][0]
    assert [x.representative for x in two.labels] == ["eye", "ear"]


def test_trend_values_are_per_layer_mean_scores(tiny):
    layers, trends = concept_trends(tiny, _processed(tiny, LabelParams()), "cat", concepts=["ear", "eye", "sky"])
    assert layers == ["L1", "L2", "L3"]
    t = {x.representative: x for x in trends}
    # mean over the class's cluster maps of the layer that carry the label; None where none does
    assert t["ear"].values == pytest.approx([(2.0 + 1.5 + 2.0) / 3, (2.0 + 1.0 + 4.0) / 3, None])
    assert t["eye"].values == pytest.approx([(2.0 + 3.0 + 1.0) / 3, (3.0 + 1.5) / 2, None])
    assert t["sky"].values == [0.5, None, None]
    assert {x.direction for x in trends} == {""}
    # the former rule: share of the layer's total score, and a slope class
    _, old = concept_trends(tiny, _processed(tiny, LabelParams.legacy()), "cat", concepts=["ear", "eye"])
    o = {x.representative: x for x in old}
    tot1 = sum(v for (i, layer, k), lab in SCORES.items() if layer == "L1" for v in lab.values())
    tot2 = sum(v for (i, layer, k), lab in SCORES.items() if layer == "L2" for v in lab.values())
    assert o["ear"].values == pytest.approx([5.5 / tot1, 7.0 / tot2, None])
    slope = (7.0 / tot2 - 5.5 / tot1) / 0.5  # two points at depths 0 and 0.5
    assert o["ear"].slope == pytest.approx(slope) and o["ear"].direction in ("rises", "falls", "flat")


def test_merged_scores_reference():
    members = [(40.0, {"a": 1.0}), (10.0, {"a": 3.0, "b": 2.0}), (0.0, {"c": 5.0})]
    assert merged_scores(members) == pytest.approx({"a": 70 / 50, "b": 20 / 50, "c": 0.0})
    assert merged_scores([(0.0, {"a": 1.0}), (0.0, {"a": 3.0})]) == pytest.approx({"a": 2.0})  # plain mean
    assert merged_scores(members, "sum") == pytest.approx({"a": 4.0, "b": 2.0, "c": 5.0})
