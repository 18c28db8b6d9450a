"""SFAM properties on the real models: EfficientNet-Lite0 features (photos) and the trained shapes model."""

from __future__ import annotations

import pytest
import torch

from featurelens.similarity.pair import PAIR_METHODS, explain_pair


@pytest.fixture(scope="module")
def lite0_pairs(lite0_embedder, photos):
    ims = list(photos.values())  # coffee, chelsea, astronaut, rocket
    x = lite0_embedder.prepare(ims)
    return x[[0, 1]], x[[2, 3]]


@pytest.mark.slow
def test_lite0_cosine_cis_sum_swap_batch(lite0_embedder, lite0_pairs):
    xa, xb = lite0_pairs
    ex = explain_pair(lite0_embedder, xa, xb, "sfam", "cosine")
    e_a, e_b = lite0_embedder.embed(xa), lite0_embedder.embed(xb)
    cos = torch.nn.functional.cosine_similarity(e_a, e_b)
    assert torch.allclose(ex.cis.sum(1), cos, atol=1e-5)  # the model's own similarity
    assert torch.allclose(ex.score, cos, atol=1e-5)
    ba = explain_pair(lite0_embedder, xb, xa, "sfam", "cosine")
    assert torch.allclose(ba.maps_a, ex.maps_b, atol=1e-5) and torch.allclose(ba.maps_b, ex.maps_a, atol=1e-5)
    one = explain_pair(lite0_embedder, xa[1:], xb[1:], "sfam", "cosine")
    assert torch.allclose(one.maps_a[0], ex.maps_a[1], atol=1e-4)
    # channels inactive in both images get no weight
    dead = (ex.embeddings_a == 0) & (ex.embeddings_b == 0)
    assert torch.all(ex.cis[dead] == 0)
    # euclidean rule: symmetric, non-negative, zero where a channel is inactive in either image
    eu = explain_pair(lite0_embedder, xa, xb, "sfam", "euclidean")
    eu_ba = explain_pair(lite0_embedder, xb, xa, "sfam", "euclidean")
    assert torch.allclose(eu.cis, eu_ba.cis, atol=1e-6) and torch.all(eu.cis >= 0)
    assert torch.allclose(eu.score, (e_a - e_b).norm(dim=1), rtol=1e-4)


@pytest.mark.slow
def test_lite0_same_photo_pair_beats_unrelated(lite0_embedder, photos):
    cat = photos["chelsea"]
    crop = cat.crop((40, 20, 380, 290))
    ex = explain_pair(lite0_embedder, [cat, cat], [crop, photos["rocket"]], "sfam")
    assert ex.score[0] > ex.score[1] + 0.3
    assert ex.maps_a.shape == (2, 224, 224)
    assert float(ex.maps_a.amax()) == pytest.approx(1.0)


def test_shapes_model_properties(shapes_embedder, shapes_data):
    from featurelens.models.metric_shapes import to_tensor

    x, y = shapes_data
    same = [int(i) for i in (y == 3).nonzero()[0][:4]]
    xa, xb = to_tensor(x[same[:2]]), to_tensor(x[same[2:4]])
    for method in PAIR_METHODS:
        ab = explain_pair(shapes_embedder, xa, xb, method, "cosine")
        ba = explain_pair(shapes_embedder, xb, xa, method, "cosine")
        assert torch.allclose(ab.maps_a, ba.maps_b, atol=1e-5)
        one = explain_pair(shapes_embedder, xa[:1], xb[:1], method, "cosine")
        assert torch.allclose(one.maps_a[0], ab.maps_a[0], atol=1e-5)
    ex = explain_pair(shapes_embedder, xa, xb, "sfam", "cosine")
    e_a, e_b = shapes_embedder.embed(xa), shapes_embedder.embed(xb)
    # GAP → Linear(128, 64) → L2: the CIS and the bias share sum to the model's cosine exactly
    assert torch.allclose(ex.cis.sum(1) + ex.remainder, torch.nn.functional.cosine_similarity(e_a, e_b), atol=1e-5)
    assert ex.maps_a.shape == (2, 28, 28)


def test_shapes_model_retrieval_quality(shapes_embedder, shapes_data):
    """The committed checkpoint still retrieves: leave-one-out Recall@1 on 500 held-out images."""
    from featurelens.models.metric_shapes import to_tensor

    x, y = shapes_data
    e = shapes_embedder.embed(to_tensor(x[:500]))
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    r1 = float((torch.from_numpy(y[:500])[sim.argmax(1)] == torch.from_numpy(y[:500])).float().mean())
    assert r1 > 0.85
