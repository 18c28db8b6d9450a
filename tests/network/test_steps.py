"""Reference tests of each step of the network explanation on constructed feature maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics import silhouette_score as sk_silhouette

from featurelens.errors import FeaturelensError
from featurelens.network import clustering as C
from featurelens.network.pipeline import NetworkParams, deletion_masks, embed, explain_layer
from featurelens.network.tsne import (
    TSNEParams,
    joint_affinities,
    kl_divergence,
    kl_gradient,
    spectral_embedding,
    tsne,
)


def three_pattern_maps(per: int = 12, size: int = 14, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Channels built from three known spatial patterns (blobs at three places), random gain + noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    centres = [(3.0, 3.0), (3.0, 10.0), (10.0, 6.5)]
    patterns = [torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0) for cy, cx in centres]
    maps, labels = [], []
    for k, pat in enumerate(patterns):
        for _ in range(per):
            gain = 0.5 + torch.rand(1, generator=g)
            maps.append(gain * pat + 0.03 * torch.randn(size, size, generator=g))
            labels.append(k)
    return torch.stack(maps), np.array(labels)


# -- step 1 ------------------------------------------------------------------
def test_channel_weights_match_explicit_formula_and_sum_to_100():
    torch.manual_seed(0)
    a, g = torch.randn(7, 5, 6), torch.randn(7, 5, 6)
    w = C.channel_weights(a, g)
    alpha = torch.zeros(7)
    for k in range(7):
        total = 0.0
        for i in range(5):
            for j in range(6):
                if a[k, i, j] > 0 and g[k, i, j] > 0:
                    total += float(g[k, i, j])
        alpha[k] = total / 30
    assert torch.allclose(w, 100 * alpha / alpha.sum(), atol=1e-5)
    assert math.isclose(float(w.sum()), 100.0, rel_tol=1e-5)


def test_channel_weights_all_zero_gradient_gives_zeros_not_nan():
    w = C.channel_weights(torch.rand(4, 3, 3), torch.zeros(4, 3, 3))
    assert torch.equal(w, torch.zeros(4))
    assert C.prune_channels(w).numel() == 0


# -- step 2 ------------------------------------------------------------------
def test_uniform_pruning_threshold_is_factor_times_uniform_share():
    # K = 10 -> uniform share 10 %, threshold 9 %
    w = torch.tensor([9.0, 8.999, 30.0, 0.0, 9.001, 10.0, 5.0, 8.0, 10.0, 10.0])
    kept = C.prune_channels(w, 0.9, rule="uniform")
    assert kept.tolist() == [0, 2, 4, 5, 8, 9]
    assert C.prune_channels(w, 0.5, rule="uniform").tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="unknown pruning rule"):
        C.prune_channels(w, rule="median")


# the authors' table, written out: d(K) in percent
PAPER_TABLE = {32: 2.4, 48: 1.6, 64: 1.4, 100: 1.4, 112: 1.4, 128: 0.7, 480: 0.35, 512: 0.175, 672: 0.175,
               1152: 0.175, 1280: 0.175}


@pytest.mark.parametrize("k", sorted(PAPER_TABLE))
def test_paper_pruning_rule_matches_the_authors_table(k):
    assert math.isclose(C.paper_threshold(k), PAPER_TABLE[k], rel_tol=1e-12)
    if k >= 64 and k & (k - 1) == 0:  # a power of two: d(K) = 0.896 * 100 / K
        assert math.isclose(C.paper_threshold(k), 0.896 * 100 / k, rel_tol=1e-12)
    d = C.paper_threshold(k)
    g = torch.Generator().manual_seed(k)
    w = torch.rand(k, generator=g, dtype=torch.float64)
    w[:3] = torch.tensor([d, d + 1e-9, d - 1e-9], dtype=torch.float64)  # exactly at the cut-off: dropped (strict >)
    kept = C.prune_channels(w)  # the paper rule is the default
    assert kept.tolist() == [i for i in range(k) if float(w[i]) > d]
    assert 1 in kept.tolist() and 0 not in kept.tolist() and 2 not in kept.tolist()
    assert NetworkParams().prune_rule == "paper"


# -- step 3 ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["faithful", "fast", "pca"])
def test_three_known_patterns_come_out_as_three_clusters(mode):
    maps, truth = three_pattern_maps()
    feats = C.minmax_rows(maps.flatten(1))
    points = embed(feats, NetworkParams(mode=mode))
    clus = C.best_ward(points, 3, 8)
    assert clus.k == 3
    assert adjusted_rand_score(truth, clus.labels) == 1.0


def test_silhouette_matches_sklearn():
    torch.manual_seed(3)
    pts = torch.randn(40, 2, dtype=torch.float64)
    labels = torch.randint(0, 4, (40,))
    labels[:4] = torch.tensor([0, 1, 2, 3])
    assert math.isclose(C.silhouette(pts, labels), float(sk_silhouette(pts.numpy(), labels.numpy())), rel_tol=1e-7)


def test_ward_cuts_have_exactly_k_clusters_and_match_sklearn():
    from sklearn.cluster import AgglomerativeClustering

    torch.manual_seed(4)
    pts = torch.randn(30, 2)
    cuts = C.ward_labels(pts, [3, 5])
    for k in (3, 5):
        ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(pts.numpy())
        assert len(set(cuts[k].tolist())) == k
        assert adjusted_rand_score(ref, cuts[k]) == 1.0


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    torch.manual_seed(5)
    x = torch.rand(25, 40, dtype=torch.float64)
    ours = C.pca(x, 5).numpy()
    ref = PCA(5, svd_solver="full").fit_transform(x.numpy())
    assert np.allclose(np.abs(ours), np.abs(ref), atol=1e-9)


def test_joint_affinities_match_sklearn():
    from scipy.spatial.distance import squareform
    from sklearn.manifold._t_sne import _joint_probabilities

    torch.manual_seed(6)
    x = torch.rand(50, 8, dtype=torch.float64)
    d = torch.cdist(x, x) ** 2
    ref = squareform(_joint_probabilities(d.numpy().astype(np.float32), 10.0, 0))
    ours = joint_affinities(x, 10.0).numpy()
    np.fill_diagonal(ref, 0.0)
    assert np.allclose(ours, ref, rtol=1e-3, atol=1e-9)
    assert math.isclose(ours.sum(), 1.0, rel_tol=1e-6)


def test_tsne_gradient_matches_autograd_of_kl():
    torch.manual_seed(7)
    x = torch.rand(20, 5, dtype=torch.float64)
    p = joint_affinities(x, 5.0)
    y = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    num = 1.0 / (1.0 + torch.cdist(y, y) ** 2)
    num = num * (1 - torch.eye(20, dtype=torch.float64))
    q = num / num.sum()
    mask = p > 0
    kl = (p[mask] * torch.log(p[mask] / q[mask])).sum()
    (auto,) = torch.autograd.grad(kl, y)
    grad, _, _ = kl_gradient(p, y.detach())
    assert torch.allclose(grad, auto, atol=1e-10)
    assert math.isclose(kl_divergence(p, y.detach()), float(kl.detach()), rel_tol=1e-9)


def test_tsne_agrees_with_sklearn_exact_on_separated_data():
    from sklearn.manifold import TSNE

    maps, truth = three_pattern_maps(per=20)  # 60 points: below ~40, lr = 50 makes t-SNE itself erratic
    x = C.pca(C.minmax_rows(maps.flatten(1)), 50)
    ref = TSNE(2, init="pca", method="exact", perplexity=9.0, random_state=0).fit_transform(x.numpy())
    ours = tsne(x, TSNEParams(perplexity=9.0), dtype=torch.float64).numpy()
    lab_ref, lab_ours = C.best_ward(torch.from_numpy(ref)).labels, C.best_ward(torch.from_numpy(ours)).labels
    assert adjusted_rand_score(lab_ref, lab_ours) == 1.0
    assert adjusted_rand_score(truth, lab_ours) == 1.0


def test_tsne_and_spectral_are_deterministic():
    maps, _ = three_pattern_maps(per=8, seed=2)
    x = C.pca(C.minmax_rows(maps.flatten(1)), 50)
    assert torch.equal(tsne(x), tsne(x))
    assert torch.equal(spectral_embedding(x), spectral_embedding(x))


# -- step 4 ------------------------------------------------------------------
def test_cluster_weights_and_dropping_rule():
    w = torch.tensor([10.0, 5.0, 20.0, 1.0, 2.0, 30.0])
    labels = np.array([0, 0, 1, 2, 2, 3])
    wc = C.cluster_weights(w, labels)
    assert wc.tolist() == [15.0, 20.0, 3.0, 30.0]
    # threshold = max(30/3, mean(17)/2 = 8.5) = 10 -> keep 3 (30), 1 (20), 0 (15), ordered by weight
    assert C.keep_clusters(wc).tolist() == [3, 1, 0]
    # the mean rule binds when clusters are even: threshold max(10/3, 8.5/2 = 4.25) drops 4.0
    assert C.keep_clusters(torch.tensor([10.0, 10.0, 10.0, 4.0])).tolist() == [0, 1, 2]
    assert C.keep_clusters(torch.tensor([10.0, 10.0, 10.0, 4.3])).tolist() == [0, 1, 2, 3]


# -- step 5 ------------------------------------------------------------------
def test_cluster_map_matches_explicit_loop_and_finish_map_range():
    torch.manual_seed(8)
    maps, w = torch.rand(4, 5, 6), torch.tensor([1.0, 3.0, 0.5, 2.0])
    expect = torch.zeros(5, 6)
    for k in range(4):
        expect += w[k] * maps[k]
    expect /= w.sum()
    assert torch.allclose(C.cluster_map(maps, w), expect, atol=1e-6)
    up = C.finish_map(expect, (20, 24), smooth_sigma=None)
    ref = torch.nn.functional.interpolate(expect[None, None], size=(20, 24), mode="bilinear", align_corners=False)[0, 0]
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    assert torch.allclose(up, ref, atol=1e-6)
    smooth = C.finish_map(expect, (20, 24), smooth_sigma=1.0)
    assert float(smooth.min()) == 0.0 and math.isclose(float(smooth.max()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("rule", ["raw", "normalized"])
def test_explain_layer_cluster_maps_match_an_explicit_loop_over_raw_activations(rule):
    maps, _ = three_pattern_maps(per=8)
    g = torch.Generator().manual_seed(3)
    scale = 0.2 + 5.0 * torch.rand(maps.shape[0], 1, 1, generator=g)  # channels of very different strength
    act = maps.clamp_min(0) * scale + 0.05 * torch.rand(maps.shape, generator=g)
    grad = torch.rand(maps.shape, generator=g) + 0.1
    params = NetworkParams(mode="stable", effect=False, cluster_map_rule=rule)
    assert params.smooth_sigma is None and NetworkParams().cluster_map_rule == "raw"  # the defaults
    r = explain_layer("l", act, grad, (28, 28), params)
    assert r.clusters
    w = r.weights
    for c in r.clusters:
        num = torch.zeros(act.shape[1:], dtype=torch.float64)
        for k in c.channels:  # M_C = sum_k w_k A_k / sum_k w_k over the cluster's channels
            a = act[k].double()
            if rule == "normalized":
                a = (a - a.min()) / (a.max() - a.min())
            num += float(w[k]) * a
        m = num / sum(float(w[k]) for k in c.channels)
        m = (m - m.min()) / (m.max() - m.min())
        assert np.allclose(c.feature_map, m.numpy(), atol=1e-5)
        up = torch.nn.functional.interpolate(m[None, None].float(), size=(28, 28), mode="bilinear",
                                             align_corners=False)[0, 0]
        up = (up - up.min()) / (up.max() - up.min())  # no smoothing by default
        assert np.allclose(c.image_map, up.numpy(), atol=1e-5)
    other = explain_layer("l", act, grad, (28, 28), NetworkParams(
        mode="stable", effect=False, cluster_map_rule="normalized" if rule == "raw" else "raw"))
    assert [c.channels for c in other.clusters] == [c.channels for c in r.clusters]
    assert not all(np.allclose(a.feature_map, b.feature_map, atol=1e-3) for a, b in zip(other.clusters, r.clusters))


def test_modes_aliases_and_rules_are_checked():
    assert NetworkParams(mode="fast").mode == "stable" and NetworkParams(mode="sklearn").mode == "paper"
    for bad in ({"mode": "tsne"}, {"prune_rule": "median"}, {"cluster_map_rule": "max"}):
        with pytest.raises(FeaturelensError, match="unknown"):
            NetworkParams(**bad)


def test_paper_mode_is_scikit_learn_as_the_authors_call_it():
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    maps, _ = three_pattern_maps(per=15)
    feats = C.minmax_rows(maps.flatten(1))
    params = NetworkParams()
    assert params.mode == "paper" and params.seed == 432
    got = embed(feats, params)
    x = feats.numpy()
    ref = TSNE(n_components=2, random_state=432).fit_transform(
        PCA(n_components=min(50, *x.shape), random_state=432).fit_transform(x))
    assert np.allclose(got.numpy(), ref, atol=1e-5)


def test_gaussian_blur_keeps_constants_and_mass():
    flat = torch.full((1, 9, 9), 0.7)
    assert torch.allclose(C.gaussian_blur(flat, 1.0), flat, atol=1e-6)
    spike = torch.zeros(1, 15, 15)
    spike[0, 7, 7] = 1.0
    assert math.isclose(float(C.gaussian_blur(spike, 1.0).sum()), 1.0, rel_tol=1e-5)


# -- a whole layer -------------------------------------------------------------
def test_explain_layer_on_constructed_layer_and_degenerate_cases():
    maps, truth = three_pattern_maps(per=10)
    k = maps.shape[0]
    grads = torch.ones_like(maps) * torch.linspace(1.0, 1.2, k)[:, None, None]
    res = explain_layer("toy", maps.clamp_min(0), grads, (28, 28), NetworkParams(effect=False))
    assert res.k == 3 and len(res.clusters) == 3
    assert math.isclose(float(res.weights.sum()), 100.0, rel_tol=1e-5)
    groups = sorted(sorted(set(truth[c.channels].tolist())) for c in res.clusters)
    assert groups == [[0], [1], [2]]  # every cluster is pure
    assert [c.weight for c in res.clusters] == sorted((c.weight for c in res.clusters), reverse=True)
    assert all(c.image_map.shape == (28, 28) and c.feature_map.shape == (14, 14) for c in res.clusters)
    # all-zero gradients: no cluster, no crash
    zero = explain_layer("toy", maps, torch.zeros_like(maps), (28, 28), NetworkParams())
    assert zero.clusters == [] and zero.kept.size == 0
    # fewer kept channels than clusters: one cluster with both
    two = explain_layer("toy", maps[:2].clamp_min(0), torch.ones(2, 14, 14), (28, 28), NetworkParams())
    assert len(two.clusters) == 1 and sorted(two.clusters[0].channels) == [0, 1]


def test_deletion_masks_cover_the_requested_fraction():
    torch.manual_seed(9)
    m = deletion_masks(torch.rand(3, 10, 10), 0.2)
    assert m.sum((1, 2)).tolist() == [20.0, 20.0, 20.0]


@pytest.mark.parametrize("channels_last", [True, False])
def test_batched_effects_match_one_forward_per_cluster(tiny_cnn, tiny_input, channels_last):
    from featurelens.network.pipeline import batched_effects
    from featurelens.targets import ClassTarget

    g = torch.Generator().manual_seed(4)
    before = {n: (p.data_ptr(), p.stride()) for n, p in tiny_cnn.named_parameters()}
    h, w = tiny_input.shape[2:]
    maps = [torch.rand(n, h, w, generator=g) for n in (3, 0, 4)]
    maps[2][3] = maps[2][1] * 2.0  # same ranking -> the same deletion mask, run once
    classes = [1, 0, 4]
    params = NetworkParams(effect_fraction=0.3, effect_batch=2, effect_channels_last=channels_last)
    with torch.no_grad():
        base_scores = tiny_cnn(tiny_input)[torch.arange(3), torch.tensor(classes)]
    got = batched_effects(tiny_cnn, tiny_input, [ClassTarget(c) for c in classes], base_scores, maps, params)
    assert [e.shape[0] for e in got] == [3, 0, 4]
    n_top = round(0.3 * h * w)
    for b in range(3):
        blurred = C.gaussian_blur(tiny_input[b], params.effect_blur_sigma)
        for i in range(maps[b].shape[0]):
            flat = maps[b][i].flatten()
            mask = torch.zeros(h * w)
            for j in sorted(range(h * w), key=lambda j: (-float(flat[j]), j))[:n_top]:  # top pixels, ties by position
                mask[j] = 1.0
            mask = mask.view(1, h, w)
            xd = tiny_input[b] * (1 - mask) + blurred * mask
            with torch.no_grad():
                expect = float(base_scores[b]) - float(tiny_cnn(xd[None])[0, classes[b]])
            assert math.isclose(float(got[b][i]), expect, rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(float(got[2][3]), float(got[2][1]), rel_tol=0, abs_tol=0)
    assert {n: (p.data_ptr(), p.stride()) for n, p in tiny_cnn.named_parameters()} == before  # model restored


# -- stability of a layer's clustering ----------------------------------------
def test_map_agreement_matches_explicit_formula():
    g = torch.Generator().manual_seed(11)
    ref, other = torch.rand(3, 4, 5, generator=g), torch.rand(4, 4, 5, generator=g)
    w = torch.tensor([50.0, 30.0, 20.0])
    expected = 0.0
    for c in range(3):
        best = max(np.corrcoef(ref[c].flatten().numpy(), other[j].flatten().numpy())[0, 1] for j in range(4))
        expected += float(w[c]) * best
    expected /= float(w.sum())
    assert math.isclose(C.map_agreement(ref, w, other), expected, rel_tol=1e-9)
    # a map set agrees perfectly with itself and with an affine rescaling of itself
    assert math.isclose(C.map_agreement(ref, w, 3.0 * ref + 1.0), 1.0, rel_tol=1e-12)
    # a constant counterpart correlates 0; empty sides give nan
    assert C.map_agreement(ref[:1], w[:1], torch.ones(1, 4, 5)) == 0.0
    assert math.isnan(C.map_agreement(ref, w, other[:0]))


def _layer_inputs(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation and a positive gradient such that every channel is kept with a similar weight."""
    act = maps.clamp_min(0) + 1e-3
    return act, torch.ones_like(act)


