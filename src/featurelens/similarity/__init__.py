"""Similarity explanations for metric-learning models: SFAM, its baselines, retrieval and few-shot.

Entry points::

    from featurelens.similarity import load_embedder, explain_pair
    emb = load_embedder("efficientnet_lite0")          # or "shapes_metric"
    ex = explain_pair(emb, image_a, image_b, method="sfam", metric="cosine")
    ex.maps_a, ex.maps_b, ex.cis, ex.score

See ``docs/similarity.md`` for the CIS derivations.
"""

from featurelens.similarity.cis import RULES, compute_cis, get_rule, register_rule, similarity
from featurelens.similarity.embedding import (
    EMBEDDERS,
    Embedder,
    EmbeddingHead,
    EmbeddingShapeError,
    from_module,
    load_embedder,
    register_embedder,
)
from featurelens.similarity.pair import PAIR_METHODS, PairExplanation, explain_pair, get_pair_method

__all__ = [
    "EMBEDDERS",
    "PAIR_METHODS",
    "RULES",
    "Embedder",
    "EmbeddingHead",
    "EmbeddingShapeError",
    "PairExplanation",
    "compute_cis",
    "explain_pair",
    "from_module",
    "get_pair_method",
    "get_rule",
    "load_embedder",
    "register_embedder",
    "register_rule",
    "similarity",
]
