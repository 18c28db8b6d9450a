"""Channel-wise contribution importance scores (CIS) for SFAM, as a registry of pluggable rules.

A rule maps the pooled features and head outputs of a pair to ``CIS [B, K]`` (one score per channel
of the feature layer, shared by both images); SFAM's maps are then
``M_a = norm(ReLU(Σ_k CIS_k A^a_k))`` and ``M_b = norm(ReLU(Σ_k CIS_k A^b_k))``.

Notation (derivations in ``docs/similarity.md``): ``f = pool(A)`` ``[K]``, ``z = h(f)`` the head's
projection (identity or ``W f + c``), ``e = z`` or ``z/‖z‖``; ``J = ∂z/∂f`` (= ``W`` for a linear
head, ``I`` without projection).

Rules (``register_rule`` adds more):

* ``cosine`` — exact additive share of the cosine through the head::

      CIS_k = ½ [f^a_k (J_aᵀ z^b)_k + f^b_k (J_bᵀ z^a)_k] / (‖z^a‖ ‖z^b‖)

  With no projection this is ``f^a_k f^b_k / (‖f^a‖‖f^b‖)`` and ``Σ_k CIS_k = cos(e^a, e^b)``; with
  ``z = W f + c`` the sum is the cosine minus the bias share ``½⟨c, z^a + z^b⟩/(‖z^a‖‖z^b‖)``
  (returned as ``remainder``). For a non-linear projection it is the first-order (Taylor) share.
* ``cross_product`` — the head-blind formula ``f^a_k f^b_k / (‖f^a‖‖f^b‖)`` (exact only for GAP
  without projection), kept to compare with ``cosine``.
* ``euclidean`` — for distances: ``CIS_k = min(f^a_k, f^b_k)⁺ · exp(−g_k⁺ / τ)`` where
  ``g_k = (f^a_k/n_a − f^b_k/n_b)(JᵀΔe)_k`` is channel k's exact share of ``d² = ‖e^a − e^b‖²``
  through a linear head and an optional L2 normalisation (``n = ‖z‖``; first order for a non-linear
  projection), and ``τ`` the mean of ``g⁺`` over channels active in either image. CIS is zero for a
  channel inactive in either image, largest for channels active in both with a small gap, and
  decreases monotonically as the gap grows. Our own design (the SFAM paper's Euclidean formula
  could not be read here).
* ``euclidean_exact`` — the exact additive decomposition of the squared distance, signed so that a
  larger share means "makes them closer": ``CIS_k = −g_k`` with ``Σ_k CIS_k + remainder = −d²``
  (``remainder = −⟨c, Δe⟩(1/n_a − 1/n_b)``, zero without L2 normalisation or bias, e.g. dlib's face
  model where ``d² = Σ_k Δf_k (WᵀW Δf)_k`` exactly). Ours.
* ``euclidean_gradact`` — first order (gradient × activation) of ``s = −d = −‖e^a − e^b‖``, per side:
  ``CIS^a_k = f^a_k ∂s/∂f^a_k = −f^a_k (J_aᵀ Δe)_k / d`` and ``CIS^b_k = f^b_k ∂s/∂f^b_k = +f^b_k (J_bᵀ Δe)_k / d``
  (``Δe = e^a − e^b``); map a uses ``CIS^a``, map b ``CIS^b`` (``cis_b``). Ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.similarity.embedding import EmbeddingHead

EPS = 1e-12


@dataclass
class CISResult:
    """Channel scores ``[B, K]`` and, for exact decompositions, the part of the score no channel
    carries (``remainder`` ``[B]``, e.g. the projection bias), so ``cis.sum(1) + remainder == score``."""

    cis: Tensor
    remainder: Tensor | None = None
    cis_b: Tensor | None = None  # side-specific rules: the weights of image b's map (``cis`` is image a's)


RuleFn = Callable[[Tensor, Tensor, EmbeddingHead], CISResult]
RULES: dict[str, RuleFn] = {}
DEFAULT_RULES = {"cosine": "cosine", "euclidean": "euclidean"}
EUCLIDEAN_RULES = ("euclidean", "euclidean_exact", "euclidean_gradact")


def register_rule(name: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register ``fn(f_a [B,K], f_b [B,K], head) -> CISResult`` under ``name``."""

    def deco(fn: RuleFn) -> RuleFn:
        RULES[name] = fn
        return fn

    return deco


