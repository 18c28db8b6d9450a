"""Fixtures of the game tests: a bundle from real photos, apps on SQLite/PostgreSQL, players, a live server."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from game_helpers import ADMIN, FAST_HASH, ApiPlayer, free_port, start_server, stop_server, wait_ready

PG_URL = os.environ.get("FEATURELENS_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def game_bundle(tmp_path_factory):
    """4 real photos × 2 layers × 3 synthetic cluster maps = 24 maps; image 2 has true_class = null."""
    from featurelens.game.simulate import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("bundle") / "b", images=4, layers=("blocks.12", "head"),
                            clusters=3)


@pytest.fixture(scope="session")
def fresh_bundle(tmp_path_factory):
    """Like ``game_bundle`` (24 maps) but other maps (seed 1): not in the template databases, so it can be
    imported (the same bundle twice is refused by content hash)."""
    from featurelens.game.simulate import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("bundle_fresh") / "b", images=4, layers=("blocks.12", "head"),
                            clusters=3, seed=1)


@pytest.fixture(scope="session")
def one_map_bundle(tmp_path_factory):
    """A bundle with a single map, so that several players label the same map."""
    from featurelens.game.simulate import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("bundle1") / "b", images=1, layers=("head",), clusters=1)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory, game_bundle, one_map_bundle):
    """A SQLite file with the campaigns ``test`` (24 maps) and ``one`` (1 map), imported once."""
    from featurelens.game import store
    from featurelens.game.db import Database, make_engine, migrate

    path = tmp_path_factory.mktemp("tpl") / "game.sqlite3"
    engine = make_engine(str(path))
    migrate(engine)
    db = Database(engine)
    store.import_bundle(db, game_bundle, "test")
    store.import_bundle(db, one_map_bundle, "one")
    engine.dispose()
    return path


def _pg_admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def _pg_db(name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_template(game_bundle, one_map_bundle):
    """A PostgreSQL template database (server from scripts/test.sh) with both campaigns imported once;
    every test gets its own copy (``CREATE DATABASE ... TEMPLATE``)."""
    if not PG_URL:
        pytest.skip("FEATURELENS_TEST_DATABASE_URL is not set (scripts/test.sh starts PostgreSQL)")
    from featurelens.game import store
    from featurelens.game.db import Database, make_engine, migrate

    name = f"fl_tpl_{uuid.uuid4().hex[:8]}"
    _pg_admin(f"CREATE DATABASE {name}")
    engine = make_engine(_pg_db(name))
    migrate(engine)
    db = Database(engine)
    store.import_bundle(db, game_bundle, "test")
    store.import_bundle(db, one_map_bundle, "one")
    engine.dispose()
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def pg_url(pg_template):
    name = f"fl_t_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield _pg_db(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path, template_db):
    """A database with both campaigns: a fresh SQLite copy or a fresh PostgreSQL copy."""
    if request.param == "sqlite":
        path = tmp_path / "game.sqlite3"
        shutil.copy(template_db, path)
        return str(path)
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sqlite_url(tmp_path, template_db):
    path = tmp_path / "game.sqlite3"
    shutil.copy(template_db, path)
    return str(path)


@pytest.fixture
def make_app():
    """``make_app(url, **create_app_kwargs)`` with a cheap argon2 and no rate limit unless given."""
    from featurelens.game import store
    from featurelens.game.app import create_app

    apps = []

    def _make(url, **kw):
        kw.setdefault("admin_token", ADMIN)
        kw.setdefault("rate_limit", None)
        kw.setdefault("signup_limit", None)  # the tests sign up many players from one address
        kw.setdefault("gold_rate", 0.0)
        kw.setdefault("hasher", store.PasswordHasher(**FAST_HASH))
        app = create_app(url, **kw)
        apps.append(app)
        return app

    yield _make
    for app in apps:
        app.state.db.dispose()


@pytest.fixture
def app(make_app, db_url):
    return make_app(db_url)


@pytest.fixture
def player(app):
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    return p


@pytest.fixture
def live_server(sqlite_url, tmp_path):
    """``featurelens game serve`` on a free loopback port; yields its base URL."""
    port = free_port()
    proc = start_server(sqlite_url, port, log=tmp_path / "server.log")
    try:
        wait_ready(proc, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
