"""Accounts: password change, log out everywhere, admin-issued one-time reset links, look-alike names."""

from __future__ import annotations

import time

import pytest
from game_helpers import ApiPlayer, database_at


def _change(p: ApiPlayer, current: str, new: str):
    return p.c.post("/api/password", json={"current_password": current, "new_password": new}, headers=p.h())


def test_password_change_ends_other_sessions(app):
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    other = ApiPlayer(app, name=p.name, password=p.password)
    assert other.login().status_code == 200
    r = _change(p, "not my password", "brand new password")
    assert r.status_code == 422 and "current password" in r.json()["detail"]
    assert _change(p, p.password, "short").status_code == 422
    assert _change(p, p.password, "brand new password").status_code == 200
    assert p.c.get("/api/me").status_code == 200  # this session stays
    assert other.c.get("/api/me").status_code == 401  # the other one ended
    assert ApiPlayer(app, name=p.name, password=p.password).login().status_code == 401
    assert ApiPlayer(app, name=p.name, password="brand new password").login().status_code == 200


def test_password_change_form(app):
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    page = p.c.get("/account")
    assert page.status_code == 200 and 'id="logout-all"' in page.text
    r = p.c.post("/account/password", data={"current_password": p.password, "new_password": "another password 1",
                                            "csrf_token": p.csrf})
    assert r.status_code == 200 and "Your password was changed" in r.text
    bad = p.c.post("/account/password", data={"current_password": "wrong wrong", "new_password": "x" * 10,
                                              "csrf_token": p.csrf})
    assert bad.status_code == 422 and "current password" in bad.text
    no_csrf = p.c.post("/account/password", data={"current_password": "another password 1",
                                                  "new_password": "third password"})
    assert no_csrf.status_code == 403


def test_log_out_everywhere(app):
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    devices = [ApiPlayer(app, name=p.name, password=p.password) for _ in range(2)]
    for d in devices:
        assert d.login().status_code == 200
    r = devices[0].c.post("/api/logout-all", headers=devices[0].h())
    assert r.status_code == 200 and r.json()["sessions_ended"] == 3
    for c in [p, *devices]:
        assert c.c.get("/api/me").status_code == 401
    assert ApiPlayer(app, name=p.name, password=p.password).login().status_code == 200  # the password still works
    # the form: logs out this and every other session
    q = ApiPlayer(app, name=p.name, password=p.password)
    assert q.login().status_code == 200
    r = q.c.post("/account/logout-all", data={"csrf_token": q.csrf}, follow_redirects=False)
    assert r.status_code == 303 and q.c.get("/api/me").status_code == 401


