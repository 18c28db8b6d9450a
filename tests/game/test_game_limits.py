"""HTTP limits and robustness of the game (issue 14): body caps, auth before the body, 422 without the input,
4xx instead of 500 for odd paths and JSON, HEAD, and the live server's header/body/idle timeouts.

Abuse traffic goes to 127.0.0.1 only and is bounded in size and time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from game_helpers import ADMIN, ApiPlayer, admin_headers, free_port, stop_server, wait_ready
from starlette.testclient import TestClient


def Limits(**kw):
    from featurelens.game.limits import Limits as _Limits

    return _Limits(**kw)


@pytest.fixture
def client(make_app, sqlite_url):
    return TestClient(make_app(sqlite_url), raise_server_exceptions=False)


# -- body cap, enforced while reading ---------------------------------------------------------
def test_body_over_the_cap_is_413_without_parsing(client):
    csrf = client.get("/api/csrf").json()["csrf_token"]
    body = json.dumps({"username": "a" * 100_000, "password": "secret password"})
    r = client.post("/api/signup", content=body, headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert len(r.content) < 200 and r.headers["connection"] == "close"


def test_chunked_body_over_the_cap_is_413(client):
    csrf = client.get("/api/csrf").json()["csrf_token"]

    def chunks():  # no Content-Length: the cap is counted as the bytes arrive
        yield b'{"username": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'", "password": "secret password"}'

    r = client.post("/api/signup", content=chunks(), headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_admin_import_has_its_own_configurable_cap(make_app, sqlite_url, tmp_path):
    c = TestClient(make_app(sqlite_url, limits=Limits(max_body=1000, max_import_body=50_000)),
                   raise_server_exceptions=False)
    pad = {"bundle": str(tmp_path / "missing"), "campaign": "x", "gold": {"c": ["a" * 20_000]}}
    assert c.post("/api/admin/import", json=pad, headers=admin_headers()).status_code not in (413, 500)
    pad["gold"] = {"c": ["a" * 60_000]}
    assert c.post("/api/admin/import", json=pad, headers=admin_headers()).status_code == 413
    csrf = c.get("/api/csrf").json()["csrf_token"]
    r = c.post("/api/signup", json={"username": "u" * 900, "password": "p" * 200}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 413  # the ordinary cap (1000 bytes) for every other route


def _raw_asgi(app, method: str, path: str, headers: list[tuple[bytes, bytes]], body_parts: list[bytes],
              delay: float = 0.0) -> tuple[int, bytes, int]:
    """Call the ASGI app directly; return (status, body, how many times it called receive())."""
    calls = 0
    sent: list[dict] = []

    async def receive():
        nonlocal calls
        calls += 1
        if calls <= len(body_parts):
            if delay:
                await asyncio.sleep(delay)
            return {"type": "http.request", "body": body_parts[calls - 1], "more_body": calls < len(body_parts)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "state": {}}
    # in a thread of its own: a browser test's sync Playwright may keep an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, asyncio.wait_for(app(scope, receive, send), 20)).result()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), calls


def test_anonymous_answer_is_refused_before_its_body_is_read(make_app, sqlite_url):
    app = make_app(sqlite_url)
    body = json.dumps({"guessed_class": "cat", "labels": ["x"] * 10}).encode()
    status, _b, calls = _raw_asgi(app, "POST", "/api/rounds/1/guess",
                                  [(b"content-type", b"application/json"),
                                   (b"content-length", str(len(body)).encode())], [body])
    assert status == 401 and calls == 0
    status, _b, calls = _raw_asgi(app, "POST", "/api/admin/import",
                                  [(b"content-type", b"application/json"),
                                   (b"content-length", str(len(body)).encode())], [body])
    assert status == 401 and calls == 0


def test_slow_body_is_answered_408(make_app, sqlite_url):
    app = make_app(sqlite_url, limits=Limits(body_timeout=0.5))
    parts = [b'{"username": "slow', b'poke", "password": "secret password"}']
    t0 = time.monotonic()
    status, _b, _calls = _raw_asgi(app, "POST", "/api/login",
                                   [(b"content-type", b"application/json"), (b"content-length", b"55")],
                                   parts, delay=2.0)
    assert status == 408 and time.monotonic() - t0 < 5


# -- 422 never echoes the input ---------------------------------------------------------------
def test_422_does_not_echo_a_too_long_password(client):
    csrf = client.get("/api/csrf").json()["csrf_token"]
    secret = "Tr0ub4dor&3-" * 100  # 1,200 characters: above the field's limit
    r = client.post("/api/login", json={"username": "someone", "password": secret}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422
    assert "Tr0ub4dor" not in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "password"]


def test_422_does_not_echo_submitted_labels(make_app, sqlite_url):
    p = ApiPlayer(make_app(sqlite_url))
    assert p.signup().status_code == 201
    rnd = p.start()
    labels = [f"label-number-{i}" for i in range(30)]  # above max_length=20
    r = p.guess(rnd["id"], "tabby cat", labels)
    assert r.status_code == 422 and "label-number" not in r.text


# -- 4xx, not 500 -------------------------------------------------------------------------------
def test_nan_in_json_is_422_not_500(client):
    csrf = client.get("/api/csrf").json()["csrf_token"]
    r = client.post("/api/login", content=b'{"username": NaN, "password": "secret password"}',
                    headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert r.status_code == 422


def test_odd_image_names_are_404_not_500(make_app, sqlite_url):
    p = ApiPlayer(make_app(sqlite_url))
    p.c = TestClient(p.c.app, cookies=p.c.cookies, raise_server_exceptions=False)
    assert p.signup().status_code == 201
    rid = p.start()["id"]
    assert p.c.get(f"/round/{rid}/image/r0.jpg").status_code == 200
    assert p.c.get(f"/round/{rid}/image/r%C2%B2.jpg").status_code == 404
    assert p.c.get(f"/round/{rid}/image/r{'9' * 5000}.jpg").status_code == 404
    assert p.c.get(f"/round/{rid}/image/r\u0663.jpg").status_code == 404  # Arabic-Indic 3: int() would take it


def test_huge_round_id_is_404_not_500(app):
    p = ApiPlayer(app)
    p.c = TestClient(app, raise_server_exceptions=False)
    p.csrf = p.c.get("/api/csrf").json()["csrf_token"]
    assert p.signup().status_code == 201
    assert p.c.get("/api/rounds/99999999999999999999").status_code == 404
    assert p.c.get("/api/rounds/-5").status_code == 404
    assert p.reveal(10**30).status_code == 404
    assert p.c.get("/round/99999999999999999999").status_code == 404


def test_head_is_answered_like_get_without_a_body(client):
    for path in ("/", "/healthz", "/leaderboard"):
        r = client.head(path)
        assert r.status_code == 200, path
        assert r.content == b""
        assert r.headers["x-frame-options"] == "DENY"


# -- the live server: header timeout, idle cap, big bodies ------------------------------------------
@pytest.fixture(scope="module")
def limited_server(template_db, tmp_path_factory):
    """One server for the module (a worker start costs seconds here), with small limits."""
    import shutil

    tmp_path = tmp_path_factory.mktemp("limited")
    sqlite_url = str(tmp_path / "game.sqlite3")
    shutil.copy(template_db, sqlite_url)
    port = free_port()
    env = {**os.environ, "FEATURELENS_ADMIN_TOKEN": ADMIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurelens.cli.main", "game", "serve", "--database-url", sqlite_url,
         "--port", str(port), "--rate-limit", "off", "--header-timeout", "1.5", "--body-timeout", "1.5",
         "--keep-alive-timeout", "1", "--max-idle-connections", "20"],
        env=env, stdout=open(tmp_path / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, port)
        yield port
    finally:
        stop_server(proc)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes ``sock`` (EOF or reset) within ``seconds``; data is read and dropped."""
    sock.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def _healthz_ms(port: int) -> float:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    return 1000 * (time.monotonic() - t0)


