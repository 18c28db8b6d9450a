"""Simulated players drive the real HTTP API; their acknowledged answers are exactly the export."""

from __future__ import annotations

import collections

from game_helpers import ADMIN
from starlette.testclient import TestClient

from featurelens.game import store
from featurelens.game.simulate import PlayerProfile, simulate


def test_simulated_players_with_configured_labels_accuracy_and_reveals(make_app, db_url, game_bundle):
    app = make_app(db_url)
    profiles = [
        PlayerProfile("sim-accurate", accuracy=1.0, reveals=2,
                      labels={"head": ["fur", "ears"], "blocks.12": ["texture"]}),
        PlayerProfile("sim-guesser", accuracy=0.0, reveals=(0, 1), labels=lambda rnd: [f"map {rnd['cluster_index']}"]),
        PlayerProfile("sim-quitter", give_up_rate=1.0, reveals=5, labels={"*": ["no idea"]}),
    ]
    res = simulate(lambda: TestClient(app), profiles, rounds=4, truth=game_bundle, admin_token=ADMIN,
                   campaign="test")
    assert res.errors == []
    by = collections.defaultdict(list)
    for s in res.submissions:
        by[s.player].append(s)
    assert {k: len(v) for k, v in by.items()} == {"sim-accurate": 4, "sim-guesser": 4, "sim-quitter": 4}
    for s in by["sim-accurate"]:
        assert s.correct and s.reveal_step == 2
        assert s.labels == (["fur", "ears"] if s.layer == "head" else ["texture"])
    for s in by["sim-guesser"]:
        assert not s.correct and s.reveal_step <= 1 and s.labels == [f"map {s.cluster_id.rsplit('/', 1)[1]}"]
    for s in by["sim-quitter"]:
        assert s.guessed_class == "" and not s.correct and s.reveal_step == 5 and s.labels == ["no idea"]
    rows = store.export_rows(app.state.db, "test")
    acked = collections.Counter((s.player, s.cluster_id, lab) for s in res.submissions for lab in s.labels)
    assert collections.Counter((r["player"], r["cluster_id"], r["label"]) for r in rows) == acked
    assert len({(s.player, s.cluster_id) for s in res.submissions}) == len(res.submissions)


def test_without_the_admin_token_players_guess_blind(make_app, sqlite_url, game_bundle):
    app = make_app(sqlite_url)
    # "whiskers" is not one of the simulator's default words, so only a "head" map can carry it
    res = simulate(lambda: TestClient(app), [PlayerProfile("blind", accuracy=1.0, labels={"head": ["whiskers"]})],
                   rounds=3, truth=game_bundle, campaign="test")
    assert res.errors == [] and len(res.submissions) == 3
    for s in res.submissions:  # labels by layer still work; a default word is used otherwise
        assert (s.labels == ["whiskers"]) == (s.layer == "head")
