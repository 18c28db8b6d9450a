"""Load test of the labelling game: N simulated players against a live server on loopback.

For each backend (SQLite WAL, PostgreSQL) the script

1. builds a synthetic bundle (real scikit-image photos, synthetic cluster maps) and imports it;
2. starts ``featurelens game serve --workers W`` on a free 127.0.0.1 port (never another host);
3. runs N concurrent simulated players (threads, one ``httpx.Client`` each, no think time) for T seconds,
   through the real HTTP API (sign-up, next round, image, show more, guess/give up with labels);
4. at ``--kill-at`` (fraction of T) sends SIGKILL to the whole server (no clean shutdown) and restarts it;
   the players retry every request, answers with the same idempotency key;
5. exports the campaign through the admin API and checks that the exported label rows are exactly the
   acknowledged answers' labels: nothing lost, nothing doubled;
6. prints requests/s and p50/p99 latency (per kind and overall).

Bounded: at most ``--duration`` seconds of load per backend plus a 60 s grace period for in-flight
answers; the server is always stopped at the end. Timings on a shared machine are noisy: compare the
backends measured in the same run rather than absolute numbers.

    python benchmarks/load_game.py --players 100 --duration 60
    python benchmarks/load_game.py --players 20 --duration 10 --backends sqlite      # a quick check
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ADMIN = "load-test-admin-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db_url: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FEATURELENS_ADMIN_TOKEN": ADMIN}
    return subprocess.Popen(
        [sys.executable, "-m", "featurelens.cli.main", "game", "serve", "--database-url", db_url, "--host",
         "127.0.0.1", "--port", str(port), "--workers", str(workers), "--rate-limit", "off", "--gold-rate", "0"],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 180.0) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def pg_database(base_url: str) -> str:
    """A fresh database on the PostgreSQL server of ``base_url``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"fl_load_{uuid.uuid4().hex[:8]}"
    engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def run_backend(name: str, db_url: str, bundle: Path, args: argparse.Namespace, work: Path) -> dict:
    import httpx

    from featurelens.game import store
    from featurelens.game.db import Database, make_engine, migrate
    from featurelens.game.simulate import PlayerProfile, SimulationResult, run_player

    engine = make_engine(db_url)
    migrate(engine)
    store.import_bundle(Database(engine), bundle, "load")
    engine.dispose()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = work / f"server-{name}.log"
    proc = start(db_url, port, args.workers, log)
    startup = wait_ready(proc, port)
    print(f"[{name}] server ready in {startup:.1f} s ({args.workers} workers); {args.players} players for "
          f"{args.duration:g} s", flush=True)

    total = SimulationResult()
    words = ["fur", "ear", "eye", "wheel", "sky", "edge", "face", "stripes", "metal", "leaf", "handle", "cup"]

    def player(i: int) -> None:
        rng = np.random.default_rng(i)
        profile = PlayerProfile(f"load{i:03d}", accuracy=0.6, reveals=(0, 3), give_up_rate=0.15,
                                labels=lambda rnd, rng=rng: list(rng.choice(words, size=rng.integers(1, 4),
                                                                             replace=False)),
                                seed=i)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            total.merge(run_player(client, profile, duration=args.duration, campaign="load", admin_token=ADMIN,
                                   start_barrier=barrier))

    # every player signs up first (argon2 is deliberately expensive); the timed window starts together
    started = threading.Event()
    barrier = threading.Barrier(args.players + 1, action=started.set)
    threads = [threading.Thread(target=player, args=(i,), daemon=True) for i in range(args.players)]
    s0 = time.monotonic()
    for t in threads:
        t.start()
    barrier.wait(timeout=600)
    t0 = time.monotonic()
    signup_s = t0 - s0
    print(f"[{name}] {args.players} players signed up in {signup_s:.1f} s; load starts", flush=True)
    downtime = None
    k0 = k1 = float("inf")
    if args.kill_at > 0:
        time.sleep(args.kill_at * args.duration)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)
        k0 = time.monotonic()
        print(f"[{name}] SIGKILL at t={k0 - t0:.1f} s; restarting", flush=True)
        proc = start(db_url, port, args.workers, log)
        wait_ready(proc, port)
        k1 = time.monotonic()
        downtime = k1 - k0
        print(f"[{name}] back after {downtime:.1f} s", flush=True)
    for t in threads:
        t.join(args.duration + 120)
    wall = time.monotonic() - t0

    try:
        r = httpx.get(f"{base}/api/admin/campaigns/load/export", params={"format": "jsonl"},
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        r.raise_for_status()
        exported = [json.loads(line) for line in r.text.splitlines() if line]
    finally:
        stop(proc)

    acked = collections.Counter((s.player, s.cluster_id, lab) for s in total.submissions for lab in s.labels)
    rows = collections.Counter((e["player"], e["cluster_id"], e["label"]) for e in exported)
    lost = acked - rows
    extra = rows - acked
    doubled = sum(1 for v in rows.values() if v > 1)
    answers = collections.Counter((s.player, s.cluster_id) for s in total.submissions)
    # latency percentiles of requests the server was up for: those sent before the kill and answered
    # before it, or sent after the restart (requests caught by the kill/restart window are counted
    # in "across_restart")
    lat = collections.defaultdict(list)
    play_lat, across = [], []
    for kind, dt, sent in total.latencies:
        if sent < k0 <= sent + dt or k0 <= sent < k1:
            across.append(dt)
            continue
        lat[kind].append(dt)
        if kind not in ("csrf", "signup", "login"):
            play_lat.append(dt)
    all_lat = np.array(play_lat) if play_lat else np.zeros(1)
    result = {
        "backend": name, "players": args.players, "duration_s": args.duration, "workers": args.workers,
        "signup_all_s": round(signup_s, 1), "wall_s": round(wall, 1),
        "responses": len(play_lat), "attempts": total.requests, "responses_across_restart": len(across),
        "max_latency_across_restart_s": round(max(across), 1) if across else None,
        # answered requests (sign-up excluded) per second of the timed window ...
        "requests_per_s": round(len(play_lat) / wall, 1),
        # ... and per second the server was up (the kill + restart window left out)
        "requests_per_s_up": round(len(play_lat) / max(wall - (downtime or 0.0), 1e-9), 1),
        "p50_ms": round(1000 * float(np.percentile(all_lat, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(all_lat, 99)), 1),
        "by_kind": {k: {"n": len(v), "p50_ms": round(1000 * float(np.percentile(v, 50)), 1),
                        "p99_ms": round(1000 * float(np.percentile(v, 99)), 1)} for k, v in sorted(lat.items())},
        "answers_acknowledged": len(total.submissions),
        "answers_replayed_after_retry": sum(s.replayed for s in total.submissions),
        "duplicate_answers": sum(1 for v in answers.values() if v > 1),
        "labels_acknowledged": sum(acked.values()), "labels_exported": sum(rows.values()),
        "lost": sum(lost.values()), "unacknowledged_extra": sum(extra.values()), "doubled_rows": doubled,
        "retries": total.retries, "client_errors": len(total.errors), "kill_downtime_s":
            None if downtime is None else round(downtime, 1),
    }
    result["exact"] = result["lost"] == 0 and result["unacknowledged_extra"] == 0 and doubled == 0 \
        and result["duplicate_answers"] == 0
    if total.errors:
        print(f"[{name}] first client errors: {total.errors[:5]}", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per backend")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg-url", default=os.environ.get("FEATURELENS_TEST_DATABASE_URL"),
                    help="PostgreSQL server URL (default: $FEATURELENS_TEST_DATABASE_URL, see scripts/pg.sh)")
    ap.add_argument("--kill-at", type=float, default=0.5, help="SIGKILL + restart at this fraction of T (0: never)")
    ap.add_argument("--images", type=int, default=12, help="bundle size: images (× 2 layers × 4 maps)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if not 1 <= args.players <= 500 or not 1 <= args.duration <= 600:
        ap.error("keep it bounded: 1-500 players, 1-600 s")

    from featurelens.game.simulate import synthetic_bundle

    results = []
    with tempfile.TemporaryDirectory(prefix="featurelens-load-") as tmp:
        work = Path(tmp)
        print("building the bundle ...", flush=True)
        bundle = synthetic_bundle(work / "bundle", images=args.images, layers=("blocks.12", "head"), clusters=4)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "sqlite":
                url = str(work / "load.sqlite3")
            elif backend == "postgres":
                if not args.pg_url:
                    print("[postgres] skipped: no --pg-url / FEATURELENS_TEST_DATABASE_URL", flush=True)
                    continue
                url = pg_database(args.pg_url)
            else:
                ap.error(f"unknown backend {backend!r}")
            res = run_backend(backend, url, bundle, args, work)
            results.append(res)
            print(json.dumps(res, indent=1), flush=True)
    print("\nbackend   players  T(s)  req/s (up)     p50 ms  p99 ms  answers  labels(ack=export)  replayed  exact")
    for r in results:
        print(f"{r['backend']:<9} {r['players']:>7} {r['duration_s']:>5g} {r['requests_per_s']:>6} "
              f"({r['requests_per_s_up']:>6}) "
              f"{r['p50_ms']:>8} {r['p99_ms']:>7} {r['answers_acknowledged']:>8} "
              f"{r['labels_acknowledged']:>8}={r['labels_exported']:<9} {r['answers_replayed_after_retry']:>8}  "
              f"{r['exact']}")
    if len(results) == 2:
        a, b = results
        print(f"ratio {b['backend']}/{a['backend']} requests/s: {b['requests_per_s'] / max(a['requests_per_s'], 1e-9):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
