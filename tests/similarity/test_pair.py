"""Pair explanations on tiny models: properties, reference formulas, batching, bad input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from sim_models import HEADS, TinyEmbed, tiny_embedder

from featurelens.errors import MethodError, ModelError
from featurelens.imaging import normalize_maps, resize_maps
from featurelens.similarity.embedding import Embedder, EmbeddingHead, EmbeddingShapeError
from featurelens.similarity.pair import PAIR_METHODS, explain_pair

METHODS = list(PAIR_METHODS)


def features(emb: Embedder, x: torch.Tensor) -> torch.Tensor:
    """A (feature layer) recomputed without hooks."""
    net = emb.model
    return net.act(net.conv2(net.act1(net.conv1(x)))).detach()


def finish_ref(raw: torch.Tensor, size) -> torch.Tensor:
    return normalize_maps(resize_maps(raw.clamp_min(0), size))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", HEADS)
def test_sfam_reference_formula(kind, metric, pair_inputs):
    """M = norm(ReLU(Σ_k CIS_k A_k)) against explicit loops, CIS from the slow per-channel formulas."""
    emb = tiny_embedder(kind)
    xa, xb = pair_inputs
    ex = explain_pair(emb, xa, xb, "sfam", metric)
    aa, ab = features(emb, xa), features(emb, xb)
    head = emb.head
    for i in range(xa.shape[0]):
        fa, fb = head.pool(aa[i : i + 1])[0], head.pool(ab[i : i + 1])[0]
        if metric == "cosine" and head.projection is None:
            cis = fa * fb / (fa.norm() * fb.norm())
        elif metric == "cosine":
            w, c = head.projection.weight.detach(), head.projection.bias.detach()
            za, zb = w @ fa + c, w @ fb + c
            cis = 0.5 * (fa * (w.T @ zb) + fb * (w.T @ za)) / (za.norm() * zb.norm())
        else:
            if head.projection is None:
                za, zb = fa, fb
                wt = torch.eye(fa.numel())
            else:
                w, c = head.projection.weight.detach(), head.projection.bias.detach()
                za, zb, wt = w @ fa + c, w @ fb + c, w.T
            na, nb = (za.norm(), zb.norm()) if head.normalize else (1.0, 1.0)
            de = za / na - zb / nb
            g = (fa / na - fb / nb) * (wt @ de)
            g = g.clamp_min(0)
            active = ((fa > 0) | (fb > 0)).float()
            tau = (g * active).sum() / active.sum().clamp_min(1)
            cis = torch.minimum(fa, fb).clamp_min(0) * torch.exp(-g / (tau + 1e-12))
        assert torch.allclose(ex.cis[i], cis, atol=1e-5, rtol=1e-4)
        raw_a = torch.zeros(aa.shape[-2:])
        for k in range(aa.shape[1]):
            raw_a += cis[k] * aa[i, k]
        assert torch.allclose(ex.raw_a[i], raw_a, atol=1e-5)
        assert torch.allclose(ex.maps_a[i], finish_ref(raw_a[None], xa.shape[-2:])[0], atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["gap", "linear_l2", "gem"])
def test_swapping_a_and_b_swaps_the_maps(method, kind, pair_inputs):
    emb = tiny_embedder(kind)
    xa, xb = pair_inputs
    for metric in ("cosine", "euclidean"):
        ab = explain_pair(emb, xa, xb, method, metric)
        ba = explain_pair(emb, xb, xa, method, metric)
        assert torch.allclose(ab.maps_a, ba.maps_b, atol=1e-5)
        assert torch.allclose(ab.maps_b, ba.maps_a, atol=1e-5)
        assert torch.allclose(ab.score, ba.score, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_batch_of_pairs_equals_pairs_one_by_one(method, pair_inputs):
    emb = tiny_embedder("linear_l2")
    xa, xb = pair_inputs
    for metric in ("cosine", "euclidean"):
        batch = explain_pair(emb, xa, xb, method, metric)
        for i in range(xa.shape[0]):
            one = explain_pair(emb, xa[i : i + 1], xb[i : i + 1], method, metric)
            assert torch.allclose(batch.maps_a[i], one.maps_a[0], atol=1e-5)
            assert torch.allclose(batch.maps_b[i], one.maps_b[0], atol=1e-5)
            assert torch.allclose(batch.raw_a[i], one.raw_a[0], atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", ["gap", "gap_l2", "gem", "max"])
def test_channel_inactive_in_both_images_has_no_influence(kind, metric, pair_inputs):
    """A dead channel gets CIS 0, and the maps equal those of the same model without that channel."""
    dead = 2
    emb = tiny_embedder(kind, dead=dead)
    xa, xb = pair_inputs
    ex = explain_pair(emb, xa, xb, "sfam", metric)
    # exactly 0 (GeM clamps activations at ε = 1e-6, so there f_k = ε and CIS_k ≈ ε²)
    assert torch.allclose(ex.cis[:, dead], torch.zeros(3), atol=1e-10)
    keep = [k for k in range(6) if k != dead]
    net = TinyEmbed(5, emb.head)
    with torch.no_grad():
        net.conv1.load_state_dict(emb.model.conv1.state_dict())
        net.conv2.weight.copy_(emb.model.conv2.weight[keep])
        net.conv2.bias.copy_(emb.model.conv2.bias[keep])
    small = Embedder("small", net.eval(), "act", emb.head, emb.preprocess, emb.input_size)
    ex5 = explain_pair(small, xa, xb, "sfam", metric)
    assert torch.allclose(ex.cis[:, keep], ex5.cis, atol=1e-6)
    assert torch.allclose(ex.maps_a, ex5.maps_a, atol=1e-5)
    assert torch.allclose(ex.maps_b, ex5.maps_b, atol=1e-5)
    assert torch.allclose(ex.score, ex5.score, atol=1e-6)


def test_cosine_cis_sum_to_model_similarity_on_tiny_models(pair_inputs):
    xa, xb = pair_inputs
    for kind in ("gap", "gap_l2", "gem", "max"):
        ex = explain_pair(tiny_embedder(kind), xa, xb, "sfam", "cosine")
        cos = torch.nn.functional.cosine_similarity(ex.embeddings_a, ex.embeddings_b)
        assert torch.allclose(ex.cis.sum(1), cos, atol=1e-6)
    ex = explain_pair(tiny_embedder("linear_l2"), xa, xb, "sfam", "cosine")
    assert torch.allclose(ex.cis.sum(1) + ex.remainder, ex.score, atol=1e-6)


def test_stylianou_decomposition_sums_to_similarity(pair_inputs):
    xa, xb = pair_inputs
    for kind in ("gap", "gap_l2"):
        ex = explain_pair(tiny_embedder(kind), xa, xb, "stylianou", "cosine")
        assert torch.allclose(ex.raw_a.sum((1, 2)), ex.score, atol=1e-6)
        assert torch.allclose(ex.raw_b.sum((1, 2)), ex.score, atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gradcam_reference(metric, pair_inputs):
    """Grad-CAM / Grad-CAM++ weights from an explicit autograd of the similarity, other side fixed."""
    emb = tiny_embedder("linear_l2")
    xa, xb = pair_inputs
    net = emb.model
    aa = net.act(net.conv2(net.act1(net.conv1(xa)))).detach().requires_grad_(True)
    eb = net(xb).detach()
    ea = net.head(aa)
    s = torch.nn.functional.cosine_similarity(ea, eb) if metric == "cosine" else -(ea - eb).norm(dim=1)
    (g,) = torch.autograd.grad(s.sum(), aa)
    aa = aa.detach()
    ex = explain_pair(emb, xa, xb, "gradcam", metric)
    w = g.mean((2, 3))
    assert torch.allclose(ex.weights_a, w, atol=1e-6)
    assert torch.allclose(ex.raw_a, (w[:, :, None, None] * aa).sum(1), atol=1e-6)
    pp = explain_pair(emb, xa, xb, "gradcam++", metric)
    for i in range(xa.shape[0]):
        for k in range(aa.shape[1]):
            gk, ak = g[i, k], aa[i, k]
            denom = 2 * gk**2 + (ak * gk**3).sum()
            alpha = torch.where(denom != 0, gk**2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(gk))
            assert torch.allclose(pp.weights_a[i, k], (alpha * gk.clamp_min(0)).sum(), atol=1e-6)


def test_sfam_is_one_forward_without_autograd(pair_inputs):
    emb = tiny_embedder("linear_l2")
    calls = []
    emb.model.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0], torch.is_grad_enabled(), o.requires_grad)))
    xa, xb = pair_inputs
    explain_pair(emb, xa, xb, "sfam")
    assert calls == [(6, False, False)]


def test_different_image_sizes(pair_inputs):
    emb = tiny_embedder("gap")
    a = Image.new("RGB", (40, 30), (200, 20, 20))
    b = Image.effect_noise((17, 61), 40).convert("RGB")
    for method in METHODS:
        ex = explain_pair(emb, a, b, method)
        assert ex.maps_a.shape == ex.maps_b.shape == (1, 10, 12)
    # prepared tensors of different sizes are run separately
    xa, _ = pair_inputs
    ex = explain_pair(emb, xa, torch.randn(3, 3, 16, 9))
    assert ex.maps_a.shape[-2:] == (10, 12) and ex.maps_b.shape[-2:] == (16, 9)
    one = explain_pair(emb, xa[:1], torch.randn(3, 3, 16, 9)[:1])
    assert one.maps_a.shape == (1, 10, 12)
    ex2 = explain_pair(emb, xa, torch.randn(3, 3, 16, 9), "gradcam")
    assert ex2.maps_b.shape[-2:] == (16, 9)


def test_bad_models_and_inputs(pair_inputs):
    xa, xb = pair_inputs

    class Spatial(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    bad = Embedder("spatial", Spatial(), "conv", EmbeddingHead("avg"), lambda ims: None, (10, 12))
    for method in METHODS:
        with pytest.raises(EmbeddingShapeError, match=r"must return \[B, D\]"):
            explain_pair(bad, xa, xb, method)
    wrong = tiny_embedder("gap")
    wrong.head = EmbeddingHead("max")  # does not describe the model
    with pytest.raises(ModelError, match="does not reproduce"):
        explain_pair(wrong, xa, xb, "sfam")
    emb = tiny_embedder("gap")
    with pytest.raises(MethodError, match="unknown similarity method"):
        explain_pair(emb, xa, xb, "cam")
    with pytest.raises(MethodError, match="unknown metric"):
        explain_pair(emb, xa, xb, "sfam", "manhattan")
    with pytest.raises(MethodError, match="pairs need"):
        explain_pair(emb, xa, xb[:2])
