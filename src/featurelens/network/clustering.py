"""The per-layer steps of "Interpretable Network Visualizations" (Bianchi et al., IJCAI 2024, arXiv 2405.03301).

For one image and one conv layer with activations ``A ∈ R^{K×h×w}`` and gradients ``g = ∂y/∂A``:

1. :func:`channel_weights` – ``α_k = mean_ij 1[A_kij > 0]·1[g_kij > 0]·g_kij`` and
   ``w_k = 100·α_k / Σ_k α_k`` (percent; all zero when ``Σ α = 0``).
2. :func:`prune_channels` – the authors' rule (default): keep channels with ``w_k > d(K)``,
   :func:`paper_threshold`; or the ``"uniform"`` rule ``w_k ≥ prune_factor · 100/K`` (0.9) and ``w_k > 0``.
3. :func:`cluster_channels` – flatten the kept maps, min-max each (:func:`minmax_rows`), PCA to at
   most 50 components (:func:`pca`), embed in 2-D (:func:`featurelens.network.tsne.tsne` in the
   faithful mode), Ward agglomerative clustering for ``k = 3…8`` and keep the ``k`` with the best
   silhouette (:func:`silhouette`).
4. :func:`cluster_weights` / :func:`keep_clusters` – ``w_C = Σ_{k∈C} w_k``; drop clusters with
   ``w_C < max(max_C w_C / 3, mean_C w_C / 2)``.
5. :func:`cluster_map` – ``M_C = Σ_{k∈C} w_k A_k / Σ_{k∈C} w_k`` over the **raw** activations (the
   authors' rule, strong channels dominate), or over the min-max normalised maps ``Â_k``
   (``"normalized"``); then :func:`finish_map`: bilinear upsampling, min-max, and Gaussian smoothing
   only on request (the authors compute a σ = 1 blur and never apply it).

All functions work on torch tensors on the input's device and are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featurelens.imaging import normalize_maps


# ---------------------------------------------------------------------------
# steps 1-2: weights and pruning
# ---------------------------------------------------------------------------
def channel_weights(activation: Tensor, gradient: Tensor) -> Tensor:
    """Step 1: ``w_k = 100·α_k / Σα`` with ``α_k = mean_ij 1[A>0]·1[g>0]·g`` for ``[K, h, w]`` inputs.

    Returns ``[K]`` (float32) summing to 100, or all zeros when no position has ``A > 0`` and ``g > 0``.
    """
    if activation.shape != gradient.shape or activation.ndim != 3:
        raise ValueError(f"expected matching [K, h, w] activation and gradient, got {tuple(activation.shape)} "
                         f"and {tuple(gradient.shape)}")
    a = activation.float()
    g = gradient.float()
    alpha = ((a > 0) & (g > 0)).float().mul(g).mean(dim=(1, 2))
    total = alpha.sum()
    if not torch.isfinite(total) or float(total) <= 0.0:
        return torch.zeros_like(alpha)
    return 100.0 * alpha / total


PRUNE_RULES = ("paper", "uniform")


def paper_threshold(k: int) -> float:
    """The authors' cut-off ``d(K)`` in percent: 0.175 if ``K ≥ 512``, 0.35 if ``K ≥ 256``, 0.7 if
    ``K ≥ 128``, 1.4 if ``K ≥ 64``, else ``76.8 / K`` (``= 0.896·100/K`` only for powers of two)."""
    if k >= 512:
        return 0.175
    if k >= 256:
        return 0.35
    if k >= 128:
        return 0.7
    if k >= 64:
        return 1.4
    return 76.8 / k


def prune_channels(weights: Tensor, prune_factor: float = 0.9, rule: str = "paper") -> Tensor:
    """Step 2: indices (ascending) of the kept channels of ``weights`` ``[K]`` (percent).

    ``rule="paper"``: ``w_k > d(K)`` (:func:`paper_threshold`); ``rule="uniform"``:
    ``w_k ≥ prune_factor·100/K`` and ``w_k > 0``."""
    k = weights.numel()
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=weights.device)
    if rule == "paper":
        return torch.nonzero(weights > paper_threshold(k)).flatten()
    if rule == "uniform":
        threshold = prune_factor * 100.0 / k
        return torch.nonzero((weights >= threshold) & (weights > 0)).flatten()
    raise ValueError(f"unknown pruning rule {rule!r}; use one of {', '.join(PRUNE_RULES)}")


# ---------------------------------------------------------------------------
# step 3: features, PCA, embedding, Ward + silhouette
# ---------------------------------------------------------------------------
def minmax_rows(x: Tensor) -> Tensor:
    """Min-max normalise each row of ``[N, D]`` to [0, 1] (constant rows → 0)."""
    return normalize_maps(x)


def pca(x: Tensor, n_components: int = 50) -> Tensor:
    """Project centred ``[N, D]`` rows on their first ``min(n_components, N, D)`` principal axes
    (float64, deterministic signs: the largest-magnitude loading of each axis is positive)."""
    x64 = x.to(torch.float64)
    xc = x64 - x64.mean(0, keepdim=True)
    k = min(n_components, xc.shape[0], xc.shape[1])
    if k == 0:
        return xc[:, :0]
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1.0
    return xc @ (comps * signs[:, None]).T


def silhouette(points: Tensor, labels: Tensor) -> float:
    """Mean silhouette ``(b − a) / max(a, b)`` with Euclidean distances (0 for singletons), as in
    Rousseeuw (1987) and scikit-learn's ``silhouette_score``. Needs ``2 ≤ #clusters ≤ N − 1``."""
    d = torch.cdist(points.to(torch.float64), points.to(torch.float64))
    uniq, inv = torch.unique(labels, return_inverse=True)
    n_c = uniq.numel()
    onehot = F.one_hot(inv, n_c).to(torch.float64)  # [N, C]
    sums = d @ onehot  # [N, C] summed distances to each cluster
    counts = onehot.sum(0)  # [C]
    own = counts[inv]
    a = sums.gather(1, inv[:, None]).squeeze(1) / (own - 1).clamp_min(1)
    mean_other = sums / counts[None, :]
    mean_other = mean_other.masked_fill(onehot.bool(), math.inf)
    b = mean_other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
    s = torch.where(own > 1, s, torch.zeros_like(s))
    return float(s.mean())


