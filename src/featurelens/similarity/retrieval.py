"""Retrieval (query vs a gallery folder) and few-shot (query vs class prototypes) explanations.

* :func:`index_gallery` embeds every image of a folder in batches; embeddings are cached on disk,
  keyed by ``(absolute path, mtime, size, model key)``, so a re-run embeds only new or changed
  files. Unreadable files are skipped with a warning and counted.
* :func:`rank` orders the gallery by the metric (cosine: descending; Euclidean: ascending).
* :func:`explain_retrieval` explains the top-k: one forward of the query and the k retrieved
  images (the cached embeddings hold no feature maps), then SFAM (or a baseline) on each
  (query, hit) pair, giving a map on the query and on the retrieved image.
* :func:`explain_prototype` / :func:`few_shot` explain a query against a class prototype, the mean of
  the support embeddings (Snell et al. 2017). SFAM's CIS use the mean pooled support features as
  ``f^b``; the map of every support image uses the same CIS.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from featurelens.errors import FeaturelensError, MethodError
from featurelens.imaging import list_images, load_image
from featurelens.similarity.cis import DEFAULT_RULES, compute_cis, similarity
from featurelens.similarity.embedding import Embedder, PairFeatures
from featurelens.similarity.pair import (
    ImageLike,
    PairExplanation,
    as_batch,
    combine,
    finish,
    get_pair_method,
    sfam_from_features,
)


class EmptyGalleryError(FeaturelensError):
    """The gallery folder holds no readable image."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "featurelens" / "embeddings"


