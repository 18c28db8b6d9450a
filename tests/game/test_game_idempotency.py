"""Idempotent answers: retries never duplicate, concurrent duplicates collapse, crashes lose nothing committed."""

from __future__ import annotations

import signal
import threading
import uuid

import pytest
from game_helpers import ApiPlayer, free_port, start_server, stop_server, wait_ready


def _label_rows(app, campaign="test"):
    from featurelens.game import store

    return store.export_rows(app.state.db, campaign)


def test_same_key_twice_is_one_submission(app):
    p = ApiPlayer(app)
    p.signup()
    rnd = p.start()
    key = uuid.uuid4().hex
    r1 = p.guess(rnd["id"], rnd["class_names"][0], ["fur", "whiskers"], key=key)
    r2 = p.guess(rnd["id"], rnd["class_names"][0], ["fur", "whiskers"], key=key)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["replayed"] is False and r2.json()["replayed"] is True
    assert r1.json()["round"] == r2.json()["round"] and r1.json()["points"] == r2.json()["points"]
    assert len(_label_rows(app)) == 2
    assert p.c.get("/api/stats").json()["rounds"] == 1
    # another key on the finished round is a conflict, not a second answer
    assert p.guess(rnd["id"], rnd["class_names"][0], ["fur"]).status_code == 409
    assert len(_label_rows(app)) == 2


def test_key_reused_for_another_round_is_refused(app):
    p = ApiPlayer(app)
    p.signup()
    key = uuid.uuid4().hex
    first = p.start()
    assert p.give_up(first["id"], ["one"], key=key).status_code == 201
    second = p.start()
    r = p.give_up(second["id"], ["two"], key=key)
    assert r.status_code == 409 and "already used" in r.json()["detail"]
    assert p.c.get(f"/api/rounds/{second['id']}").json()["round"]["status"] == "open"
    assert [row["label"] for row in _label_rows(app)] == ["one"]


def test_missing_or_short_key_is_refused(app):
    p = ApiPlayer(app)
    p.signup()
    rnd = p.start()
    r = p.c.post(f"/api/rounds/{rnd['id']}/give-up", json={"labels": ["x ray"]}, headers=p.h())
    assert r.status_code == 422 and "idempotency key" in r.json()["detail"]
    assert p.give_up(rnd["id"], ["x ray"], key="short").status_code == 422


def test_concurrent_duplicates_collapse_to_one(app):
    from starlette.testclient import TestClient

    p = ApiPlayer(app)
    p.signup()
    rnd = p.start()
    key = uuid.uuid4().hex
    codes: list[int] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        c = TestClient(app)
        c.cookies.update(p.c.cookies)
        barrier.wait()
        r = c.post(f"/api/rounds/{rnd['id']}/guess", json={"guessed_class": rnd["class_names"][1],
                                                          "labels": ["shared label"]},
                   headers=p.h(**{"Idempotency-Key": key}))
        codes.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 5 + [201]
    assert [r["label"] for r in _label_rows(app)] == ["shared label"]


def test_html_form_resubmission_is_idempotent(app):
    p = ApiPlayer(app)
    p.signup()
    rnd = p.start()
    page = p.c.get(f"/round/{rnd['id']}").text
    key = page.split('name="idempotency_key" value="')[1].split('"')[0]
    form = {"csrf_token": p.csrf, "idempotency_key": key, "guessed_class": rnd["class_names"][0],
            "labels": ["round eyes", "", ""]}
    for _ in range(3):  # the browser re-posts the same form (back button, flaky network)
        r = p.c.post(f"/round/{rnd['id']}/guess", data=form, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/round/{rnd['id']}"
    assert [r["label"] for r in _label_rows(app)] == ["round eyes"]


@pytest.mark.slow
def test_committed_answers_survive_sigkill(sqlite_url, tmp_path):
    """Answer, SIGKILL the server (no shutdown), restart it: the acknowledged answer is there, and the
    retried request with the same key is a replay."""
    import os

    import httpx

    port = free_port()
    proc = start_server(sqlite_url, port, log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, port)
        c = httpx.Client(base_url=base, headers={"Connection": "close"})
        csrf = c.get("/api/csrf").json()["csrf_token"]
        r = c.post("/api/signup", json={"username": "survivor", "password": "long password"},
                   headers={"X-CSRF-Token": csrf})
        csrf = r.json()["csrf_token"]
        rnd = c.post("/api/rounds", json={"campaign": "test"}, headers={"X-CSRF-Token": csrf}).json()["round"]
        key = uuid.uuid4().hex
        body = {"guessed_class": rnd["class_names"][0], "labels": ["kept label"]}
        h = {"X-CSRF-Token": csrf, "Idempotency-Key": key}
        assert c.post(f"/api/rounds/{rnd['id']}/guess", json=body, headers=h).status_code == 201
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = start_server(sqlite_url, port, log=tmp_path / "server.log")
        wait_ready(proc, port)
        again = c.post(f"/api/rounds/{rnd['id']}/guess", json=body, headers=h)  # the session survived too
        assert again.status_code == 200 and again.json()["replayed"] is True
        admin = httpx.get(f"{base}/api/admin/campaigns/test/export", params={"format": "jsonl"},
                          headers={"Authorization": "Bearer test-admin-token-0123456789"})
        lines = [line for line in admin.text.splitlines() if line]
        assert len(lines) == 1 and '"kept label"' in lines[0]
    finally:
        stop_server(proc)