def get_rule(name: str) -> RuleFn:
    if name not in RULES:
        raise MethodError(f"unknown CIS rule {name!r}; available: {', '.join(sorted(RULES))}")
    return RULES[name]


def compute_cis(f_a: Tensor, f_b: Tensor, head: EmbeddingHead, rule: str) -> CISResult:
    """Run the registered ``rule`` on pooled features ``f_a``, ``f_b`` ``[B, K]``."""
    if f_a.shape != f_b.shape or f_a.ndim != 2:
        raise MethodError(f"pooled features must both be [B, K]; got {list(f_a.shape)} and {list(f_b.shape)}")
    fn = get_rule(rule)
    with torch.no_grad():  # the head's parameters may require grad; CIS are plain numbers
        res = fn(f_a.detach(), f_b.detach(), head)
    return res


# ---------------------------------------------------------------------------
# head Jacobians (on the tiny head only: never a backward through the network)
# ---------------------------------------------------------------------------
def head_vjp(head: EmbeddingHead, f: Tensor, v: Tensor, *, normalized: bool = False) -> Tensor:
    """``Jᵀ v`` with ``J = ∂z/∂f`` (or ``∂e/∂f`` when ``normalized``) at ``f``, per row: ``[B, K]``."""
    proj = head.projection
    if not normalized:
        if proj is None:
            return v
        if isinstance(proj, torch.nn.Linear):
            return v @ proj.weight
    with torch.enable_grad():
        f_ = f.detach().requires_grad_(True)
        out = head.project(f_)
        if normalized:
            out = torch.nn.functional.normalize(out, dim=1)
        (g,) = torch.autograd.grad(out, f_, grad_outputs=v.detach())
    return g.detach()


def _bias_share(head: EmbeddingHead, z_a: Tensor, z_b: Tensor) -> Tensor:
    proj = head.projection
    if isinstance(proj, torch.nn.Linear) and proj.bias is not None:
        return 0.5 * ((z_a + z_b) @ proj.bias)
    return torch.zeros(z_a.shape[0], dtype=z_a.dtype, device=z_a.device)


