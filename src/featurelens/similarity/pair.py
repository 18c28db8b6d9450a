"""Pair explanations: SFAM and the similarity baselines behind one API.

``explain_pair(embedder, images_a, images_b, method="sfam", metric="cosine")`` returns a
:class:`PairExplanation` with one map per image of each pair. Methods (registry ``PAIR_METHODS``):

* ``sfam`` — Liao et al., "Visual Explanation via Similar Feature Activation for Metric Learning"
  (arXiv 2506.01636): ``M_a = norm(ReLU(Σ_k CIS_k A^a_k))``, ``M_b`` likewise, with the CIS rule of
  :mod:`featurelens.similarity.cis` (default ``cosine`` / ``euclidean`` by metric). One forward of the
  pair, no backward.
* ``gradcam`` / ``gradcam++`` — Grad-CAM (Selvaraju et al. 2017) / Grad-CAM++ (Chattopadhay et al.
  2018) of the similarity (cosine, or ``−‖e^a − e^b‖`` for Euclidean) with respect to one image's
  feature map, the other embedding held fixed (detached).
* ``stylianou`` — the spatial similarity decomposition of Stylianou et al., "Visualizing Deep
  Similarity Networks" (WACV 2019): for ``s = ⟨z^a, z^b⟩/(‖z^a‖‖z^b‖)`` with a GAP head,
  ``S^a(i,j) = Σ_k A^a_k(i,j) (J_aᵀ z^b)_k / (h_a w_a ‖z^a‖‖z^b‖)`` and ``Σ_ij S^a(i,j) = s`` (minus the
  projection bias share). For the Euclidean metric the same decomposition of the dot-product term is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from featurelens.engine import Capture
from featurelens.errors import MethodError
from featurelens.result import finish_maps
from featurelens.similarity.cis import DEFAULT_RULES, EPS, compute_cis, head_vjp, similarity
from featurelens.similarity.embedding import Embedder, PairFeatures

METRICS = ("cosine", "euclidean")
ImageLike = Image.Image | np.ndarray | str | Path


@dataclass
class PairExplanation:
    """Maps for both images of each pair in a batch.

    Attributes:
        maps_a, maps_b: ``[B, H, W]`` in [0, 1] at the model input size.
        raw_a, raw_b: ``[B, h, w]`` at feature resolution, before ReLU and normalisation.
        weights_a, weights_b: ``[B, K]`` channel weights combined with ``A^a`` / ``A^b`` (SFAM: both are CIS).
        score: ``[B]`` cosine similarity, or Euclidean distance, of the model's embeddings.
        remainder: ``[B]`` part of the score carried by no channel (exact CIS rules), else None.
    """

    method: str
    metric: str
    maps_a: Tensor
    maps_b: Tensor
    raw_a: Tensor
    raw_b: Tensor
    weights_a: Tensor | None
    weights_b: Tensor | None
    score: Tensor
    embeddings_a: Tensor
    embeddings_b: Tensor
    remainder: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cis(self) -> Tensor | None:
        """The SFAM channel scores (``weights_a``) when both sides share them."""
        return self.weights_a if self.method == "sfam" else None

    @property
    def batch_size(self) -> int:
        return int(self.score.shape[0])

    def swapped(self) -> PairExplanation:
        return PairExplanation(
            self.method, self.metric, self.maps_b, self.maps_a, self.raw_b, self.raw_a, self.weights_b,
            self.weights_a, self.score, self.embeddings_b, self.embeddings_a, self.remainder, dict(self.meta),
        )

    def top_channels(self, index: int = 0, k: int = 10) -> list[dict[str, float]]:
        """The ``k`` channels with the largest weight for pair ``index`` (SFAM: the CIS)."""
        w = self.weights_a if self.weights_a is not None else None
        if w is None:
            return []
        row = w[index].detach().float().cpu()
        if self.weights_b is not None and self.method != "sfam":
            row = 0.5 * (row + self.weights_b[index].detach().float().cpu())
        vals, idx = row.topk(min(k, row.numel()))
        return [{"channel": int(i), "weight": float(v)} for v, i in zip(vals, idx)]


def combine(weights: Tensor, a: Tensor) -> Tensor:
    """``Σ_k w_k A_k``: ``[B, K] × [B, K, h, w] → [B, h, w]``."""
    return torch.einsum("bk,bkhw->bhw", weights.to(a.dtype), a)


def finish(raw: Tensor, size: Sequence[int]) -> Tensor:
    """``norm(ReLU(raw))`` upsampled to ``size``."""
    return finish_maps(raw.clamp_min(0), size)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise MethodError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


# ---------------------------------------------------------------------------
# SFAM
# ---------------------------------------------------------------------------
def sfam_from_features(
    embedder: Embedder,
    fa: PairFeatures,
    fb: PairFeatures,
    metric: str = "cosine",
    rule: str | None = None,
    size_a: Sequence[int] | None = None,
    size_b: Sequence[int] | None = None,
) -> PairExplanation:
    """SFAM from already captured features (used by retrieval and few-shot)."""
    _check_metric(metric)
    rule = embedder.rule_for(metric, rule) or DEFAULT_RULES[metric]
    res = compute_cis(fa.pooled, fb.pooled, embedder.head, rule)
    cis = res.cis
    cis_b = res.cis_b if res.cis_b is not None else cis
    size_a = tuple(size_a or embedder.input_size)
    size_b = tuple(size_b or embedder.input_size)
    n = cis.shape[0]
    if fa.activations.shape == fb.activations.shape and size_a == size_b:
        # both sides in one combine/upsample/normalise (all per sample: identical to doing them apart)
        raw = combine(torch.cat([cis, cis_b]), torch.cat([fa.activations, fb.activations]))
        maps = finish(raw, size_a)
        raw_a, raw_b, map_a, map_b = raw[:n], raw[n:], maps[:n], maps[n:]
    else:
        raw_a, raw_b = combine(cis, fa.activations), combine(cis_b, fb.activations)
        map_a, map_b = finish(raw_a, size_a), finish(raw_b, size_b)
    return PairExplanation(
        "sfam", metric, map_a, map_b, raw_a, raw_b, cis, cis_b,
        similarity(fa.embeddings, fb.embeddings, metric), fa.embeddings, fb.embeddings, res.remainder,
        {"rule": rule, "head": embedder.head.describe(), "layer": embedder.layer},
    )


def sfam(embedder: Embedder, xa: Tensor, xb: Tensor, metric: str = "cosine", rule: str | None = None) -> PairExplanation:
    """SFAM for prepared batches ``xa``, ``xb`` ``[B, C, H, W]`` (one forward of the pair, no backward)."""
    fa, fb = embedder.run_pairs(xa, xb)
    return sfam_from_features(embedder, fa, fb, metric, rule, xa.shape[-2:], xb.shape[-2:])


# ---------------------------------------------------------------------------
# Stylianou et al. 2019
# ---------------------------------------------------------------------------
def stylianou(embedder: Embedder, xa: Tensor, xb: Tensor, metric: str = "cosine", rule: str | None = None) -> PairExplanation:
    """Spatial similarity decomposition (Stylianou et al., WACV 2019); see the module docstring."""
    _check_metric(metric)
    fa, fb = embedder.run_pairs(xa, xb)
    head = embedder.head
    denom = (fa.projected.norm(dim=1) * fb.projected.norm(dim=1)).clamp_min(EPS)[:, None]
    w_a = head_vjp(head, fa.pooled, fb.projected) / denom
    w_b = head_vjp(head, fb.pooled, fa.projected) / denom
    if head.pooling != "avg":
        meta_note = "decomposition exact only for GAP; applied to the pooled-feature weights"
    else:
        meta_note = "sum of raw map = similarity (minus bias share)"
    ha, wa = fa.activations.shape[-2:]
    hb, wb = fb.activations.shape[-2:]
    raw_a = combine(w_a, fa.activations) / (ha * wa)
    raw_b = combine(w_b, fb.activations) / (hb * wb)
    return PairExplanation(
        "stylianou", metric, finish(raw_a, xa.shape[-2:]), finish(raw_b, xb.shape[-2:]), raw_a, raw_b, w_a, w_b,
        similarity(fa.embeddings, fb.embeddings, metric), fa.embeddings, fb.embeddings, None, {"note": meta_note},
    )


# ---------------------------------------------------------------------------
# gradient baselines
# ---------------------------------------------------------------------------
def _score(e_a: Tensor, e_b: Tensor, metric: str) -> Tensor:
    """Higher = more similar: cosine, or minus the Euclidean distance."""
    s = similarity(e_a, e_b, metric)
    return s if metric == "cosine" else -s


def _side_gradients(embedder: Embedder, x: Tensor, other: Tensor, metric: str) -> tuple[Tensor, Tensor, Tensor]:
    with Capture(embedder.model, embedder.layer, gradients=True) as cap:
        out = embedder._check_output(cap.forward(x), x.shape[0])
        grads = cap.gradients(_score(out, other.detach(), metric))[embedder.layer][0]
        act = cap.activations[embedder.layer][0].detach()
    return act, grads, out.detach()


def similarity_gradients(embedder: Embedder, xa: Tensor, xb: Tensor, metric: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``A^a, ∂s/∂A^a, A^b, ∂s/∂A^b, e^a, e^b`` with the other embedding fixed (one forward + backward
    of the pair when the inputs have the same size)."""
    if xa.shape[1:] == xb.shape[1:]:
        n = xa.shape[0]
        with Capture(embedder.model, embedder.layer, gradients=True) as cap:
            out = embedder._check_output(cap.forward(torch.cat([xa, xb])), 2 * n)
            e_a, e_b = out[:n], out[n:]
            scores = _score(e_a, e_b.detach(), metric) + _score(e_a.detach(), e_b, metric)
            g = cap.gradients(scores)[embedder.layer][0]
            a = cap.activations[embedder.layer][0].detach()
        return a[:n], g[:n], a[n:], g[n:], e_a.detach(), e_b.detach()
    e_a, e_b = embedder.embed(xa), embedder.embed(xb)
    a_a, g_a, _ = _side_gradients(embedder, xa, e_b, metric)
    a_b, g_b, _ = _side_gradients(embedder, xb, e_a, metric)
    return a_a, g_a, a_b, g_b, e_a, e_b


