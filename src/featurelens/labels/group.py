"""Grouping a class's labels and naming each group by a representative word.

Grouping: agglomerative clustering of the unique normalised label texts on cosine distance
``d(a, b) = 1 − a·b / (‖a‖‖b‖)`` with complete linkage (the distance of two groups is the largest
distance between their members). The number of groups k maximises the mean silhouette
``s(i) = (b_i − a_i) / max(a_i, b_i)`` over k = 2 … min(n − 1, max_k) (Rousseeuw 1987). Silhouette
cannot score k = 1 or k = n, so tiny or tight sets are decided by a distance: when the complete-linkage
diameter of all n labels is at most ``single_group_distance``, they form one group; for n = 2 the
pair is one group if closer than that, else two.

Optional (``context_weight`` λ > 0, not in the paper): the distance becomes
``(1 − λ)·d_text + λ·d_context`` where ``d_context`` is the cosine distance between the labels' counts over
cluster maps. Sentence-BERT (MiniLM) puts "moustache hairs" nearer to "fur" than to "whiskers"; players who
give both to the same maps tell us they mean the same thing.

Representative word (after the paper): among the single non-stop-words w (stop words: NLTK's English list
plus positional extras, :mod:`~featurelens.labels.stopwords`) of the group's labels, the one
maximising ``Σ_labels count(l) · cos(e(w), e(l))``, i.e. the word whose embedding is closest in total to
the group's labels; it is then lemmatised (lemminflect, offline) so that "ears" and "ear" name the same
concept. Groups of one class that end up with the same representative are merged into one concept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from featurelens.labels.embed import Embedder, unit_rows
from featurelens.labels.stopwords import LEGACY_EXTRAS, stop_word_list

_WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")

#: the words featurelens added to scikit-learn's English stop words before issue 13 (``stop_word_list("sklearn")``)
EXTRA_STOP_WORDS: frozenset[str] = LEGACY_EXTRAS


@dataclass(frozen=True)
class GroupParams:
    """Every constant of grouping and naming."""

    linkage: str = "complete"
    max_k: int | None = None  # upper bound of k searched by silhouette (None: n - 1)
    single_group_distance: float = 0.4  # cosine distance under which a whole (tiny) set is one group
    min_word_length: int = 2  # shorter words are never representatives
    #: never representatives; default NLTK's English list + positional extras (the authors'); today's
    #: former default is ``stop_word_list("sklearn")`` (see :mod:`featurelens.labels.stopwords`)
    stop_words: frozenset[str] = field(default_factory=stop_word_list)
    lemmatise: bool = True
    context_weight: float = (
        0.0  # λ: mix of the labels' co-occurrence on cluster maps into the distance (0 = paper)
    )


def label_distances(
    emb: np.ndarray, context: np.ndarray | None = None, context_weight: float = 0.0
) -> np.ndarray:
    """Condensed pairwise distances: ``(1 − λ)·d_cos(e_a, e_b) + λ·d_cos(o_a, o_b)``.

    ``e`` are the text embeddings; ``o`` (optional, ``context``) the labels' occurrence counts over cluster maps,
    so that labels that players give to the same maps move closer (λ = ``context_weight``; 0 = text only).
    """
    dist = np.clip(pdist(unit_rows(emb), metric="cosine"), 0.0, 2.0)
    if context is not None and context_weight > 0:
        ctx = np.clip(pdist(unit_rows(np.asarray(context, dtype=np.float64)), metric="cosine"), 0.0, 1.0)
        dist = (1.0 - context_weight) * dist + context_weight * ctx
    return dist


def cluster_embeddings(
    emb: np.ndarray, params: GroupParams | None = None, context: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Group assignments (0-based, ordered by first appearance) and the silhouette per k tried.

    ``context`` ([n, M] label-by-cluster-map counts) is used only when ``params.context_weight > 0``.
    """
    p = params or GroupParams()
    n = len(emb)
    if n == 0:
        return np.zeros(0, dtype=int), {}
    if n == 1:
        return np.zeros(1, dtype=int), {}
    dist = label_distances(emb, context, p.context_weight)
    if n == 2 or float(dist.max()) <= p.single_group_distance:
        if float(dist.max()) <= p.single_group_distance:
            return np.zeros(n, dtype=int), {}
        return np.arange(n, dtype=int), {}
    z = linkage(dist, method=p.linkage)
    from scipy.spatial.distance import squareform

    square = squareform(dist)
    kmax = min(n - 1, p.max_k or n - 1)
    best_k, best_s, best_assign = 0, -np.inf, None
    scores: dict[str, float] = {}
    for k in range(2, kmax + 1):
        assign = fcluster(z, t=k, criterion="maxclust")
        m = len(np.unique(assign))
        if m < 2 or m >= n:
            continue
        s = silhouette(square, assign)
        scores[str(k)] = s
        if s > best_s + 1e-12:
            best_k, best_s, best_assign = k, s, assign
    if best_assign is None:
        return np.arange(n, dtype=int), scores
    del best_k
    return _renumber(best_assign), scores


