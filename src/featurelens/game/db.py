"""Database engines, programmatic Alembic migrations and retried write transactions.

* ``sqlite:///path`` (or a bare file path) opens SQLite in WAL mode with ``synchronous=FULL``
  (a committed transaction survives a crash of the server process and of the machine),
  foreign keys on and a 30 s busy timeout. Write transactions start with ``BEGIN IMMEDIATE`` so that
  two workers never deadlock on a lock upgrade; read transactions use a plain (deferred) ``BEGIN``
  and run concurrently with writers, as WAL allows.
* ``postgresql+psycopg://...`` uses a connection pool; deadlocks and serialisation failures
  (SQLSTATE 40P01 / 40001) are retried.

Migrations run on start-up under a lock (a file lock for SQLite, ``pg_advisory_lock`` for PostgreSQL),
so several workers can start at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from featurelens.errors import FeaturelensError

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_ID = 0x6665_6174  # "feat"


class GameError(FeaturelensError):
    """A problem the game reports to its caller (bad database URL, unknown campaign, ...)."""


def normalize_url(database_url: str) -> str:
    """Accept a SQLAlchemy URL or a bare SQLite file path; return a URL."""
    if "://" not in database_url:
        return f"sqlite:///{Path(database_url).expanduser().resolve()}"
    if database_url.startswith("postgresql://"):
        return "postgresql+psycopg://" + database_url[len("postgresql://"):]
    return database_url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(database_url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine with the SQLite/PostgreSQL settings described in the module docstring."""
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise GameError("the game needs a SQLite *file* (several connections share it); got an in-memory URL")
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=2 * pool_size)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            mode = conn.get_execution_options().get("sqlite_begin", "")
            conn.exec_driver_sql(f"BEGIN {mode}".strip())

        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_recycle=1800)
    raise GameError(f"unsupported database {url.get_backend_name()!r}: use sqlite:///FILE or postgresql+psycopg://...")


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if is_sqlite(engine):
        lock_path = Path(str(engine.url.database) + ".migrate-lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest Alembic revision (safe to call from several processes)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _migration_lock(engine), engine.connect() as conn:
        if not is_sqlite(engine):
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_ID})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if not is_sqlite(engine):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_ID})
                conn.commit()


def _retryable(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in ("40P01", "40001"):
        return True
    return isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower()


class Database:
    """Session factories for reads and (retried) write transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        write_engine = engine.execution_options(sqlite_begin="IMMEDIATE") if is_sqlite(engine) else engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine, expire_on_commit=False)
        # SQLite has one writer at a time and its busy handler polls (unfair under contention): queue this
        # process's writers on a lock so only one connection per worker process waits on the file lock
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if is_sqlite(engine) else contextlib.nullcontext()
        )

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    def write(self, fn: Callable[[Session], T], *, attempts: int = 6) -> T:
        """Run ``fn(session)`` in one transaction and commit; retry on deadlock / lock timeouts."""
        for attempt in range(attempts):
            with self._write_lock, self._write() as session:
                try:
                    result = fn(session)
                    session.commit()
                    return result
                except DBAPIError as exc:
                    session.rollback()
                    if attempt == attempts - 1 or not _retryable(exc):
                        raise
                except BaseException:
                    session.rollback()
                    raise
            time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()
