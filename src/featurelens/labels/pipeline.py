"""``process_labels``: game export + bundle → normalised, grouped, named and scored labels.

Steps (every constant in :class:`LabelParams`):

1. match each row to the bundle (unknown images/clusters are counted and reported, never used);
2. normalise (:mod:`~featurelens.labels.normalise`), stripping the true class name and the guessed one,
   dropping and counting labels left empty;
3. put each row in its *grouping class*: the player's guessed class (``group_by="guessed"``, the
   authors': the guess is the context of what they typed; give-ups, which have no guess, go under the
   true class), or the image's true class (``group_by="true"``, featurelens before issue 13);
   optionally fix typos within the labels of one image class (``typo_scope="image"``; or of one grouping
   class) (:func:`typo_map`): a word at Damerau–Levenshtein distance
   ≤ ``typo_max_edits`` from a word used ``typo_min_ratio`` times as often in the same class's labels (or an
   unknown word next to a known one used at least as often) is replaced by it;
4. embed the grouping class's unique label texts with Sentence-BERT and group them (:mod:`~featurelens.labels.group`);
5. name each group by its lemmatised representative word and merge groups sharing it;
6. score each (cluster map, representative) pair (:mod:`~featurelens.labels.score`); rows with
   ``seen_before`` never count as "guessed right";
7. read (or compute) each cluster map's game statistics (:mod:`~featurelens.labels.stats`).

Scores, local and global explanations stay keyed by the image's class; only grouping and naming follow
``group_by``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from featurelens.labels.embed import Embedder, SentenceEmbedder
from featurelens.labels.group import GroupParams, candidate_words, cluster_embeddings, representative_word
from featurelens.labels.io import LabelRecord, LabelsError
from featurelens.labels.normalise import NormaliseParams, normalise_label
from featurelens.labels.score import ClusterScore, ScoreParams, label_score
from featurelens.labels.stats import MapStats, map_stats
from featurelens.labels.stopwords import stop_word_list
from featurelens.network.bundle import Bundle

FORMAT = "featurelens.processed-labels"
FORMAT_VERSION = 2  # 2 (issue 13): group_class, seen_before, q_percent per label; map_stats; new params

KEPT = "kept"
EMPTY = "empty"
UNKNOWN_IMAGE = "unknown_image"
UNKNOWN_CLUSTER = "unknown_cluster"
NO_CLASS = "no_class"
STATUSES = (KEPT, EMPTY, UNKNOWN_IMAGE, UNKNOWN_CLUSTER, NO_CLASS)


#: the named options of :class:`LabelParams` and their allowed values (the first is the default)
CHOICES: dict[str, tuple[str, ...]] = {
    "group_by": ("guessed", "true"),
    "merge": ("transitive", "best-label", "none"),
    "merged_score": ("weighted-mean", "sum"),
    "global_from": ("merged-best", "all-labels"),
    "trend": ("mean-score", "share-slope"),
    "typo_scope": ("image", "group"),
}


@dataclass(frozen=True)
class LabelParams:
    """All constants of the labels pipeline. The defaults follow the authors' label analysis; each former
    featurelens behaviour is a named option (all of them at once: :meth:`legacy`):

    - ``group_by``: ``"guessed"`` groups labels per guessed class (give-ups under the true class);
      ``"true"`` per the image's true class.
    - ``merge`` (local explanations): ``"transitive"`` merges clusters that share any best label, ties
      included, transitively; ``"best-label"`` merges clusters with the same single best label (ties
      broken alphabetically); ``"none"`` never merges.
    - ``merged_score``: ``"weighted-mean"`` gives a merged cluster ``Σ_c w_c·s_c / Σ_c w_c`` per label;
      ``"sum"`` gives ``Σ_c s_c``.
    - ``global_from``: ``"merged-best"`` ranks a class's layer by the best labels of the merged clusters
      only; ``"all-labels"`` sums every label of every (unmerged) cluster.
    - ``trend``: ``"mean-score"`` is the per-layer mean score of each label; ``"share-slope"`` the
      least-squares slope of the label's share of the layer's score against depth.
    - ``typo_scope``: ``"image"`` fixes typos against the words of all labels given to images of the same
      (true) class, whatever the guess: a typo does not depend on the guess, and a wrong guesser's few labels
      would otherwise have no frequent neighbour; ``"group"`` against the labels of the grouping class
      (with ``group_by="true"`` both are featurelens's former behaviour).
    - stop words: ``group.stop_words`` (``stop_word_list("sklearn")`` for the former list).
    """

    normalise: NormaliseParams = field(default_factory=NormaliseParams)
    group: GroupParams = field(default_factory=GroupParams)
    score: ScoreParams = field(default_factory=ScoreParams)
    fix_typos: bool = True
    typo_max_edits: int = 1
    typo_min_length: int = 4  # words shorter than this are never "corrected"
    typo_min_ratio: float = 2.0  # the replacement must be used this many times as often
    top_labels_local: int = 3  # labels shown per cluster in local explanations
    top_labels_global: int = 5  # labels per class and layer in global explanations
    examples_global: int = 3  # example overlays per global label (from different images)
    trend_threshold: float = 0.1  # share-slope trends: |slope| above this = rises/falls
    top_labels_full_merge: int = 6  # labels shown in the per-layer full-merge view
    group_by: str = "guessed"
    strip_guessed_class: bool = True  # also strip the guessed class's name from labels
    merge: str = "transitive"
    merged_score: str = "weighted-mean"
    global_from: str = "merged-best"
    trend: str = "mean-score"
    typo_scope: str = "image"  # typo-fix vocabulary: labels of the image's class, or of the grouping class

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise LabelsError(
                    f"LabelParams.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )

    @classmethod
    def legacy(cls, **overrides: Any) -> LabelParams:
        """featurelens's behaviour before issue 13: true-class grouping, scikit-learn stop words, merging on
        one best label with summed scores, global from all labels, share-slope trends."""
        base = dict(
            group=GroupParams(stop_words=stop_word_list("sklearn")),
            group_by="true",
            strip_guessed_class=False,
            merge="best-label",
            merged_score="sum",
            global_from="all-labels",
            trend="share-slope",
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["group"]["stop_words"] = sorted(self.group.stop_words)
        d["normalise"]["leading_words"] = list(self.normalise.leading_words)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelParams:
        d = dict(d)
        norm = dict(d.pop("normalise", {}))
        if "leading_words" in norm:
            norm["leading_words"] = tuple(norm["leading_words"])
        grp = dict(d.pop("group", {}))
        if "stop_words" in grp:
            grp["stop_words"] = frozenset(grp["stop_words"])
        sc = d.pop("score", {})
        known = {f.name for f in fields(cls)}
        return cls(
            normalise=NormaliseParams(**norm),
            group=GroupParams(**grp),
            score=ScoreParams(**sc),
            **{k: v for k, v in d.items() if k in known},
        )


@dataclass
class ProcessedLabel:
    """One export row after processing; the raw text is kept next to the normalised one."""

    row: int
    campaign: str
    player: str
    image_id: str
    layer: str
    cluster_id: str
    reveal_step: int
    guessed_class: str
    correct: bool
    class_name: str
    raw_label: str
    normalised: str  # lowercased, trimmed, class name stripped
    text: str  # normalised with typos fixed: what is embedded and grouped
    status: str
    group: int = -1  # group index within the grouping class (-1 when not kept)
    representative: str = ""
    score: float = 0.0  # score of (cluster, representative)
    group_class: str = ""  # the grouping class: guessed class (or true class on a give-up / group_by="true")
    seen_before: bool = False  # correctness unknown: never counts as guessed right
    q_percent: float = float("nan")  # revealed % at answer time


@dataclass
class LabelGroup:
    class_name: str  # the grouping class (see LabelParams.group_by)
    index: int
    representative: str
    word: str  # the representative as players wrote it (before lemmatisation)
    labels: dict[str, int]  # text -> count

    @property
    def size(self) -> int:
        return sum(self.labels.values())


@dataclass
class ProcessedLabels:
    """Everything ``featurelens labels process`` writes."""

    params: LabelParams
    model: str
    labels: list[ProcessedLabel]
    groups: list[LabelGroup]
    scores: list[ClusterScore]
    counts: dict[str, Any]
    problems: list[str]
    silhouettes: dict[str, dict[str, float]] = field(default_factory=dict)
    typo_fixes: dict[str, dict[str, str]] = field(default_factory=dict)
    map_stats: dict[str, MapStats] = field(default_factory=dict)

    def scores_for(self, cluster_id: str) -> list[ClusterScore]:
        return sorted(
            (s for s in self.scores if s.cluster_id == cluster_id), key=lambda s: (-s.score, s.representative)
        )

    # -- files ---------------------------------------------------------------
    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``labels.csv``, ``scores.csv``, ``groups.csv`` and ``labels.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "labels.csv", out / "scores.csv", out / "groups.csv", out / "labels.json"]
        labels = [_flat(r) for r in self.labels]  # flat records: a shallow dict each, made once
        scores = [_flat(s) for s in self.scores]
        _write_csv(paths[0], labels, [f.name for f in fields(ProcessedLabel)])
        _write_csv(paths[1], scores, [f.name for f in fields(ClusterScore)])
        _write_csv(
            paths[2],
            [
                {
                    "class_name": g.class_name,
                    "group": g.index,
                    "representative": g.representative,
                    "word": g.word,
                    "size": g.size,
                    "labels": "; ".join(f"{t} ({c})" for t, c in g.labels.items()),
                }
                for g in self.groups
            ],
            ["class_name", "group", "representative", "word", "size", "labels"],
        )
        data = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "params": self.params.to_dict(),
            "counts": self.counts,
            "problems": self.problems,
            "silhouettes": self.silhouettes,
            "typo_fixes": self.typo_fixes,
            "map_stats": {k: _flat(v) for k, v in self.map_stats.items()},
            "groups": [_flat(g) for g in self.groups],
            "scores": scores,
            "labels": labels,
        }
        # compact separators: json's C encoder (an indented dump runs in pure Python, ~10x slower)
        paths[3].write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        return paths


def _flat(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` for a dataclass of plain fields, without its recursive deep copy."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows({k: ("true" if v is True else "false" if v is False else v) for k, v in r.items()} for r in rows)


def load_processed(path: str | Path) -> ProcessedLabels:
    """Read a folder written by :meth:`ProcessedLabels.save` (or its ``labels.json``)."""
    path = Path(path)
    manifest = path / "labels.json" if path.is_dir() else path
    if not manifest.is_file():
        raise LabelsError(
            f"{path} holds no processed labels (no labels.json); run `featurelens labels process` first"
        )
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsError(f"cannot read {manifest}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LabelsError(f"{manifest} is not a processed-labels file (format {FORMAT!r})")
    if data.get("version") not in (1, FORMAT_VERSION):
        raise LabelsError(
            f"{manifest}: version {data.get('version')!r} is not supported (expected 1 or {FORMAT_VERSION})"
        )
    try:
        params = dict(data["params"])
        if data["version"] == 1:  # made before issue 13: its options were the legacy behaviours
            legacy = LabelParams.legacy().to_dict()
            params = {**{k: legacy[k] for k in CHOICES}, "strip_guessed_class": False, **params}
        return ProcessedLabels(
            params=LabelParams.from_dict(params),
            model=data["model"],
            labels=[ProcessedLabel(**r) for r in data["labels"]],
            groups=[LabelGroup(**g) for g in data["groups"]],
            scores=[ClusterScore(**s) for s in data["scores"]],
            counts=data["counts"],
            problems=list(data["problems"]),
            silhouettes=data.get("silhouettes", {}),
            typo_fixes=data.get("typo_fixes", {}),
            map_stats={k: MapStats(**v) for k, v in data.get("map_stats", {}).items()},
        )
    except (KeyError, TypeError) as exc:
        raise LabelsError(f"{manifest} is malformed: {exc}") from None


# ---------------------------------------------------------------------------
# typo fixing
# ---------------------------------------------------------------------------
def damerau_levenshtein(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insertions, deletions, substitutions, adjacent swaps)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def known_word(word: str) -> bool:
    """Whether the offline lexicon (lemminflect) knows ``word``."""
    try:
        from lemminflect import getAllLemmas
    except ImportError:  # pragma: no cover - declared dependency
        return True
    return bool(getAllLemmas(word))


def typo_map(texts: list[str], params: LabelParams) -> dict[str, str]:
    """word -> replacement for the likely typos among the words of ``texts`` (one class).

    ``w`` → ``v`` when their Damerau–Levenshtein distance is ≤ ``typo_max_edits`` and either ``v`` is used
    ≥ ``typo_min_ratio`` times as often as ``w``, or ``w`` is not an English word (lemminflect) while ``v``
    is one used at least as often.
    """
    freq = Counter(w for t in texts for w in t.split())
    known = {w: known_word(w) for w in freq}
    fixes: dict[str, str] = {}
    for w, n in freq.items():
        if len(w) < params.typo_min_length:
            continue
        best = None
        for v, m in freq.items():
            if v == w or abs(len(v) - len(w)) > params.typo_max_edits:
                continue
            if not (m >= params.typo_min_ratio * n or (not known[w] and known[v] and m >= n)):
                continue
            if damerau_levenshtein(w, v) <= params.typo_max_edits and (best is None or m > freq[best]):
                best = v
        if best is not None:
            fixes[w] = best
    return fixes


# ---------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------
def _image_class(bundle: Bundle, image_id: str) -> str:
    im = bundle.image(image_id)
    return im.true_class or im.predicted_class


def process_labels(
    bundle: Bundle,
    records: list[LabelRecord],
    *,
    embedder: Embedder | None = None,
    model: str | None = None,
    params: LabelParams | None = None,
) -> ProcessedLabels:
    """Normalise, group, name and score the label rows of a game export against ``bundle``.

    Raises :class:`LabelsError` when no row is usable (every reason counted in the message).
    """
    p = params or LabelParams()
    if embedder is None:
        embedder = SentenceEmbedder(model)
    images = {im.id: im for im in bundle.images}
    clusters = {c.id: (im, c) for im, c in bundle.clusters()}
    problems: list[str] = []
    rows: list[ProcessedLabel] = []
    unknown_images: Counter[str] = Counter()
    unknown_clusters: Counter[str] = Counter()
    class_mismatch: Counter[tuple[str, str, str]] = Counter()
    for r in records:
        cid = r.cluster_id or (f"{r.image_id}/{r.layer}/{r.cluster_index}" if r.image_id and r.layer else "")
        image_id, layer = r.image_id, r.layer
        status = KEPT
        class_name = r.true_class
        if cid in clusters:
            im, c = clusters[cid]
            image_id, layer = im.id, c.layer
            bundle_class = im.true_class or im.predicted_class
            if class_name and bundle_class and class_name != bundle_class:
                class_mismatch[(im.id, class_name, bundle_class)] += 1
            class_name = class_name or bundle_class
        elif (image_id or cid.split("/")[0]) not in images:
            status = UNKNOWN_IMAGE
            unknown_images[image_id or cid.split("/")[0] or "(empty)"] += 1
        else:
            status = UNKNOWN_CLUSTER
            unknown_clusters[cid or "(empty)"] += 1
        norm = normalise_label(r.label, class_name, p.normalise)
        guess = r.guessed_class.strip()
        if norm and p.strip_guessed_class and guess and guess != class_name:
            norm = normalise_label(norm, guess, p.normalise)
        group_class = guess if (p.group_by == "guessed" and guess) else class_name
        if status == KEPT and not norm:
            status = EMPTY
        if status == KEPT and not class_name:
            status = NO_CLASS
        rows.append(
            ProcessedLabel(
                row=r.row,
                campaign=r.campaign,
                player=r.player,
                image_id=image_id,
                layer=layer,
                cluster_id=cid,
                reveal_step=r.reveal_step,
                guessed_class=r.guessed_class,
                correct=r.correct,
                class_name=class_name,
                raw_label=r.label,
                normalised=norm,
                text=norm,
                status=status,
                group_class=group_class,
                seen_before=r.seen_before,
                q_percent=r.q_percent,
            )
        )
    if unknown_images:
        problems.append(
            f"{sum(unknown_images.values())} label row(s) name image(s) not in the bundle and were not used: "
            + ", ".join(f"{k} ({v})" for k, v in unknown_images.most_common(10))
        )
    if unknown_clusters:
        problems.append(
            f"{sum(unknown_clusters.values())} label row(s) name cluster(s) not in the bundle and were not used: "
            + ", ".join(f"{k} ({v})" for k, v in unknown_clusters.most_common(10))
        )
    for (iid, given, have), n in class_mismatch.items():
        problems.append(
            f"{n} label row(s) of image {iid} give true_class {given!r} but the bundle says {have!r}; "
            f"the export's class was used"
        )
    n_empty = sum(1 for x in rows if x.status == EMPTY)
    if n_empty:
        problems.append(
            f"{n_empty} label(s) were empty after normalisation (blank or only the class name) and were dropped"
        )
    n_noclass = sum(1 for x in rows if x.status == NO_CLASS)
    if n_noclass:
        problems.append(
            f"{n_noclass} label row(s) have no class (no true_class and none in the bundle) and were dropped"
        )

    kept = [x for x in rows if x.status == KEPT]
    counts: dict[str, Any] = {
        "rows": len(rows),
        **{s: sum(1 for x in rows if x.status == s) for s in STATUSES},
    }
    if not kept:
        raise LabelsError(
            "no usable labels: "
            + ", ".join(f"{k}={v}" for k, v in counts.items())
            + ("; " + "; ".join(problems) if problems else "")
        )

    by_group_class: dict[str, list[ProcessedLabel]] = defaultdict(list)
    for x in kept:
        by_group_class[x.group_class].append(x)
    groups: list[LabelGroup] = []
    silhouettes: dict[str, dict[str, float]] = {}
    typo_fixes: dict[str, dict[str, str]] = {}
    if p.fix_typos:
        by_scope: dict[str, list[ProcessedLabel]] = defaultdict(list)
        for x in kept:
            by_scope[x.class_name if p.typo_scope == "image" else x.group_class].append(x)
        for scope in sorted(by_scope):
            fixes = typo_map([x.text for x in by_scope[scope]], p)
            if fixes:
                typo_fixes[scope] = fixes
                for x in by_scope[scope]:
                    x.text = " ".join(fixes.get(w, w) for w in x.text.split())
    warm = getattr(embedder, "warm", None)
    if callable(warm):  # one batched model call for every distinct text and candidate word, not one per group
        distinct = sorted({x.text for x in kept})
        warm(distinct + candidate_words(distinct, p.group))
    for class_name in sorted(by_group_class):
        items = by_group_class[class_name]
        counter = Counter(x.text for x in items)
        texts = list(counter)
        emb = embedder.encode(texts)
        context = None
        if p.group.context_weight > 0:
            maps = sorted({x.cluster_id for x in items})
            col = {cid: j for j, cid in enumerate(maps)}
            row = {t: i for i, t in enumerate(texts)}
            context = np.zeros((len(texts), len(maps)))
            for x in items:
                context[row[x.text], col[x.cluster_id]] += 1
        assign, sil = cluster_embeddings(np.asarray(emb), p.group, context)
        silhouettes[class_name] = sil
        # name groups, then merge groups sharing a representative
        raw_groups: dict[int, list[str]] = defaultdict(list)
        for t, a in zip(texts, assign):
            raw_groups[int(a)].append(t)
        by_rep: dict[str, LabelGroup] = {}
        text_rep: dict[str, str] = {}
        for a in sorted(raw_groups):
            members = raw_groups[a]
            rep, word = representative_word(members, [counter[t] for t in members], embedder, p.group)
            g = by_rep.get(rep)
            if g is None:
                g = by_rep[rep] = LabelGroup(class_name, len(by_rep), rep, word, {})
            for t in members:
                g.labels[t] = counter[t]
                text_rep[t] = rep
        for g in by_rep.values():
            g.labels = dict(sorted(g.labels.items(), key=lambda kv: (-kv[1], kv[0])))
        groups.extend(by_rep.values())
        for x in items:
            x.representative = text_rep[x.text]
            x.group = by_rep[x.representative].index

    # scores per (cluster, representative)
    cells: dict[tuple[str, str], list[ProcessedLabel]] = defaultdict(list)
    for x in kept:
        cells[(x.cluster_id, x.representative)].append(x)
    scores = []
    for (cid, rep), xs in cells.items():
        im, c = clusters[cid]
        right = [x.correct and not x.seen_before for x in xs]
        s = label_score([x.reveal_step for x in xs], right, p.score)
        scores.append(
            ClusterScore(
                cluster_id=cid,
                image_id=im.id,
                layer=c.layer,
                class_name=xs[0].class_name,
                representative=rep,
                frequency=len(xs),
                mean_reveal_step=float(np.mean([x.reveal_step for x in xs])),
                any_correct=any(right),
                players=len({x.player for x in xs}),
                score=s,
                weight=c.weight,
            )
        )
        for x in xs:
            x.score = s
    scores.sort(key=lambda s: (s.cluster_id, -s.score, s.representative))

    # classes of the bundle without any label
    bundle_classes = Counter((im.true_class or im.predicted_class) for im in bundle.images)
    image_classes = {x.class_name for x in kept}
    missing = sorted(c for c in bundle_classes if c not in image_classes)
    for c in missing:
        problems.append(
            f"no labels for class {c!r} ({bundle_classes[c]} image(s) in the bundle): no explanation for it"
        )
    labelled_clusters = {s.cluster_id for s in scores}
    counts.update(
        classes=len(image_classes),
        grouping_classes=len(by_group_class),
        classes_without_labels=missing,
        groups=len(groups),
        clusters_total=len(clusters),
        clusters_labelled=len(labelled_clusters),
        clusters_unlabelled=len(clusters) - len(labelled_clusters),
        unknown_image_ids=dict(unknown_images),
        unknown_cluster_ids=dict(unknown_clusters),
    )
    for v in counts.values():
        if isinstance(v, float) and not math.isfinite(v):  # pragma: no cover - defensive
            raise LabelsError("non-finite count")
    return ProcessedLabels(
        params=p,
        model=getattr(embedder, "name", str(model)),
        labels=rows,
        groups=groups,
        scores=scores,
        counts=counts,
        problems=problems,
        silhouettes=silhouettes,
        typo_fixes=typo_fixes,
        map_stats={cid: st for cid, st in map_stats(records).items() if cid in clusters},
    )
