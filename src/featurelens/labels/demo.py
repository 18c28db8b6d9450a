"""The whole crowd-label path, runnable in tests and in ``featurelens demo``:

bundle → game (SIMULATED players through the real HTTP API, in-process) → export → labels process → report.

The players are simulated (:mod:`featurelens.game.simulate` profiles whose typed labels follow the planted
concepts of :mod:`featurelens.labels.synthetic`); the report says so on every page that uses them. The game
hides which map a running round shows; the simulated players use the admin "oracle" header of
:func:`featurelens.game.simulate.simulate` to learn it, so that their words can follow the planted concepts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featurelens.labels.synthetic import FAMILIES, NOISE, PLAN
from featurelens.network.bundle import Bundle, load_bundle

ADMIN_TOKEN = "demo-admin-token"
PLAYERS = 3  # simulated players, each plays every map once (the game's cost grows with maps x players)
SIMULATED_NOTE = (
    "SIMULATED PLAYERS: the labels below were typed by scripted players (featurelens.game.simulate) "
    "through the game's real HTTP API, following planted concepts. They are not human data."
)


def _lemma_bag(text: str) -> tuple[str, ...]:
    from featurelens.labels.group import GroupParams, lemma
    from featurelens.labels.normalise import clean_text

    stop = GroupParams().stop_words
    return tuple(sorted(lemma(w) for w in clean_text(text).replace("'s", "").split() if w not in stop))


ConceptFn = Callable[[str, str, int], list[str] | None]  # (image_id, layer, index) -> ways of writing it


def planted_concepts(bundle: Bundle) -> ConceptFn:
    """The planted concepts of :mod:`featurelens.labels.synthetic` (by true class, layer, cluster index)."""
    truth = {im.id: im.true_class or im.predicted_class for im in bundle.images}

    def concept(image_id: str, layer: str, index: int) -> list[str] | None:
        cls = truth.get(image_id, "")
        plan = PLAN.get(cls, {}).get(layer)
        if plan is None or plan[index % len(plan)] is None:
            return None
        return FAMILIES[cls][plan[index % len(plan)]]

    return concept


#: what simulated players "see" in real photos when the bundle comes from the real network (keyed by image id)
PHOTO_VOCAB: dict[str, dict[str, list[str]]] = {
    "chelsea": FAMILIES["tabby cat"],
    "coffee": FAMILIES["coffee mug"],
    "astronaut": {
        "face": ["face", "face", "smiling face", "faces"],
        "flag": ["flag", "flag", "american flag", "flags"],
        "suit": ["suit", "space suit", "white suit", "siut"],
    },
    "rocket": {
        "tower": ["tower", "tower", "launch tower", "towers"],
        "nose": ["nose cone", "nose", "tip"],
        "sky": ["sky", "sky", "blue sky", "skies"],
    },
}


def photo_concepts(bundle: Bundle, vocab: dict[str, dict[str, list[str]]] | None = None) -> ConceptFn:
    """Concepts for a bundle made by the real network: for the image's photo vocabulary, cluster ``k`` of the
    layer at depth position ``d`` gets concept ``(k + d) mod n`` (so concepts move across layers)."""
    vocab = vocab or PHOTO_VOCAB
    depth = {layer.name: i for i, layer in enumerate(bundle.layers)}

    def concept(image_id: str, layer: str, index: int) -> list[str] | None:
        words = vocab.get(image_id.split("_")[0])
        if not words:
            return None
        names = list(words)
        return words[names[(index + depth.get(layer, 0)) % len(names)]]

    return concept


def planted_labeller(
    concepts: ConceptFn, seed: int, max_labels: int = 2
) -> Callable[[dict[str, Any]], list[str]]:
    """A simulated player's label function: 1..max_labels different ways of writing the cluster's concept
    (noise words for clusters without one). The choice depends only on ``seed`` and the map, not on
    the order in which the game serves maps (it breaks ties at random), so a campaign in which every
    player sees every map always yields the same labels."""
    noise = [w for w in NOISE if w.strip()]

    def labels(rnd: dict[str, Any]) -> list[str]:
        rng = random.Random(f"{seed}/{rnd['image_id']}/{rnd['layer']}/{rnd['cluster_index']}")
        ways = concepts(rnd["image_id"], rnd["layer"], int(rnd["cluster_index"]))
        pool = [w for w in (ways or noise) if w.strip()]
        chosen: list[str] = []
        bags: set[tuple[str, ...]] = set()
        want = rng.randint(1, max_labels)
        for text in rng.sample(pool, k=len(pool)):
            bag = _lemma_bag(text)
            if bag not in bags:  # the game refuses two labels that say the same thing
                chosen.append(text)
                bags.add(bag)
            if len(chosen) >= want:
                break
        return chosen

    return labels


def play_campaign(
    bundle_path: str | Path,
    work_dir: str | Path,
    *,
    players: int = 5,
    rounds: int | None = None,
    campaign: str = "simulated",
    accuracy: float = 0.8,
    reveals: tuple[int, int] = (0, 3),
    give_up_rate: float = 0.1,
    seed: int = 0,
    concepts: Callable[[Bundle], ConceptFn] = planted_concepts,
) -> tuple[Path, dict[str, Any]]:
    """Import the bundle into a fresh game (SQLite), let simulated players play through the HTTP API,
    and download the export (CSV) through the admin API. Returns (export path, figures); ``figures["truth"]``
    holds, per cluster map, the statistics of the acknowledged answers (rounds, correct, wrong, gave_up,
    mean_q) to check the export's ``map_*`` columns against."""
    from starlette.testclient import TestClient

    from featurelens.game.app import create_app
    from featurelens.game.simulate import PlayerProfile, simulate

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_path)
    plan = concepts(bundle)
    db = work / "game.sqlite3"
    if db.exists():
        db.unlink()
    app = create_app(f"sqlite:///{db}", admin_token=ADMIN_TOKEN, rate_limit=None, gold_rate=0.0)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    t0 = time.perf_counter()
    with TestClient(app) as c:
        r = c.post(
            "/api/admin/import",
            json={"bundle": str(Path(bundle_path).resolve()), "campaign": campaign},
            headers=admin,
        )
        if r.status_code != 201:
            raise RuntimeError(f"game import failed: HTTP {r.status_code} {r.text[:300]}")
        maps = r.json()["maps"]
        profiles = [
            PlayerProfile(
                f"sim-player-{i}",
                accuracy=accuracy,
                reveals=reveals,
                give_up_rate=give_up_rate,
                labels=planted_labeller(plan, seed * 1000 + i),
                seed=seed * 1000 + i,
                fetch_images=False,
            )
            for i in range(players)
        ]
        # oracle players: the admin header on every request (simulate() adds it to "next round" only, and a
        # reveal answer would hide the ids again)
        oracle = {"X-Admin-Token": ADMIN_TOKEN}
        result = simulate(
            lambda: TestClient(app, headers=oracle),
            profiles,
            rounds=rounds or maps,
            truth=bundle,
            campaign=campaign,
            concurrency=1,
            admin_token=ADMIN_TOKEN,
        )
        r = c.get(f"/api/admin/campaigns/{campaign}/export", params={"format": "csv"}, headers=admin)
        if r.status_code != 200:
            raise RuntimeError(f"game export failed: HTTP {r.status_code} {r.text[:300]}")
    export = work / "labels.csv"
    export.write_text(r.text, encoding="utf-8")
    from featurelens.game.masks import REVEAL_Q

    truth: dict[str, dict[str, float]] = {}
    for sub in result.submissions:
        t = truth.setdefault(sub.cluster_id,
                             {"rounds": 0, "correct": 0, "wrong": 0, "gave_up": 0, "unknown": 0, "q": 0.0})
        t["rounds"] += 1
        t["q"] += REVEAL_Q[sub.reveal_step]
        outcome = "correct" if sub.correct else "wrong"
        t["gave_up" if not sub.guessed_class else "unknown" if sub.seen_before else outcome] += 1
    for t in truth.values():
        t["mean_q"] = t.pop("q") / t["rounds"]
    figures = {
        "maps": maps,
        "players": players,
        "answers": len(result.submissions),
        "labels_submitted": sum(len(s.labels) for s in result.submissions),
        "requests": result.requests,
        "errors": list(result.errors),
        "export_rows": max(0, len(r.text.strip().splitlines()) - 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "truth": truth,
    }
    return export, figures


def network_bundle(ctx: Any) -> tuple[Bundle, str, list[dict[str, Any]]]:
    """The demo's real bundle (:func:`featurelens.network.demo.demo_bundle`: made once per demo run, so the
    network section's bundle is reused), or — if the network pipeline is unavailable — the photo bundle
    with synthetic maps. Returns (bundle, description, dataset records)."""
    try:
        from featurelens.network.demo import demo_bundle
    except ImportError as exc:  # the network pipeline is another module; fall back rather than fail
        from featurelens.labels.synthetic import DEFAULT_PHOTOS, build_photo_bundle

        out = Path(ctx.out_dir) / "labels" / "bundle"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        ctx.log(f"labels: network pipeline unavailable ({exc}); using synthetic maps over real photos")
        records = [{"image": p.image_id, "photo": p.photo, "class": p.class_name,
                    "augmented": None if p.crop == (0.0, 0.0, 1.0, 1.0) and not p.flip else "AUGMENTED: crop/flip"}
                   for p in DEFAULT_PHOTOS]
        return build_photo_bundle(out), "SYNTHETIC cluster maps over real photos (network pipeline unavailable)", \
            records
    built = demo_bundle(ctx)
    bundle = built["bundle"]
    records = [d.record() for d in built["dataset"]]
    classes = {r["class"] for r in records}
    return bundle, (
        f"real layer-wise cluster maps of {bundle.model.get('name')} (network pipeline, "
        f"{built['params'].mode} mode, the library's default) for {len(records)} images of {len(classes)} "
        f"class(es) ({sum(r['augmented'] is not None for r in records)} of them AUGMENTED views), layers "
        f"{', '.join(built['layers'])}; the network section's bundle, reused"
    ), records


def _per_class(dataset: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in dataset:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    return counts


def _dataset_html(dataset: list[dict[str, Any]]) -> str:
    """The images per class, AUGMENTED views marked: the global explanations aggregate over all of them."""
    from featurelens.report.html import dataset_list

    return ("<p>Images per class (the global explanations aggregate over every image of a class; views marked "
            "AUGMENTED are flips and crops of a real photo):</p>" + dataset_list(dataset))


def section(ctx: Any) -> Any:
    """Demo section: network bundle → game with SIMULATED players → export → labels process → report."""
    from featurelens.demo import DemoSection
    from featurelens.labels.io import read_labels
    from featurelens.labels.pipeline import process_labels
    from featurelens.labels.report import make_figures, report_html

    out = Path(ctx.out_dir) / "labels"
    out.mkdir(parents=True, exist_ok=True)
    ctx.log("labels: the demo's explanation bundle")
    bundle, described, dataset = network_bundle(ctx)
    concepts = photo_concepts if bundle.model.get("name") != "synthetic-maps" else planted_concepts
    ctx.log("labels: SIMULATED players play the game through its HTTP API")
    export, game = play_campaign(bundle.root, out / "game", players=PLAYERS, concepts=concepts)
    ctx.log(f"labels: {game['export_rows']} exported label rows; processing with Sentence-BERT")
    processed = process_labels(bundle, read_labels(export))  # the defaults: the authors' aggregation
    saved = processed.save(out / "processed")
    figures = make_figures(bundle, processed)  # once, for this page and the full report
    (out / "report" / "figures").mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        (out / "report" / "figures" / f"{name}.png").write_bytes(png)
    page = out / "report" / "index.html"
    page.write_text(report_html(bundle, processed, figures, title="Labelled network explanations (SIMULATED "
                                "players)"), encoding="utf-8")
    html = (
        f"<p><b>{SIMULATED_NOTE}</b></p>"
        f"<p>Bundle: {described}. Game: {game['players']} simulated players, {game['answers']} answers, "
        f"{game['export_rows']} exported label rows ({game['seconds']} s, in-process HTTP). Full report: "
        f"<a href='labels/report/index.html'>labels/report/index.html</a>; processed labels in "
        f"<code>labels/processed/</code>.</p>" + _dataset_html(dataset) + report_html(bundle, processed, figures, fragment=True)
    )
    files = [str(p.relative_to(ctx.out_dir)) for p in [export, *saved, page]]
    summary = {
        "simulated_players": True,
        "bundle": described,
        "dataset": dataset,
        "images_per_class": _per_class(dataset),
        **{k: v for k, v in game.items() if k not in ("errors", "truth")},
        "game_errors": len(game["errors"]),
        **{k: v for k, v in processed.counts.items() if isinstance(v, int)},
        "params": {k: getattr(processed.params, k) for k in ("group_by", "merge", "merged_score", "global_from",
                                                             "trend", "typo_scope")},
        "stop_words": len(processed.params.group.stop_words),
        "maps_with_game_stats": sum(1 for st in processed.map_stats.values() if st.source == "export"),
    }
    return DemoSection(
        title="Crowd labels → explanations (SIMULATED players)", html=html, files=files, summary=summary
    )
