"""Deletion/insertion: known answers, a slow reference loop, and forward-pass counting."""

from __future__ import annotations

import math

import pytest
import torch
from metric_models import CountingModel, RegionMean

from featurelens.metrics import (
    MetricError,
    class_score_fn,
    deletion_curve,
    expected_forward_passes,
    gaussian_blur,
    make_baseline,
    similarity_score_fn,
)
from featurelens.metrics.deletion import step_counts


def region_score(region):
    model = RegionMean(region).eval()
    return model, class_score_fn(model, torch.zeros(8, dtype=torch.long), kind="logit")


def slow_curve(score_fn, inputs, maps, steps, mode, baseline):
    """The definition written out: one image at a time, one step at a time, explicit pixel loop order."""
    b, _c, h, w = inputs.shape
    p = h * w
    base = make_baseline(inputs, baseline)
    scores = torch.zeros(b, steps + 1)
    for i in range(b):
        values = maps[i].flatten().tolist()
        order = sorted(range(p), key=lambda j: (-values[j], j))  # high first, ties by index
        for k in range(steps + 1):
            n = (k * p) // steps
            chosen = torch.zeros(p, dtype=torch.bool)
            chosen[order[:n]] = True
            chosen = chosen.view(h, w)
            if mode == "deletion":
                x = torch.where(chosen, base[i], inputs[i])
            else:
                x = torch.where(chosen, inputs[i], base[i])
            scores[i, k] = score_fn(x[None], torch.tensor([i]))[0]
    fr = torch.tensor([(k * p) // steps / p for k in range(steps + 1)])
    auc = torch.tensor(
        [sum((fr[k + 1] - fr[k]) * (s[k] + s[k + 1]) / 2 for k in range(steps)) for s in scores]
    )
    return scores, auc


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("baseline", ["blur", "constant", 0.25])
def test_batched_matches_slow_reference(mode, baseline, region, positive_inputs):
    _, score = region_score(region)
    torch.manual_seed(0)
    maps = torch.rand(4, 16, 16)
    maps[1] = maps[1].round()  # many ties: the order must follow the pixel index
    curve = deletion_curve(score, positive_inputs, maps, steps=7, mode=mode, baseline=baseline, batch_size=5)
    ref_scores, ref_auc = slow_curve(score, positive_inputs, maps, 7, mode, baseline)
    assert torch.allclose(curve.scores, ref_scores, atol=1e-6)
    assert torch.allclose(curve.auc, ref_auc, atol=1e-6)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1


def test_ideal_map_best_reversed_worst(region, positive_inputs):
    """Score = mean of a known region: the region map deletes fastest, its reverse slowest; insertion opposite."""
    _, score = region_score(region)
    weights = torch.linspace(1, 2, 256).view(16, 16)  # order inside/outside the region does not matter here
    ideal = (region * 10 + weights / 10).expand(4, 16, 16)
    reverse = -ideal
    torch.manual_seed(1)
    candidates = {"ideal": ideal, "reverse": reverse, **{f"rand{i}": torch.rand(4, 16, 16) for i in range(5)}}
    dele = {
        k: deletion_curve(score, positive_inputs, m, steps=16, baseline="constant").auc
        for k, m in candidates.items()
    }
    ins = {
        k: deletion_curve(score, positive_inputs, m, steps=16, mode="insertion", baseline="constant").auc
        for k, m in candidates.items()
    }
    for k in candidates:
        assert torch.all(dele["ideal"] <= dele[k] + 1e-6)
        assert torch.all(dele["reverse"] >= dele[k] - 1e-6)
        assert torch.all(ins["ideal"] >= ins[k] - 1e-6)
        assert torch.all(ins["reverse"] <= ins[k] + 1e-6)
    assert torch.all(dele["ideal"] < dele["reverse"] - 0.1)
    # with a zero baseline, deleting the region (30 of 256 pixels) first zeroes the score by f = 30/256
    full = (positive_inputs[:, 0] * region).sum((1, 2)) / region.sum()
    curve = deletion_curve(score, positive_inputs, ideal, steps=256, baseline="constant")
    assert torch.allclose(curve.scores[:, 0], full)
    assert torch.all(curve.scores[:, 30:] == 0)


def test_forward_passes_counted():
    """50 steps on 8 images with batch 64: ceil(8·51/64) = 7 model calls (and ≤ ceil(8·50/64))."""
    model = CountingModel(RegionMean(torch.ones(12, 12)))
    score = class_score_fn(model, torch.zeros(8, dtype=torch.long))
    inputs = torch.rand(8, 3, 12, 12)
    curve = deletion_curve(score, inputs, torch.rand(8, 12, 12), steps=50, batch_size=64)
    assert model.calls == expected_forward_passes(8, 50, 64) == math.ceil(8 * 51 / 64) == 7
    assert model.calls <= math.ceil(8 * 50 / 64)
    assert model.rows == 8 * 51
    assert curve.scores.shape == (8, 51)
    model.calls = 0
    deletion_curve(score, inputs, torch.rand(8, 12, 12), steps=50, mode="insertion", batch_size=17)
    assert model.calls == math.ceil(408 / 17)


def test_similarity_score_index_lookup():
    emb = torch.nn.Flatten(1)
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]).view(3, 2, 1, 1)
    idx = torch.tensor([0, 1, 1])
    cos = similarity_score_fn(emb, refs)(x, idx)
    assert torch.allclose(cos, torch.tensor([1.0, 0.0, 1.0]))
    euc = similarity_score_fn(emb, refs, metric="euclidean")(x, idx)
    assert torch.allclose(euc, -torch.tensor([0.0, math.sqrt(2), 1.0]))


def test_blur_preserves_constant_and_smooths():
    x = torch.full((1, 3, 20, 20), 0.7)
    assert torch.allclose(gaussian_blur(x), x, atol=1e-6)
    spike = torch.zeros(1, 1, 21, 21)
    spike[0, 0, 10, 10] = 1
    out = gaussian_blur(spike)
    assert out[0, 0, 10, 10] < 0.1 and abs(float(out.sum()) - 1) < 1e-5


def test_step_counts_and_bad_arguments(region, positive_inputs):
    assert step_counts(10, 4).tolist() == [0, 2, 5, 7, 10]
    _, score = region_score(region)
    maps = torch.rand(4, 16, 16)
    with pytest.raises(MetricError, match="mode"):
        deletion_curve(score, positive_inputs, maps, mode="sideways")
    with pytest.raises(MetricError, match="baseline"):
        deletion_curve(score, positive_inputs, maps, baseline="noise")
    with pytest.raises(MetricError, match="B = 4"):
        deletion_curve(score, positive_inputs, maps[:2])
    with pytest.raises(MetricError, match="steps"):
        deletion_curve(score, positive_inputs, maps, steps=0)
    # maps at another resolution are resized
    assert deletion_curve(score, positive_inputs, torch.rand(4, 4, 4), steps=4).scores.shape == (4, 5)


def test_explain_fn_accepted_in_place_of_maps(region, positive_inputs):
    _, score = region_score(region)
    maps = torch.rand(4, 16, 16)
    direct = deletion_curve(score, positive_inputs, maps, steps=5)
    via_fn = deletion_curve(score, positive_inputs, lambda x: maps[: x.shape[0]], steps=5)
    assert torch.equal(direct.scores, via_fn.scores)
