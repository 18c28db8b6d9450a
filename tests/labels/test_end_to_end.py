"""The whole path: bundle → game (simulated players through the real HTTP API) → export → labels process →
report. The bundle holds real photos with synthetic cluster maps (the network pipeline's bundle has the same
schema)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("featurelens.game.simulate")


@pytest.mark.slow
def test_bundle_game_export_labels_report(tmp_path, sbert):
    from featurelens.cli.main import main
    from featurelens.labels.demo import play_campaign
    from featurelens.labels.explain import global_explanations
    from featurelens.labels.io import read_labels
    from featurelens.labels.pipeline import process_labels
    from featurelens.labels.synthetic import DEFAULT_PHOTOS, PLAN, build_photo_bundle

    photos = [p for p in DEFAULT_PHOTOS if p.image_id in ("cat_a", "cat_b", "mug_a", "rocket_a")]
    bundle = build_photo_bundle(tmp_path / "bundle", photos=photos)
    export, game = play_campaign(tmp_path / "bundle", tmp_path / "game", players=4, seed=3)
    assert not game["errors"]
    assert game["answers"] == 4 * game["maps"] == 4 * 36  # every player saw every map once
    assert game["export_rows"] == game["labels_submitted"] > 0  # nothing lost between game and export

    records = read_labels(export)  # the game's real export format
    processed = process_labels(bundle, records, embedder=sbert)
    # export v2: every labelled map carries the game statistics of all its rounds, as the players answered
    labelled = {r.cluster_id for r in records}
    assert set(processed.map_stats) == labelled
    for cid, st in processed.map_stats.items():
        t = game["truth"][cid]
        assert st.source == "export"
        assert (st.rounds, st.correct, st.wrong, st.gave_up, st.unknown) == (
            t["rounds"], t["correct"], t["wrong"], t["gave_up"], t["unknown"])
        assert st.mean_q == pytest.approx(t["mean_q"], abs=1e-3)
    assert sum(t["gave_up"] for t in game["truth"].values()) > 0
    # players see each photo after a round, so its other maps come back as label-only rounds (unknown)
    assert sum(t["unknown"] for t in game["truth"].values()) > 0
    assert processed.counts["rows"] == len(records)
    assert processed.counts["unknown_image"] == processed.counts["unknown_cluster"] == 0
    # every planted cluster is explained by its planted concept (wrong guessers' labels are grouped under the
    # guessed class; the cluster's best label is still the planted one)
    for im in bundle.images:
        plan = PLAN.get(im.true_class)
        for c in im.clusters:
            concept = plan[c.layer][c.index] if plan else None
            if concept is not None:
                assert processed.scores_for(c.id)[0].representative == concept, c.id
    # globally, the planted concepts lead each layer. The game cannot mark the "noise" clusters by wrong
    # guesses (a player's accuracy is per player), so their consistent "background"-like labels may rank too.
    glob = global_explanations(bundle, processed)
    for cls in ("tabby cat", "coffee mug"):
        by_layer = {g.layer: g for g in glob[cls]}
        for layer, planted in PLAN[cls].items():
            want = {c for c in planted if c is not None}
            assert want <= {lab.representative for lab in by_layer[layer].labels[: len(planted)]}, (
                cls,
                layer,
            )
    assert processed.counts["classes_without_labels"] == []  # the rocket got (noise) labels from the game

    out = tmp_path / "proc"
    assert (
        main(["labels", "process", "--bundle", str(bundle.root), "--labels", str(export), "--out", str(out)])
        == 0
    )
    assert (
        main(["report", "--bundle", str(bundle.root), "--labels", str(out), "--out", str(tmp_path / "rep")])
        == 0
    )
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<b>whisker</b>" in html and "<b>handle</b>" in html
