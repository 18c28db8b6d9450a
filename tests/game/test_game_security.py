"""Security: escaping, CSRF, cookies, isolation between players, admin token, SQL-injection-shaped input."""

from __future__ import annotations

import uuid

from game_helpers import ApiPlayer, admin_headers
from starlette.testclient import TestClient

XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "\"><svg onload=alert(1)>",
    "';alert(String.fromCharCode(88))//",
]
SQLI = ["Robert'); DROP TABLE labels;--", "' OR '1'='1", "1; DELETE FROM players WHERE 1=1 --"]


def _escaped(html: str, payload: str) -> bool:
    from markupsafe import escape

    return str(escape(payload)) in html


def test_xss_in_usernames_and_labels_renders_as_text(app):
    for i, payload in enumerate(XSS[:3]):
        name = f"{payload[:24]}{i}"
        p = ApiPlayer(app, name=name)
        assert p.signup().status_code == 201
        rnd = p.start()
        r = p.give_up(rnd["id"], [f"{payload}"[:48]])
        assert r.status_code == 201, r.text
        label = r.json()["round"]["labels"][0]["text"]
        assert label == payload[:48]  # stored verbatim
        for url in ("/leaderboard", "/history", f"/round/{rnd['id']}", "/"):
            html = p.c.get(url).text
            assert "<script>alert" not in html and "<img src=x" not in html and "<svg onload" not in html, url
        assert _escaped(p.c.get("/leaderboard").text, name)
        assert _escaped(p.c.get(f"/round/{rnd['id']}").text, label)
        assert _escaped(p.c.get("/history").text, label)


def test_content_security_policy_forbids_inline_script(app):
    r = TestClient(app).get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text  # no inline scripts at all: all JS is /static/game.js


