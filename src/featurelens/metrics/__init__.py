"""Faithfulness and sanity metrics for saliency maps, shared by classifier and similarity targets.

Every metric takes a *score function* ``score_fn(x[N, C, H, W], index[N]) -> [N]`` (what is being
explained; see :mod:`featurelens.metrics.scoring`) and either precomputed maps ``[B, H, W]`` or an
explanation function ``explain_fn(inputs) -> maps[B, H, W]``.
"""

from featurelens.metrics.deletion import (
    Curve,
    deletion_curve,
    expected_forward_passes,
    gaussian_blur,
    insertion_curve,
    make_baseline,
    pixel_ranks,
)
from featurelens.metrics.scoring import (
    MetricError,
    ScoreFn,
    class_score_fn,
    score_inputs,
    similarity_score_fn,
)

__all__ = [
    "Curve",
    "MetricError",
    "ScoreFn",
    "class_score_fn",
    "deletion_curve",
    "expected_forward_passes",
    "gaussian_blur",
    "insertion_curve",
    "make_baseline",
    "pixel_ranks",
    "score_inputs",
    "similarity_score_fn",
]
