"""API tests of the game on SQLite and PostgreSQL: accounts, rounds, points, pages, admin, export."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from game_helpers import ADMIN, ApiPlayer, admin_headers, truth_of

from featurelens.game.masks import REVEAL_Q
from featurelens.game.scoring import AGREE_POINTS, GUESS_POINTS
from featurelens.game.store import EXPORT_COLUMNS


# -- accounts -----------------------------------------------------------------------
def test_signup_login_logout(app):
    p = ApiPlayer(app)
    r = p.signup()
    assert r.status_code == 201 and r.json()["player"] == p.name
    assert p.c.get("/api/me").json()["player"] == p.name
    # the same name again (any case) is refused with a clear message
    q = ApiPlayer(app, name=p.name.upper())
    r = q.signup()
    assert r.status_code == 409 and "taken" in r.json()["detail"]
    # wrong password, then the right one
    q = ApiPlayer(app, name=p.name, password="not the password")
    assert q.login().status_code == 401
    q.password = p.password
    assert q.login().status_code == 200 and q.c.get("/api/me").status_code == 200
    # logout ends this session only, and the old cookie no longer works
    token = p.c.cookies.get("fl_session")
    assert p.c.post("/api/logout", headers=p.h()).status_code == 200
    assert p.c.get("/api/me").status_code == 401
    p.c.cookies.set("fl_session", token)
    assert p.c.get("/api/me").status_code == 401
    assert q.c.get("/api/me").status_code == 200


def test_signup_validation_messages(app):
    assert "3 to 32" in ApiPlayer(app, name="ab").signup().json()["detail"]
    assert "8 to 256" in ApiPlayer(app, password="short").signup().json()["detail"]


def test_html_signup_login_logout_forms(app):
    from starlette.testclient import TestClient

    c = TestClient(app)
    page = c.get("/signup")
    assert page.status_code == 200
    csrf = c.cookies.get("fl_csrf")
    assert csrf and f'value="{csrf}"' in page.text
    name = f"form{uuid.uuid4().hex[:8]}"
    r = c.post("/signup", data={"username": name, "password": "long enough pw", "csrf_token": csrf},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/play"
    r = c.get("/play", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/round/")
    rnd = c.get(r.headers["location"])
    assert "Show more" in rnd.text and name in rnd.text
    me = c.get("/api/me").json()
    r = c.post("/logout", data={"csrf_token": me["csrf_token"]}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/play", follow_redirects=False).headers["location"] == "/login"
    # log in again through the form; a wrong password re-renders the form with a message
    csrf = c.cookies.get("fl_csrf")
    bad = c.post("/login", data={"username": name, "password": "wrong password", "csrf_token": csrf})
    assert bad.status_code == 401 and "wrong user name or password" in bad.text
    ok = c.post("/login", data={"username": name, "password": "long enough pw", "csrf_token": csrf},
                follow_redirects=False)
    assert ok.status_code == 303


# -- a round ----------------------------------------------------------------------------
def test_play_round_show_more_and_guess(app, player, game_bundle):
    rnd = player.start()
    assert rnd["reveal_step"] == 0 and rnd["q_percent"] == REVEAL_Q[0] and rnd["status"] == "open"
    assert "true_class" not in rnd or rnd["true_class"] is None  # never told before answering
    # asking again returns the same open round
    assert player.start()["id"] == rnd["id"]
    img = player.c.get(rnd["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    # the next steps and the full photo are hidden until revealed / finished
    assert player.c.get(f"/round/{rnd['id']}/image/r1.jpg").status_code == 404
    assert player.c.get(f"/round/{rnd['id']}/image/photo.jpg").status_code == 404
    # show more twice; a retried "to_step" changes nothing
    r1 = player.reveal(rnd["id"], 1).json()["round"]
    assert r1["reveal_step"] == 1 and r1["q_percent"] == REVEAL_Q[1]
    assert player.reveal(rnd["id"], 1).json()["round"]["reveal_step"] == 1
    r2 = player.reveal(rnd["id"]).json()["round"]
    assert r2["reveal_step"] == 2
    assert player.c.get(f"/round/{rnd['id']}/image/r2.jpg").status_code == 200
    truth = truth_of(game_bundle, rnd["image_id"])
    r = player.guess(rnd["id"], truth, ["pointed ears", "striped fur"])
    assert r.status_code == 201, r.text
    data = r.json()
    fin = data["round"]
    assert fin["correct"] is True and fin["true_class"] == truth and fin["guess_points"] == GUESS_POINTS[2]
    assert [x["text"] for x in fin["labels"]] == ["pointed ears", "striped fur"]
    assert data["points"] == GUESS_POINTS[2]
    assert player.c.get(f"/round/{rnd['id']}/image/photo.jpg").status_code == 200
    assert player.c.get(f"/round/{rnd['id']}/image/overlay.jpg").status_code == 200
    # a finished round cannot be revealed further or answered with another key
    assert player.reveal(rnd["id"]).status_code == 409
    assert player.guess(rnd["id"], truth, ["x ray"]).status_code == 409
    # the result page
    page = player.c.get(f"/round/{rnd['id']}")
    assert "Correct!" in page.text and str(GUESS_POINTS[2]) in page.text


def test_reveal_is_capped_at_the_last_step(player):
    rnd = player.start()
    for _ in range(len(REVEAL_Q) + 2):
        last = player.reveal(rnd["id"]).json()["round"]
    assert last["reveal_step"] == len(REVEAL_Q) - 1 and last["q_percent"] == REVEAL_Q[-1]


def test_wrong_guess_and_unknown_class(player, game_bundle):
    rnd = player.start()
    truth = truth_of(game_bundle, rnd["image_id"])
    r = player.guess(rnd["id"], "no such class", ["fur"])
    assert r.status_code == 422 and "class list" in r.json()["detail"]
    wrong = next(c for c in rnd["class_names"] if c != truth)
    fin = player.guess(rnd["id"], wrong.upper(), ["fur"]).json()["round"]  # case-insensitive class match
    assert fin["correct"] is False and fin["guess_points"] == 0 and fin["guessed_class"] == wrong


def test_give_up(player):
    rnd = player.start()
    player.reveal(rnd["id"])
    r = player.give_up(rnd["id"], ["blue sky"])
    assert r.status_code == 201
    fin = r.json()["round"]
    assert fin["status"] == "gave_up" and fin["guessed_class"] is None and fin["correct"] is False
    assert fin["guess_points"] == 0 and [x["text"] for x in fin["labels"]] == ["blue sky"]
    # giving up without labels is allowed too
    rnd2 = player.start()
    assert rnd2["id"] != rnd["id"]
    assert player.give_up(rnd2["id"]).status_code == 201


def test_label_validation_messages(player):
    rnd = player.start()
    cls = rnd["class_names"][0]

    def msg(labels):
        r = player.guess(rnd["id"], cls, labels)
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    assert "at least one" in msg([])
    assert "at least one" in msg(["   "])
    assert "48 or fewer" in msg(["x" * 49])
    assert "at least one letter" in msg(["1234 !!"])
    assert "at most 5" in msg([f"word{i}" for i in range(6)])
    assert "say the same thing" in msg(["Pointed ears", "pointed ear"])
    assert "control characters" in msg(["bad\x00label"])
    # nothing was stored by the refused attempts: the round is still open
    assert player.c.get(f"/api/rounds/{rnd['id']}").json()["round"]["status"] == "open"
    assert player.guess(rnd["id"], cls, ["  fine   label "]).json()["round"]["labels"][0]["text"] == "fine label"


def test_label_agreement_points_for_both_players(make_app, db_url):
    app = make_app(db_url)
    # three players at three addresses (agreement between accounts behind one address does not count)
    a, b, c = (ApiPlayer(app, client=(f"192.0.2.{i}", 5000)) for i in (1, 2, 3))
    for p in (a, b, c):
        p.signup()
    ra = a.start("one")
    a.give_up(ra["id"], ["Pointed ears", "grass"])
    rb = b.start("one")
    assert rb["cluster_id"] == ra["cluster_id"]
    fin = b.give_up(rb["id"], ["ear pointed", "sky"]).json()["round"]
    assert [x["points"] for x in fin["labels"]] == [AGREE_POINTS, 0]  # agrees with a (lemmas, any order)
    la = a.c.get(f"/api/rounds/{ra['id']}").json()["round"]["labels"]
    assert [x["points"] for x in la] == [AGREE_POINTS, 0]  # a earns when b confirms
    rc = c.start("one")
    fin = c.give_up(rc["id"], ["pointed ear"]).json()["round"]
    assert fin["labels"][0]["points"] == 2 * AGREE_POINTS  # two other players agree
    la = a.c.get(f"/api/rounds/{ra['id']}").json()["round"]["labels"]
    assert la[0]["points"] == 2 * AGREE_POINTS
    board = {r["player"]: r["score"] for r in a.c.get("/api/leaderboard").json()["leaderboard"]}
    assert board[a.name] == board[c.name] == 2 * AGREE_POINTS and board[b.name] == 2 * AGREE_POINTS


# -- assignment ---------------------------------------------------------------------------
def test_never_the_same_map_twice_then_done(player):
    seen = []
    while True:
        r = player.next()
        if r.status_code == 404:
            assert "no maps left" in r.json()["detail"]
            break
        rnd = r.json()["round"]
        seen.append(rnd["cluster_id"])
        player.give_up(rnd["id"])
    assert len(seen) == 24 == len(set(seen))
    assert "You have seen every map" in player.c.get("/play?campaign=test").text


def test_fewest_labels_first(make_app, db_url):
    app = make_app(db_url)
    a = ApiPlayer(app)
    a.signup()
    done = set()
    for _ in range(23):  # label all maps but one
        rnd = a.start()
        a.give_up(rnd["id"], ["word"])
        done.add(rnd["cluster_id"])
    b = ApiPlayer(app)
    b.signup()
    first = b.start()
    assert first["cluster_id"] not in done  # the only map without labels comes first
    b.give_up(first["id"], ["word"])
    # now every map has one label; an open round counts as an expected label, so two players
    # starting at the same time get different maps
    c, d = ApiPlayer(app), ApiPlayer(app)
    c.signup()
    d.signup()
    assert c.start()["cluster_id"] != d.start()["cluster_id"]


def test_gold_maps_measure_reliability(make_app, sqlite_url, fresh_bundle):
    from featurelens.game import store
    from featurelens.network.bundle import load_bundle

    app = make_app(sqlite_url, gold_rate=1.0)
    db = app.state.db
    cid = load_bundle(fresh_bundle).images[0].clusters[0].id
    store.import_bundle(db, fresh_bundle, "golden", gold={cid: ["pointed ears"]})
    p = ApiPlayer(app)
    p.signup()
    rnd = p.start("golden")
    assert rnd["cluster_id"] == cid and "is_gold" not in rnd  # served first, but not revealed as gold
    p.give_up(rnd["id"], ["pointed ear"])
    rnd = p.start("golden")
    assert rnd["cluster_id"] != cid
    stats = p.c.get("/api/stats").json()
    assert stats["reliability"] == 1.0 and stats["gold_rounds"] == 1
    prog = app.state.db and store.progress(db, "golden")
    assert prog["gold_maps"] == 1 and prog["reliability"][p.name] == {"gold_rounds": 1, "hits": 1}


def test_rate_limit_on_answers(make_app, sqlite_url):
    app = make_app(sqlite_url, rate_limit=(2, 60.0))
    p = ApiPlayer(app)
    p.signup()
    for _ in range(2):
        assert p.give_up(p.start()["id"]).status_code == 201
    rnd = p.start()
    r = p.give_up(rnd["id"])
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "at most 2" in r.json()["detail"]
    other = ApiPlayer(app)  # limits are per player
    other.signup()
    assert other.give_up(other.start()["id"]).status_code == 201


# -- pages ---------------------------------------------------------------------------------
def test_leaderboard_history_stats_and_instructions(app, game_bundle):
    a, b = ApiPlayer(app), ApiPlayer(app)
    a.signup()
    b.signup()
    ra = a.start()
    a.guess(ra["id"], truth_of(game_bundle, ra["image_id"]), ["fur"])
    rb = b.start()
    b.give_up(rb["id"], ["sky"])
    board = a.c.get("/api/leaderboard").json()["leaderboard"]
    assert [r["player"] for r in board][:2] == [a.name, b.name]
    assert board[0]["score"] == GUESS_POINTS[0] and board[0]["rank"] == 1
    html = a.c.get("/leaderboard").text
    assert html.index(a.name) < html.index(b.name)
    hist = a.c.get("/api/history").json()["history"]
    assert len(hist) == 1 and hist[0]["cluster_id"] == ra["cluster_id"] and hist[0]["labels"][0]["text"] == "fur"
    stats = a.c.get("/api/stats").json()
    assert stats["rounds"] == 1 and stats["correct"] == 1 and stats["accuracy"] == 1.0 and stats["rank"] == 1
    page = a.c.get("/history").text
    assert ra["cluster_id"] in page and "fur" in page
    inst = a.c.get("/instructions")
    assert inst.status_code == 200 and "Show more" in inst.text and "give up" in inst.text
    assert all(f"{q:g} %" in inst.text for q in REVEAL_Q)
    assert a.c.get("/").status_code == 200


# -- admin ----------------------------------------------------------------------------------
def test_admin_import_progress_export(make_app, db_url, fresh_bundle, player):
    app = make_app(db_url)
    from starlette.testclient import TestClient

    admin = TestClient(app)
    r = admin.post("/api/admin/import", json={"bundle": str(fresh_bundle), "campaign": "fresh"},
                   headers=admin_headers())
    assert r.status_code == 201 and r.json()["maps"] == 24 and r.json()["images"] == 4
    assert admin.post("/api/admin/import", json={"bundle": str(fresh_bundle), "campaign": "fresh"},
                      headers=admin_headers()).status_code == 409
    bad = admin.post("/api/admin/import", json={"bundle": "/nonexistent", "campaign": "x"}, headers=admin_headers())
    assert bad.status_code == 400 and "not an explanation bundle" in bad.json()["detail"]
    names = [c["name"] for c in admin.get("/api/admin/campaigns", headers=admin_headers()).json()["campaigns"]]
    assert "fresh" in names

    p = ApiPlayer(app)
    p.signup()
    plays = []
    for i in range(3):
        rnd = p.start("fresh")
        if i == 0:
            p.reveal(rnd["id"], 3)
            fin = p.guess(rnd["id"], truth_of(fresh_bundle, rnd["image_id"]), ["fur", "ear"]).json()["round"]
        else:
            fin = p.give_up(rnd["id"], [f"thing {i}"]).json()["round"]
        plays.append(fin)
    prog = admin.get("/api/admin/campaigns/fresh/progress", headers=admin_headers()).json()
    assert prog["maps"] == 24 and prog["labels"] == 4 and prog["maps_labelled"] == 3
    assert prog["rounds"] == {"guessed": 1, "gave_up": 2} and prog["players"] == 1

    text = admin.get("/api/admin/campaigns/fresh/export?format=csv", headers=admin_headers()).text
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert len(rows) == 1 + 4
    first = dict(zip(rows[0], rows[1]))
    assert first["player"] == p.name and first["cluster_id"] == plays[0]["cluster_id"]
    assert first["reveal_step"] == "3" and first["q_percent"] == str(REVEAL_Q[3]) and first["correct"] == "true"
    assert first["label"] == "fur" and first["created_at"].endswith("Z")
    gave_up = [dict(zip(rows[0], r)) for r in rows[3:]]
    assert all(g["guessed_class"] == "" and g["correct"] == "false" for g in gave_up)

    lines = admin.get("/api/admin/campaigns/fresh/export?format=jsonl", headers=admin_headers()).text.splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 4 and list(recs[0]) == list(EXPORT_COLUMNS)
    assert recs[0]["correct"] is True and recs[0]["reveal_step"] == 3 and isinstance(recs[0]["cluster_index"], int)
    image, layer, index = recs[0]["cluster_id"].rsplit("/", 2)
    assert (image, layer, int(index)) == (recs[0]["image_id"], recs[0]["layer"], recs[0]["cluster_index"])


def test_export_true_class_falls_back_to_predicted(make_app, sqlite_url, game_bundle):
    from featurelens.game import store
    from featurelens.network.bundle import load_bundle

    bundle = load_bundle(game_bundle)
    nulls = {im.id: im.predicted_class for im in bundle.images if im.true_class is None}
    assert nulls, "the fixture bundle must contain an image with true_class = null"
    app = make_app(sqlite_url)
    p = ApiPlayer(app)
    p.signup()
    for _ in range(24):
        p.give_up(p.start()["id"], ["thing"])
    rows = store.export_rows(app.state.db, "test")
    assert len(rows) == 24
    for row in rows:
        expected = nulls.get(row["image_id"]) or bundle.image(row["image_id"]).true_class
        assert row["true_class"] == expected


def test_admin_token_is_required(make_app, sqlite_url, game_bundle):
    from starlette.testclient import TestClient

    c = TestClient(make_app(sqlite_url))
    routes = [("GET", "/api/admin/campaigns", None), ("GET", "/api/admin/campaigns/test/progress", None),
              ("GET", "/api/admin/campaigns/test/export?format=csv", None),
              ("POST", "/api/admin/import", {"bundle": str(game_bundle), "campaign": "sneaky"})]
    for method, url, body in routes:
        for headers in ({}, admin_headers("wrong"), {"X-Admin-Token": "wrong"}, {"Authorization": ADMIN}):
            r = c.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (url, headers)
            assert "admin token" in r.json()["detail"]
    assert c.get("/api/admin/campaigns", headers={"X-Admin-Token": ADMIN}).status_code == 200
    disabled = TestClient(make_app(sqlite_url, admin_token=None))
    assert disabled.get("/api/admin/campaigns", headers=admin_headers()).status_code == 403


# -- database --------------------------------------------------------------------------------
def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from featurelens.game.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()  # type: ignore[return-value]


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from featurelens.game.db import make_engine, migrate
    from featurelens.game.models import Base

    engine = make_engine(db_url)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == _head_revision()
        diffs = [d for d in compare_metadata(ctx, Base.metadata) if d[0] not in ("remove_table",)]
    engine.dispose()
    assert diffs == []


def test_a_version_0001_database_upgrades_in_place(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from featurelens.game.db import MIGRATIONS, make_engine, migrate

    engine = make_engine(str(tmp_path / "old.sqlite3"))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:  # a database as the first release left it
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO players (username, username_key, password_hash, created_at) "
                          "VALUES ('Ann', 'ann', 'x', '2026-11-22 00:00:00')"))
        conn.commit()
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head_revision()
        assert conn.execute(text("SELECT username FROM players")).scalars().all() == ["Ann"]
        assert conn.execute(text("SELECT count(*) FROM login_failures")).scalar() == 0
    engine.dispose()


def test_sqlite_is_in_wal_mode(sqlite_url, make_app):
    from sqlalchemy import text

    app = make_app(sqlite_url)
    with app.state.db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


@pytest.mark.parametrize("url", ["sqlite://", "mysql://x/y"])
def test_bad_database_urls_are_clear_errors(url):
    from featurelens.game.db import GameError, make_engine

    with pytest.raises(GameError):
        make_engine(url)
