"""Scoring a concept (a group's representative) for one cluster map.

For the label rows of one cluster map whose group has representative r::

    score(cluster, r) = f · (1 − step_penalty · mean_step) / (wrong_divisor if no giver guessed right else 1)

with f the number of label rows (frequency), mean_step the mean 0-based reveal step at which they were
given (the game reveals q = 2, 4.5, 8, 13, 20, 30 % of the map, so labels given early describe a more
distinctive region), ``step_penalty = 0.1`` and ``wrong_divisor = 4`` (paper defaults). "Guessed right"
means the export's ``correct`` is true for at least one of those rows whose ``seen_before`` is not true
(a player who had already seen the photo proves nothing by guessing right: correctness unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreParams:
    """Every constant of the label score."""

    step_penalty: float = 0.1
    wrong_divisor: float = 4.0
    min_factor: float = 0.0  # the step factor (1 − penalty·step) is clipped below at this value


def label_score(
    reveal_steps: Sequence[int], correct: Iterable[bool], params: ScoreParams | None = None
) -> float:
    """frequency × (1 − step_penalty × mean reveal step), ÷ wrong_divisor when none guessed right."""
    p = params or ScoreParams()
    steps = list(reveal_steps)
    if not steps:
        return 0.0
    freq = len(steps)
    mean_step = sum(steps) / freq
    factor = max(p.min_factor, 1.0 - p.step_penalty * mean_step)
    score = freq * factor
    if not any(correct):
        score /= p.wrong_divisor
    return float(score)


@dataclass
class ClusterScore:
    """The score of one concept on one cluster map, with what it was computed from."""

    cluster_id: str
    image_id: str
    layer: str
    class_name: str
    representative: str
    frequency: int
    mean_reveal_step: float
    any_correct: bool
    players: int
    score: float
    weight: float  # the cluster's weight in the bundle (percent of the layer's total)