def test_stability_is_one_for_separated_patterns():
    maps, _ = three_pattern_maps(per=15)
    act, grad = _layer_inputs(maps)
    r = explain_layer("l", act, grad, (28, 28), NetworkParams(effect=False, stability_runs=3))
    assert r.k == 3
    assert r.stability == 1.0 and math.isclose(r.map_stability, 1.0, rel_tol=1e-9)
    stats = r.stats()
    assert stats["stability"] == 1.0 and stats["map_stability"] == 1.0
    assert "stability" not in explain_layer("l", act, grad, (28, 28), NetworkParams(effect=False)).stats()


def test_stability_exposes_faithful_clusters_of_structureless_channels():
    g = torch.Generator().manual_seed(12)
    maps = torch.rand(60, 7, 7, generator=g)  # i.i.d. noise: no cluster structure at all
    act, grad = _layer_inputs(maps)
    params = NetworkParams(mode="faithful", effect=False, stability_runs=4)
    r = explain_layer("l", act, grad, (28, 28), params)
    assert r.stability is not None and r.stability < 0.5  # float-sized noise moves t-SNE's boundaries
    again = explain_layer("l", act, grad, (28, 28), params)
    assert (again.stability, again.map_stability) == (r.stability, r.map_stability)  # seeded: reproducible
    # the fast mode has no iterated descent: the same noise leaves its clusters where they are
    fast = explain_layer("l", act, grad, (28, 28), NetworkParams(mode="fast", effect=False, stability_runs=4))
    assert fast.stability == 1.0


