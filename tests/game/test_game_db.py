"""SQLite group commit (featurelens.game.db): batching, per-job savepoints, the cross-process write lock."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from featurelens.game.db import BytesCache, Database, make_engine


@pytest.fixture
def db(tmp_path):
    d = Database(make_engine(str(tmp_path / "g.sqlite3")))
    with d.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield d
    d.dispose()


def _insert(value: str, sleep: float = 0.0, fail: bool = False):  # type: ignore[no-untyped-def]
    def fn(s):  # type: ignore[no-untyped-def]
        s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        if sleep:
            time.sleep(sleep)
        if fail:
            raise ValueError(f"job {value} fails after its insert")
        return value

    return fn


def _values(db: Database) -> set[str]:
    with db.read() as s:
        return set(s.execute(text("SELECT v FROM t")).scalars())


def test_queued_writes_share_one_commit_and_all_land(db):
    first = threading.Thread(target=db.write, args=(_insert("slow", sleep=0.3),))
    first.start()
    time.sleep(0.05)  # the writer thread is inside the first batch: the next ones queue up
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(db.write(_insert(f"v{i}")))) for i in range(10)]
    for t in threads:
        t.start()
    for t in [first, *threads]:
        t.join(10)
    assert sorted(results) == sorted(f"v{i}" for i in range(10))
    assert _values(db) == {"slow", *(f"v{i}" for i in range(10))}
    assert db._group.jobs == 11 and db._group.batches < 11  # some of them were committed together


def test_a_failing_job_is_rolled_back_alone(db):
    errors: list[BaseException] = []
    gate = threading.Thread(target=db.write, args=(_insert("gate", sleep=0.3),))
    gate.start()
    time.sleep(0.05)

    def run(fn):  # type: ignore[no-untyped-def]
        try:
            db.write(fn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f,)) for f in
               (_insert("ok1"), _insert("bad", fail=True), _insert("ok1"), _insert("ok2"))]
    for t in threads:
        t.start()
    for t in [gate, *threads]:
        t.join(10)
    assert _values(db) == {"gate", "ok1", "ok2"}  # "bad" undone; the second "ok1" hit UNIQUE alone
    kinds = sorted(type(e).__name__ for e in errors)
    assert kinds == ["IntegrityError", "ValueError"]


def test_core_jobs_share_the_batch_and_a_failing_one_is_rolled_back_alone(db):
    """write_core jobs (a Core connection, no ORM session) and ORM jobs in one group-commit batch."""
    errors: list[BaseException] = []
    gate = threading.Thread(target=db.write_core, args=(_insert("gate", sleep=0.3),))
    gate.start()
    time.sleep(0.05)

    def run(write, fn):  # type: ignore[no-untyped-def]
        try:
            write(fn)
        except BaseException as exc:
            errors.append(exc)

    jobs = [(db.write_core, _insert("c1")), (db.write_core, _insert("cbad", fail=True)), (db.write, _insert("o1")),
            (db.write_core, _insert("o1")), (db.write_core, _insert("c2"))]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
        time.sleep(0.01)  # queued in this order behind the gate
    for t in [gate, *threads]:
        t.join(10)
    assert _values(db) == {"gate", "c1", "o1", "c2"}
    assert sorted(type(e).__name__ for e in errors) == ["IntegrityError", "ValueError"]
    assert db._group.batches < db._group.jobs == 6


def test_write_core_without_group_commit_commits_or_rolls_back(db):
    db._group = None  # the PostgreSQL path: one engine.begin() per write
    assert db.write_core(_insert("alone")) == "alone"
    with pytest.raises(ValueError):
        db.write_core(_insert("undone", fail=True))
    assert _values(db) == {"alone"}


def test_bytes_cache_is_an_lru_bounded_by_size():
    c = BytesCache(max_bytes=100)
    for k in "abcd":
        c.put(k, bytes(25))
    assert len(c) == 4 and c.size == 100
    assert c.get("a") == bytes(25)  # a is now the most recent
    c.put("e", bytes(25))  # evicts the least recently used: b
    assert c.get("b") is None and all(c.get(k) is not None for k in "acde") and c.size == 100
    c.put("c", bytes(10))  # replacing an entry adjusts the size
    assert c.size == 85
    c.put("huge", bytes(26))  # more than a quarter of the cache: not kept
    assert c.get("huge") is None and c.size == 85


def test_an_acknowledged_write_is_visible_to_another_process_connection(db, tmp_path):
    db.write(_insert("durable"))
    other = make_engine(str(tmp_path / "g.sqlite3"))
    with other.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t WHERE v = 'durable'")).scalar() == 1
    other.dispose()


def test_two_databases_on_one_file_take_turns(db, tmp_path):
    second = Database(make_engine(str(tmp_path / "g.sqlite3")))
    try:
        def many(d: Database, prefix: str) -> None:
            for i in range(40):
                d.write(_insert(f"{prefix}{i}"))

        threads = [threading.Thread(target=many, args=(d, p)) for d, p in ((db, "a"), (second, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(_values(db)) == 80
    finally:
        second.dispose()
