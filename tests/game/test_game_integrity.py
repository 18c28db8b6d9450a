"""Integrity of the game's data: seen photos, re-imported bundles, the export's new columns, migrations."""

from __future__ import annotations

import csv
import io
import shutil

import pytest
from game_helpers import ApiPlayer, admin_headers, database_at, truth_of


def _play_all(p: ApiPlayer, bundle, campaign: str = "test", correct: bool = True) -> list[dict]:
    """Play every map the server gives ``p``; return the finished rounds (guess = the truth)."""
    done = []
    while True:
        r = p.next(campaign)
        if r.status_code == 404:
            return done
        rnd = r.json()["round"]
        cls = truth_of(bundle, rnd["image_id"]) if correct else "no such class"
        if rnd["label_only"]:
            a = p.give_up(rnd["id"], ["some shape"])
        else:
            a = p.guess(rnd["id"], cls if correct else rnd["class_names"][0], ["some shape"])
        assert a.status_code == 201, a.text
        done.append(a.json()["round"])


def test_seen_photo_skip_policy_serves_one_map_per_photo(app, game_bundle):
    from featurelens.game import store

    assert store.campaign_settings(app.state.db, "test", seen_policy="skip")["seen_policy"] == "skip"
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    rounds = _play_all(p, game_bundle)
    images = [r["image_id"] for r in rounds]
    # 4 photos x 6 maps: once a photo has been seen, none of its other maps is served
    assert len(images) == 4 and len(set(images)) == 4
    assert not any(r["label_only"] for r in rounds)
    assert all(r["guess_points"] == 100 for r in rounds)


def test_seen_photo_label_only_policy(app, game_bundle):
    from featurelens.game import store

    assert store.campaign_settings(app.state.db, "test")["seen_policy"] == "label_only"  # the default
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    rounds = []
    while (r := p.next()).status_code == 200:
        rnd = r.json()["round"]
        # a scripted player that guesses right even where it saw the photo before: no points for it
        a = p.guess(rnd["id"], truth_of(game_bundle, rnd["image_id"]), ["some shape"])
        assert a.status_code == 201, a.text
        rounds.append(a.json()["round"])
    assert len(rounds) == 24  # every map is served...
    first = rounds[:4]  # ...unseen photos first
    assert len({r["image_id"] for r in first}) == 4 and not any(r["label_only"] for r in first)
    assert all(r["label_only"] and r["guess_points"] == 0 for r in rounds[4:])
    assert all(r["guess_points"] == 100 for r in first)
    rows = store.export_rows(app.state.db, "test")
    assert [row["seen_before"] for row in rows] == [False] * 4 + [True] * 20
    # the round page of a label-only round asks for labels only
    html = p.c.get(f"/round/{rounds[5]['id']}").text
    assert "Labels saved" in html


def test_label_only_round_page_has_no_guess(app):

    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    for _ in range(4):
        rid = p.start()["id"]
        assert p.give_up(rid).status_code == 201
    rnd = p.start()
    assert rnd["label_only"]
    html = p.c.get(f"/round/{rnd['id']}").text
    assert 'data-testid="label-only"' in html and 'id="guess"' not in html and 'id="submit-labels"' in html


def test_photo_seen_in_another_campaign_while_a_round_was_open(app, game_bundle):
    """Campaign ``one`` shows the same photo as image 0 of ``test``: a round opened in ``one`` before the
    photo was seen in ``test`` is answered after it was seen; that guess earns nothing."""
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    r_one = p.start("one")
    photo_of_one = r_one["image_id"].split("_")[0]
    while True:  # play test until the shared photo has been seen there
        rnd = p.start("test")
        assert p.give_up(rnd["id"]).status_code == 201
        if rnd["image_id"].split("_")[0] == photo_of_one:
            break
    truth = truth_of(game_bundle, rnd["image_id"])
    a = p.guess(r_one["id"], truth, ["anything"])
    assert a.status_code == 201
    assert a.json()["round"]["label_only"] and a.json()["round"]["guess_points"] == 0
    from featurelens.game import store

    assert [row["seen_before"] for row in store.export_rows(app.state.db, "one")] == [True]


def test_reimporting_a_bundle_is_refused_by_content_hash(app, game_bundle, tmp_path):
    from featurelens.game import store

    copy = tmp_path / "copy"
    shutil.copytree(game_bundle, copy)  # another path, same content
    for path in (game_bundle, copy):
        with pytest.raises(store.Conflict, match="already imported as campaign 'test'"):
            store.import_bundle(app.state.db, path, "again")
    assert "again" not in [c["name"] for c in store.list_campaigns(app.state.db)]
    r = ApiPlayer(app).c.post("/api/admin/import", json={"bundle": str(copy), "campaign": "again2"},
                              headers=admin_headers())
    assert r.status_code == 409 and "already imported" in r.json()["detail"]


