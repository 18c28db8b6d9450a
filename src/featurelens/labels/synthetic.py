"""Synthetic material for tests and the demo: a small bundle of real photos with planted cluster maps,
and a realistic *simulated* label export (several players, synonyms, plurals, typos, class-name leakage,
empty labels, wrong guesses, give-ups and positional words such as "back" and "top"). Nothing here is real crowd data; every row it writes is marked with the
campaign name ``simulated``.
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurelens.labels.io import LabelRecord
from featurelens.network.bundle import Bundle, BundleWriter

#: concept -> ways players write it (synonyms, plurals, typos, class-name leakage)
CAT_FAMILIES: dict[str, list[str]] = {
    "whisker": [
        "whiskers",
        "whiskers",
        "whisker",
        "cat whiskers",
        "Tabby cat's whiskers",
        "whiskrs",
        "long whiskers",
    ],
    "ear": ["ears", "ears", "ear", "cat's ears", "cats ears", "pointy ears", "eras"],
    "eye": ["eyes", "eyes", "eye", "green eyes", "cat eyes", "eyez"],
    "stripe": ["stripes", "stripes", "stripe", "striped fur", "tabby stripes", "stripse"],
    "back": ["back", "back", "its back", "cat's back", "the back", "backs", "bakc"],
}
MUG_FAMILIES: dict[str, list[str]] = {
    "handle": ["handle", "handle", "handles", "mug handle", "coffee mug's handle", "cup handle", "handel"],
    "foam": ["foam", "foam", "milk foam", "foamy froth", "froth foam"],
    "top": ["top", "top", "the top", "tops", "mug top", "top rim"],
    "saucer": ["saucer", "saucer", "saucers", "small saucer", "sauser"],
}
NOISE = ["background", "wall", "blurry", "dark", "no idea", ""]

#: planted concept per (class, layer, cluster index); None = noise cluster (only wrong guesses)
PLAN: dict[str, dict[str, list[str | None]]] = {
    "tabby cat": {
        "blocks.4": ["stripe", "back", None],
        "blocks.10": ["eye", "ear", "stripe"],
        "head": ["whisker", "ear", "whisker"],
    },
    "coffee mug": {
        "blocks.4": ["saucer", "foam", None],
        "blocks.10": ["handle", "top", None],
        "head": ["handle", "foam", "handle"],
    },
}
FAMILIES = {"tabby cat": CAT_FAMILIES, "coffee mug": MUG_FAMILIES}
LAYERS: list[tuple[str, int, int]] = [("blocks.4", 40, 28), ("blocks.10", 80, 14), ("head", 1280, 7)]
CENTRES = [(0.3, 0.3), (0.7, 0.35), (0.5, 0.75)]


def blob(size: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    """A Gaussian bump in [0, 1] at relative ``centre`` (y, x) with relative width ``sigma``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-(((yy + 0.5) / h - centre[0]) ** 2 + ((xx + 0.5) / w - centre[1]) ** 2) / (2 * sigma**2))
    return (g / g.max()).astype(np.float32)


@dataclass
class PhotoSpec:
    image_id: str
    photo: str  # scikit-image sample name
    class_name: str
    crop: tuple[float, float, float, float]  # relative (top, left, bottom, right)
    flip: bool = False


DEFAULT_PHOTOS: list[PhotoSpec] = [
    PhotoSpec("cat_a", "chelsea", "tabby cat", (0.0, 0.0, 1.0, 1.0)),
    PhotoSpec("cat_b", "chelsea", "tabby cat", (0.05, 0.1, 0.95, 0.9), flip=True),
    PhotoSpec("cat_c", "chelsea", "tabby cat", (0.0, 0.2, 0.9, 1.0)),
    PhotoSpec("mug_a", "coffee", "coffee mug", (0.0, 0.0, 1.0, 1.0)),
    PhotoSpec("mug_b", "coffee", "coffee mug", (0.1, 0.05, 0.95, 0.9), flip=True),
    PhotoSpec("rocket_a", "rocket", "rocket", (0.0, 0.0, 1.0, 1.0)),
]


