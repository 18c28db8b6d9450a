"""Against Sybils and lock-outs: per-address sign-up and log-in throttles, trusted proxies, independent
agreement (distinct addresses or gold-checked players), verified labels, backoff per (name, address)."""

from __future__ import annotations

import random

import pytest
from game_helpers import ApiPlayer, truth_of

from featurelens.game.scoring import AGREE_CAP, AGREE_POINTS

WORDS = ["stripes", "fur", "eye", "ear", "nose"]


def _sybils_and_honest(app, bundle, sybil_addresses):
    honest = [ApiPlayer(app, client=(f"192.0.2.{10 + i}", 4000)) for i in range(2)]
    sybils = [ApiPlayer(app, client=(addr, 4000 + i)) for i, addr in enumerate(sybil_addresses)]
    for p in honest + sybils:
        assert p.signup().status_code == 201
    for i, p in enumerate(honest):  # two honest players: three rounds each, right after 3 reveals
        for k in range(3):
            rnd = p.start()
            p.reveal(rnd["id"], 3)
            assert p.guess(rnd["id"], truth_of(bundle, rnd["image_id"]), [f"honest {i} {k}"]).status_code == 201
    for p in sybils:  # the same five words on every map, never a right guess
        while (r := p.next()).status_code == 200:
            rnd = r.json()["round"]
            # spoofed X-Forwarded-For: ignored, the server trusts no proxy
            a = p.c.post(f"/api/rounds/{rnd['id']}/give-up", json={"labels": WORDS},
                         headers=p.h(**{"Idempotency-Key": f"k{rnd['id']}-{p.name}",
                                        "X-Forwarded-For": f"198.18.0.{random.randint(1, 250)}"}))
            assert a.status_code == 201, a.text
    return honest, sybils


def _check(app, honest, sybils):
    from featurelens.game import store

    board = store.leaderboard(app.state.db, limit=10)
    top = [r["player"] for r in board[:2]]
    assert sorted(top) == sorted(p.name for p in honest)  # the Sybils are not at the top...
    scores = {r["player"]: r["score"] for r in board}
    assert all(scores[p.name] == 0 for p in sybils)  # ...they farmed nothing
    rows = store.export_rows(app.state.db, "test")
    mine = [r for r in rows if r["player"] in {p.name for p in sybils}]
    assert len(mine) == len(sybils) * 24 * len(WORDS)  # every acknowledged label exported once...
    assert all(r["verified"] is False for r in mine)  # ...and marked unverified


def test_three_sybils_behind_one_address_do_not_reach_the_top(app, game_bundle):
    honest, sybils = _sybils_and_honest(app, game_bundle, ["203.0.113.5"] * 3)
    _check(app, honest, sybils)


def test_three_sybils_without_gold_checks_get_nothing_under_the_gold_rule(make_app, sqlite_url, game_bundle):
    from featurelens.game import store

    app = make_app(sqlite_url)
    store.campaign_settings(app.state.db, "test", agreement_rule="gold")
    honest, sybils = _sybils_and_honest(app, game_bundle, ["203.0.113.5", "203.0.113.6", "203.0.113.7"])
    _check(app, honest, sybils)


