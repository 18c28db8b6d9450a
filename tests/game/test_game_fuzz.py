"""Property-based fuzzing (Hypothesis) of the game's JSON API and image routes on the ASGI app:
whatever the body, path or id, the answer is never a 500 and the app keeps serving."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from game_helpers import ApiPlayer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
FIELDS = st.sampled_from(["username", "password", "campaign", "to_step", "guessed_class", "labels",
                          "idempotency_key"])
BODY = JSON | st.dictionaries(FIELDS, JSON, max_size=4)  # objects with the real field names, odd values
ROUTES = st.sampled_from(["/api/signup", "/api/login", "/api/rounds", "/api/rounds/{id}/reveal",
                          "/api/rounds/{id}/guess", "/api/rounds/{id}/give-up", "/api/logout"])
IDS = (st.integers(min_value=-(10**25), max_value=10**25).map(str) | st.text(max_size=30)
       | st.sampled_from(["1", "0", "-1", "1e3", "0x10", "99999999999999999999", "١"]))
KINDS = st.text(max_size=20) | st.from_regex(r"r[0-9]{0,40}", fullmatch=True) | st.sampled_from(
    ["r0", "r5", "r6", "photo", "overlay", "r²", "r" + "9" * 5000, "..", "r-1"])

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def fuzz_player(make_app, sqlite_url):
    """A logged-in player with one running round, on a TestClient that returns 500s instead of raising."""
    p = ApiPlayer(make_app(sqlite_url))
    p.c = TestClient(p.c.app, cookies=p.c.cookies, raise_server_exceptions=False)
    assert p.signup().status_code == 201
    p.round_id = p.start()["id"]
    return p


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@FUZZ
@given(route=ROUTES, rid=IDS, body=BODY, raw=st.booleans(), garbage=st.binary(max_size=60))
def test_json_api_never_answers_500(fuzz_player, route, rid, body, raw, garbage):
    p = fuzz_player
    path = route.replace("{id}", _q(rid) or "1")
    content = garbage if raw else json.dumps(body).encode()  # json.dumps writes NaN/Infinity as Python does
    r = p.c.post(path, content=content, headers=p.h(**{"Content-Type": "application/json",
                                                        "Idempotency-Key": "fuzz-key-0001"}))
    assert r.status_code < 500, (path, content[:200], r.text[:300])
    if r.status_code == 422:
        text = r.text
        for leaf in (body if isinstance(body, dict) else {}).values():
            if isinstance(leaf, str) and len(leaf) > 12:
                assert leaf not in text  # the 422 reply never echoes the input


@FUZZ
@given(rid=IDS, kind=KINDS, own=st.booleans())
def test_image_and_round_routes_never_answer_500(fuzz_player, rid, kind, own):
    p = fuzz_player
    target = str(p.round_id) if own else (_q(rid) or "1")
    for path in (f"/round/{target}/image/{_q(kind)}.jpg", f"/api/rounds/{target}", f"/round/{target}"):
        r = p.c.get(path)
        assert r.status_code < 500, (path, r.text[:300])


def test_the_app_still_serves_after_fuzzing(fuzz_player):
    p = fuzz_player
    for bad in (b'{"username": NaN}', b'{"to_step": 1e400}', b"[" * 5000, b'{"labels": [' + b'"x",' * 30 + b'"y"]}'):
        for path in ("/api/login", f"/api/rounds/{p.round_id}/reveal", f"/api/rounds/{p.round_id}/guess"):
            r = p.c.post(path, content=bad, headers=p.h(**{"Content-Type": "application/json",
                                                            "Idempotency-Key": "fuzz-key-0002"}))
            assert r.status_code < 500, (path, bad[:50], r.text[:200])
    assert p.c.get("/healthz").status_code == 200
    r = p.c.get(f"/api/rounds/{p.round_id}")
    assert r.status_code == 200 and r.json()["round"]["status"] == "open"
