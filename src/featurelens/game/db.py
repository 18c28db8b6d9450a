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

import collections
import contextlib
import fcntl
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from featurelens.errors import FeaturelensError

T = TypeVar("T")
_Job = tuple[Callable[[Any], object], "Future[object]", int, bool]  # fn, its result, attempts, Core job

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


def make_engine(database_url: str, *, pool_size: int = 40) -> Engine:
    """Create the engine with the SQLite/PostgreSQL settings described in the module docstring.

    ``pool_size`` (40) matches the request thread pool of a worker (anyio's default), so that a busy
    worker keeps its connections instead of opening and closing overflow ones on every request."""
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise GameError("the game needs a SQLite *file* (several connections share it); got an in-memory URL")
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=pool_size // 4)

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
            if mode != "NONE":  # NONE: autocommit reads, each statement its own snapshot (Database.connect)
                conn.exec_driver_sql(f"BEGIN {mode}".strip())

        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size // 4, pool_recycle=1800)
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


class _FileLock:
    """An exclusive ``flock`` on ``path``, shared by every process that opens the same file.

    The kernel wakes a waiter as soon as the holder releases it, whereas SQLite's own busy handler polls
    with sleeps of up to 100 ms: writers of two worker processes queued on SQLite's lock wait long and
    unfairly (the tail of issue 14's first load test)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class _GroupCommit:
    """SQLite group commit: one writer thread per :class:`Database` runs the write jobs queued by request
    threads in batches, each job in its own ``SAVEPOINT`` inside one ``BEGIN IMMEDIATE ... COMMIT``.

    With ``synchronous=FULL`` every commit costs an fsync (0.3 ms on a quiet disk, 8-35 ms on this shared
    machine under load); one commit for k queued jobs makes the write rate k times higher at the same
    durability. A job's result is handed back only after the batch's COMMIT returned, so nothing is
    acknowledged before it is on disk. A job that raises is rolled back to its savepoint and gets its
    exception; the others of the batch still commit. A retryable database error (a lock timeout against a
    foreign process) retries the whole batch."""

    def __init__(self, factory: Callable[[], Session], lock: _FileLock, max_batch: int = 64) -> None:
        self._factory, self._lock, self._max_batch = factory, lock, max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = self.jobs = 0  # counters, for tests and benchmarks

    def submit(self, fn: Callable[[Any], T], attempts: int, core: bool = False) -> T:
        """Queue ``fn`` and wait for its batch's commit; ``core``: ``fn`` takes the batch's Core
        connection (cheaper than the ORM session, for jobs of plain Core statements)."""
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="featurelens-sqlite-writer",
                                                    daemon=True)
                    self._thread.start()
        fut: Future[object] = Future()
        self._queue.put((fn, fut, attempts, core))
        return fut.result()  # type: ignore[return-value]

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        attempts = max(job[2] for job in batch)
        for attempt in range(attempts):
            outcomes: list[tuple[Future[object], object, BaseException | None]] = []
            try:
                with self._lock.held(), self._factory() as session:
                    try:
                        conn: Connection | None = None
                        for fn, fut, _a, core in batch:
                            try:
                                if core:
                                    conn = conn or session.connection()
                                    with conn.begin_nested():
                                        result = fn(conn)
                                else:
                                    with session.begin_nested():
                                        result = fn(session)
                                outcomes.append((fut, result, None))
                            except DBAPIError as exc:
                                if _retryable(exc):
                                    raise
                                outcomes.append((fut, None, exc))
                            except Exception as exc:  # the job's own error: only its savepoint is undone
                                outcomes.append((fut, None, exc))
                        session.commit()
                    except BaseException:
                        session.rollback()
                        raise
            except DBAPIError as exc:
                if attempt < attempts - 1 and _retryable(exc):
                    time.sleep(0.02 * 2**attempt)
                    continue
                for job in batch:
                    job[1].set_exception(exc)
                return
            except BaseException as exc:  # handed to every waiting caller
                for job in batch:
                    job[1].set_exception(exc)
                return
            self.batches += 1
            self.jobs += len(batch)
            for fut, result, error in outcomes:
                if error is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(error)
            return


class BytesCache:
    """A thread-safe LRU of immutable byte strings, bounded by their total size (``max_bytes``).

    The game keeps each worker's recently served images here (rendered reveal steps, overlays and photos
    never change once imported), so an image request costs one small query for the round, not a blob read."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._items: collections.OrderedDict[Hashable, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return  # a single huge item would evict everything
        with self._lock:
            old = self._items.pop(key, None)
            self.size -= len(old) if old is not None else 0
            self._items[key] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _k, gone = self._items.popitem(last=False)
                self.size -= len(gone)

    def __len__(self) -> int:
        return len(self._items)


class Database:
    """Session factories for reads and (retried) write transactions.

    On SQLite all writes of this object go through a :class:`_GroupCommit` writer thread (batched, one
    fsync per batch) that takes a cross-process file lock (``<database>.write-lock``) before
    ``BEGIN IMMEDIATE``; on PostgreSQL each write is its own transaction (the server groups commits)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        write_engine = engine.execution_options(sqlite_begin="IMMEDIATE") if is_sqlite(engine) else engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        # Core reads of the hot paths: no BEGIN / ROLLBACK round trips (see connect)
        self._core_read = (engine.execution_options(sqlite_begin="NONE") if is_sqlite(engine)
                           else engine.execution_options(isolation_level="AUTOCOMMIT"))
        self._write = sessionmaker(write_engine, expire_on_commit=False)
        self._write_engine = write_engine
        self._lock: _FileLock | None = None
        self._group: _GroupCommit | None = None
        # per-process caches of data that never changes once imported (see featurelens.game.store)
        self.assets = BytesCache()
        self.immutable: dict[Hashable, object] = {}
        if is_sqlite(engine):
            self._lock = _FileLock(str(engine.url.database) + ".write-lock")
            self._group = _GroupCommit(self._write, self._lock)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A Core connection for reads in autocommit mode: the hot paths' cheap alternative to an ORM
        session. Each statement sees the committed state when it runs (no snapshot across statements):
        callers read one row and derive the rest from data that never changes, or from rows committed
        together with it (a finished round's labels)."""
        with self._core_read.connect() as conn:
            yield conn

    def write(self, fn: Callable[[Session], T], *, attempts: int = 6) -> T:
        """Run ``fn(session)`` in one transaction and commit; retry on deadlock / lock timeouts.

        Returns only after the commit. ``fn`` may run more than once (retries) and, on SQLite, shares the
        transaction with other queued writes (in its own savepoint): it must not commit or roll back."""
        if self._group is not None:
            return self._group.submit(fn, attempts)
        for attempt in range(attempts):
            with self._write() as session:
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

    def write_core(self, fn: Callable[[Connection], T], *, attempts: int = 6) -> T:
        """:meth:`write` for a job of plain Core statements: ``fn(connection)``, without an ORM session
        (same transaction, retry and acknowledgement rules)."""
        if self._group is not None:
            return self._group.submit(fn, attempts, core=True)
        for attempt in range(attempts):
            try:
                with self._write_engine.begin() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if attempt == attempts - 1 or not _retryable(exc):
                    raise
            time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        if self._group is not None:
            self._group.stop()
        if self._lock is not None:
            self._lock.close()
        self.engine.dispose()