def test_gold_rule_counts_agreement_from_players_who_passed_gold(make_app, sqlite_url, fresh_bundle):
    from featurelens.game import store
    from featurelens.network.bundle import load_bundle

    app = make_app(sqlite_url, gold_rate=1.0)
    ids = [c.id for _, c in load_bundle(fresh_bundle).clusters()]
    store.import_bundle(app.state.db, fresh_bundle, "g", gold={ids[0]: ["pointed ears"], ids[1]: ["fur"]},
                        agreement_rule="gold")
    trusted, novice = ApiPlayer(app, client=("192.0.2.1", 1)), ApiPlayer(app, client=("192.0.2.2", 1))
    for p in (trusted, novice):
        assert p.signup().status_code == 201
    for _ in range(2):  # the two gold maps come first, both labelled right
        rnd = trusted.start("g")
        assert rnd["cluster_id"] in ids[:2]
        gold = {ids[0]: ["pointed ear"], ids[1]: ["fur"]}[rnd["cluster_id"]]
        assert trusted.give_up(rnd["id"], gold).status_code == 201
    assert trusted.c.get("/api/stats").json()["reliability"] == 1.0
    # the novice labels a map first (it had two gold maps too, labelled wrong)...
    for _ in range(2):
        assert novice.give_up(novice.start("g")["id"], ["nonsense"]).status_code == 201
    rn = novice.start("g")
    assert novice.give_up(rn["id"], ["round thing"]).status_code == 201
    # ...the trusted player then gets the same map and agrees: the novice's label counts now
    with app.state.db.read() as s:
        from sqlalchemy import select

        from featurelens.game.models import Round
        target = s.scalar(select(Round.cluster_pk).where(Round.id == rn["id"]))
    while True:
        rt = trusted.start("g")
        with app.state.db.read() as s:
            pk = s.scalar(select(Round.cluster_pk).where(Round.id == rt["id"]))
        if pk == target:
            break
        assert trusted.give_up(rt["id"], ["other"]).status_code == 201
    fin = trusted.give_up(rt["id"], ["round things"]).json()["round"]
    assert fin["labels"][0]["points"] == 0  # the novice did not pass gold checks: no points for agreeing
    la = novice.c.get(f"/api/rounds/{rn['id']}").json()["round"]["labels"]
    assert la[0]["points"] == AGREE_POINTS  # confirmed by a gold-checked player
    rows = {(r["player"], r["label"]): r["verified"] for r in store.export_rows(app.state.db, "g")}
    assert rows[(novice.name, "round thing")] is True and rows[(trusted.name, "round things")] is False


def test_agreement_points_reference_distinct_addresses(make_app, sqlite_url):
    """Reference: under the address rule a label's points end up as 10 x min(5, the number of distinct
    addresses, other than its own, among the other players' agreeing labels on that map), whatever the
    order; verified = that number > 0. Checked against a slow re-implementation on random play."""
    from sqlalchemy import select

    from featurelens.game.models import Label, Round
    from featurelens.game.scoring import LemmaMatcher

    rng = random.Random(7)
    app = make_app(sqlite_url)
    vocab = ["ear", "fur", "eye", "sky", "grass", "wheel"]
    for i in range(20):
        p = ApiPlayer(app, client=(f"10.0.0.{rng.randint(1, 10)}", 1000 + i))
        assert p.signup().status_code == 201
        rnd = p.start("one")
        words = rng.sample(vocab, rng.randint(1, 3)) + ([f"unique{i} thing"] if i % 5 == 0 else [])
        assert p.give_up(rnd["id"], words).status_code == 201
    with app.state.db.read() as s:
        labels = s.execute(select(Label.id, Label.player_id, Label.text, Label.points, Label.verified,
                                  Round.client_key).join(Round, Round.id == Label.round_id)
                           .order_by(Label.id)).all()
    m = LemmaMatcher()
    for lab in labels:
        addrs = {o.client_key for o in labels if o.id != lab.id and o.player_id != lab.player_id
                 and m.agree(o.text, lab.text) and o.client_key != lab.client_key}
        assert lab.points == AGREE_POINTS * min(AGREE_CAP, len(addrs)), lab
        assert lab.verified is (len(addrs) > 0)
    points = {lab.points for lab in labels}
    assert 0 in points and AGREE_POINTS * AGREE_CAP in points and len(points) >= 3  # all cases occur


# -- throttles ------------------------------------------------------------------------------
def test_signups_are_throttled_per_client_address(make_app, db_url):
    app = make_app(db_url, signup_limit=(3, 3600.0))
    codes = [ApiPlayer(app, client=("203.0.113.9", 1000 + i)).signup().status_code for i in range(4)]
    assert codes == [201, 201, 201, 429]
    r = ApiPlayer(app, client=("203.0.113.9", 2000)).signup()
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many new accounts" in r.text
    assert ApiPlayer(app, client=("198.51.100.4", 1)).signup().status_code == 201  # another address
    # the HTML form too
    from starlette.testclient import TestClient

    c = TestClient(app, client=("203.0.113.9", 3000))
    c.get("/signup")
    csrf = c.cookies.get("fl_csrf")
    r = c.post("/signup", data={"username": "formuser", "password": "long enough pw", "csrf_token": csrf})
    assert r.status_code == 429 and "too many new accounts" in r.text


