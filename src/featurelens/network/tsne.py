"""Exact t-SNE in torch, with scikit-learn's optimisation schedule, for the few hundred points of a layer.

The paper pipeline (Bianchi et al., IJCAI 2024) embeds the kept channels of a layer with
scikit-learn's ``TSNE(n_components=2, init="pca")``. A layer has at most a few hundred kept
channels, so the exact ``O(N²)`` gradient is cheap when it is vectorised; this module runs it in
torch and follows scikit-learn's exact method step by step (van der Maaten & Hinton, 2008):

* affinities: for each point ``i``, a Gaussian ``p_{j|i} ∝ exp(-β_i ‖x_i − x_j‖²)`` whose ``β_i``
  is found by bisection so that the entropy equals ``log(perplexity)``; then
  ``p_ij = (p_{j|i} + p_{i|j}) / Σ``, clamped at machine epsilon;
* Student-t kernel with one degree of freedom: ``q_ij ∝ (1 + ‖y_i − y_j‖²)^{-1}``;
* gradient ``∂KL/∂y_i = 4 Σ_j (p_ij − q_ij)(1 + ‖y_i − y_j‖²)^{-1} (y_i − y_j)``;
* initialisation: the first two principal components scaled so that the first has std ``1e-4``;
* gradient descent with momentum 0.5 during ``exaggeration_iter`` iterations of early
  exaggeration (``P × 12``), then momentum 0.8; per-parameter gains (+0.2 / ×0.8, min 0.01;
  ``gain_increase`` / ``gain_decrease`` / ``min_gain``);
  learning rate ``max(N / exaggeration / 4, 50)`` ("auto"); stop after ``max_iter`` iterations,
  when the gradient norm falls below ``min_grad_norm``, or when the KL divergence (checked every
  50 iterations) has not improved for ``n_iter_without_progress`` iterations.

Everything is deterministic: no random numbers are drawn (PCA initialisation, exact gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MACHINE_EPSILON = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class TSNEParams:
    """The constants of :func:`tsne` (defaults = scikit-learn's)."""

    perplexity: float = 30.0
    early_exaggeration: float = 12.0
    exaggeration_iter: int = 250
    max_iter: int = 1000
    learning_rate: float | None = None  # None = "auto": max(N / early_exaggeration / 4, 50)
    min_grad_norm: float = 1e-7
    n_iter_without_progress: int = 300
    n_iter_check: int = 50
    momentum_early: float = 0.5
    momentum_late: float = 0.8
    min_gain: float = 0.01
    # delta-bar-delta step sizes: a coordinate's gain grows by gain_increase when its update and
    # gradient disagree in sign, else shrinks by the factor gain_decrease (0 and 1: plain momentum descent)
    gain_increase: float = 0.2
    gain_decrease: float = 0.8


def squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``[N, N]`` (exactly 0 on the diagonal, never negative)."""
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d = d.clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return d


def conditional_affinities(d: Tensor, perplexity: float, tol: float = 1e-5, steps: int = 100) -> Tensor:
    """Row-stochastic ``p_{j|i}`` with entropy ``log(perplexity)`` per row, by bisection on ``β_i``.

    ``d``: squared distances ``[N, N]``. All rows are searched at once (vectorised bisection with the
    same update rule as scikit-learn's ``_binary_search_perplexity``).
    """
    n = d.shape[0]
    d = d.to(torch.float64)
    beta = torch.ones(n, dtype=torch.float64, device=d.device)
    lo = torch.full_like(beta, -math.inf)
    hi = torch.full_like(beta, math.inf)
    target = math.log(perplexity)
    off = ~torch.eye(n, dtype=torch.bool, device=d.device)
    done = torch.zeros(n, dtype=torch.bool, device=d.device)
    p = torch.zeros_like(d)
    for _ in range(steps):
        p = torch.exp(-d * beta[:, None]) * off
        s = p.sum(1).clamp_min(1e-8)
        p = p / s[:, None]
        entropy = torch.log(s) + beta * (d * p).sum(1)
        diff = entropy - target
        newly = diff.abs() <= tol
        done = done | newly
        if bool(done.all()):
            break
        up = (diff > 0) & ~done  # entropy too high: sharpen
        down = (diff <= 0) & ~done
        lo = torch.where(up, beta, lo)
        hi = torch.where(down, beta, hi)
        beta_up = torch.where(torch.isinf(hi), beta * 2.0, (beta + hi) / 2.0)
        beta_down = torch.where(torch.isinf(lo), beta / 2.0, (beta + lo) / 2.0)
        beta = torch.where(up, beta_up, torch.where(down, beta_down, beta))
    return p


def joint_affinities(x: Tensor, perplexity: float) -> Tensor:
    """Symmetric ``P`` (full matrix summing to 1, zero diagonal, off-diagonal ≥ machine epsilon)."""
    cond = conditional_affinities(squared_distances(x.to(torch.float64)), perplexity)
    p = cond + cond.T
    p = p / p.sum().clamp_min(MACHINE_EPSILON)
    p = p.clamp_min(MACHINE_EPSILON)
    p.fill_diagonal_(0.0)
    return p


def pca_init(x: Tensor, n_components: int = 2) -> Tensor:
    """PCA scores (deterministic signs: the largest-magnitude loading of each component is positive),
    scaled so that the first column has standard deviation 1e-4 (scikit-learn's ``init="pca"``)."""
    xc = x.to(torch.float64) - x.to(torch.float64).mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    k = min(n_components, vh.shape[0])
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1.0
    y = xc @ (comps * signs[:, None]).T
    if k < n_components:
        y = torch.cat([y, torch.zeros(y.shape[0], n_components - k, dtype=y.dtype, device=y.device)], 1)
    std = y[:, 0].std(unbiased=False)
    return y / std * 1e-4 if float(std) > 0 else y


def kl_gradient(p: Tensor, y: Tensor, eye: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``∂KL(P‖Q)/∂y = 4 Σ_j (p_ij − q_ij)(1 + ‖y_i − y_j‖²)^{-1}(y_i − y_j)``; also returns the kernel
    ``num_ij = (1 + ‖y_i − y_j‖²)^{-1}`` (zero diagonal) and its sum ``Z`` (so ``Q = num / Z``)."""
    del eye  # kept for API compatibility; the diagonal is zeroed in place
    sq = (y * y).sum(1)
    num = torch.addmm(sq[:, None] + sq[None, :], y, y.T, alpha=-2.0).clamp_min_(0.0).add_(1.0).reciprocal_()
    num.fill_diagonal_(0.0)
    z = num.sum()
    pq = torch.sub(p, num, alpha=1.0 / float(z)).mul_(num)  # (p - num/Z) * num in one pass
    grad = 4.0 * (pq.sum(1, keepdim=True) * y - pq @ y)
    return grad, num, z


def kl_divergence(p: Tensor, y: Tensor) -> float:
    """KL(P ‖ Q) for the embedding ``y`` (P full and normalised)."""
    num = 1.0 / (1.0 + squared_distances(y))
    num.fill_diagonal_(0.0)
    q = (num / num.sum()).clamp_min(MACHINE_EPSILON)
    mask = p > 0
    return float((p[mask] * torch.log(p[mask].clamp_min(MACHINE_EPSILON) / q[mask])).sum())


def effective_perplexity(perplexity: float, n: int) -> float:
    """``perplexity``, lowered to ``(N − 1) / 3`` for tiny layers (scikit-learn refuses ``perplexity ≥ N``)."""
    return float(min(perplexity, max((n - 1) / 3.0, 1.0)))


def tsne(
    x: Tensor,
    params: TSNEParams | None = None,
    *,
    init: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Embed the rows of ``x`` ``[N, D]`` in 2-D with exact t-SNE; returns ``[N, 2]`` (float64).

    ``init`` replaces the PCA initialisation. ``dtype`` is the precision of the descent
    (float32 is about twice as fast; float64 is closer to scikit-learn).
    """
    params = params or TSNEParams()
    n = x.shape[0]
    if n < 2:
        return torch.zeros(n, 2, dtype=torch.float64, device=x.device)
    perplexity = effective_perplexity(params.perplexity, n)
    p = joint_affinities(x, perplexity).to(dtype)
    y = (pca_init(x) if init is None else init.to(torch.float64)).to(dtype).clone()
    lr = params.learning_rate if params.learning_rate is not None else max(n / params.early_exaggeration / 4.0, 50.0)
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    best_error = math.inf
    best_iter = 0
    exag_p = p * params.early_exaggeration
    phases = [
        (0, min(params.exaggeration_iter, params.max_iter), exag_p, params.momentum_early, 250),
        (min(params.exaggeration_iter, params.max_iter), params.max_iter, p, params.momentum_late, params.n_iter_without_progress),
    ]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    for start, stop, pp, momentum, patience in phases:
        best_error, best_iter = math.inf, start
        for i in range(start, stop):
            grad, num, z = kl_gradient(pp, y, eye)
            check = (i + 1) % params.n_iter_check == 0
            if check:  # KL at the current (pre-update) embedding, as scikit-learn does
                q = (num / z).clamp_min_(MACHINE_EPSILON)
                error = float((pp * torch.log(pp.clamp_min(MACHINE_EPSILON) / q)).sum())
            inc = (update * grad) < 0.0
            gains = torch.where(inc, gains + params.gain_increase, gains * params.gain_decrease)
            gains = gains.clamp_min_(params.min_gain)
            grad = grad * gains
            update = momentum * update - lr * grad
            y = y + update
            if check:
                if error < best_error:
                    best_error, best_iter = error, i
                elif i - best_iter > patience:
                    break
                if float(torch.linalg.vector_norm(grad)) <= params.min_grad_norm:
                    break
    return y.to(torch.float64)


def spectral_embedding(x: Tensor, perplexity: float = 30.0, dims: int = 2) -> Tensor:
    """Laplacian eigenmap of the t-SNE affinities ``P`` of ``x`` ``[N, D]`` → ``[N, dims]`` (float64).

    The non-trivial leading eigenvectors ``v`` of ``D^{-1/2} P D^{-1/2}`` (``D`` the degrees),
    returned as random-walk coordinates ``D^{-1/2} v`` with deterministic signs (the largest-magnitude
    entry is positive). Early-exaggerated t-SNE behaves like spectral clustering on ``P``
    (Linderman & Steinerberger 2019, Arora et al. 2018), which is why the fast mode uses this
    embedding in place of the t-SNE descent.
    """
    n = x.shape[0]
    if n < 3:
        return torch.zeros(n, dims, dtype=torch.float64, device=x.device)
    p = joint_affinities(x, effective_perplexity(perplexity, n))
    deg = p.sum(1).clamp_min(MACHINE_EPSILON)
    inv_sqrt = deg.rsqrt()
    sym = p * inv_sqrt[:, None] * inv_sqrt[None, :]
    _, vecs = torch.linalg.eigh((sym + sym.T) / 2.0)
    k = min(dims, n - 1)
    v = vecs[:, -k - 1:-1].flip(1) * inv_sqrt[:, None]
    signs = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1.0
    v = v * signs[None, :]
    if k < dims:
        v = torch.cat([v, torch.zeros(n, dims - k, dtype=v.dtype, device=v.device)], 1)
    return v
