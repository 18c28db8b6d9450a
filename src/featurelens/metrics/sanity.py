"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018, arXiv 1810.03292), cascading version.

Starting from the output, the parameterised stages of a *copy* of the model are re-initialised one
after the other (stage 1 = the top stage only, stage 2 = the top two, ...). After each step the
maps are recomputed with the same explanation function and the same inputs, and compared with the
original maps by the Spearman rank correlation per sample,

    ρ = Pearson(rank(m_orig), rank(m_rand))     (average ranks for ties).

A method whose maps depend on what the model learnt must lose correlation as layers are
randomised; an edge detector, which ignores the model, keeps ρ = 1. The caller's model is never
modified (the work happens on ``copy.deepcopy(model)``).

When one of the two maps is constant, the rank correlation is undefined; it is reported as 1 when
both maps are identical and 0 otherwise (a map that went flat no longer resembles the original).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from featurelens.metrics.scoring import MetricError

ModelExplainFn = Callable[[nn.Module, Tensor], Tensor]


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0 … n−1`` of a 1-D tensor, tied values sharing the mean of their positions."""
    uniq, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    del uniq
    starts = torch.cumsum(counts, 0) - counts
    mean_rank = starts.double() + (counts.double() - 1) / 2
    return mean_rank[inverse]


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """``[B]`` Spearman rank correlation between each pair of maps ``a[i]``, ``b[i]``."""
    if a.shape != b.shape:
        raise MetricError(f"maps to correlate differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a = torch.nan_to_num(a.detach().double()).flatten(1).cpu()
    b = torch.nan_to_num(b.detach().double()).flatten(1).cpu()
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        ra, rb = average_ranks(a[i]), average_ranks(b[i])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        den = ra.norm() * rb.norm()
        if den == 0:
            out[i] = 1.0 if torch.equal(a[i], b[i]) else 0.0
        else:
            out[i] = (ra * rb).sum() / den
    return out.float()


def randomisation_stages(model: nn.Module) -> list[str]:
    """Parameterised stages in forward (definition) order: top-level children, with
    ``Sequential``/``ModuleList`` children expanded one level (e.g. ``stem, blocks.0, …, blocks.15, head, fc``)."""
    stages: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            for sub, grandchild in child.named_children():
                if any(True for _ in grandchild.parameters()):
                    stages.append(f"{name}.{sub}")
        elif any(True for _ in child.parameters()):
            stages.append(name)
    if not stages and any(True for _ in model.parameters()):
        stages.append("")
    return stages


def randomise_module(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of ``module`` in place (``reset_parameters`` where a layer has
    it, else a normal draw with the parameter's own standard deviation), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules():
            own = list(sub.parameters(recurse=False))
            if not own:
                continue
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            with torch.no_grad():
                for p in own:
                    std = float(p.std()) if p.numel() > 1 else 1.0
                    p.normal_(0.0, std if std > 0 else 1.0)


@dataclass
class SanityResult:
    """``correlations[s, i]``: rank correlation of sample ``i`` after randomising ``stages[:s+1]``
    (top first)."""

    stages: list[str]
    correlations: Tensor  # [S, B]
    original_maps: Tensor  # [B, H, W]

    @property
    def mean_per_stage(self) -> Tensor:
        return self.correlations.mean(1)

    @property
    def final(self) -> float:
        """Mean correlation once every listed stage is randomised."""
        return float(self.correlations[-1].mean())


def model_randomisation_check(
    model: nn.Module,
    explain_fn: ModelExplainFn,
    inputs: Tensor,
    *,
    stages: Sequence[str] | None = None,
    seed: int = 0,
) -> SanityResult:
    """Cascading randomisation from the top; see the module docstring.

    Args:
        model: the trained model (left untouched).
        explain_fn: ``(model, inputs) -> maps[B, H, W]``, called on the copy after each step.
        inputs: ``[B, C, H, W]``.
        stages: stage names in forward order (default :func:`randomisation_stages`); randomised
            from the last to the first.
    """
    names = list(stages) if stages is not None else randomisation_stages(model)
    if not names:
        raise MetricError("the model has no parameters to randomise")
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise MetricError(f"unknown stage(s) {missing}; valid: {', '.join(randomisation_stages(model))}")
    original = explain_fn(work, inputs).detach()
    rows = []
    top_first = list(reversed(names))
    for i, name in enumerate(top_first):
        randomise_module(modules[name], seed + i)
        rows.append(spearman(original, explain_fn(work, inputs).detach()))
    return SanityResult(stages=top_first, correlations=torch.stack(rows), original_maps=original.cpu())
