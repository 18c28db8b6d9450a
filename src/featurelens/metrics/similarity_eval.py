"""Similarity mode of the evaluation: explain image ``a`` of each pair for its similarity to ``b``.

The score of a perturbed ``a`` is the similarity of its embedding to the (unperturbed) embedding of
``b`` (:func:`featurelens.metrics.similarity_score_fn`), so deletion/insertion and AD/IC read
exactly as for classes. Methods are the pair methods of :mod:`featurelens.similarity.pair`
(``sfam``, ``gradcam``, ``gradcam++``, ``stylianou``). With the Euclidean metric the score is
``−distance`` (negative), so Average Drop is undefined and reported as n/a.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from featurelens.imaging import load_image
from featurelens.metrics.evaluate import evaluate_maps, resolve_metrics
from featurelens.metrics.run import EvaluationRun
from featurelens.metrics.scoring import MetricError, similarity_score_fn

SUPPORTED = ("deletion", "insertion", "adic", "road", "confidence-change")


def parse_pair_methods(text: str | Sequence[str]) -> list[str]:
    """Pair-method names from ``sfam,gradcam`` or ``all`` (unknown names list the available ones)."""
    from featurelens.similarity.pair import PAIR_METHODS, get_pair_method

    raw = [v.strip() for v in (text.split(",") if isinstance(text, str) else text) if v.strip()]
    out: list[str] = []
    for v in raw:
        for name in PAIR_METHODS if v.lower() == "all" else [v]:
            fn = get_pair_method(name)
            canon = next(k for k, f in PAIR_METHODS.items() if f is fn)
            if canon not in out:
                out.append(canon)
    return out


def evaluate_pairs(
    pairs: Sequence[tuple[Path, Path]],
    methods: str | Sequence[str],
    metrics: str | Sequence[str],
    *,
    model: str = "efficientnet_lite0",
    metric: str = "cosine",
    steps: int = 50,
    baseline: str = "blur",
    batch_size: int = 64,
    trust: bool = False,
) -> EvaluationRun:
    """Evaluate pair methods on ``pairs`` with the embedding model ``model``."""
    from featurelens.similarity.embedding import load_embedder
    from featurelens.similarity.pair import explain_pair

    names = resolve_metrics(metrics)
    unsupported = [m for m in names if m not in SUPPORTED]
    if unsupported:
        raise MetricError(
            f"metric(s) {', '.join(unsupported)} are not available in similarity mode; use {', '.join(SUPPORTED)}"
        )
    method_list = parse_pair_methods(methods)
    embedder = load_embedder(model, trust=trust)
    xa = embedder.prepare([load_image(a) for a, _ in pairs])
    xb = embedder.prepare([load_image(b) for _, b in pairs])
    maps = {m: explain_pair(embedder, xa, xb, method=m, metric=metric).maps_a for m in method_list}
    score = similarity_score_fn(embedder.model, embedder.embed(xb), metric=metric)  # type: ignore[arg-type]
    table = evaluate_maps(score, xa, maps, names, steps=steps, baseline=baseline, batch_size=batch_size)  # type: ignore[arg-type]
    details = {
        "embedding model": embedder.name,
        "layer": embedder.layer,
        "target": f"{metric} similarity of image a's embedding to image b's (b fixed)",
    }
    return EvaluationRun(
        table, [f"{a.name}~{b.name}" for a, b in pairs], [], details, "featurelens evaluation (similarity)"
    )
