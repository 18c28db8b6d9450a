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
