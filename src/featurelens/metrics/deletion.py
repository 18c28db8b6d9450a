"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018, arXiv 1806.07421).

Pixels (spatial positions, all channels together) are ranked by the saliency map, highest first;
ties are broken by the flat pixel index (row-major), so the order is deterministic. With ``S``
steps, step ``k`` (``k = 0..S``) perturbs the first ``n_k = floor(k·P / S)`` pixels of that order
(``P = H·W``):

* ``deletion``:  ``x_k = where(top n_k, baseline, x)`` – the score should fall fast for a faithful map;
* ``insertion``: ``x_k = where(top n_k, x, baseline)`` – the score should rise fast.

The curve is ``s_k = score_fn(x_k)`` against the fraction ``f_k = n_k / P``; its area is the
trapezoid rule ``AUC = Σ_k (f_{k+1} - f_k)(s_k + s_{k+1}) / 2``. Lower deletion AUC and higher
insertion AUC are better.

Batching: the ``B·(S+1)`` perturbed images (every sample at every step, step 0 included) are
generated lazily, chunk by chunk, and scored in batches of ``batch_size`` rows that mix samples and
steps; a curve therefore costs exactly ``ceil(B·(S+1) / batch_size)`` calls of ``score_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from featurelens.metrics.scoring import MetricError, ScoreFn, check_scores

BaselineLike = Literal["blur", "constant"] | float | Tensor


@dataclass
class Curve:
    """A deletion or insertion curve for a batch.

    Attributes:
        fractions: ``[S+1]`` fraction of pixels perturbed at each step (0 … 1).
        scores: ``[B, S+1]`` score of each sample at each step.
        auc: ``[B]`` trapezoid area under each sample's curve over ``fractions``.
        mode: ``"deletion"`` or ``"insertion"``.
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor
    mode: str = "deletion"

    @property
    def mean_curve(self) -> Tensor:
        """``[S+1]`` the curve averaged over samples."""
        return self.scores.mean(0)

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def gaussian_blur(inputs: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflect padding (RISE uses 11 and 5)."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise MetricError(f"the blur kernel size must be odd and positive, got {kernel_size}")
    half = kernel_size // 2
    t = torch.arange(kernel_size, device=inputs.device, dtype=torch.float32) - half
    k = torch.exp(-(t**2) / (2.0 * sigma**2))
    k = (k / k.sum()).to(inputs.dtype)
    c = inputs.shape[1]
    mode = "reflect" if min(inputs.shape[-2:]) > half else "replicate"
    x = F.pad(inputs, (half, half, half, half), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def make_baseline(inputs: Tensor, baseline: BaselineLike) -> Tensor:
    """The ``[B, C, H, W]`` image that perturbed pixels take their values from.

    ``"blur"``: a Gaussian blur of each input; ``"constant"``: zeros in model-input space (the
    mean colour for ImageNet-normalised inputs, mid-grey for EfficientNet-Lite's scaling);
    a number: that constant; a tensor: broadcast to the inputs' shape.
    """
    if isinstance(baseline, Tensor):
        try:
            return baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs)
        except RuntimeError:
            raise MetricError(
                f"a baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the inputs {tuple(inputs.shape)}"
            ) from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if baseline == "blur":
        return gaussian_blur(inputs)
    if baseline == "constant":
        return torch.zeros_like(inputs)
    raise MetricError(f"unknown baseline {baseline!r}; use 'blur', 'constant', a number or a tensor")


def prepare_maps(maps: Tensor | Callable[[Tensor], Any], inputs: Tensor) -> Tensor:
    """Check ``maps`` against ``inputs`` and return float ``[B, H, W]`` maps at the input size.

    ``maps`` may also be an explanation function ``explain_fn(inputs) -> maps`` (a returned
    :class:`~featurelens.result.Explanation` is read through its ``.map``).
    """
    if callable(maps) and not isinstance(maps, Tensor):
        maps = maps(inputs)
        if not isinstance(maps, Tensor) and hasattr(maps, "map"):
            maps = maps.map
    if not isinstance(maps, Tensor):
        raise MetricError(f"maps must be a tensor [B, H, W], got {type(maps).__name__}")
    if inputs.ndim != 4:
        raise MetricError(f"inputs must be a [B, C, H, W] batch, got shape {tuple(inputs.shape)}")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim == 2 and inputs.shape[0] == 1:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[0] != inputs.shape[0]:
        raise MetricError(f"maps must be [B, H, W] with B = {inputs.shape[0]}, got shape {tuple(maps.shape)}")
    maps = torch.nan_to_num(maps.detach().float().to(inputs.device), nan=0.0)
    size = tuple(inputs.shape[-2:])
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


def pixel_ranks(maps: Tensor) -> Tensor:
    """``[B, P]`` rank of every pixel in the deletion order (0 = highest map value).

    Ties keep the row-major pixel order (a stable sort), so the order is deterministic.
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order).contiguous())
    return ranks


