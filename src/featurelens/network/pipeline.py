"""Layer-wise network explanations: clustered feature maps whose weights generalise Grad-CAM.

Implements "Interpretable Network Visualizations: A Human-in-the-Loop Approach for Post-hoc
Explainability of CNN-based Image Classification" (Bianchi, De Santis, Tocchetti, Brambilla,
IJCAI 2024, arXiv 2405.03301), steps 1–5 of :mod:`featurelens.network.clustering`, for many layers
captured in ONE forward and ONE backward pass (:class:`featurelens.engine.Capture`).

Embedding modes (step 3):

* ``"faithful"`` (default) – exact t-SNE with scikit-learn's schedule (1000 iterations, PCA init;
  :mod:`featurelens.network.tsne`), layers in parallel threads. Deterministic.
* ``"fast"`` – no t-SNE descent: a 2-D Laplacian eigenmap of the same t-SNE affinities ``P``
  (:func:`featurelens.network.tsne.spectral_embedding`; early-exaggerated t-SNE is spectral
  clustering on ``P`` in disguise). About 8× faster than the faithful mode, and unmoved by
  float-sized noise; its agreement with the faithful mode is measured by
  ``benchmarks/bench_network.py``, and against the faithful mode's own agreement under such noise by
  ``benchmarks/bench_network_stability.py`` (see also ``NetworkParams.stability_runs``).
* ``"sklearn"`` – scikit-learn's ``TSNE(init="pca")`` (Barnes–Hut), the paper pipeline as published;
  kept as the benchmark baseline.
* ``"pca"`` – Ward directly on the PCA space (no embedding), for comparison.

Cluster-level faithfulness: each kept cluster's top ``effect_fraction`` pixels (of its image-
resolution map) are replaced by a blurred copy of the image (or a constant), all clusters of an
image in one batch, and ``effect = s(x) − s(x_deleted)`` is the drop of the target score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from featurelens.engine import Capture
from featurelens.errors import FeaturelensError
from featurelens.network import clustering as C
from featurelens.network.tsne import TSNEParams, effective_perplexity, spectral_embedding, tsne
from featurelens.targets import ClassTarget, TargetLike, as_target, evaluate_target, target_indices

Mode = Literal["faithful", "fast", "sklearn", "pca"]
MODES = ("faithful", "fast", "sklearn", "pca")


@dataclass
class NetworkParams:
    """Every constant of the pipeline (defaults: the paper's)."""

    mode: Mode = "faithful"
    prune_factor: float = 0.9
    pca_components: int = 50
    k_min: int = 3
    k_max: int = 8
    drop_max_ratio: float = 1.0 / 3.0
    drop_mean_ratio: float = 0.5
    smooth_sigma: float | None = 1.0
    tsne: TSNEParams = field(default_factory=TSNEParams)
    spectral_dims: int = 2
    effect: bool = True
    effect_fraction: float = 0.2
    effect_baseline: Literal["blur", "constant"] = "blur"
    effect_blur_sigma: float = 8.0
    effect_batch: int = 32
    workers: int = 2
    seed: int = 0
    stability_runs: int = 0
    stability_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FeaturelensError(f"unknown network mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not 1 <= self.k_min <= self.k_max:
            raise FeaturelensError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if not 0.0 < self.effect_fraction <= 1.0:
            raise FeaturelensError(f"effect_fraction must be in (0, 1], got {self.effect_fraction}")
        if self.stability_runs < 0:
            raise FeaturelensError(f"stability_runs must be >= 0, got {self.stability_runs}")
        if not self.stability_eps > 0.0:
            raise FeaturelensError(f"stability_eps must be > 0, got {self.stability_eps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClusterResult:
    index: int  # rank by weight within the layer (0 = heaviest)
    channels: list[int]  # channel indices in the layer
    weight: float  # percent of the layer's total weight
    feature_map: np.ndarray  # [h, w] in [0, 1]
    image_map: np.ndarray  # [H, W] in [0, 1]
    effect: float | None = None


@dataclass
class LayerResult:
    name: str
    channels: int
    feature_size: tuple[int, int]
    weights: np.ndarray  # [K] percent
    kept: np.ndarray  # kept channel indices
    labels: np.ndarray  # cluster label per kept channel (before dropping)
    k: int
    silhouette: float | None
    embedding: np.ndarray | None
    clusters: list[ClusterResult]
    seconds: float
    stability: float | None = None  # mean ARI of perturbed re-clusterings (``stability_runs > 0``)
    map_stability: float | None = None  # mean map agreement of the same re-clusterings

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kept_channels": len(self.kept),
            "k": self.k,
            "silhouette": None if self.silhouette is None else round(float(self.silhouette), 6),
            "clusters": len(self.clusters),
        }
        if self.stability is not None:
            out["stability"] = round(float(self.stability), 6)
        if self.map_stability is not None and np.isfinite(self.map_stability):
            out["map_stability"] = round(float(self.map_stability), 6)
        return out


@dataclass
class ImageResult:
    index: int
    predicted_index: int | None
    score: float
    layers: list[LayerResult]


# ---------------------------------------------------------------------------
# step 3 embeddings
# ---------------------------------------------------------------------------
def embed(features: Tensor, params: NetworkParams) -> Tensor:
    """Step 3 up to Ward's input: PCA (≤ ``pca_components``) then the mode's 2-D embedding."""
    reduced = C.pca(features, params.pca_components)
    n = reduced.shape[0]
    if params.mode == "pca" or n < 4:
        return reduced
    if params.mode == "sklearn":
        from sklearn.manifold import TSNE

        out = TSNE(
            n_components=2,
            init="pca",
            random_state=params.seed,
            perplexity=effective_perplexity(params.tsne.perplexity, n),
            early_exaggeration=params.tsne.early_exaggeration,
            max_iter=params.tsne.max_iter,
        ).fit_transform(reduced.cpu().numpy())
        return torch.from_numpy(np.asarray(out, dtype=np.float64))
    if params.mode == "fast":
        return spectral_embedding(reduced, params.tsne.perplexity, params.spectral_dims)
    return tsne(reduced, params.tsne)


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Run layer jobs one per thread with torch intra-op parallelism off (deterministic results)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def explain_layer(
    name: str,
    activation: Tensor,
    gradient: Tensor,
    image_size: tuple[int, int],
    params: NetworkParams,
) -> LayerResult:
    """Steps 1–5 for one image's ``[K, h, w]`` activation and gradient of layer ``name``."""
    t0 = time.perf_counter()
    k_total, h, w = activation.shape
    weights = C.channel_weights(activation, gradient)
    kept = C.prune_channels(weights, params.prune_factor)
    if kept.numel() == 0:
        return LayerResult(name, k_total, (h, w), weights.cpu().numpy(), kept.cpu().numpy(),
                           np.zeros(0, dtype=np.int64), 0, None, None, [], time.perf_counter() - t0)
    maps = C.minmax_rows(activation[kept].float().flatten(1))  # [N, h*w]
    points = embed(maps, params)
    clus = C.best_ward(points, params.k_min, params.k_max)
    kw = weights[kept]
    maps3 = maps.view(-1, h, w)
    found = kept_cluster_maps(maps3, kw, clus.labels, params)
    clusters: list[ClusterResult] = []
    for rank, (members, weight, fmap) in enumerate(found):
        imap = C.finish_map(fmap, image_size, params.smooth_sigma)
        clusters.append(
            ClusterResult(
                index=rank,
                channels=[int(i) for i in kept[members].tolist()],
                weight=weight,
                feature_map=fmap.cpu().numpy().astype(np.float32),
                image_map=imap.cpu().numpy().astype(np.float32),
            )
        )
    stability = map_stability = None
    if params.stability_runs > 0 and clus.k > 1:
        stability, map_stability = clustering_stability(maps3, kw, clus.labels, found, params)
    emb = None if clus.embedding is None else clus.embedding.detach().cpu().numpy()
    return LayerResult(name, k_total, (h, w), weights.cpu().numpy(), kept.cpu().numpy(), clus.labels, clus.k,
                       clus.silhouette, emb, clusters, time.perf_counter() - t0, stability, map_stability)


def kept_cluster_maps(
    maps: Tensor, weights: Tensor, labels: np.ndarray, params: NetworkParams
) -> list[tuple[Tensor, float, Tensor]]:
    """Steps 4–5 at feature resolution: ``(members, w_C, min-max normalised M_C)`` for every cluster
    that survives the dropping rule, heaviest first. ``maps`` ``[N, h, w]``, ``weights`` ``[N]``."""
    wc = C.cluster_weights(weights, labels)
    order = C.keep_clusters(wc, params.drop_max_ratio, params.drop_mean_ratio)
    labels_t = torch.from_numpy(labels).to(weights.device)
    out = []
    for c in order.tolist():
        members = torch.nonzero(labels_t == c).flatten()
        fmap = C.normalize_maps(C.cluster_map(maps[members], weights[members])[None])[0]
        out.append((members, float(wc[c]), fmap))
    return out


def perturbed_labels(features: Tensor, params: NetworkParams) -> list[np.ndarray]:
    """Step 3 re-run ``params.stability_runs`` times on ``A ⊙ (1 + ε·Z)``: the cluster labels of the
    rows of ``features`` ``[N, D]`` under noise ``Z ~ N(0, 1)`` drawn from a generator seeded by
    ``params.seed`` and the run index, ``ε = params.stability_eps`` (default 1e-6, about 8 float32 ulps)."""
    out = []
    for r in range(params.stability_runs):
        gen = torch.Generator().manual_seed(params.seed * 1_000_003 + r + 1)
        noise = torch.randn(features.shape, generator=gen, dtype=torch.float32).to(features.device, features.dtype)
        points = embed(features * (1.0 + params.stability_eps * noise), params)
        out.append(C.best_ward(points, params.k_min, params.k_max).labels)
    return out


def clustering_stability(
    maps: Tensor,
    weights: Tensor,
    labels: np.ndarray,
    found: list[tuple[Tensor, float, Tensor]],
    params: NetworkParams,
) -> tuple[float, float]:
    """How much a layer's clustering moves under a perturbation the size of floating-point noise.

    The kept maps ``maps`` ``[N, h, w]`` are re-clustered by :func:`perturbed_labels` (same mode).
    Returns the mean adjusted Rand index between ``labels`` and the re-clusterings, and the mean
    :func:`~featurelens.network.clustering.map_agreement` between the kept cluster maps ``found`` and
    those of each re-clustering (built from the UNperturbed maps, so only the memberships differ).
    ARI 1 means noise of that size does not move the grouping; well below 1 means the boundaries are
    one plausible grouping among several.
    """
    from sklearn.metrics import adjusted_rand_score

    ref_maps = torch.stack([f for _, _, f in found]) if found else maps[:0]
    ref_w = torch.tensor([w for _, w, _ in found], dtype=torch.float64)
    aris, agreements = [], []
    for relabel in perturbed_labels(maps.flatten(1), params):
        aris.append(float(adjusted_rand_score(labels, relabel)))
        other = kept_cluster_maps(maps, weights, relabel, params)
        other_maps = torch.stack([f for _, _, f in other]) if other else maps[:0]
        agreements.append(C.map_agreement(ref_maps, ref_w, other_maps))
    finite = [a for a in agreements if np.isfinite(a)]
    return float(np.mean(aris)), float(np.mean(finite)) if finite else float("nan")


# ---------------------------------------------------------------------------
# cluster-level faithfulness
# ---------------------------------------------------------------------------
def deletion_masks(maps: Tensor, fraction: float) -> Tensor:
    """Binary masks ``[N, H, W]`` of each map's top ``fraction`` pixels (ties broken by position)."""
    flat = maps.flatten(1)
    n_top = max(1, round(fraction * flat.shape[1]))
    idx = flat.argsort(dim=1, descending=True, stable=True)[:, :n_top]
    mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
    return mask.view_as(maps)


def cluster_effects(
    model: nn.Module,
    x: Tensor,
    target: Callable[[Tensor], Tensor],
    maps: Tensor,
    params: NetworkParams,
) -> Tensor:
    """``s(x) − s(x with the top ``effect_fraction`` of each map deleted)`` for one image ``x`` [1,C,H,W]
    and maps ``[N, H, W]``; the deleted pixels take a blurred copy of ``x`` or zeros. Batched."""
    if maps.numel() == 0:
        return torch.zeros(0)
    if params.effect_baseline == "blur":
        base = C.gaussian_blur(x[0], params.effect_blur_sigma)[None]
    elif params.effect_baseline == "constant":
        base = torch.zeros_like(x)
    else:
        raise FeaturelensError(f"unknown effect baseline {params.effect_baseline!r}; use 'blur' or 'constant'")
    masks = deletion_masks(maps.to(x.device), params.effect_fraction)[:, None]
    with torch.no_grad():
        s0 = evaluate_target(target, model(x), 1)
        drops = []
        for i in range(0, masks.shape[0], params.effect_batch):
            m = masks[i: i + params.effect_batch]
            xd = x * (1 - m) + base * m
            drops.append(s0 - evaluate_target(target, model(xd), m.shape[0]))
    return torch.cat(drops).cpu()


class _RowTarget:
    """The user's target restricted to one sample, usable on a batch of that sample's variants."""

    def __init__(self, target: Callable[[Tensor], Tensor], index: int | None) -> None:
        self.target = target
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        if self.index is not None:
            return ClassTarget(self.index, getattr(self.target, "kind", "logit"))(output)
        return self.target(output)


# ---------------------------------------------------------------------------
# the whole pipeline for a batch
# ---------------------------------------------------------------------------
def explain_network(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str],
    target: TargetLike = None,
    params: NetworkParams | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[ImageResult]:
    """Network explanation of every image of ``x`` ``[B, C, H, W]`` at every layer of ``layers``.

    One forward and one backward pass capture all layers; then each image's layers are clustered
    (``params.workers`` threads), and, with ``params.effect``, each cluster's deletion effect is
    measured. ``progress(n)`` is called after each ``n`` finished (image, layer) pairs.
    """
    params = params or NetworkParams()
    if x.ndim != 4 or x.shape[0] == 0:
        raise FeaturelensError(f"expected a non-empty [B, C, H, W] batch, got shape {tuple(x.shape)}")
    if not layers:
        raise FeaturelensError("no layer to explain")
    tgt = as_target(target)
    size = (int(x.shape[2]), int(x.shape[3]))
    with Capture(model, list(layers)) as cap:
        out = cap.forward(x)
        scores = evaluate_target(tgt, out, x.shape[0])
        grads = cap.gradients(scores)
        acts = {n: cap.activations[n][-1].detach() for n in layers}
    grads_last = {n: grads[n][-1] for n in layers}
    indices = target_indices(tgt, out.detach()) if isinstance(out, Tensor) and out.ndim == 2 else None
    results: list[ImageResult] = []
    for b in range(x.shape[0]):

        def job(name: str, b: int = b) -> LayerResult:
            r = explain_layer(name, acts[name][b], grads_last[name][b], size, params)
            if progress is not None:
                progress(1)
            return r

        with _single_threaded_torch():
            if params.workers > 1 and len(layers) > 1:
                with ThreadPoolExecutor(max_workers=params.workers) as pool:
                    layer_results = list(pool.map(job, layers))
            else:
                layer_results = [job(n) for n in layers]
        idx = None if indices is None else int(indices[b])
        img = ImageResult(b, idx, float(scores[b].detach()), layer_results)
        if params.effect:
            all_clusters = [c for lr in layer_results for c in lr.clusters]
            if all_clusters:
                maps = torch.from_numpy(np.stack([c.image_map for c in all_clusters]))
                effects = cluster_effects(model, x[b: b + 1].detach(), _RowTarget(tgt, idx), maps, params)
                for c, e in zip(all_clusters, effects.tolist()):
                    c.effect = float(e)
        results.append(img)
    return results
