"""Label processing at scale: the vectorised silhouette against its definition, and the fast save."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from featurelens.labels.group import silhouette


def slow_silhouette(d: np.ndarray, assign: np.ndarray) -> float:
    n = len(assign)
    out = []
    for i in range(n):
        own = [j for j in range(n) if assign[j] == assign[i] and j != i]
        if not own:
            out.append(0.0)
            continue
        a = sum(d[i, j] for j in own) / len(own)
        b = min(np.mean([d[i, j] for j in range(n) if assign[j] == g]) for g in set(assign) if g != assign[i])
        out.append(0.0 if max(a, b) == 0 else (b - a) / max(a, b))
    return float(np.mean(out))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_silhouette_matches_its_definition_and_sklearn(seed):
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    x = rng.random((23, 5))
    d = squareform(pdist(x, metric="cosine"))
    assign = rng.integers(1, 6, 23)
    assign[0] = 9  # a group of one
    assert silhouette(d, assign) == pytest.approx(slow_silhouette(d, assign), abs=1e-12)
    assert silhouette(d, assign) == pytest.approx(float(silhouette_score(d, assign, metric="precomputed")), abs=1e-12)


def test_saved_results_load_back_equal(tmp_path, label_bundle, processed):
    from featurelens.labels.pipeline import load_processed

    processed.save(tmp_path / "p")
    back = load_processed(tmp_path / "p")
    assert [(r.row, r.text, r.representative, r.score) for r in back.labels] == \
        [(r.row, r.text, r.representative, r.score) for r in processed.labels]
    assert [(s.cluster_id, s.representative, s.score) for s in back.scores] == \
        [(s.cluster_id, s.representative, s.score) for s in processed.scores]


def test_global_explanations_aggregate_over_every_image_of_a_class(label_bundle, processed):
    """S(r) of a class and layer = Σ over the local regions of *every* image of the class whose best label
    is r (merged-best rule), and every labelled image of the class contributes."""
    from collections import defaultdict

    from featurelens.labels.explain import global_explanations, local_explanations

    p = processed.params
    glob = global_explanations(label_bundle, processed, p)
    want: dict = defaultdict(float)
    images: dict = defaultdict(set)
    for le in local_explanations(label_bundle, processed, p):
        for region in le.clusters:
            for r in region.best_labels:
                want[(le.class_name, le.layer, r)] += region.scores[r]
                images[le.class_name].add(le.image_id)
    per_class = defaultdict(set)
    for im in label_bundle.images:
        per_class[im.true_class or im.predicted_class].add(im.id)
    checked = 0
    for cls, layers in glob.items():
        assert len(images[cls]) >= 2 and images[cls] == per_class[cls]  # several images, all of them
        for g in layers:
            for lab in g.labels:
                assert lab.score == pytest.approx(want[(cls, g.layer, lab.representative)])
                checked += 1
    assert checked > 0
