"""Layer-wise network explanations: clustered feature maps whose weights generalise Grad-CAM.

Implements "Interpretable Network Visualizations: A Human-in-the-Loop Approach for Post-hoc
Explainability of CNN-based Image Classification" (Bianchi, De Santis, Tocchetti, Brambilla,
IJCAI 2024, arXiv 2405.03301), steps 1–5 of :mod:`featurelens.network.clustering`, for many layers
captured in ONE forward and ONE backward pass (:class:`featurelens.engine.Capture`).

What is explained: the post-activation units of :mod:`featurelens.network.layers` (conv → [norm]
→ activation); a unit name ``module@i`` is call ``i`` of a reused module.

Embedding modes (step 3):

* ``"paper"`` – the authors' pipeline as published: scikit-learn ``PCA(min(50, N, D))`` then
  scikit-learn's default ``TSNE(n_components=2)`` (Barnes–Hut, perplexity 30, PCA init, learning
  rate "auto", 1000 iterations), seeded with ``NetworkParams.seed`` (their 432). Alias ``"sklearn"``.
* ``"faithful"`` – our exact t-SNE in torch with scikit-learn's schedule
  (:mod:`featurelens.network.tsne`). Deterministic.
* ``"stable"`` – no t-SNE descent: a 2-D Laplacian eigenmap of the same t-SNE affinities ``P``
  (:func:`featurelens.network.tsne.spectral_embedding`; early-exaggerated t-SNE is spectral
  clustering on ``P`` in disguise). Unmoved by float-sized noise and many times faster; its
  agreement with the paper mode is measured by ``benchmarks/bench_network.py``. Alias ``"fast"``.
* ``"pca"`` – Ward directly on the PCA space (no embedding), for comparison.

For layers with few kept channels, t-SNE's perplexity is lowered to ``(N − 1) / 3``: in the paper
mode only where scikit-learn refuses it (``N ≤ perplexity``), in the faithful and stable modes for
``N < 3·perplexity + 1``.

Cluster-level faithfulness: each kept cluster's top ``effect_fraction`` pixels (of its image-
resolution map) are replaced by a blurred copy of the image (or a constant), and
``effect = s(x) − s(x_deleted)`` is the drop of the target score; ``s(x)`` is the score of the
capture pass, and the deleted variants of all clusters of all images of a batch run through the model
together in batches of ``effect_batch`` (identical masks of one image run once), on an eval-only copy
with batch norms folded into the convs (:mod:`featurelens.network.effect_model`).

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
from featurelens.network.effect_model import effect_model
from featurelens.network.layers import Unit, unit_call
from featurelens.network.modes import DEFAULT_MODE, MODE_ALIASES, MODES, canonical_mode  # noqa: F401 - re-exported
from featurelens.network.tsne import TSNEParams, effective_perplexity, spectral_embedding, tsne
from featurelens.targets import ClassTarget, TargetLike, as_target, evaluate_target, target_indices

Mode = Literal["paper", "faithful", "stable", "pca", "fast", "sklearn"]
CLUSTER_MAP_RULES = ("raw", "normalized")


@dataclass
class NetworkParams:
    """Every constant of the pipeline (defaults: the paper's, except the embedding ``mode``)."""

    mode: Mode = DEFAULT_MODE  # type: ignore[assignment]
    prune_rule: Literal["paper", "uniform"] = "paper"  # paper: w_k > d(K); uniform: w_k >= prune_factor*100/K
    prune_factor: float = 0.9
    cluster_map_rule: Literal["raw", "normalized"] = "raw"  # weighted mean of raw or of min-max maps
    pca_components: int = 50
    k_min: int = 3
    k_max: int = 8
    drop_max_ratio: float = 1.0 / 3.0
    drop_mean_ratio: float = 0.5
    smooth_sigma: float | None = None
    tsne: TSNEParams = field(default_factory=TSNEParams)
    spectral_dims: int = 2
    effect: bool = True
    effect_fraction: float = 0.2
    effect_baseline: Literal["blur", "constant"] = "blur"
    effect_blur_sigma: float = 8.0
    effect_batch: int = 4  # deleted variants per forward (small chunks: two single-threaded workers)
    effect_channels_last: bool = True  # run the effect forwards in channels-last memory format (about 2x on CPU)
    effect_fuse: bool = True  # effect forwards on an eval-only copy with BN/padding folded into the convs
    workers: int = 2  # threads of the clustering and of the effect forwards (one torch thread each)
    seed: int = 432
    stability_runs: int = 0
    stability_eps: float = 1e-6

    def __post_init__(self) -> None:
        self.mode = canonical_mode(self.mode)  # type: ignore[assignment]
        if self.prune_rule not in C.PRUNE_RULES:
            raise FeaturelensError(f"unknown pruning rule {self.prune_rule!r}; use one of {', '.join(C.PRUNE_RULES)}")
        if self.cluster_map_rule not in CLUSTER_MAP_RULES:
            raise FeaturelensError(f"unknown cluster-map rule {self.cluster_map_rule!r}; "
                                   f"use one of {', '.join(CLUSTER_MAP_RULES)}")
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
    if params.mode == "paper":
        return paper_embedding(features, params)
    reduced = C.pca(features, params.pca_components)
    n = reduced.shape[0]
    if params.mode == "pca" or n < 4:
        return reduced
    if params.mode == "stable":
        return spectral_embedding(reduced, params.tsne.perplexity, params.spectral_dims)
    return tsne(reduced, params.tsne)


def paper_embedding(features: Tensor, params: NetworkParams) -> Tensor:
    """The authors' step 3 as published: ``PCA(min(50, N, D))`` and ``TSNE(n_components=2)`` of
    scikit-learn, both seeded with ``params.seed``, every other argument at scikit-learn's default.
    Only for layers with ``N ≤ perplexity`` (which scikit-learn refuses) is the perplexity lowered to
    ``(N − 1) / 3``. BLAS and OpenMP run single-threaded here: the t-SNE descent is chaotic, so a
    thread-count-dependent rounding would otherwise change the clusters from one run to the next."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = features.detach().cpu().numpy()
    n, d = x.shape
    k = min(params.pca_components, n, d)
    with threadpool_limits(1):
        reduced = PCA(n_components=k, random_state=params.seed).fit_transform(x) if k > 0 else x[:, :0]
        if n < 4:
            return torch.from_numpy(np.asarray(reduced, dtype=np.float64))
        perplexity = (params.tsne.perplexity if n > params.tsne.perplexity
                      else effective_perplexity(params.tsne.perplexity, n))
        out = TSNE(n_components=2, random_state=params.seed, perplexity=perplexity).fit_transform(reduced)
    return torch.from_numpy(np.asarray(out, dtype=np.float64))


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
    kept = C.prune_channels(weights, params.prune_factor, params.prune_rule)
    if kept.numel() == 0:
        return LayerResult(name, k_total, (h, w), weights.cpu().numpy(), kept.cpu().numpy(),
                           np.zeros(0, dtype=np.int64), 0, None, None, [], time.perf_counter() - t0)
    maps = C.minmax_rows(activation[kept].float().flatten(1))  # [N, h*w], what is clustered
    points = embed(maps, params)
    clus = C.best_ward(points, params.k_min, params.k_max)
    kw = weights[kept]
    source = map_source(activation[kept].float(), maps.view(-1, h, w), params)
    found = kept_cluster_maps(source, kw, clus.labels, params)
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
        stability, map_stability = clustering_stability(maps, source, kw, clus.labels, found, params)
    emb = None if clus.embedding is None else clus.embedding.detach().cpu().numpy()
    return LayerResult(name, k_total, (h, w), weights.cpu().numpy(), kept.cpu().numpy(), clus.labels, clus.k,
                       clus.silhouette, emb, clusters, time.perf_counter() - t0, stability, map_stability)


def map_source(raw: Tensor, normalized: Tensor, params: NetworkParams) -> Tensor:
    """The ``[N, h, w]`` maps a cluster map averages: the raw activations (``cluster_map_rule="raw"``,
    the authors' rule) or the min-max normalised ones (``"normalized"``)."""
    return raw if params.cluster_map_rule == "raw" else normalized


def kept_cluster_maps(
    maps: Tensor, weights: Tensor, labels: np.ndarray, params: NetworkParams
) -> list[tuple[Tensor, float, Tensor]]:
    """Steps 4–5 at feature resolution: ``(members, w_C, minmax(Σ_{k∈C} w_k maps_k / Σ_{k∈C} w_k))`` for
    every cluster that survives the dropping rule, heaviest first. ``maps`` ``[N, h, w]`` (see
    :func:`map_source`), ``weights`` ``[N]``."""
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
    features: Tensor,
    maps: Tensor,
    weights: Tensor,
    labels: np.ndarray,
    found: list[tuple[Tensor, float, Tensor]],
    params: NetworkParams,
) -> tuple[float, float]:
    """How much a layer's clustering moves under a perturbation the size of floating-point noise.

    The clustered features ``features`` ``[N, D]`` are re-clustered by :func:`perturbed_labels` (same
    mode) and the cluster maps rebuilt from ``maps`` ``[N, h, w]`` (:func:`map_source`).
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
    for relabel in perturbed_labels(features, params):
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


def effect_baseline(x: Tensor, params: NetworkParams) -> Tensor:
    """What deleted pixels of one image ``x`` ``[1, C, H, W]`` become: a blurred copy or zeros."""
    if params.effect_baseline == "blur":
        return C.gaussian_blur(x[0], params.effect_blur_sigma)[None]
    if params.effect_baseline == "constant":
        return torch.zeros_like(x)
    raise FeaturelensError(f"unknown effect baseline {params.effect_baseline!r}; use 'blur' or 'constant'")


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
    with torch.no_grad():
        s0 = evaluate_target(target, model(x), 1)
    return batched_effects(model, x, [target], s0, [maps], params)[0]


def batched_effects(
    model: nn.Module,
    x: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    base_scores: Tensor,
    maps: Sequence[Tensor],
    params: NetworkParams,
) -> list[Tensor]:
    """Deletion effects of every image of ``x`` ``[B, C, H, W]`` at once: ``maps[b]`` ``[N_b, H, W]``,
    ``targets[b]`` its row target, ``base_scores[b]`` its score ``s(x_b)`` (already at hand from the
    capture pass). All deleted variants run through the model together, ``effect_batch`` at a time,
    in ``params.workers`` threads of one torch thread each; within an image, clusters whose deletion
    masks are identical share one forward pass. The forwards run on
    :func:`featurelens.network.effect_model.effect_model` (an eval-only copy with batch norms and
    symmetric padding folded into the convs, channels-last), whose output matches the model's up to
    float rounding (checked when it is built)."""
    jobs: list[tuple[int, Tensor]] = []  # (image, mask [1, H, W]) of each unique deletion
    where: list[list[int]] = []  # per image: the job of each of its maps
    bases = []
    for b, m in enumerate(maps):
        bases.append(effect_baseline(x[b: b + 1], params)[0] if m.numel() else None)
        masks = deletion_masks(m.to(x.device), params.effect_fraction) if m.numel() else m
        seen: dict[bytes, int] = {}
        idx = []
        for mask in masks:
            key = mask.to(torch.bool).cpu().numpy().tobytes()
            if key not in seen:
                seen[key] = len(jobs)
                jobs.append((b, mask[None]))
            idx.append(seen[key])
        where.append(idx)
    runner = effect_model(model, x[:1], fuse=params.effect_fuse,
                          channels_last=params.effect_channels_last and x.ndim == 4)
    fmt = torch.channels_last if runner is not model and params.effect_channels_last else torch.contiguous_format
    starts = list(range(0, len(jobs), params.effect_batch))

    def run(start: int) -> list[float]:
        chunk = jobs[start: start + params.effect_batch]
        with torch.inference_mode():
            xd = torch.stack([x[b] * (1 - m) + bases[b] * m for b, m in chunk]).contiguous(memory_format=fmt)
            out = runner(xd)
            return [float(base_scores[b]) - float(evaluate_target(targets[b], out[i: i + 1], 1)[0])
                    for i, (b, _) in enumerate(chunk)]

    if params.workers > 1 and len(starts) > 1 and not runner.training:
        with _single_threaded_torch(), ThreadPoolExecutor(max_workers=params.workers) as pool:
            parts = list(pool.map(run, starts))
    else:
        parts = [run(s) for s in starts]
    drops = torch.tensor([d for part in parts for d in part], dtype=torch.float32)
    return [drops[torch.tensor(idx, dtype=torch.long)] if idx else torch.zeros(0) for idx in where]


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
    layers: Sequence[str | Unit],
    target: TargetLike = None,
    params: NetworkParams | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[ImageResult]:
    """Network explanation of every image of ``x`` ``[B, C, H, W]`` at every layer of ``layers``.

    ``layers``: units (:class:`featurelens.network.layers.Unit`) or their names (``module`` or
    ``module@call``; a plain module name means its last call). One forward and one backward pass
    capture all layers; then each image's layers are clustered (``params.workers`` threads), and,
    with ``params.effect``, each cluster's deletion effect is measured (:func:`batched_effects`).
    ``progress(n)`` is called after each ``n`` finished (image, layer) pairs; ``timings`` (if given)
    accumulates the seconds spent in ``"capture"``, ``"clustering"`` and ``"effects"``.
    """
    params = params or NetworkParams()
    timings = timings if timings is not None else {}
    if x.ndim != 4 or x.shape[0] == 0:
        raise FeaturelensError(f"expected a non-empty [B, C, H, W] batch, got shape {tuple(x.shape)}")
    if not layers:
        raise FeaturelensError("no layer to explain")
    calls = {}
    for layer in layers:
        calls[layer.name if isinstance(layer, Unit) else layer] = (
            (layer.module, layer.call) if isinstance(layer, Unit) else unit_call(layer))
    names = list(calls)
    modules = list(dict.fromkeys(m for m, _ in calls.values()))
    tgt = as_target(target)
    size = (int(x.shape[2]), int(x.shape[3]))
    t0, c0 = time.perf_counter(), time.process_time()
    with Capture(model, modules) as cap:
        out = cap.forward(x)
        scores = evaluate_target(tgt, out, x.shape[0])
        grads = cap.gradients(scores)
        acts = {n: cap.activations[m][c].detach() for n, (m, c) in calls.items()}
        grads_of = {n: grads[m][c] for n, (m, c) in calls.items()}
    indices = target_indices(tgt, out.detach()) if isinstance(out, Tensor) and out.ndim == 2 else None
    scores = scores.detach()
    add_timing(timings, "capture", t0, c0)
    results: list[ImageResult] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for b in range(x.shape[0]):

        def job(name: str, b: int = b) -> LayerResult:
            r = explain_layer(name, acts[name][b], grads_of[name][b], size, params)
            if progress is not None:
                progress(1)
            return r

        with _single_threaded_torch():
            if params.workers > 1 and len(names) > 1:
                with ThreadPoolExecutor(max_workers=params.workers) as pool:
                    layer_results = list(pool.map(job, names))
            else:
                layer_results = [job(n) for n in names]
        idx = None if indices is None else int(indices[b])
        results.append(ImageResult(b, idx, float(scores[b]), layer_results))
    add_timing(timings, "clustering", t0, c0)
    if params.effect:
        t0, c0 = time.perf_counter(), time.process_time()
        per_image = [[c for lr in r.layers for c in lr.clusters] for r in results]
        maps = [torch.from_numpy(np.stack([c.image_map for c in cl])) if cl else torch.zeros(0, *size)
                for cl in per_image]
        row_targets = [_RowTarget(tgt, r.predicted_index) for r in results]
        effects = batched_effects(model, x.detach(), row_targets, scores, maps, params)
        for cl, eff in zip(per_image, effects):
            for c, e in zip(cl, eff.tolist()):
                c.effect = float(e)
        add_timing(timings, "effects", t0, c0)
    return results


def add_timing(timings: dict[str, float], key: str, t0: float, c0: float) -> None:
    """Add the wall and CPU seconds since ``t0`` (``perf_counter``) / ``c0`` (``process_time``) to
    ``timings[key]`` and ``timings[key + "_cpu"]``."""
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
    timings[f"{key}_cpu"] = timings.get(f"{key}_cpu", 0.0) + time.process_time() - c0