def ward_labels(points: Tensor, ks: list[int]) -> dict[int, np.ndarray]:
    """Ward agglomerative clustering of ``points`` cut at each ``k`` (one linkage, exactly ``k`` clusters)."""
    from scipy.cluster.hierarchy import cut_tree, linkage

    z = linkage(points.detach().cpu().to(torch.float64).numpy(), method="ward")
    cuts = cut_tree(z, n_clusters=ks)
    return {k: cuts[:, i].astype(np.int64) for i, k in enumerate(ks)}


@dataclass
class Clustering:
    """Result of step 3 for one layer: ``labels[i]`` is the cluster of kept channel ``i``."""

    labels: np.ndarray
    k: int
    silhouette: float | None
    embedding: Tensor | None  # [N, 2] (or the space Ward ran on)
    scores: dict[int, float]


def best_ward(points: Tensor, k_min: int = 3, k_max: int = 8) -> Clustering:
    """Ward for every ``k`` in ``[k_min, k_max]`` (limited to ``N − 1``), the best silhouette wins
    (ties: the smaller ``k``). Fewer than ``k_min + 1`` points → one cluster, silhouette ``None``."""
    n = points.shape[0]
    ks = [k for k in range(k_min, k_max + 1) if 2 <= k <= n - 1]
    if not ks:
        return Clustering(np.zeros(n, dtype=np.int64), 1 if n else 0, None, points, {})
    cuts = ward_labels(points, ks)
    scores = {k: silhouette(points, torch.from_numpy(cuts[k])) for k in ks}
    best = max(ks, key=lambda k: (scores[k], -k))
    return Clustering(cuts[best], best, scores[best], points, scores)