def test_x_forwarded_for_only_behind_a_trusted_proxy(make_app, sqlite_url):
    app = make_app(sqlite_url, signup_limit=(1, 3600.0), trusted_proxies=["127.0.0.1", "10.1.0.0/16"])

    def signup(peer: str, xff: str | None):
        p = ApiPlayer(app, client=(peer, 1))
        extra = {"X-Forwarded-For": xff} if xff else {}
        return p.c.post("/api/signup", json={"username": p.name, "password": p.password}, headers=p.h(**extra))

    # behind the proxy: each forwarded client has its own allowance
    assert signup("127.0.0.1", "198.51.100.1").status_code == 201
    assert signup("127.0.0.1", "198.51.100.2").status_code == 201
    assert signup("127.0.0.1", "198.51.100.1").status_code == 429
    # a forged left-most entry does not help: the right-most untrusted hop is the client
    assert signup("127.0.0.1", "6.6.6.6, 198.51.100.2").status_code == 429
    assert signup("127.0.0.1", "198.51.100.3, 10.1.2.3").status_code == 201  # chained trusted proxies
    # not from a trusted proxy: the header is ignored, the peer address counts
    assert signup("203.0.113.1", "198.51.100.7").status_code == 201
    assert signup("203.0.113.1", "198.51.100.8").status_code == 429


def test_failed_logins_back_off_per_name_and_address_not_locking_the_owner_out(make_app, db_url):
    app = make_app(db_url, login_limit=(3, 300.0))
    owner = ApiPlayer(app, client=("198.51.100.20", 1))
    assert owner.signup().status_code == 201
    attacker = ApiPlayer(app, name=owner.name, password="wrong password", client=("203.0.113.66", 1))
    codes = [attacker.login().status_code for _ in range(8)]
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429 and 401 not in codes[4:]
    # the attacker's address is throttled even with the right password...
    right_from_attacker = ApiPlayer(app, name=owner.name, password=owner.password, client=("203.0.113.66", 2))
    r = right_from_attacker.login()
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # ...but the owner, from their own address, gets in with the correct password
    again = ApiPlayer(app, name=owner.name, password=owner.password, client=("198.51.100.20", 2))
    assert again.login().status_code == 200


def test_login_backoff_grows_and_expires(make_app, sqlite_url):
    import time

    from featurelens.game import store

    app = make_app(sqlite_url, login_limit=(2, 2.0))
    db, addr = app.state.db, "203.0.113.77"
    assert store.login_retry_after(db, "victim", (2, 2.0), client_addr=addr) is None
    for _ in range(2):
        store.record_login_failure(db, "victim", 2.0, client_addr=addr)
    first = store.login_retry_after(db, "victim", (2, 2.0), client_addr=addr)
    assert first is not None and first <= 1.0  # 2^(2-2) = 1 s after the last failure
    store.record_login_failure(db, "victim", 2.0, client_addr=addr)
    second = store.login_retry_after(db, "victim", (2, 2.0), client_addr=addr)
    assert second is not None and 1.0 < second <= 2.0  # 2^(3-2) = 2 s
    assert store.login_retry_after(db, "victim", (2, 2.0), client_addr="198.51.100.1") is None
    time.sleep(2.1)
    assert store.login_retry_after(db, "victim", (2, 2.0), client_addr=addr) is None  # failures expired


def test_password_spraying_from_one_address_is_throttled(make_app, sqlite_url):
    app = make_app(sqlite_url, login_address_limit=(5, 300.0))
    codes = [ApiPlayer(app, name=f"nobody{i}", password="guess guess", client=("203.0.113.50", i)).login()
             .status_code for i in range(7)]
    assert codes == [401] * 5 + [429] * 2
    assert ApiPlayer(app, name="nobody9", password="guess guess", client=("203.0.113.51", 1)).login() \
        .status_code == 401


@pytest.mark.parametrize("bad", ["not-an-ip", "10.0.0.0/33"])
def test_bad_trusted_proxy_is_a_clear_error(make_app, sqlite_url, bad):
    from featurelens.game.db import GameError

    with pytest.raises(GameError, match="trusted proxy"):
        make_app(sqlite_url, trusted_proxies=[bad])


def test_serve_refuses_a_bad_trusted_proxy_in_one_line(sqlite_url, capsys):
    from featurelens.cli.main import main

    assert main(["game", "serve", "--database-url", sqlite_url, "--trusted-proxy", "proxy.example"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "trusted proxy" in err