@pytest.mark.slow
def test_slow_header_connection_is_closed(limited_server):
    with socket.create_connection(("127.0.0.1", limited_server), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for _ in range(12):  # one header byte every 0.4 s: the head would take forever
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            if _closed_within(s, 0.4):
                closed = True
                break
        assert closed


@pytest.mark.slow
def test_slow_body_connection_is_closed(limited_server):
    with socket.create_connection(("127.0.0.1", limited_server), timeout=5) as s:
        s.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 60\r\n\r\n{\"user")
        s.settimeout(4)
        reply = s.recv(200)
        assert reply.startswith(b"HTTP/1.1 408")
        assert _closed_within(s, 2)


@pytest.mark.slow
def test_idle_sockets_are_capped_and_closed(limited_server):
    socks = [socket.create_connection(("127.0.0.1", limited_server), timeout=5) for _ in range(200)]
    try:
        time.sleep(0.5)
        assert _healthz_ms(limited_server) < 2000  # still serving
        open_now = 0
        for s in socks:
            if not _closed_within(s, 0.01):
                open_now += 1
        assert open_now <= 21  # the cap (20 idle per worker): the oldest were closed at once
        time.sleep(1.5)
        assert all(_closed_within(s, 0.2) for s in socks)  # then the header timeout closes the rest
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_anonymous_big_body_is_refused_at_once(limited_server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited_server), timeout=5) as s:
        s.sendall(b"POST /api/rounds/1/guess HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 52428800\r\n\r\n[")
        sent, refused = 0, False
        try:
            while sent < 5 * 2**20:  # at most 5 MB of the announced 50 MB
                s.sendall(b'"aaaaaaa",' * 6553)
                sent += 65530
        except OSError:
            refused = True
        s.settimeout(3)
        try:
            reply = s.recv(200)
        except OSError:
            reply = b""
        assert reply.startswith(b"HTTP/1.1 413") or refused
    assert time.monotonic() - t0 < 10
    assert _healthz_ms(limited_server) < 2000
