"""Score functions: what the metrics measure on perturbed inputs.

A score function is ``score_fn(x: Tensor[N, C, H, W], index: LongTensor[N]) -> Tensor[N]``, where
``index[n]`` is the original sample that row ``n`` of the batch belongs to. The metrics build
batches that mix samples and perturbation steps, so a score function must look up the per-sample
target (class, reference embedding, ...) through ``index``. Higher scores mean "more of what is
being explained".

* :func:`class_score_fn` – a classifier's probability (or logit) of a fixed class per sample;
* :func:`similarity_score_fn` – similarity of an embedding to a per-sample reference embedding
  (cosine, or minus the Euclidean distance so that higher is still more similar).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurelens.errors import FeaturelensError

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class MetricError(FeaturelensError, ValueError):
    """A metric was called with inputs it cannot use (shapes, names, options)."""


def _device_of(module: object) -> torch.device | None:
    if isinstance(module, nn.Module):
        for p in module.parameters():
            return p.device
    return None


def class_score_fn(
    model: nn.Module,
    classes: Tensor | Sequence[int],
    kind: Literal["probability", "logit"] = "probability",
) -> ScoreFn:
    """Score = ``softmax(model(x))[c_index]`` (``kind="probability"``) or the raw logit.

    ``classes[b]`` is the class explained for original sample ``b``; the returned function scores a
    mixed batch by looking each row's class up through ``index``. Runs without autograd; the model
    should be in eval mode (the CLI and :func:`featurelens.models.load_model` give eval models).
    """
    if kind not in ("probability", "logit"):
        raise MetricError(f"unknown score kind {kind!r}; use 'probability' or 'logit'")
    cls = torch.as_tensor(classes, dtype=torch.long).flatten()
    device = _device_of(model)

    def score(x: Tensor, index: Tensor) -> Tensor:
        with torch.no_grad():
            out = model(x if device is None else x.to(device))
            if out.ndim != 2:
                raise MetricError(f"class scores need a [N, classes] model output, got {tuple(out.shape)}")
            c = cls.to(out.device)[index.to(out.device)]
            values = torch.softmax(out.float(), dim=1) if kind == "probability" else out.float()
            return values.gather(1, c.view(-1, 1)).squeeze(1)

    score.classes = cls  # type: ignore[attr-defined]
    return score


def similarity_score_fn(
    embedder: Callable[[Tensor], Tensor],
    reference_embeddings: Tensor,
    metric: Literal["cosine", "euclidean"] = "cosine",
) -> ScoreFn:
    """Score = similarity between ``embedder(x)[n]`` and ``reference_embeddings[index[n]]``.

    ``cosine``: ``<e, r> / (|e| |r|)``; ``euclidean``: ``-|e - r|_2`` (negated so that higher means
    more similar, like every score here). ``reference_embeddings`` is ``[B, D]``, one per original
    sample (e.g. the embedding of the other image of each pair).
    """
    if metric not in ("cosine", "euclidean"):
        raise MetricError(f"unknown similarity metric {metric!r}; use 'cosine' or 'euclidean'")
    if reference_embeddings.ndim != 2:
        raise MetricError(f"reference embeddings must be [B, D], got {tuple(reference_embeddings.shape)}")
    ref = reference_embeddings.detach()
    device = _device_of(embedder)

    def score(x: Tensor, index: Tensor) -> Tensor:
        with torch.no_grad():
            emb = embedder(x if device is None else x.to(device))
            if emb.ndim != 2:
                emb = emb.flatten(1)
            r = ref.to(emb.device)[index.to(emb.device)].to(emb.dtype)
            if metric == "cosine":
                return F.cosine_similarity(emb, r, dim=1).float()
            return -(emb - r).norm(dim=1).float()

    return score


def score_inputs(score_fn: ScoreFn, inputs: Tensor, *, batch_size: int = 64) -> Tensor:
    """``score_fn`` on unperturbed ``inputs`` (``index = arange(B)``), in batches; returns ``[B]``."""
    out = []
    for start in range(0, inputs.shape[0], batch_size):
        chunk = inputs[start : start + batch_size]
        idx = torch.arange(start, start + chunk.shape[0], device=inputs.device)
        out.append(check_scores(score_fn(chunk, idx), chunk.shape[0]))
    return torch.cat(out)


def check_scores(scores: Tensor, n: int) -> Tensor:
    """Check a score function returned one score per row and return them as float32 ``[N]``."""
    if not isinstance(scores, Tensor):
        raise MetricError(f"a score function must return a tensor [N], got {type(scores).__name__}")
    if scores.ndim == 0 and n == 1:
        scores = scores.reshape(1)
    if scores.ndim != 1 or scores.shape[0] != n:
        raise MetricError(
            f"a score function must return one score per row ([{n}]), got {tuple(scores.shape)}"
        )
    return scores.detach().float()
