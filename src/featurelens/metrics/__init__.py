"""Faithfulness and sanity metrics for saliency maps, shared by classifier and similarity targets.

Every metric takes a *score function* ``score_fn(x[N, C, H, W], index[N]) -> [N]`` (what is being
explained; see :mod:`featurelens.metrics.scoring`) and either precomputed maps ``[B, H, W]`` or an
explanation function ``explain_fn(inputs) -> maps[B, H, W]`` (see :func:`evaluate_maps`).

* :func:`deletion_curve` / :func:`insertion_curve` – RISE deletion and insertion AUC, batched;
* :func:`average_drop_increase` – Average Drop and Increase in Confidence (Grad-CAM++);
* :func:`pointing_game`, :func:`energy_pointing_game` – localisation against boxes or masks;
* :func:`model_randomisation_check` – cascading parameter randomisation (Adebayo et al.);
* :func:`road` – ROAD (remove and debias: noisy linear imputation, MoRF and LeRF);
* :func:`confidence_change` – the score change of ``image × map``;
* :func:`random_maps`, :func:`centre_gaussian_maps` – baselines that every table includes.
"""

from featurelens.metrics.baselines import centre_gaussian_maps, random_maps
from featurelens.metrics.confidence import ConfidenceResult, average_drop_increase, keep_explained
from featurelens.metrics.deletion import (
    Curve,
    deletion_curve,
    expected_forward_passes,
    gaussian_blur,
    insertion_curve,
    make_baseline,
    pixel_ranks,
)
from featurelens.metrics.evaluate import (
    METRICS,
    EvaluationTable,
    MethodScores,
    evaluate_maps,
    resolve_metrics,
)
from featurelens.metrics.pointing import PointingResult, boxes_to_masks, energy_pointing_game, pointing_game
from featurelens.metrics.road import RoadResult, confidence_change, noisy_linear_impute, road
from featurelens.metrics.sanity import SanityResult, model_randomisation_check, randomisation_stages, spearman
from featurelens.metrics.scoring import (
    MetricError,
    ScoreFn,
    class_score_fn,
    score_inputs,
    similarity_score_fn,
)

__all__ = [
    "METRICS",
    "ConfidenceResult",
    "Curve",
    "EvaluationTable",
    "MethodScores",
    "MetricError",
    "PointingResult",
    "RoadResult",
    "SanityResult",
    "ScoreFn",
    "average_drop_increase",
    "boxes_to_masks",
    "centre_gaussian_maps",
    "class_score_fn",
    "confidence_change",
    "deletion_curve",
    "energy_pointing_game",
    "evaluate_maps",
    "expected_forward_passes",
    "gaussian_blur",
    "insertion_curve",
    "keep_explained",
    "make_baseline",
    "model_randomisation_check",
    "noisy_linear_impute",
    "pixel_ranks",
    "pointing_game",
    "random_maps",
    "randomisation_stages",
    "resolve_metrics",
    "road",
    "score_inputs",
    "similarity_score_fn",
    "spearman",
]