def _reset_link(capsys, db_url: str, name: str, *extra: str) -> tuple[int, str, str]:
    """``featurelens game reset-password`` (in-process): exit code, stdout, stderr."""
    from featurelens.cli.main import main

    capsys.readouterr()
    code = main(["game", "reset-password", name, "--database-url", db_url, "--base-url", "https://game.example/",
                 *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_admin_reset_link_is_one_time(make_app, db_url, capsys):
    app = make_app(db_url)
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    code, out, err = _reset_link(capsys, db_url, p.name.upper())  # names are case-insensitive
    assert code == 0, err
    link = out.strip()
    assert link.startswith("https://game.example/reset/") and len(out.splitlines()) == 1
    token = link.rsplit("/", 1)[1]
    anon = ApiPlayer(app)
    page = anon.c.get(f"/reset/{token}")
    assert page.status_code == 200 and 'name="new_password"' in page.text
    r = anon.c.post(f"/reset/{token}", data={"new_password": "reset password 1", "csrf_token": anon.csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert p.c.get("/api/me").status_code == 401  # old sessions end
    assert ApiPlayer(app, name=p.name, password="reset password 1").login().status_code == 200
    # once only
    again = anon.c.post("/api/reset", json={"token": token, "new_password": "second try pw"}, headers=anon.h())
    assert again.status_code == 404 and "not valid" in again.json()["detail"]
    assert anon.c.get(f"/reset/{token}").status_code == 404
    assert ApiPlayer(app, name=p.name, password="second try pw").login().status_code == 401


def test_reset_link_expires_and_a_new_one_voids_the_old(make_app, sqlite_url):
    from featurelens.game import store

    app = make_app(sqlite_url)
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    old, _ = store.issue_password_reset(app.state.db, p.name)
    short, _ = store.issue_password_reset(app.state.db, p.name, hours=0.5 / 3600)
    assert not store.reset_token_valid(app.state.db, old)  # voided by the newer link
    time.sleep(0.6)
    r = p.c.post("/api/reset", json={"token": short, "new_password": "too late pw"}, headers=p.h())
    assert r.status_code == 404
    fresh, _ = store.issue_password_reset(app.state.db, p.name)
    r = p.c.post("/api/reset", json={"token": fresh, "new_password": "x"}, headers=p.h())
    assert r.status_code == 422 and store.reset_token_valid(app.state.db, fresh)  # a bad password keeps it


def test_reset_password_cli_unknown_name(sqlite_url, capsys):
    code, _, err = _reset_link(capsys, sqlite_url, "nobody-here")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no player named" in err


# -- user names ----------------------------------------------------------------------------
def _signup(app, name: str):
    return ApiPlayer(app, name=name).signup()


def test_look_alike_and_blank_names_are_refused(app):
    assert _signup(app, "alice").status_code == 201
    assert _signup(app, "ape").status_code == 201
    assert _signup(app, "bob").status_code == 201
    cases = {
        "\u0430lice": (422, "mix letters of different scripts"),  # Cyrillic а + Latin
        "\uff41\uff4c\uff49\uff43\uff45": (409, "looks too much like"),  # full-width: NFKC "alice"
        "ALICE": (409, "taken"),
        "\u0430\u0440\u0435": (409, "looks too much like"),  # all-Cyrillic "аре" looks like "ape"
        "b0b": (409, "looks too much like"),  # zero for o
        "\u3164\u3164\u3164": (422, "blank-looking"),  # Hangul filler
        "\u2800\u2800\u2800": (422, "blank-looking"),  # Braille blank
        "ab\u3164c": (422, "blank-looking"),
        "a\u200bbc": (422, "invisible"),  # zero-width space
        "a\u202ebc": (422, "invisible"),  # right-to-left override
        "---": (422, "at least one letter or digit"),
        "ab": (422, "3 to 32"),
    }
    for name, (code, text) in cases.items():
        r = _signup(app, name)
        assert r.status_code == code and text in r.json()["detail"], (name, r.text)


def test_names_are_nfkc_normalised_and_other_scripts_work(app):
    from featurelens.game import store

    r = _signup(app, "\uff22\uff2f\uff22\uff19x")  # full-width "BOB9x"
    assert r.status_code == 201 and r.json()["player"] == "BOB9x"
    for name in ["Дмитрий", "山田たろう", "Ελένη", "José María", "Ünïcødé"]:
        assert _signup(app, name).status_code == 201, name
    # log-in accepts the name in any width or case
    p = ApiPlayer(app, name="\uff42\uff4f\uff42\uff19\uff58")
    assert p.login().status_code == 200
    with app.state.db.read() as s:
        from sqlalchemy import select

        from featurelens.game.models import Player
        assert s.scalar(select(Player.username).where(Player.username_key == "bob9x")) == "BOB9x"
    assert store.validate_username("  Ada   Lovelace ") == "Ada Lovelace"


def test_skeleton_reference():
    """The skeleton against a few pairs from Unicode's confusables table, spelled out."""
    from featurelens.game.names import username_skeleton

    same = [("alice", "\u0430lice"), ("paypal", "\u0440\u0430ypal"), ("bob", "b0b"), ("rn", "m"),
            ("Alice", "\uff21\uff4c\uff49\uff43\uff45"), ("scope", "\u0455\u0441\u043e\u0440\u0435")]
    for a, b in same:
        assert username_skeleton(a) == username_skeleton(b), (a, b)
    for a, b in [("alice", "alicia"), ("bob", "rob"), ("anna", "anne")]:
        assert username_skeleton(a) != username_skeleton(b)


def test_0003_database_with_look_alike_players_upgrades_keeping_both(tmp_path):
    from sqlalchemy import text

    from featurelens.game import store
    from featurelens.game.db import Database, migrate

    engine = database_at(tmp_path / "old.sqlite3", "0003_integrity")
    hasher = store.PasswordHasher(time_cost=1, memory_cost=8192)
    with engine.begin() as conn:
        for i, name in enumerate(["alice", "\u0430lice"], 1):  # the old rules let a look-alike in
            conn.execute(text("INSERT INTO players (id, username, username_key, password_hash, created_at) "
                              "VALUES (:i, :n, :k, :h, '2026-12-01 00:00:00')"),
                         {"i": i, "n": name, "k": name.casefold(), "h": hasher.hash(f"password {i}")})
    migrate(engine)
    db = Database(engine)
    assert store.authenticate(db, hasher, "alice", "password 1") == 1
    assert store.authenticate(db, hasher, "\u0430lice", "password 2") == 2
    with engine.connect() as conn:
        skel = conn.execute(text("SELECT id, username_skeleton FROM players ORDER BY id")).all()
    assert skel == [(1, "alice"), (2, None)]
    with pytest.raises(store.Conflict):
        store.create_player(db, hasher, "ALİCE".replace("İ", "I"), "password 3")
    engine.dispose()