def gradcam_weights(a: Tensor, g: Tensor) -> Tensor:
    """Grad-CAM: ``w_k = mean_ij ∂s/∂A_k(i, j)``."""
    return g.mean(dim=(2, 3))


def gradcampp_weights(a: Tensor, g: Tensor) -> Tensor:
    """Grad-CAM++: ``α = g² / (2g² + Σ_ij A g³)``, ``w_k = Σ_ij α ReLU(g)``."""
    g2 = g.pow(2)
    denom = 2 * g2 + (a * g.pow(3)).sum(dim=(2, 3), keepdim=True)
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    return (alpha * g.clamp_min(0)).sum(dim=(2, 3))


def _gradient_method(name: str, weight_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., PairExplanation]:
    def method(embedder: Embedder, xa: Tensor, xb: Tensor, metric: str = "cosine", rule: str | None = None) -> PairExplanation:
        _check_metric(metric)
        a_a, g_a, a_b, g_b, e_a, e_b = similarity_gradients(embedder, xa, xb, metric)
        w_a, w_b = weight_fn(a_a, g_a), weight_fn(a_b, g_b)
        raw_a, raw_b = combine(w_a, a_a), combine(w_b, a_b)
        return PairExplanation(
            name, metric, finish(raw_a, xa.shape[-2:]), finish(raw_b, xb.shape[-2:]), raw_a, raw_b, w_a, w_b,
            similarity(e_a, e_b, metric), e_a, e_b,
        )

    method.__doc__ = f"{name} of the pair similarity, other embedding fixed."
    return method