def model_key(embedder: Embedder) -> str:
    """Identifies the embedding function: name, layer, head and a fingerprint of the parameters."""
    h = hashlib.sha1()
    h.update(f"{embedder.name}|{embedder.layer}|{embedder.head.describe()}|{embedder.input_size}".encode())
    with torch.no_grad():
        for p in embedder.model.parameters():
            h.update(f"{tuple(p.shape)}:{float(p.double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


@dataclass
class GalleryIndex:
    """Embedded gallery: ``paths[i]`` has embedding ``embeddings[i]``."""

    paths: list[Path]
    embeddings: Tensor
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    cache_hits: int = 0
    computed: int = 0
    cache_file: Path | None = None
    model: str = ""


def index_gallery(
    embedder: Embedder,
    folder: str | Path,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    loader: Callable[[Path], Image.Image] | None = None,
    loader_key: str = "",
) -> GalleryIndex:
    """Embed every image file of ``folder`` (cached on disk); raises :class:`EmptyGalleryError` if none is readable.

    ``loader`` turns a file into the model's input image (default: load it; face models pass the face
    aligner, and a file it rejects, e.g. with no face, is skipped with a warning); ``loader_key`` names it
    in the cache file so that differently loaded galleries never share cached embeddings.
    """
    load = loader or load_image
    paths, others = list_images(folder)
    skipped: list[tuple[Path, str]] = [(p, "not an image file (suffix)") for p in others if not p.name.startswith(".")]
    key = model_key(embedder)
    suffix = f"-{loader_key}" if loader_key else ""
    cache_file = Path(cache_dir or default_cache_dir()) / f"{embedder.name.replace('/', '_')}-{key}{suffix}.pt"
    cache: dict[str, Tensor] = {}
    if use_cache and cache_file.is_file():
        try:
            cache = torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache is rebuilt, never fatal
            cache = {}
    kept: list[Path] = []
    rows: dict[Path, Tensor] = {}
    todo: list[tuple[Path, str]] = []
    for p in paths:
        try:
            k = file_key(p)
        except OSError as exc:
            skipped.append((p, str(exc)))
            continue
        if k in cache:
            rows[p] = cache[k]
        else:
            todo.append((p, k))
        kept.append(p)
    hits = len(rows)
    computed = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images: list[Image.Image] = []
        good: list[tuple[Path, str]] = []
        for p, k in chunk:
            try:
                images.append(load(p))
                good.append((p, k))
            except FeaturelensError as exc:
                warnings.warn(f"skipping gallery file: {exc}", stacklevel=2)
                skipped.append((p, str(exc)))
        if images:
            emb = embedder.embed(embedder.prepare(images)).detach().cpu()
            for (p, k), e in zip(good, emb):
                rows[p] = e.clone()
                cache[k] = e.clone()
            computed += len(images)
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
    bad = {p for p, _ in skipped}
    kept = [p for p in kept if p not in bad]
    if not kept:
        raise EmptyGalleryError(
            f"{folder}: no readable image in the gallery ({len(paths)} image file(s), {len(skipped)} skipped)"
        )
    if use_cache and computed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save(cache, tmp)
        tmp.replace(cache_file)
    return GalleryIndex(kept, torch.stack([rows[p] for p in kept]), skipped, hits, computed, cache_file if use_cache else None, embedder.name)


def rank(query: Tensor, gallery: Tensor, metric: str = "cosine") -> tuple[Tensor, Tensor]:
    """Scores of ``query`` ``[D]`` against ``gallery`` ``[N, D]`` and the order (best first)."""
    scores = similarity(query[None].expand_as(gallery), gallery, metric)
    order = torch.argsort(scores, descending=(metric == "cosine"), stable=True)
    return scores, order


@dataclass
class Hit:
    rank: int
    path: Path
    score: float
    map_query: Tensor  # [H, W] in [0, 1]
    map_hit: Tensor
    top_channels: list[dict[str, float]]


@dataclass
class RetrievalResult:
    query: str
    metric: str
    method: str
    hits: list[Hit]
    gallery_size: int
    skipped: list[tuple[Path, str]]
    explanation: PairExplanation
    seconds: dict[str, float]


def explain_retrieval(
    embedder: Embedder,
    query: ImageLike,
    index: GalleryIndex,
    *,
    top_k: int = 5,
    metric: str = "cosine",
    method: str = "sfam",
    rule: str | None = None,
    loader: Callable[[Path], Image.Image] | None = None,
) -> RetrievalResult:
    """Rank the gallery for ``query`` and explain the ``top_k`` pairs (maps on both images).

    ``loader`` reads the retrieved files as :func:`index_gallery` did (e.g. the face aligner)."""
    load = loader or load_image
    if top_k < 1:
        raise MethodError("top-k must be at least 1")
    t0 = time.perf_counter()
    q_img = load_image(query) if isinstance(query, (str, Path)) else query
    xq = as_batch(embedder, q_img)
    t1 = time.perf_counter()
    k = min(top_k, len(index.paths))
    if method == "sfam":
        # one forward of the query and the k hits; the ranking uses the query embedding of that forward
        q_feat = embedder.run(xq)
        scores, order = rank(q_feat.embeddings[0].cpu(), index.embeddings, metric)
        top = order[:k].tolist()
        xh = embedder.prepare([load(index.paths[i]) for i in top])
        h_feat = embedder.run(xh)
        qa = PairFeatures(*(t.expand(k, *t.shape[1:]) for t in (q_feat.activations, q_feat.pooled, q_feat.projected, q_feat.embeddings)))
        ex = sfam_from_features(embedder, qa, h_feat, metric, rule)
    else:
        e_q = embedder.embed(xq)[0].cpu()
        scores, order = rank(e_q, index.embeddings, metric)
        top = order[:k].tolist()
        xh = embedder.prepare([load(index.paths[i]) for i in top])
        ex = get_pair_method(method)(embedder, xq.expand(k, *xq.shape[1:]), xh, metric=metric, rule=rule)
    t2 = time.perf_counter()
    hits = [
        Hit(r + 1, index.paths[i], float(scores[i]), ex.maps_a[r].cpu(), ex.maps_b[r].cpu(), ex.top_channels(r, 5))
        for r, i in enumerate(top)
    ]
    return RetrievalResult(
        str(query) if isinstance(query, (str, Path)) else "query", metric, method, hits, len(index.paths), list(index.skipped),
        ex, {"prepare": t1 - t0, "rank_and_explain": t2 - t1},
    )


# ---------------------------------------------------------------------------
# few-shot
# ---------------------------------------------------------------------------
@dataclass
class PrototypeExplanation:
    """Query vs a class prototype (mean support embedding)."""

    score: float  # cos(e_q, prototype) or ‖e_q − prototype‖
    cis: Tensor  # [K]
    map_query: Tensor  # [H, W]
    maps_support: Tensor  # [S, H, W]
    raw_query: Tensor
    raw_support: Tensor
    prototype: Tensor  # [D]


def explain_prototype(
    embedder: Embedder,
    query: ImageLike | Tensor,
    support: Sequence[ImageLike] | Tensor,
    metric: str = "cosine",
    rule: str | None = None,
) -> PrototypeExplanation:
    """SFAM of ``query`` against the prototype of ``support`` (the mean of the support embeddings)."""
    xq, xs = as_batch(embedder, query), as_batch(embedder, support)
    if xs.shape[0] == 0:
        raise MethodError("the support set is empty")
    fq, fs = embedder.run_pairs(xq, xs) if xq.shape[0] == xs.shape[0] else (embedder.run(xq), embedder.run(xs))
    proto = fs.embeddings.mean(0, keepdim=True)
    f_proto = fs.pooled.mean(0, keepdim=True)
    res = compute_cis(fq.pooled[:1], f_proto, embedder.head, embedder.rule_for(metric, rule) or DEFAULT_RULES[metric])
    cis = res.cis[0]
    cis_s = (res.cis_b if res.cis_b is not None else res.cis)[0]
    raw_q = combine(cis[None], fq.activations[:1])
    raw_s = combine(cis_s[None].expand(xs.shape[0], -1), fs.activations)
    return PrototypeExplanation(
        float(similarity(fq.embeddings[:1], proto, metric)[0]), cis, finish(raw_q, xq.shape[-2:])[0],
        finish(raw_s, xs.shape[-2:]), raw_q[0], raw_s, proto[0],
    )


def few_shot(
    embedder: Embedder,
    query: ImageLike | Tensor,
    supports: Mapping[str, Sequence[ImageLike] | Tensor],
    metric: str = "cosine",
    rule: str | None = None,
) -> tuple[str, dict[str, float], PrototypeExplanation]:
    """Classify ``query`` by the nearest class prototype; explain it against the winning prototype.

    Returns ``(predicted class, {class: score}, explanation)``.
    """
    if not supports:
        raise MethodError("few-shot needs at least one class with support images")
    e_q = embedder.embed(as_batch(embedder, query))[:1]
    scores: dict[str, float] = {}
    for name, sup in supports.items():
        proto = embedder.embed(as_batch(embedder, sup)).mean(0, keepdim=True)
        scores[name] = float(similarity(e_q, proto, metric)[0])
    best = (max if metric == "cosine" else min)(scores, key=scores.__getitem__)
    return best, scores, explain_prototype(embedder, query, supports[best], metric, rule)
