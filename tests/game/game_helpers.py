"""Helpers of the game tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ADMIN = "test-admin-token-0123456789"
FAST_HASH = {"time_cost": 1, "memory_cost": 8192}  # argon2id, cheaper for tests (production: t=2, m=19 MiB)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def unique(prefix: str = "p") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class ApiPlayer:
    """A player speaking the JSON API through a TestClient (its own cookie jar)."""

    def __init__(self, app, name: str | None = None, password: str = "secret password",
                 client: tuple[str, int] | None = None) -> None:
        from starlette.testclient import TestClient

        self.c = TestClient(app, client=client) if client else TestClient(app)  # client: (address, port)
        self.name = name or unique()
        self.password = password
        self.csrf = self.c.get("/api/csrf").json()["csrf_token"]

    def h(self, **extra: str) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf, **extra}

    def signup(self):
        r = self.c.post("/api/signup", json={"username": self.name, "password": self.password}, headers=self.h())
        if r.status_code == 201:
            self.csrf = r.json()["csrf_token"]
        return r

    def login(self):
        r = self.c.post("/api/login", json={"username": self.name, "password": self.password}, headers=self.h())
        if r.status_code == 200:
            self.csrf = r.json()["csrf_token"]
        return r

    def next(self, campaign: str = "test", oracle: bool = True):
        """Start (or resume) a round; an "oracle" request carries the admin token and sees the ids."""
        extra = {"X-Admin-Token": ADMIN} if oracle else {}
        return self.c.post("/api/rounds", json={"campaign": campaign}, headers=self.h(**extra))

    def start(self, campaign: str = "test", oracle: bool = True) -> dict:
        r = self.next(campaign, oracle)
        assert r.status_code == 200, r.text
        return r.json()["round"]

    def reveal(self, rid: int, to_step: int | None = None):
        return self.c.post(f"/api/rounds/{rid}/reveal", json={"to_step": to_step}, headers=self.h())

    def guess(self, rid: int, cls: str, labels: list[str], key: str | None = None):
        return self.c.post(f"/api/rounds/{rid}/guess", json={"guessed_class": cls, "labels": labels},
                           headers=self.h(**{"Idempotency-Key": key or uuid.uuid4().hex}))

    def give_up(self, rid: int, labels: list[str] | None = None, key: str | None = None):
        return self.c.post(f"/api/rounds/{rid}/give-up", json={"labels": labels or []},
                           headers=self.h(**{"Idempotency-Key": key or uuid.uuid4().hex}))


def truth_of(bundle_path, image_id: str) -> str:
    from featurelens.game.simulate import truth_map

    return truth_map(bundle_path)[image_id]  # type: ignore[return-value]


def admin_headers(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_url: str, port: int, *, workers: int = 1, rate_limit: str = "off",
                 log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "FEATURELENS_ADMIN_TOKEN": ADMIN}
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "featurelens.cli.main", "game", "serve", "--database-url", db_url, "--port", str(port),
         "--workers", str(workers), "--rate-limit", rate_limit, "--gold-rate", "0", "--signup-limit", "off"],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"game server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("game server did not start in time")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def truth_for_round(db_url: str, round_id: int) -> str:
    """The class the round's photo shows (read from the database, as an oracle for tests)."""
    from sqlalchemy import select

    from featurelens.game.db import Database, make_engine
    from featurelens.game.models import Round

    db = Database(make_engine(db_url))
    try:
        with db.read() as s:
            rnd = s.scalars(select(Round).where(Round.id == round_id)).one()
            img = rnd.cluster.image
            return img.true_class or img.predicted_class
    finally:
        db.dispose()


def database_at(path: Path, revision: str):  # type: ignore[no-untyped-def]
    """A new SQLite database at ``path`` migrated only up to ``revision`` (an older release's schema);
    returns its engine."""
    from alembic import command
    from alembic.config import Config

    from featurelens.game.db import MIGRATIONS, make_engine

    engine = make_engine(str(path))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    return engine