def test_reimport_cli_error_is_one_line(sqlite_url, game_bundle, capsys):
    from featurelens.cli.main import main

    assert main(["game", "import", str(game_bundle), "--campaign", "twice", "--database-url", sqlite_url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "already imported as campaign 'test'" in err


def test_campaign_settings_are_validated(app):
    from featurelens.game import store

    with pytest.raises(store.ValidationError, match="seen_policy"):
        store.campaign_settings(app.state.db, "test", seen_policy="sometimes")
    with pytest.raises(store.ValidationError, match="agreement_rule"):
        store.campaign_settings(app.state.db, "test", agreement_rule="everyone")
    assert store.campaign_settings(app.state.db, "test") == {"campaign": "test", "seen_policy": "label_only",
                                                             "agreement_rule": "address"}


def test_csv_seen_before_column(app, game_bundle):
    from featurelens.game import store

    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    rnd = p.start()
    assert p.guess(rnd["id"], truth_of(game_bundle, rnd["image_id"]), ["fur"]).status_code == 201
    buf = io.StringIO()
    store.write_export(store.export_rows(app.state.db, "test"), buf, "csv")
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["seen_before"] == "false" and rows[0]["correct"] == "true"


def test_0002_database_upgrades_in_place_keeping_players(tmp_path, game_bundle):
    """A database at revision 0002 (players, a session, a campaign with a photo) upgrades to head."""
    import hashlib

    from sqlalchemy import text

    from featurelens.game import store
    from featurelens.game.db import Database, migrate

    engine = database_at(tmp_path / "old.sqlite3", "0002")
    hasher = store.PasswordHasher(time_cost=1, memory_cost=8192)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO players (id, username, username_key, password_hash, created_at) "
                          "VALUES (1, 'Old Timer', 'old timer', :h, '2026-11-30 10:00:00')"),
                     {"h": hasher.hash("old password")})
        conn.execute(text("INSERT INTO campaigns (id, name, class_names_json, source, params_json, active, "
                          "created_at) VALUES (1, 'legacy', '[\"cat\"]', '', '{}', 1, '2026-11-30 10:00:00')"))
        conn.execute(text("INSERT INTO images (id, campaign_id, image_key, true_class, predicted_class, photo) "
                          "VALUES (1, 1, 'img', 'cat', 'cat', :p)"), {"p": b"jpeg bytes"})
    migrate(engine)
    db = Database(engine)
    assert store.authenticate(db, hasher, "old timer", "old password") == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT photo_hash FROM images")).scalar() == hashlib.sha256(b"jpeg bytes").hexdigest()
        assert conn.execute(text("SELECT seen_policy, agreement_rule FROM campaigns")).one() == ("label_only", "address")
    # and the upgraded database works: import a bundle, play a round
    store.import_bundle(db, game_bundle, "new")
    rnd = store.next_round(db, 1, "new", gold_rate=0.0)
    assert rnd is not None and not rnd.label_only
    engine.dispose()


FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+cmd stuff", "-2+3 sum", "@SUM(A1)", "\tTAB=1+1", "\rCR"]


def test_csv_export_neutralises_spreadsheet_formulas_jsonl_stays_verbatim(app):
    """Names and labels starting with = + - @, tab or CR get a leading ' in CSV; JSONL keeps them as typed."""
    import json

    from featurelens.game import store

    texts = []
    for i, payload in enumerate(FORMULAS):
        p = ApiPlayer(app, name=f"=cmd|x{i}" if i == 0 else None)
        assert p.signup().status_code == 201
        rnd = p.start()
        label = ("x" + payload[:2] + "y") if payload[0] in "\t\r" else payload[:48]  # labels collapse spaces
        r = p.give_up(rnd["id"], [label])
        assert r.status_code == 201, r.text
        texts.append((p.name, r.json()["round"]["labels"][0]["text"]))
    rows = store.export_rows(app.state.db, "test")
    buf = io.StringIO()
    store.write_export(rows, buf, "csv")
    out = list(csv.DictReader(io.StringIO(buf.getvalue())))
    for row, (name, label) in zip(out, texts):
        assert row["player"] == ("'" + name if name.startswith("=") else name)
        if label.startswith(store.FORMULA_PREFIXES):
            assert row["label"] == "'" + label
        else:
            assert row["label"] == label
    assert sum(r["label"].startswith("'") for r in out) == 4
    for cell in [c for r in out for c in r.values()]:
        assert not cell.startswith(store.FORMULA_PREFIXES), cell
    buf = io.StringIO()
    store.write_export(rows, buf, "jsonl")
    recs = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [(r["player"], r["label"]) for r in recs] == texts  # verbatim


def test_csv_cell_reference():
    from featurelens.game.store import csv_cell

    for text in ["=1+1", "+1", "-1", "@a", "\tx", "\rx"]:
        assert csv_cell(text) == "'" + text
    for text in ["a=1", " =1", "1-2", "fur", "", "'quoted"]:
        assert csv_cell(text) == text
    assert csv_cell(True) == "true" and csv_cell(False) == "false" and csv_cell(3) == 3 and csv_cell(None) == ""