def silhouette(square: np.ndarray, assign: np.ndarray) -> float:
    """Mean silhouette of a partition from a square distance matrix ``D``:
    ``s_i = (b_i − a_i) / max(a_i, b_i)`` with ``a_i`` the mean distance of ``i`` to the other members of
    its group, ``b_i`` the smallest mean distance of ``i`` to another group; ``s_i = 0`` for a group of one
    (the definition of ``sklearn.metrics.silhouette_score``, vectorised: one ``D @ onehot`` product)."""
    _, lab = np.unique(assign, return_inverse=True)
    n, m = len(lab), int(lab.max()) + 1
    onehot = np.zeros((n, m))
    onehot[np.arange(n), lab] = 1.0
    sums = np.asarray(square, dtype=np.float64) @ onehot  # [n, m]: Σ of distances of i to each group
    sizes = onehot.sum(0)
    own = sizes[lab]
    a = sums[np.arange(n), lab] / np.maximum(own - 1.0, 1.0)
    mean_other = sums / sizes
    mean_other[np.arange(n), lab] = np.inf
    b = mean_other.min(1)
    denom = np.maximum(a, b)
    s = np.where((own > 1) & (denom > 0), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(s.mean())


def _renumber(assign: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    out = np.empty(len(assign), dtype=int)
    for i, a in enumerate(assign):
        out[i] = order.setdefault(int(a), len(order))
    return out


def candidate_words(texts: Sequence[str], params: GroupParams | None = None) -> list[str]:
    """The distinct single non-stop-words of ``texts`` (first-seen order)."""
    p = params or GroupParams()
    seen: dict[str, None] = {}
    for t in texts:
        for w in _WORD.findall(t):
            w = w.strip("'-")
            if len(w) >= p.min_word_length and w not in p.stop_words and not w.isdigit():
                seen.setdefault(w, None)
    return list(seen)


def lemma(word: str) -> str:
    """The noun lemma of ``word`` (lemminflect), or the word itself when none is known."""
    try:
        from lemminflect import getLemma
    except ImportError:  # pragma: no cover - declared dependency
        return word
    if "-" in word:
        head, _, last = word.rpartition("-")
        return f"{head}-{lemma(last)}"
    found = getLemma(word, upos="NOUN")
    return found[0] if found else word


def representative_word(
    texts: Sequence[str],
    counts: Sequence[int],
    embedder: Embedder,
    params: GroupParams | None = None,
) -> tuple[str, str]:
    """(lemmatised representative, the word as players wrote it) of one group of label texts.

    The chosen word maximises Σ_l count(l)·cos(e(word), e(l)); ties go to the word seen first.
    A group whose labels hold no candidate word is named by its most frequent label text.
    """
    p = params or GroupParams()
    words = candidate_words(texts, p)
    if not words:
        best = max(zip(counts, range(len(texts))), key=lambda ci: (ci[0], -ci[1]))[1]
        return texts[best], texts[best]
    if len(words) == 1:
        chosen = words[0]
    else:
        we = unit_rows(embedder.encode(list(words)))
        le = unit_rows(embedder.encode(list(texts)))
        total = (we @ le.T) @ np.asarray(counts, dtype=np.float64)
        chosen = words[int(np.argmax(total))]
    return (lemma(chosen) if p.lemmatise else chosen), chosen