# ---------------------------------------------------------------------------
# steps 4-5: cluster weights, dropping, maps
# ---------------------------------------------------------------------------
def cluster_weights(weights: Tensor, labels: Tensor | np.ndarray) -> Tensor:
    """Step 4: ``w_C = Σ_{k∈C} w_k`` for clusters ``0..C−1`` (``weights`` of the kept channels)."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=weights.device)
    n_c = int(lab.max()) + 1 if lab.numel() else 0
    return torch.zeros(n_c, dtype=weights.dtype, device=weights.device).index_add_(0, lab, weights)


def keep_clusters(wc: Tensor, max_ratio: float = 1.0 / 3.0, mean_ratio: float = 0.5) -> Tensor:
    """Step 4: indices of clusters with ``w_C ≥ max(max_ratio·max w_C, mean_ratio·mean w_C)``,
    ordered by decreasing weight (ties: lower cluster label first)."""
    if wc.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=wc.device)
    threshold = max(max_ratio * float(wc.max()), mean_ratio * float(wc.mean()))
    kept = [i for i in range(wc.numel()) if float(wc[i]) >= threshold]
    kept.sort(key=lambda i: (-float(wc[i]), i))
    return torch.tensor(kept, dtype=torch.long, device=wc.device)


def cluster_map(maps: Tensor, weights: Tensor) -> Tensor:
    """Step 5: ``Σ_k w_k M_k / Σ_k w_k`` over the members' maps ``[n, h, w]`` (plain mean if ``Σw = 0``)."""
    w = weights.to(maps.dtype)
    total = w.sum()
    if float(total) <= 0:
        return maps.mean(0)
    return torch.einsum("k,khw->hw", w, maps) / total


def map_agreement(ref_maps: Tensor, ref_weights: Tensor, other_maps: Tensor) -> float:
    """How well one set of cluster maps is reproduced by another:
    ``Σ_C w_C · max_{C'} ρ(M_C, M'_{C'}) / Σ_C w_C`` with ``ρ`` the Pearson correlation of the flattened
    maps, ``C`` over the reference's clusters ``ref_maps`` ``[n, ...]`` (weights ``w_C``) and ``C'`` over
    ``other_maps`` ``[m, ...]``. 1 when every reference map has an exact (up to affine scaling)
    counterpart; a constant map correlates 0 with everything. ``nan`` if either side is empty or
    ``Σ w_C = 0``."""
    if ref_maps.shape[0] == 0 or other_maps.shape[0] == 0:
        return math.nan
    w = ref_weights.to(torch.float64)
    total = float(w.sum())
    if total <= 0:
        return math.nan

    def unit(m: Tensor) -> Tensor:
        m = m.flatten(1).to(torch.float64)
        m = m - m.mean(1, keepdim=True)
        norm = torch.linalg.vector_norm(m, dim=1, keepdim=True)
        return torch.where(norm > 0, m / norm.clamp_min(1e-300), torch.zeros_like(m))

    rho = unit(ref_maps) @ unit(other_maps).T  # [n, m]
    return float((w * rho.max(1).values).sum() / total)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps (kernel radius ``ceil(3σ)``, replicate padding)."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3.0 * sigma))
    xs = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(xs**2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def finish_map(m: Tensor, size: tuple[int, int], smooth_sigma: float | None = None) -> Tensor:
    """Step 5 display: bilinear upsampling of ``[h, w]`` to ``size``, min-max, optional Gaussian
    smoothing with ``smooth_sigma`` pixels, min-max again. Returns ``[H, W]`` in [0, 1]."""
    up = F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False)[0]
    up = normalize_maps(up)
    if smooth_sigma:
        up = normalize_maps(gaussian_blur(up, smooth_sigma))
    return up[0]