def step_counts(n_pixels: int, steps: int, device: torch.device | None = None) -> Tensor:
    """``[S+1]`` number of pixels perturbed at each step: ``floor(k·P / S)``."""
    k = torch.arange(steps + 1, device=device, dtype=torch.long)
    return (k * n_pixels) // steps


def _jobs(total: int, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, total, batch_size):
        yield torch.arange(start, min(start + batch_size, total))


def deletion_curve(
    score_fn: ScoreFn,
    inputs: Tensor,
    maps: Tensor | Callable[[Tensor], Any],
    *,
    steps: int = 50,
    mode: Literal["deletion", "insertion"] = "deletion",
    baseline: BaselineLike = "blur",
    batch_size: int = 64,
) -> Curve:
    """Deletion (or insertion) curves of ``maps`` for ``inputs`` under ``score_fn``; see the module doc.

    Args:
        score_fn: ``(x[N, C, H, W], index[N]) -> [N]``; see :mod:`featurelens.metrics.scoring`.
        inputs: ``[B, C, H, W]`` model-ready batch.
        maps: ``[B, H, W]`` saliency maps (any scale; resized bilinearly when at another size), or
            an explanation function ``explain_fn(inputs) -> maps``.
        steps: number of steps ``S``; the curve has ``S + 1`` points.
        mode: ``"deletion"`` or ``"insertion"``.
        baseline: ``"blur"``, ``"constant"``, a number or a tensor (see :func:`make_baseline`).
        batch_size: rows per ``score_fn`` call; rows mix samples and steps.
    """
    if mode not in ("deletion", "insertion"):
        raise MetricError(f"unknown mode {mode!r}; use 'deletion' or 'insertion'")
    if not isinstance(steps, int) or steps < 1:
        raise MetricError(f"steps must be a positive integer, got {steps!r}")
    if batch_size < 1:
        raise MetricError(f"batch_size must be positive, got {batch_size}")
    maps = prepare_maps(maps, inputs)
    inputs = inputs.detach()
    base = make_baseline(inputs, baseline)
    b, _c, h, w = inputs.shape
    p = h * w
    ranks = pixel_ranks(maps)  # [B, P]
    counts = step_counts(p, steps, inputs.device)  # [S+1]
    scores = torch.empty(b * (steps + 1), dtype=torch.float32, device=inputs.device)
    # where(keep_first, first, second): deletion puts the baseline on the top pixels, insertion the input
    first, second = (base, inputs) if mode == "deletion" else (inputs, base)
    for job in _jobs(b * (steps + 1), batch_size):
        job = job.to(inputs.device)
        sample = job // (steps + 1)
        step = job % (steps + 1)
        top = (ranks[sample] < counts[step].unsqueeze(1)).view(-1, 1, h, w)
        x = torch.where(top, first[sample], second[sample])
        scores[job] = check_scores(score_fn(x, sample), job.numel()).to(scores.device)
    scores = scores.view(b, steps + 1)
    fractions = counts.float() / p
    auc = torch.trapezoid(scores, fractions, dim=1)
    return Curve(fractions=fractions, scores=scores, auc=auc, mode=mode)


def insertion_curve(
    score_fn: ScoreFn,
    inputs: Tensor,
    maps: Tensor,
    *,
    steps: int = 50,
    baseline: BaselineLike = "blur",
    batch_size: int = 64,
) -> Curve:
    """:func:`deletion_curve` with ``mode="insertion"``."""
    return deletion_curve(
        score_fn, inputs, maps, steps=steps, mode="insertion", baseline=baseline, batch_size=batch_size
    )


def expected_forward_passes(n_samples: int, steps: int, batch_size: int) -> int:
    """Number of ``score_fn`` calls :func:`deletion_curve` makes: ``ceil(B·(S+1) / batch_size)``."""
    return math.ceil(n_samples * (steps + 1) / batch_size)
