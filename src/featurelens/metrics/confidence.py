"""Average Drop and Increase in Confidence (Chattopadhay et al., Grad-CAM++, WACV 2018, arXiv 1710.11063).

The explanation map keeps only the explained region of the input: ``x̃ = baseline + m ⊙ (x − baseline)``
with the map ``m`` scaled to [0, 1] per sample (the paper's ``E = I ⊙ L`` is the default
``baseline="constant"``, i.e. zeros in model-input space). With ``Y_i`` the score of the full image
and ``O_i`` the score of the kept region:

* Average Drop  ``AD = 100 · 1/N Σ_i max(0, Y_i − O_i) / Y_i``  (lower is better);
* Increase in Confidence  ``IC = 100 · 1/N Σ_i 1[O_i > Y_i]``  (higher is better).

Both are meant for positive scores (softmax probabilities, cosine similarity of matched pairs);
samples with ``Y_i <= 0`` get a drop of NaN and are left out of the mean (counted in ``skipped``).
Full and masked images are scored together in batches of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from featurelens.imaging import normalize_maps
from featurelens.metrics.deletion import BaselineLike, make_baseline, prepare_maps
from featurelens.metrics.scoring import ScoreFn, check_scores


@dataclass
class ConfidenceResult:
    """Per-sample full and masked scores, and the two averages (in percent)."""

    full: Tensor  # [B] Y_i
    masked: Tensor  # [B] O_i
    drop: Tensor  # [B] max(0, Y-O)/Y (fraction; NaN when Y <= 0)
    increase: Tensor  # [B] bool O > Y

    @property
    def average_drop(self) -> float:
        valid = ~torch.isnan(self.drop)
        return float(100.0 * self.drop[valid].mean()) if bool(valid.any()) else float("nan")

    @property
    def increase_in_confidence(self) -> float:
        return float(100.0 * self.increase.float().mean())

    @property
    def skipped(self) -> int:
        return int(torch.isnan(self.drop).sum())


def keep_explained(inputs: Tensor, maps: Tensor, baseline: BaselineLike = "constant") -> Tensor:
    """``baseline + m ⊙ (x − baseline)`` with ``m`` each map min-max scaled to [0, 1]."""
    m = normalize_maps(prepare_maps(maps, inputs)).unsqueeze(1).to(inputs.dtype)
    base = make_baseline(inputs, baseline)
    return base + m * (inputs - base)


def average_drop_increase(
    score_fn: ScoreFn,
    inputs: Tensor,
    maps: Tensor | Callable[[Tensor], Any],
    *,
    baseline: BaselineLike = "constant",
    batch_size: int = 64,
    full_scores: Tensor | None = None,
) -> ConfidenceResult:
    """Average Drop and Increase in Confidence of ``maps``; see the module docstring.

    ``maps`` is ``[B, H, W]`` or an explanation function ``explain_fn(inputs) -> maps``.
    ``full_scores`` (``[B]``) skips re-scoring the unmasked inputs when they are already known.
    """
    inputs = inputs.detach()
    kept = keep_explained(inputs, prepare_maps(maps, inputs), baseline)
    b = inputs.shape[0]
    if full_scores is None:
        rows = torch.cat([inputs, kept])
        index = torch.cat([torch.arange(b), torch.arange(b)]).to(inputs.device)
    else:
        rows, index = kept, torch.arange(b, device=inputs.device)
    scores = []
    for start in range(0, rows.shape[0], batch_size):
        chunk = rows[start : start + batch_size]
        scores.append(check_scores(score_fn(chunk, index[start : start + batch_size]), chunk.shape[0]).cpu())
    all_scores = torch.cat(scores)
    if full_scores is None:
        full, masked = all_scores[:b], all_scores[b:]
    else:
        full, masked = full_scores.detach().float().cpu(), all_scores
    drop = torch.where(
        full > 0, (full - masked).clamp_min(0) / full.clamp_min(1e-12), torch.full_like(full, float("nan"))
    )
    return ConfidenceResult(full=full, masked=masked, drop=drop, increase=masked > full)
