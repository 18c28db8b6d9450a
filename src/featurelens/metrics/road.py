"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022, arXiv 2202.00449), and the confidence change of ``image × map``.

**Noisy linear imputation.** Removed pixels are not set to a constant (which leaks the mask's shape
to the model) but replaced by the solution of a linear system: every removed pixel ``i`` equals the
weighted mean of its in-image 8-neighbours ``N(i)`` (weights ``1/6`` for the 4 direct neighbours,
``1/12`` for the diagonal ones), where the kept pixels are fixed to their values ``v``:

    ``(Σ_{j∈N(i)} w_ij) x_i − Σ_{j∈N(i), removed} w_ij x_j = Σ_{j∈N(i), kept} w_ij v_j``

solved per channel (one sparse LU, one right-hand side per channel); then Gaussian noise of
standard deviation ``noise`` (in model-input units) is added to the removed pixels.

**MoRF / LeRF.** For a percentile ``p``, MoRF removes the ``p`` % pixels with the highest map
values, LeRF the ``p`` % with the lowest (ties by row-major order, as in the deletion metric). The
score is the change ``score_fn(imputed) − score_fn(x)``, averaged over the percentiles
(default 10, 20, …, 90): a faithful map has a low MoRF (removing what matters hurts) and a high
LeRF (removing what does not matter does not). ``combined = (LeRF − MoRF) / 2`` (higher is better).

**Confidence change.** ``score_fn(x ⊙ m) − score_fn(x)`` with the map ``m`` scaled to [0, 1]
(pytorch-grad-cam's ``CamMultImageConfidenceChange``): higher is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featurelens.metrics.confidence import keep_explained
from featurelens.metrics.deletion import pixel_ranks, prepare_maps
from featurelens.metrics.scoring import MetricError, ScoreFn, check_scores, score_inputs

#: ``((dy, dx), weight)`` of the 8 neighbours in the imputation
NEIGHBOURS: tuple[tuple[tuple[int, int], float], ...] = (
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
)
DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def imputation_system(removed: np.ndarray, image: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """The sparse system ``A x = b`` of the module docstring.

    ``removed``: ``[H, W]`` bool; ``image``: ``[C, H, W]``. Returns ``(A [n, n] CSC, b [n, C], flat
    indices of the removed pixels)``, unknowns in row-major order.
    """
    from scipy.sparse import coo_matrix

    h, w = removed.shape
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    var = np.full(h * w, -1, dtype=np.int64)
    var[unknown] = np.arange(unknown.size)
    ys, xs = np.divmod(unknown, w)
    values = image.reshape(image.shape[0], -1)
    diag = np.zeros(unknown.size)
    b = np.zeros((unknown.size, image.shape[0]))
    rows, cols, data = [], [], []
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        eq = np.flatnonzero(inside)
        nb = ny[inside] * w + nx[inside]
        diag[eq] += weight
        is_unknown = flat[nb]
        rows.append(eq[is_unknown])
        cols.append(var[nb[is_unknown]])
        data.append(np.full(int(is_unknown.sum()), -weight))
        b[eq[~is_unknown]] += weight * values[:, nb[~is_unknown]].T
    rows.append(np.arange(unknown.size))
    cols.append(np.arange(unknown.size))
    data.append(diag)
    a = coo_matrix(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(unknown.size,) * 2
    ).tocsc()
    return a, b, unknown


def noisy_linear_impute(
    image: Tensor, removed: Tensor, *, noise: float = 0.01, generator: torch.Generator | None = None
) -> Tensor:
    """``image [C, H, W]`` with the pixels of ``removed [H, W]`` (bool) imputed; see the module docstring."""
    from scipy.sparse.linalg import spsolve

    if removed.shape != image.shape[-2:]:
        raise MetricError(f"a removal mask {tuple(removed.shape)} for an image {tuple(image.shape)}")
    mask = removed.detach().cpu().numpy().astype(bool)
    out = image.detach().clone()
    if not mask.any():
        return out
    if mask.all():
        raise MetricError("ROAD cannot impute an image with every pixel removed")
    img = image.detach().cpu().double().numpy()
    a, b, unknown = imputation_system(mask, img)
    x = np.asarray(spsolve(a, b)).reshape(unknown.size, -1)  # [n, C]
    filled = torch.from_numpy(x.T).to(out.dtype)
    if noise:
        filled = filled + noise * torch.randn(filled.shape, generator=generator, dtype=filled.dtype)
    flat = out.view(out.shape[0], -1)
    flat[:, torch.from_numpy(unknown).to(out.device)] = filled.to(out.device)
    return out


@dataclass
class RoadResult:
    """ROAD MoRF and LeRF score changes per sample and percentile."""

    percentiles: list[float]
    full: Tensor  # [B] unperturbed scores
    morf: Tensor  # [B, P] score(imputed) - score(x), most relevant removed
    lerf: Tensor  # [B, P] least relevant removed

    @property
    def morf_mean(self) -> Tensor:
        return self.morf.mean(1)

    @property
    def lerf_mean(self) -> Tensor:
        return self.lerf.mean(1)

    @property
    def combined(self) -> Tensor:
        return (self.lerf_mean - self.morf_mean) / 2


def road(
    score_fn: ScoreFn,
    inputs: Tensor,
    maps: Tensor | Callable[[Tensor], Any],
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 64,
) -> RoadResult:
    """ROAD MoRF and LeRF of ``maps`` (``[B, H, W]`` or an explanation function) under ``score_fn``."""
    if not percentiles or any(not 0 < float(p) < 100 for p in percentiles):
        raise MetricError(f"ROAD percentiles must lie strictly between 0 and 100, got {list(percentiles)!r}")
    maps = prepare_maps(maps, inputs)
    inputs = inputs.detach()
    b, _c, h, w = inputs.shape
    n_pix = h * w
    ranks = pixel_ranks(maps)  # 0 = most relevant
    gen = torch.Generator().manual_seed(seed)
    rows, index = [], []
    for mode in ("morf", "lerf"):
        for p in percentiles:
            k = round(float(p) / 100 * n_pix)
            for s in range(b):
                removed = ranks[s] < k if mode == "morf" else ranks[s] >= n_pix - k
                rows.append(noisy_linear_impute(inputs[s], removed.view(h, w), noise=noise, generator=gen))
                index.append(s)
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = torch.stack(rows[start : start + batch_size])
        idx = torch.tensor(index[start : start + batch_size], device=inputs.device)
        scores.append(check_scores(score_fn(chunk, idx), chunk.shape[0]).cpu())
    all_scores = torch.cat(scores).view(2, len(percentiles), b)
    full = score_inputs(score_fn, inputs, batch_size=batch_size).cpu()
    change = all_scores - full.view(1, 1, b)
    return RoadResult(
        percentiles=[float(p) for p in percentiles],
        full=full,
        morf=change[0].T.contiguous(),
        lerf=change[1].T.contiguous(),
    )


def confidence_change(
    score_fn: ScoreFn, inputs: Tensor, maps: Tensor | Callable[[Tensor], Any], *, batch_size: int = 64
) -> Tensor:
    """``[B]`` ``score_fn(x ⊙ m) − score_fn(x)`` with each map scaled to [0, 1]."""
    inputs = inputs.detach()
    kept = keep_explained(inputs, prepare_maps(maps, inputs), "constant")
    return score_inputs(score_fn, kept, batch_size=batch_size).cpu() - score_inputs(
        score_fn, inputs, batch_size=batch_size
    ).cpu()
