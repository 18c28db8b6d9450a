"""The Euclidean CIS rules against explicit slow formulas, and SFAM's pair properties on dlib's face model."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from featurelens.similarity.cis import EUCLIDEAN_RULES, compute_cis
from featurelens.similarity.embedding import EmbeddingHead
from featurelens.similarity.pair import explain_pair


def _heads():
    torch.manual_seed(3)
    biased = torch.nn.Linear(6, 4).double().requires_grad_(False)
    plain = torch.nn.Linear(6, 4, bias=False).double().requires_grad_(False)  # dlib's head: GAP → W f, compared unnormalised
    return [EmbeddingHead("avg", plain), EmbeddingHead("avg", biased, normalize=True), EmbeddingHead("avg")]


def _feats():
    torch.manual_seed(5)
    f_a, f_b = torch.rand(3, 6, dtype=torch.float64), torch.rand(3, 6, dtype=torch.float64)
    f_a[0, 2] = 0.0  # an inactive channel
    return f_a, f_b


def _embed(head, f):
    """e(f) written out: z_j = Σ_k W_jk f_k + c_j, then /‖z‖ if normalised."""
    proj = head.projection
    if proj is None:
        z = list(f)
    else:
        W, c = proj.weight, proj.bias
        z = [sum(W[j, k] * f[k] for k in range(len(f))) + (c[j] if c is not None else 0.0) for j in range(W.shape[0])]
    if head.normalize:
        n = math.sqrt(sum(float(v) ** 2 for v in z))
        z = [v / n for v in z]
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in z])


def _dist(head, fa, fb):
    return float((_embed(head, fa) - _embed(head, fb)).norm())


def _slow_shares(head, fa, fb):
    """g_k = (f^a_k/n_a − f^b_k/n_b)(WᵀΔe)_k, written out channel by channel."""
    proj = head.projection
    K = len(fa)
    e_a, e_b = _embed(head, fa), _embed(head, fb)
    de = e_a - e_b
    if proj is None:
        wt = [float(de[k]) for k in range(K)]
        n_a = n_b = 1.0
    else:
        W = proj.weight
        wt = [sum(float(W[j, k]) * float(de[j]) for j in range(W.shape[0])) for k in range(K)]
        if head.normalize:
            za = proj(fa[None])[0]
            zb = proj(fb[None])[0]
            n_a, n_b = float(za.norm()), float(zb.norm())
        else:
            n_a = n_b = 1.0
    return [(float(fa[k]) / n_a - float(fb[k]) / n_b) * wt[k] for k in range(K)]


@pytest.mark.parametrize("hi", [0, 1, 2])
def test_euclidean_rules_against_slow_formulas(hi):
    head = _heads()[hi]
    f_a, f_b = _feats()
    with torch.no_grad():
        today = compute_cis(f_a, f_b, head, "euclidean").cis
        exact = compute_cis(f_a, f_b, head, "euclidean_exact")
        ga = compute_cis(f_a, f_b, head, "euclidean_gradact")
    for i in range(f_a.shape[0]):
        fa, fb = f_a[i], f_b[i]
        g = _slow_shares(head, fa, fb)
        d2 = _dist(head, fa, fb) ** 2
        # exact decomposition: −g_k; the channels plus the remainder give −d² (the model's own distance)
        assert torch.allclose(exact.cis[i], torch.tensor([-v for v in g], dtype=torch.float64), atol=1e-10)
        assert float(exact.cis[i].sum() + exact.remainder[i]) == pytest.approx(-d2, abs=1e-10)
        # today's rule: min(f_a, f_b)⁺ exp(−g⁺/τ), τ = mean g⁺ over channels active in a or b
        gp = [max(v, 0.0) for v in g]
        act = [k for k in range(6) if fa[k] > 0 or fb[k] > 0]
        tau = sum(gp[k] for k in act) / max(len(act), 1)
        want = [max(min(float(fa[k]), float(fb[k])), 0.0) * math.exp(-gp[k] / (tau + 1e-12)) for k in range(6)]
        assert torch.allclose(today[i], torch.tensor(want, dtype=torch.float64), atol=1e-10)
        # gradient × activation of s = −d, per side, against central finite differences
        h = 1e-6
        for k in range(6):
            e = torch.zeros(6, dtype=torch.float64)
            e[k] = h
            da = -(_dist(head, fa + e, fb) - _dist(head, fa - e, fb)) / (2 * h)
            db = -(_dist(head, fa, fb + e) - _dist(head, fa, fb - e)) / (2 * h)
            assert float(ga.cis[i, k]) == pytest.approx(float(fa[k]) * da, abs=1e-7)
            assert float(ga.cis_b[i, k]) == pytest.approx(float(fb[k]) * db, abs=1e-7)


def test_rules_are_pair_symmetric():
    head = _heads()[1]
    f_a, f_b = _feats()
    for rule in EUCLIDEAN_RULES:
        ab, ba = compute_cis(f_a, f_b, head, rule), compute_cis(f_b, f_a, head, rule)
        if ab.cis_b is None:
            assert torch.allclose(ab.cis, ba.cis, atol=1e-12)
        else:
            assert torch.allclose(ab.cis, ba.cis_b, atol=1e-12) and torch.allclose(ab.cis_b, ba.cis, atol=1e-12)


@pytest.fixture(scope="module")
def face_chips():
    pytest.importorskip("dlib")
    from featurelens.similarity.faces import detect_faces, face_photo

    return {n: detect_faces(Image.open(face_photo(n)).convert("RGB"))[0].chip for n in ("obama", "obama2", "obama3", "biden")}


@pytest.fixture(scope="module")
def dlib_embedder():
    from featurelens.similarity.embedding import load_embedder

    return load_embedder("dlib_face")


@pytest.mark.slow
def test_sfam_on_faces_swap_batch_and_sums(dlib_embedder, face_chips):
    emb = dlib_embedder
    a = [face_chips["obama"], face_chips["obama2"], face_chips["biden"]]
    b = [face_chips["obama3"], face_chips["obama"], face_chips["obama2"]]
    xa, xb = emb.prepare(a), emb.prepare(b)
    e_a, e_b = emb.embed(xa), emb.embed(xb)
    d = (e_a - e_b).norm(dim=1)
    for rule in (*EUCLIDEAN_RULES, "cosine"):
        metric = "cosine" if rule == "cosine" else "euclidean"
        ex = explain_pair(emb, xa, xb, "sfam", metric, rule=rule)
        ba = explain_pair(emb, xb, xa, "sfam", metric, rule=rule)
        assert torch.allclose(ex.maps_a, ba.maps_b, atol=1e-5) and torch.allclose(ex.maps_b, ba.maps_a, atol=1e-5)
        one = explain_pair(emb, xa[2:], xb[2:], "sfam", metric, rule=rule)  # the last pair alone
        assert torch.allclose(one.maps_a[0], ex.maps_a[2], atol=1e-4) and torch.allclose(one.maps_b[0], ex.maps_b[2], atol=1e-4)
        if rule == "euclidean_exact":
            assert torch.allclose(ex.cis.sum(1) + ex.remainder, -(d**2), rtol=1e-4)
            assert torch.all(ex.remainder == 0)
        if rule == "cosine":  # cosine on the face model: the channel shares sum to the cosine (no bias)
            cos = torch.nn.functional.cosine_similarity(e_a, e_b)
            assert torch.allclose(ex.cis.sum(1) + ex.remainder, cos, atol=1e-5)
    assert torch.allclose(ex.score, torch.nn.functional.cosine_similarity(e_a, e_b), atol=1e-5)