def test_session_cookie_flags_and_password_hash(app):
    from sqlalchemy import select

    from featurelens.game.models import Player, Session

    p = ApiPlayer(app)
    r = p.signup()
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("fl_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    csrf_cookie = next(v for k, v in TestClient(app).get("/signup").headers.multi_items() if k == "set-cookie")
    assert csrf_cookie.startswith("fl_csrf=") and "HttpOnly" in csrf_cookie and "SameSite=strict" in csrf_cookie
    with app.state.db.read() as s:
        stored = s.scalar(select(Player.password_hash).where(Player.username == p.name))
        tokens = s.scalars(select(Session.token_hash)).all()
    assert stored.startswith("$argon2id$") and p.password not in stored
    assert p.c.cookies.get("fl_session") not in tokens  # only the SHA-256 of the token is stored


def test_secure_cookie_flag_behind_https(make_app, sqlite_url):
    app = make_app(sqlite_url, secure_cookies=True)
    c = TestClient(app, base_url="https://testserver")
    csrf = c.get("/api/csrf").json()["csrf_token"]
    r = c.post("/api/signup", json={"username": "secure1", "password": "long password"},
               headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("fl_session="))
    assert "Secure" in cookie


def test_csrf_is_required(app):
    p = ApiPlayer(app)
    # sign-up without the double-submit token
    r = p.c.post("/api/signup", json={"username": p.name, "password": p.password})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert p.signup().status_code == 201
    rnd = p.start()
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        assert p.c.post("/api/rounds", json={}, headers=headers).status_code == 403
        assert p.c.post(f"/api/rounds/{rnd['id']}/reveal", json={}, headers=headers).status_code == 403
        r = p.c.post(f"/api/rounds/{rnd['id']}/guess", json={"guessed_class": "x", "labels": ["a"]},
                     headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 403
    # HTML forms: missing or wrong hidden field
    r = p.c.post(f"/round/{rnd['id']}/give-up", data={"idempotency_key": uuid.uuid4().hex})
    assert r.status_code == 403 and "CSRF" in r.text
    r = p.c.post(f"/round/{rnd['id']}/reveal", data={"csrf_token": "forged"})
    assert r.status_code == 403
    assert p.c.post("/logout", data={}).status_code == 403
    # nothing happened
    assert p.c.get(f"/api/rounds/{rnd['id']}").json()["round"]["status"] == "open"
    assert p.c.get(f"/api/rounds/{rnd['id']}").json()["round"]["reveal_step"] == 0
    # a token of another session does not work either
    q = ApiPlayer(app)
    q.signup()
    assert p.c.post("/api/rounds", json={}, headers={"X-CSRF-Token": q.csrf}).status_code == 403


def test_one_player_cannot_act_for_or_read_another(app):
    a, b = ApiPlayer(app), ApiPlayer(app)
    a.signup()
    b.signup()
    ra = a.start()
    a.reveal(ra["id"])
    for kind in ("r0", "r1"):  # now in the worker's image cache: the cache must not skip the round check
        assert a.c.get(f"/round/{ra['id']}/image/{kind}.jpg").status_code == 200
    # b sees a's round as missing, cannot reveal, answer, or fetch its images
    assert b.c.get(f"/api/rounds/{ra['id']}").status_code == 404
    assert b.reveal(ra["id"]).status_code == 404
    assert b.guess(ra["id"], ra["class_names"][0], ["mine now"]).status_code == 404
    assert b.give_up(ra["id"], ["mine now"]).status_code == 404
    for kind in ("r0", "r1", "photo", "overlay"):
        assert b.c.get(f"/round/{ra['id']}/image/{kind}.jpg").status_code == 404
    assert b.c.get(f"/round/{ra['id']}").status_code == 404
    # HTML form with b's own valid CSRF token
    r = b.c.post(f"/round/{ra['id']}/give-up", data={"csrf_token": b.csrf, "idempotency_key": uuid.uuid4().hex,
                                                     "labels": ["mine now"]})
    assert r.status_code == 404
    # a's round is untouched; a finishes it; b still cannot read a's labels or history
    assert a.c.get(f"/api/rounds/{ra['id']}").json()["round"]["status"] == "open"
    a.give_up(ra["id"], ["private words"])
    assert b.c.get(f"/api/rounds/{ra['id']}").status_code == 404
    assert b.c.get("/api/history").json()["history"] == []
    assert "private words" not in b.c.get("/history").text
    assert "private words" not in b.c.get("/leaderboard").text
    # without a session: nothing
    anon = TestClient(app)
    assert anon.get(f"/api/rounds/{ra['id']}").status_code == 401
    assert anon.get("/api/history").status_code == 401
    assert anon.get(f"/round/{ra['id']}", follow_redirects=False).headers["location"] == "/login"


def test_running_round_hides_ids_that_could_name_the_class(app):
    p = ApiPlayer(app)
    p.signup()
    rnd = p.start(oracle=False)
    assert rnd["cluster_id"] is None and rnd["image_id"] is None and rnd.get("true_class") is None
    assert p.c.get(f"/api/rounds/{rnd['id']}").json()["round"]["image_id"] is None
    assert p.reveal(rnd["id"]).json()["round"]["cluster_id"] is None
    html = p.c.get(f"/round/{rnd['id']}").text
    oracle = p.start(oracle=True)  # a simulation with the admin token sees them
    assert oracle["id"] == rnd["id"] and oracle["image_id"] and oracle["image_id"] not in html
    fin = p.give_up(rnd["id"]).json()["round"]
    assert fin["cluster_id"] == oracle["cluster_id"]  # revealed once the round is over


def test_admin_routes_refuse_player_sessions(app):
    p = ApiPlayer(app)
    p.signup()
    assert p.c.get("/api/admin/campaigns/test/export", headers=p.h()).status_code == 401
    assert p.c.get("/api/admin/campaigns/test/progress", headers=p.h()).status_code == 401


def test_sql_injection_shaped_input_is_stored_verbatim(app):
    from featurelens.game import store

    names = []
    for i, payload in enumerate(SQLI):
        name = f"{payload[:28]}{i}"
        p = ApiPlayer(app, name=name)
        assert p.signup().status_code == 201
        assert p.login().status_code == 200
        rnd = p.start()
        assert p.give_up(rnd["id"], [payload[:48]]).status_code == 201
        names.append(name)
    rows = store.export_rows(app.state.db, "test")
    assert sorted(r["label"] for r in rows) == sorted(x[:48] for x in SQLI)
    assert sorted(r["player"] for r in rows) == sorted(names)
    # the tables are intact and the injection-shaped campaign name is just "not found"
    board = ApiPlayer(app).c.get("/api/leaderboard").json()["leaderboard"]
    assert len(board) == len(SQLI)
    r = TestClient(app).get("/api/admin/campaigns/' OR 1=1 --/progress", headers=admin_headers())
    assert r.status_code == 404


def test_failed_logins_are_throttled_per_name_across_workers(make_app, db_url):
    import time

    # two apps on one database stand for two worker processes of `game serve --workers 2`
    worker_a = make_app(db_url, login_limit=(3, 300.0))
    worker_b = make_app(db_url, login_limit=(3, 300.0), run_migrations=False)
    victim = ApiPlayer(worker_a)
    assert victim.signup().status_code == 201
    attempts = [ApiPlayer(w, name=n, password="guessed wrong")
                for w, n in ((worker_a, victim.name), (worker_b, victim.name.upper()), (worker_a, victim.name))]
    assert [a.login().status_code for a in attempts] == [401, 401, 401]
    # the fourth try is refused on the OTHER worker, even with the right password, and says when to retry
    right = ApiPlayer(worker_b, name=victim.name, password=victim.password)
    r = right.login()
    assert r.status_code == 429 and "too many failed log-ins" in r.json()["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 300
    # the HTML form is throttled too
    c = TestClient(worker_a)
    page = c.get("/login").text
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    r = c.post("/login", data={"username": victim.name, "password": victim.password, "csrf_token": csrf})
    assert r.status_code == 429 and "too many failed log-ins" in r.text
    # other names are not affected
    other = ApiPlayer(worker_b)
    assert other.signup().status_code == 201 and other.login().status_code == 200
    # failures leave the window: a short window lets the right password in again
    quick = make_app(db_url, login_limit=(1, 0.5), run_migrations=False)
    assert ApiPlayer(quick, name=other.name, password="nope nope nope").login().status_code == 401
    assert ApiPlayer(quick, name=other.name, password=other.password).login().status_code == 429
    time.sleep(0.6)
    assert ApiPlayer(quick, name=other.name, password=other.password).login().status_code == 200


def test_old_login_failures_of_any_name_are_pruned(make_app, sqlite_url):
    import time

    from sqlalchemy import func, select

    from featurelens.game.models import LoginFailure

    app = make_app(sqlite_url, login_limit=(5, 0.3))
    for i in range(4):
        assert ApiPlayer(app, name=f"nobody{i}", password="whatever pw").login().status_code == 401
    time.sleep(0.4)
    assert ApiPlayer(app, name="someone-else", password="whatever pw").login().status_code == 401
    with app.state.db.read() as s:
        assert s.scalar(select(func.count()).select_from(LoginFailure)) == 1  # only the fresh failure