@register_rule("cosine")
def cosine_rule(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> CISResult:
    """Exact (linear head) / first-order (non-linear head) share of ``cos(z^a, z^b)`` per channel."""
    z_a, z_b = head.project(f_a), head.project(f_b)
    denom = (z_a.norm(dim=1) * z_b.norm(dim=1)).clamp_min(EPS)
    if head.projection is None:
        cis = f_a * f_b / denom[:, None]
        return CISResult(cis, torch.zeros_like(denom))
    num = 0.5 * (f_a * head_vjp(head, f_a, z_b) + f_b * head_vjp(head, f_b, z_a))
    return CISResult(num / denom[:, None], _bias_share(head, z_a, z_b) / denom)


@register_rule("cross_product")
def cross_product_rule(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> CISResult:
    """``f^a_k f^b_k / (‖f^a‖‖f^b‖)`` on the pooled features, whatever the head."""
    denom = (f_a.norm(dim=1) * f_b.norm(dim=1)).clamp_min(EPS)
    return CISResult(f_a * f_b / denom[:, None])


def distance_shares(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> Tensor:
    """``g_k``: channel k's share of ``d² = ‖e^a − e^b‖²`` ``[B, K]``.

    With ``e = z/n`` (``n = ‖z‖`` with L2 normalisation, else 1) and ``z = W f + c``,
    ``d² = ⟨Δe, e^a − e^b⟩ = Σ_k (f^a_k/n_a − f^b_k/n_b)(WᵀΔe)_k + ⟨c, Δe⟩(1/n_a − 1/n_b)``, so
    ``g_k = (f^a_k/n_a − f^b_k/n_b)(WᵀΔe)_k`` is exact up to the bias term (which vanishes without
    normalisation, where ``g_k = Δf_k (WᵀWΔf)_k``, and is ``Δf_k²`` with no projection). For a non-linear
    projection ``W`` is replaced by the Jacobian at each point (first order).
    """
    z_a, z_b = head.project(f_a), head.project(f_b)
    if head.normalize:
        n_a = z_a.norm(dim=1, keepdim=True).clamp_min(EPS)
        n_b = z_b.norm(dim=1, keepdim=True).clamp_min(EPS)
    else:
        n_a = n_b = torch.ones_like(z_a[:, :1])
    delta_e = z_a / n_a - z_b / n_b
    return f_a * head_vjp(head, f_a, delta_e) / n_a - f_b * head_vjp(head, f_b, delta_e) / n_b


def distance_remainder(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> Tensor:
    """The bias term ``⟨c, Δe⟩(1/n_a − 1/n_b)`` of ``d²`` that no channel carries ``[B]``."""
    z_a, z_b = head.project(f_a), head.project(f_b)
    proj = head.projection
    if not head.normalize or not isinstance(proj, torch.nn.Linear) or proj.bias is None:
        return torch.zeros(f_a.shape[0], dtype=f_a.dtype, device=f_a.device)
    n_a, n_b = z_a.norm(dim=1).clamp_min(EPS), z_b.norm(dim=1).clamp_min(EPS)
    delta_e = z_a / n_a[:, None] - z_b / n_b[:, None]
    return (delta_e @ proj.bias) * (1 / n_a - 1 / n_b)


def _as_map(f: Tensor) -> Tensor:
    """Pooled features as a 1×1 feature map, so ``head(_as_map(f))`` = ``finish(project(f))`` for any pooling."""
    return f[:, :, None, None]


@register_rule("euclidean")
def euclidean_rule(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> CISResult:
    """``CIS_k = min(f^a_k, f^b_k)⁺ · exp(−g_k⁺/τ)``, ``τ`` = mean ``g⁺`` over channels active in a or b."""
    g = distance_shares(f_a, f_b, head).clamp_min(0)
    floor = head.eps if head.pooling == "gem" else 0.0  # GeM clamps activations at ε: ε means inactive
    active = ((f_a > floor) | (f_b > floor)).to(f_a.dtype)
    tau = (g * active).sum(1) / active.sum(1).clamp_min(1.0)
    both = (torch.minimum(f_a, f_b) - floor).clamp_min(0)
    cis = both * torch.exp(-g / (tau[:, None] + EPS))
    return CISResult(cis)


@register_rule("euclidean_exact")
def euclidean_exact_rule(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> CISResult:
    """``CIS_k = −g_k`` (channel k's exact share of ``d²``, negated), ``remainder`` = minus the bias term: sums to ``−d²``."""
    return CISResult(-distance_shares(f_a, f_b, head), -distance_remainder(f_a, f_b, head))


@register_rule("euclidean_gradact")
def euclidean_gradact_rule(f_a: Tensor, f_b: Tensor, head: EmbeddingHead) -> CISResult:
    """Gradient × activation of ``s = −‖e^a − e^b‖`` w.r.t. each side's pooled features (first order)."""
    z_a, z_b = head.project(f_a), head.project(f_b)
    e_a, e_b = head.finish(z_a), head.finish(z_b)
    delta = e_a - e_b
    d = delta.norm(dim=1, keepdim=True).clamp_min(EPS)
    g_a = -head_vjp(head, f_a, delta / d, normalized=head.normalize)
    g_b = head_vjp(head, f_b, delta / d, normalized=head.normalize)
    return CISResult(f_a * g_a, None, f_b * g_b)


def similarity(e_a: Tensor, e_b: Tensor, metric: str) -> Tensor:
    """``cos(e_a, e_b)`` or the Euclidean distance ``‖e_a − e_b‖``, per row ``[B]``."""
    if metric == "cosine":
        return torch.nn.functional.cosine_similarity(e_a, e_b, dim=1, eps=EPS)
    if metric == "euclidean":
        return (e_a - e_b).norm(dim=1)
    raise MethodError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")