def build_photo_bundle(
    out: str | Path, photos: list[PhotoSpec] | None = None, size: int = 224, seed: int = 0
) -> Bundle:
    """A bundle of real scikit-image photos with three synthetic Gaussian cluster maps per layer."""
    from featurelens.imaging import sample_images

    photos = photos or DEFAULT_PHOTOS
    rng = np.random.default_rng(seed)
    loaded = sample_images(sorted({p.photo for p in photos}))
    classes = sorted({p.class_name for p in photos})
    w = BundleWriter(
        out,
        model={"name": "synthetic-maps", "input_size": [size, size]},
        target={
            "kind": "true-class",
            "description": "synthetic cluster maps over real photos (test fixture)",
        },
        class_names=classes,
        params={"synthetic": True, "seed": seed},
    )
    for name, channels, fs in LAYERS:
        w.add_layer(name, channels=channels, feature_size=(fs, fs))
    for spec in photos:
        im = loaded[spec.photo]
        W, H = im.size
        t, left, b, r = spec.crop
        im = im.crop((int(left * W), int(t * H), int(r * W), int(b * H))).resize((size, size))
        rgb = np.asarray(im, dtype=np.uint8)
        if spec.flip:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        iid = w.add_image(
            rgb,
            source=f"skimage:{spec.photo}",
            true_class=spec.class_name,
            predicted_class=spec.class_name,
            predicted_index=classes.index(spec.class_name),
            score=1.0,
            image_id=spec.image_id,
        )
        for name, channels, fs in LAYERS:
            raw = rng.dirichlet(np.ones(len(CENTRES)) * 3.0) * 100.0
            for k, centre in enumerate(CENTRES):
                jitter = (centre[0] + rng.normal(0, 0.03), centre[1] + rng.normal(0, 0.03))
                w.add_cluster(
                    iid,
                    name,
                    channels=[int(c) for c in rng.choice(channels, size=3, replace=False)],
                    weight=float(raw[k]),
                    feature_map=blob((fs, fs), jitter, 0.15),
                    image_map=blob((size, size), jitter, 0.15),
                )
    return w.close()


def simulated_export(
    bundle: Bundle,
    *,
    players: int = 6,
    seed: int = 0,
    label_prob: float = 0.85,
    correct_prob: float = 0.8,
    give_up_prob: float = 0.1,
    campaign: str = "simulated",
    plan: dict[str, dict[str, list[str | None]]] | None = None,
    families: dict[str, dict[str, list[str]]] | None = None,
) -> list[LabelRecord]:
    """Simulated players labelling every cluster of ``bundle`` by the planted concepts of :data:`PLAN`.

    Every player plays every map once. Planted clusters: a player names it (with probability ``label_prob``;
    otherwise the round is a give-up without labels, so it leaves no row) with a random way of writing the
    planted concept, gives up with probability ``give_up_prob`` (no guess), else guesses the class right
    with probability ``correct_prob``, at a reveal step drawn towards early steps. Noise clusters get noise
    words, late reveal steps and wrong guesses only. The rows carry the export-v2 map statistics.
    """
    plan = plan or PLAN
    families = families or FAMILIES
    rng = random.Random(seed)
    q = [2.0, 4.5, 8.0, 13.0, 20.0, 30.0]
    rows: list[LabelRecord] = []
    t0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
    for im in bundle.images:
        cls = im.true_class or im.predicted_class
        others = [c for c in bundle.class_names if c != cls] or ["something else"]
        for c in im.clusters:
            concepts = plan.get(cls, {}).get(c.layer)
            if concepts is None:
                continue  # a class without a plan gets no labels at all
            concept = concepts[c.index % len(concepts)]
            start = len(rows)
            rounds: list[tuple[str, bool, float]] = []  # (guess, correct, q) per round of this map
            for p in range(players):
                if rng.random() > label_prob:
                    rounds.append(("", False, q[min(5, int(rng.expovariate(0.8)))]))
                    continue
                if concept is None:
                    label, step, correct = rng.choice(NOISE), rng.choice([3, 4, 5]), False
                    guess = rng.choice(others)
                else:
                    label = rng.choice(families[cls][concept])
                    step = min(5, int(rng.expovariate(0.8)))
                    correct = rng.random() < correct_prob
                    guess = cls if correct else rng.choice(others)
                    if rng.random() < give_up_prob:
                        guess, correct = "", False
                rounds.append((guess, correct, q[step]))
                rows.append(
                    LabelRecord(
                        row=len(rows) + 1,
                        campaign=campaign,
                        player=f"sim-player-{p}",
                        image_id=im.id,
                        layer=c.layer,
                        cluster_id=c.id,
                        cluster_index=c.index,
                        reveal_step=step,
                        q_percent=q[step],
                        guessed_class=guess,
                        true_class=cls,
                        correct=correct,
                        label=label,
                        created_at=(t0 + _dt.timedelta(seconds=len(rows))).isoformat(),
                    )
                )
            n_right = sum(1 for g, ok, _ in rounds if g and ok)
            n_gave = sum(1 for g, _, _ in rounds if not g)
            for r in rows[start:]:
                r.map_rounds, r.map_correct, r.map_gave_up, r.map_unknown = len(rounds), n_right, n_gave, 0
                r.map_wrong = len(rounds) - n_right - n_gave
                r.map_mean_q = sum(x[2] for x in rounds) / len(rounds)
    return rows
