"""The whole crowd-label path, runnable in tests and in ``featurelens demo``:

bundle → game (SIMULATED players through the real HTTP API, in-process) → export → labels process → report.

The players are simulated (:mod:`featurelens.game.simulate` profiles whose typed labels follow the planted
concepts of :mod:`featurelens.labels.synthetic`); the report says so on every page that uses them.
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
SIMULATED_NOTE = (
    "SIMULATED PLAYERS: the labels below were typed by scripted players (featurelens.game.simulate) "
    "through the game's real HTTP API, following planted concepts. They are not human data."
)


def _lemma_bag(text: str) -> tuple[str, ...]:
    from featurelens.labels.group import GroupParams, lemma
    from featurelens.labels.normalise import clean_text

    stop = GroupParams().stop_words
    return tuple(sorted(lemma(w) for w in clean_text(text).replace("'s", "").split() if w not in stop))


def planted_labeller(bundle: Bundle, seed: int, max_labels: int = 2) -> Callable[[dict[str, Any]], list[str]]:
    """A simulated player's label function: 1..max_labels ways of writing the cluster's planted concept."""
    rng = random.Random(seed)
    truth = {im.id: im.true_class or im.predicted_class for im in bundle.images}
    noise = [w for w in NOISE if w.strip()]

    def labels(rnd: dict[str, Any]) -> list[str]:
        cls = truth.get(rnd["image_id"], "")
        plan = PLAN.get(cls, {}).get(rnd["layer"])
        if plan is None:
            return [rng.choice(noise)]
        concept = plan[int(rnd["cluster_index"]) % len(plan)]
        pool = noise if concept is None else FAMILIES[cls][concept]
        pool = [w for w in pool if w.strip()]
        chosen: list[str] = []
        bags: set[tuple[str, ...]] = set()
        for text in rng.sample(pool, k=len(pool)):
            bag = _lemma_bag(text)
            if bag not in bags:  # the game refuses two labels that say the same thing
                chosen.append(text)
                bags.add(bag)
            if len(chosen) >= rng.randint(1, max_labels):
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
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Import the bundle into a fresh game (SQLite), let simulated players play through the HTTP API,
    and download the export (CSV) through the admin API. Returns (export path, figures)."""
    from starlette.testclient import TestClient

    from featurelens.game.app import create_app
    from featurelens.game.simulate import PlayerProfile, simulate

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_path)
    db = work / "game.sqlite3"
    if db.exists():
        db.unlink()
    app = create_app(f"sqlite:///{db}", admin_token=ADMIN_TOKEN, rate_limit=None, gold_rate=0.0)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    t0 = time.perf_counter()
    with TestClient(app) as c:
        r = c.post("/api/admin/import", json={"bundle": str(Path(bundle_path).resolve()), "campaign": campaign},
                   headers=admin)
        if r.status_code != 201:
            raise RuntimeError(f"game import failed: HTTP {r.status_code} {r.text[:300]}")
        maps = r.json()["maps"]
        profiles = [
            PlayerProfile(f"sim-player-{i}", accuracy=accuracy, reveals=reveals,
                          labels=planted_labeller(bundle, seed * 1000 + i), seed=seed * 1000 + i,
                          fetch_images=False)
            for i in range(players)
        ]
        result = simulate(lambda: TestClient(app), profiles, rounds=rounds or maps, truth=bundle,
                          campaign=campaign, concurrency=1)
        r = c.get(f"/api/admin/campaigns/{campaign}/export", params={"format": "csv"}, headers=admin)
        if r.status_code != 200:
            raise RuntimeError(f"game export failed: HTTP {r.status_code} {r.text[:300]}")
    export = work / "labels.csv"
    export.write_text(r.text, encoding="utf-8")
    figures = {
        "maps": maps,
        "players": players,
        "answers": len(result.submissions),
        "labels_submitted": sum(len(s.labels) for s in result.submissions),
        "requests": result.requests,
        "errors": list(result.errors),
        "export_rows": max(0, len(r.text.strip().splitlines()) - 1),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return export, figures


def section(ctx: Any) -> Any:
    """Demo section: bundle → game with simulated players → export → labels process → report."""
    from featurelens.demo import DemoSection
    from featurelens.labels.io import read_labels
    from featurelens.labels.pipeline import process_labels
    from featurelens.labels.report import make_figures, report_html, write_report
    from featurelens.labels.synthetic import DEFAULT_PHOTOS, build_photo_bundle

    out = Path(ctx.out_dir) / "labels"
    out.mkdir(parents=True, exist_ok=True)
    photos = [p for p in DEFAULT_PHOTOS if p.image_id in ("cat_a", "cat_b", "mug_a", "rocket_a")] if ctx.quick else None
    bundle_dir = out / "bundle"
    if (bundle_dir / "bundle.json").exists():
        import shutil

        shutil.rmtree(bundle_dir)
    ctx.log("labels: building a bundle of real photos with synthetic cluster maps")
    bundle = build_photo_bundle(bundle_dir, photos=photos)
    ctx.log("labels: simulated players play the game through its HTTP API")
    export, game = play_campaign(bundle_dir, out / "game", players=3 if ctx.quick else 6)
    ctx.log(f"labels: {game['export_rows']} exported label rows; processing with Sentence-BERT")
    processed = process_labels(bundle, read_labels(export))
    saved = processed.save(out / "processed")
    page = write_report(bundle, processed, out / "report", title="Labelled network explanations (simulated players)")
    figures = make_figures(bundle, processed)
    html = (
        f"<p><b>{SIMULATED_NOTE}</b></p>"
        f"<p>Bundle: real scikit-image photos with synthetic cluster maps ({len(bundle.images)} images, "
        f"{len(bundle.layers)} layers). Game: {game['players']} simulated players, {game['answers']} answers, "
        f"{game['export_rows']} exported label rows in {game['seconds']} s. Full report: "
        f"<a href='labels/report/index.html'>labels/report/index.html</a>.</p>"
        + report_html(bundle, processed, figures, fragment=True)
    )
    files = [str(p.relative_to(ctx.out_dir)) for p in [export, *saved, page]]
    summary = {"simulated_players": True, **{k: v for k, v in game.items() if k != "errors"},
               "game_errors": len(game["errors"]), **{k: v for k, v in processed.counts.items()
                                                       if isinstance(v, int)}}
    return DemoSection(title="Crowd labels → explanations (simulated players)", html=html, files=files, summary=summary)