PairMethod = Callable[..., PairExplanation]
PAIR_METHODS: dict[str, PairMethod] = {
    "sfam": sfam,
    "gradcam": _gradient_method("gradcam", gradcam_weights),
    "gradcam++": _gradient_method("gradcam++", gradcampp_weights),
    "stylianou": stylianou,
}


def get_pair_method(name: str) -> PairMethod:
    key = name.lower().replace("_", "").replace("-", "")
    aliases = {"sfam": "sfam", "gradcam": "gradcam", "gradcam++": "gradcam++", "gradcampp": "gradcam++", "stylianou": "stylianou"}
    if key not in aliases:
        raise MethodError(f"unknown similarity method {name!r}; available: {', '.join(PAIR_METHODS)}")
    return PAIR_METHODS[aliases[key]]


def as_batch(embedder: Embedder, images: ImageLike | Sequence[ImageLike] | Tensor) -> Tensor:
    """A prepared tensor, one image, or a list of images → a batch on the model's device."""
    if isinstance(images, Tensor):
        return (images[None] if images.ndim == 3 else images).to(embedder.device)
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    return embedder.prepare(list(images))


def explain_pair(
    embedder: Embedder,
    images_a: ImageLike | Sequence[ImageLike] | Tensor,
    images_b: ImageLike | Sequence[ImageLike] | Tensor,
    method: str = "sfam",
    metric: str = "cosine",
    rule: str | None = None,
) -> PairExplanation:
    """Explain the similarity of each pair ``(a_i, b_i)`` with ``method`` (see the module docstring).

    Images of any size are accepted (they are resized by the embedder's preprocessing).
    """
    xa, xb = as_batch(embedder, images_a), as_batch(embedder, images_b)
    if xa.shape[0] != xb.shape[0]:
        raise MethodError(f"{xa.shape[0]} images a for {xb.shape[0]} images b: pairs need as many of each")
    return get_pair_method(method)(embedder, xa, xb, metric=metric, rule=rule)
