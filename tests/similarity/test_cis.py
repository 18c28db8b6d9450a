"""CIS rules: exactness, symmetry, dead channels, the Euclidean rule's shape, reference formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sim_models import HEADS, make_head
from torch import nn

from featurelens.errors import MethodError
from featurelens.similarity.cis import RULES, compute_cis, distance_remainder, distance_shares, register_rule
from featurelens.similarity.embedding import EmbeddingHead


def feats(b: int = 4, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, k, generator=g), torch.rand(b, k, generator=g)


@pytest.mark.parametrize("kind", HEADS)
def test_cosine_cis_plus_remainder_is_the_cosine(kind):
    head = make_head(kind)
    fa, fb = feats()
    res = compute_cis(fa, fb, head, "cosine")
    cos = torch.nn.functional.cosine_similarity(head(fa[:, :, None, None]), head(fb[:, :, None, None]), dim=1)
    assert torch.allclose(res.cis.sum(1) + res.remainder, cos, atol=1e-6)
    if head.projection is None:  # no bias: the CIS alone sum to the cosine
        assert torch.allclose(res.cis.sum(1), cos, atol=1e-6)


def test_cosine_cis_reference_gap_and_linear():
    fa, fb = feats(2, 5, seed=1)
    head = EmbeddingHead("avg")
    cis = compute_cis(fa, fb, head, "cosine").cis
    for b in range(2):
        na = math.sqrt(sum(float(v) ** 2 for v in fa[b]))
        nb = math.sqrt(sum(float(v) ** 2 for v in fb[b]))
        for k in range(5):
            assert abs(float(cis[b, k]) - float(fa[b, k]) * float(fb[b, k]) / (na * nb)) < 1e-6
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    head = EmbeddingHead("avg", projection=lin, normalize=True)
    cis = compute_cis(fa, fb, head, "cosine").cis
    w, c = lin.weight.detach(), lin.bias.detach()
    for b in range(2):
        za, zb = w @ fa[b] + c, w @ fb[b] + c
        for k in range(5):
            share = 0.5 * (fa[b, k] * sum(w[j, k] * zb[j] for j in range(3)) + fb[b, k] * sum(w[j, k] * za[j] for j in range(3)))
            assert torch.allclose(cis[b, k], share / (za.norm() * zb.norm()), atol=1e-6)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("kind", HEADS)
def test_rules_are_symmetric_and_ignore_dead_channels(rule, kind):
    head = make_head(kind)
    fa, fb = feats()
    fa[:, 2] = 0
    fb[:, 2] = 0
    r_ab, r_ba = compute_cis(fa, fb, head, rule), compute_cis(fb, fa, head, rule)
    ab = r_ab.cis
    # shared CIS are symmetric; side-specific rules (cis_b) swap their two sides
    ba = r_ba.cis if r_ab.cis_b is None else r_ba.cis_b
    assert torch.allclose(ab, ba, atol=1e-6)
    assert torch.all(ab[:, 2] == 0)
    if head.projection is None:  # removing the dead channel changes nothing else
        keep = [0, 1, 3, 4, 5]
        small = compute_cis(fa[:, keep], fb[:, keep], head, rule).cis
        assert torch.allclose(small, ab[:, keep], atol=1e-6)


def test_euclidean_rule_reference_and_shape():
    fa, fb = feats(1, 4, seed=2)
    head = EmbeddingHead("avg")
    cis = compute_cis(fa, fb, head, "euclidean").cis[0]
    g = [(float(fa[0, k]) - float(fb[0, k])) ** 2 for k in range(4)]
    tau = sum(g) / 4
    for k in range(4):
        expected = max(min(float(fa[0, k]), float(fb[0, k])), 0.0) * math.exp(-g[k] / tau)
        assert abs(float(cis[k]) - expected) < 1e-6
    # for fixed f^a_k, CIS_k peaks at f^b_k = f^a_k and decreases monotonically with the gap on both sides
    fa = torch.tensor([[0.5, 0.8, 0.3, 0.6]])
    values = torch.linspace(0.0, 2.0, 81)
    curve = []
    for v in values:
        fb = torch.tensor([[0.4, 0.0, 0.35, 0.7]])
        fb[0, 1] = v
        curve.append(float(compute_cis(fa, fb, head, "euclidean").cis[0, 1]))
    peak = int(torch.tensor(curve).argmax())
    assert abs(float(values[peak]) - 0.8) < 0.03
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(curve[: peak + 1]))
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(curve[peak:]))
    # same joint activation (min = 0.5), smaller gap → larger CIS
    fa = torch.tensor([[0.5, 0.5, 0.2]])
    fb = torch.tensor([[0.6, 1.5, 0.2]])
    c = compute_cis(fa, fb, head, "euclidean").cis[0]
    assert c[0] > c[1] > 0


@pytest.mark.parametrize("kind", ["gap", "linear", "gap_l2", "linear_l2"])
def test_distance_shares_sum_to_squared_distance(kind):
    head = make_head(kind)
    fa, fb = feats()
    d2 = (head(fa[:, :, None, None]) - head(fb[:, :, None, None])).pow(2).sum(1)
    g = distance_shares(fa, fb, head).sum(1) + distance_remainder(fa, fb, head)
    assert torch.allclose(g, d2, atol=1e-6)
    if head.projection is None:
        assert torch.allclose(distance_shares(fa, fb, head), ((fa / fa.norm(dim=1, keepdim=True) - fb / fb.norm(dim=1, keepdim=True)) ** 2 if head.normalize else (fa - fb) ** 2), atol=1e-6)


def test_rule_registry():
    with pytest.raises(MethodError, match="unknown CIS rule"):
        compute_cis(*feats(), EmbeddingHead("avg"), "nope")

    @register_rule("test_uniform")
    def uniform(fa, fb, head):
        from featurelens.similarity.cis import CISResult

        return CISResult(torch.ones_like(fa))

    try:
        assert torch.all(compute_cis(*feats(), EmbeddingHead("avg"), "test_uniform").cis == 1)
    finally:
        RULES.pop("test_uniform")