def test_stability_parameters_are_checked():
    from featurelens.errors import FeaturelensError

    with pytest.raises(FeaturelensError, match="stability_runs"):
        NetworkParams(stability_runs=-1)
    with pytest.raises(FeaturelensError, match="stability_eps"):
        NetworkParams(stability_eps=0.0)


def _reference_descent(x: torch.Tensor, params: TSNEParams) -> np.ndarray:
    """scikit-learn's exact t-SNE update, written out with loops (float64): for i < exaggeration_iter
    P is multiplied by early_exaggeration and momentum is momentum_early, then momentum_late;
    g_i = 4 Σ_j (p_ij − q_ij)(1 + ‖y_i − y_j‖²)^{-1}(y_i − y_j); per coordinate, the gain grows by
    gain_increase if update·g < 0, else is multiplied by gain_decrease (at least min_gain);
    update = momentum·update − lr·gain·g; y += update."""
    from featurelens.network.tsne import effective_perplexity, pca_init

    n = x.shape[0]
    p = joint_affinities(x, effective_perplexity(params.perplexity, n)).numpy()
    y = pca_init(x).numpy().copy()
    lr = max(n / params.early_exaggeration / 4.0, 50.0)
    update, gains = np.zeros_like(y), np.ones_like(y)
    for it in range(params.max_iter):
        exag = params.early_exaggeration if it < params.exaggeration_iter else 1.0
        momentum = params.momentum_early if it < params.exaggeration_iter else params.momentum_late
        num = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    num[i, j] = 1.0 / (1.0 + ((y[i] - y[j]) ** 2).sum())
        q = num / num.sum()
        grad = np.zeros_like(y)
        for i in range(n):
            for j in range(n):
                grad[i] += 4.0 * (exag * p[i, j] - q[i, j]) * num[i, j] * (y[i] - y[j])
        for i in range(n):
            for d in range(2):
                if update[i, d] * grad[i, d] < 0:
                    gains[i, d] += params.gain_increase
                else:
                    gains[i, d] *= params.gain_decrease
                gains[i, d] = max(gains[i, d], params.min_gain)
                update[i, d] = momentum * update[i, d] - lr * gains[i, d] * grad[i, d]
        y = y + update
    return y


@pytest.mark.parametrize("gains", [(0.2, 0.8), (0.0, 1.0)], ids=["delta-bar-delta", "plain-momentum"])
def test_tsne_descent_matches_an_explicit_loop(gains):
    # 40 iterations, the first 20 exaggerated: both phases, no KL check (every 50) can stop it early
    params = TSNEParams(perplexity=3.0, exaggeration_iter=20, max_iter=40, gain_increase=gains[0],
                        gain_decrease=gains[1])
    g = torch.Generator().manual_seed(13)
    x = torch.rand(12, 6, generator=g, dtype=torch.float64)
    ours = tsne(x, params, dtype=torch.float64).numpy()
    # the summation order differs, and the descent amplifies round-off (about 1e-8 relative after
    # 40 plain-momentum steps): the tolerance is far above that and far below any rule mistake
    assert np.allclose(ours, _reference_descent(x, params), rtol=1e-6, atol=1e-9)
