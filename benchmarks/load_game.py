"""Load test of the labelling game: simulated players against a live server on loopback (127.0.0.1 only).

One asyncio client (a small keep-alive HTTP/1.1 client on asyncio streams, so that the client's own CPU
use stays low on the shared 2-core machine) drives ``featurelens game serve --workers W`` through the real
JSON API. Each player has its own session and connection; a round is: next round, its image, 0–2
"show more" each with its image, then a guess (or give-up) with labels and an idempotency key. Every
player signs up first (argon2 is deliberately expensive); the timed window starts when all have.

Scenarios (``--scenarios``, each run on every backend of ``--backends``):

``think``       100 players, think time uniform in [0, 6] s before every request of a round but the image
                fetches and before the first round (so players start at random offsets; mean 3 s);
``saturation``  the same players without think time;
``kill``        ``think``, with SIGKILL of the whole server at half time and a restart; the players retry,
                answers with the same idempotency key;
``bodies``      ``think`` while 4 anonymous clients each send a 50 MB body to ``POST /api/rounds/1/guess``;
                ``/healthz`` is probed every 100 ms, and the server's memory (RSS of all its processes) is
                sampled every 100 ms.
``floor``       the throughput floor of the stack: the same 100 connections send ``GET /healthz`` (through
                uvicorn, the limits and FastAPI, no database) without pause; and ``bare``: the same against
                uvicorn serving a 10-line ASGI app with the game's HTTP protocol and workers. Their req/s and
                CPU ms per request bound what any game request can reach on this machine.

After each run the campaign is exported through the admin API and compared with the acknowledged answers:
``exact`` means every acknowledged label is exported exactly once and nothing else is. Latency percentiles
cover game requests (next, image, reveal, answer) the server was up for; ``errors`` counts connection
errors, timeouts and 5xx outside a kill window. The printed table is the README's; the load average
(``/proc/loadavg``) is printed next to every row, because the machine is shared.

    python benchmarks/load_game.py                                   # all scenarios, both backends
    python benchmarks/load_game.py --scenarios think --backends sqlite --duration 20   # a quick check

PostgreSQL needs ``--pg-url`` or ``$FEATURELENS_TEST_DATABASE_URL`` (``scripts/pg.sh`` starts a server).
Bounded: at most 500 players and 600 s per run, plus a 60 s grace period for answers in flight; the
server is always stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ADMIN = "load-test-admin-" + uuid.uuid4().hex
HOST = "127.0.0.1"  # never anything else
WORDS = ["fur", "ear", "eye", "wheel", "sky", "edge", "face", "stripes", "metal", "leaf", "handle", "cup"]
GAME_KINDS = ("next", "image", "reveal", "answer")
TARGETS = {  # scenario -> (p99 bound in ms or None, requests/s floor or None) of issue 14
    ("think", "sqlite"): (100.0, None), ("think", "postgres"): (150.0, None),
    ("saturation", "sqlite"): (1000.0, 400.0), ("saturation", "postgres"): (1000.0, 400.0),
}


# ---------------------------------------------------------------------------
# a minimal keep-alive HTTP/1.1 client
# ---------------------------------------------------------------------------
class HttpError(Exception):
    pass


class _Stale(Exception):
    """The connection was closed before any byte of the response arrived."""


class Conn:
    """One keep-alive connection to ``127.0.0.1:port``; reconnects after a close or an error."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.cookies: dict[str, str] = {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: object = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for fresh in (self.writer is None, True):
            try:
                return await asyncio.wait_for(self._request(method, path, body, headers or {}), self.timeout)
            except _Stale:
                self.close()  # the server closed the idle keep-alive connection: reconnect once, as browsers do
                if fresh:
                    raise HttpError("closed") from None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
                self.close()
                raise HttpError(type(exc).__name__) from None
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, body: object, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        data = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        lines += [f"{k}: {v}" for k, v in headers.items()]
        assert self.writer is not None and self.reader is not None
        try:
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            await self.writer.drain()
            status_line = await self.reader.readline()
        except (ConnectionResetError, BrokenPipeError):
            raise _Stale() from None
        if not status_line:
            raise _Stale()
        status = int(status_line.split()[1])
        resp_headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k, v = k.strip().lower(), v.strip()
            if k == "set-cookie":
                name, _, rest = v.partition("=")
                value = rest.split(";", 1)[0]
                if value in ("", '""') or "max-age=0" in v.lower():
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            resp_headers[k] = v
        n = int(resp_headers.get("content-length", "0"))
        payload = await self.reader.readexactly(n) if n and method != "HEAD" else b""
        if resp_headers.get("connection", "").lower() == "close":
            self.close()
        return status, resp_headers, payload


# ---------------------------------------------------------------------------
# players
# ---------------------------------------------------------------------------
@dataclass
class Stats:
    latencies: list[tuple[str, float, float]] = field(default_factory=list)  # kind, seconds, sent (monotonic)
    failures: list[tuple[str, str, float]] = field(default_factory=list)  # kind, what, sent
    acked: list[tuple[str, str, tuple[str, ...], bool]] = field(default_factory=list)  # player, cluster, labels, replayed
    requests: int = 0


class Player:
    def __init__(self, i: int, port: int, stats: Stats, think: float, rng: random.Random) -> None:
        self.name, self.password = f"load{i:03d}", "correct horse battery"
        self.c = Conn(port)
        self.stats, self.think, self.rng = stats, think, rng
        self.csrf = ""
        self.deadline = float("inf")

    async def call(self, kind: str, method: str, path: str, body: object = None,
                   headers: dict[str, str] | None = None, must_finish: bool = False) -> tuple[int, bytes]:
        """One request, retried on connection errors and 5xx until the deadline (+60 s for answers)."""
        delay = 0.05
        while True:
            sent = time.monotonic()
            self.stats.requests += 1
            try:
                status, _h, payload = await self.c.request(method, path, body,
                                                           {"X-CSRF-Token": self.csrf, **(headers or {})})
            except HttpError as exc:
                status, payload, what = 0, b"", str(exc)
            else:
                what = f"HTTP {status}"
            if 0 < status < 500:
                self.stats.latencies.append((kind, time.monotonic() - sent, sent))
                return status, payload
            self.stats.failures.append((kind, what, sent))
            if time.monotonic() + delay > self.deadline + (60.0 if must_finish else 0.0):
                raise HttpError(f"{kind} not answered before the deadline")
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    async def pause(self) -> None:
        if self.think > 0:
            await asyncio.sleep(self.rng.uniform(0.0, self.think))

    async def signup(self) -> None:
        _s, payload = await self.call("csrf", "GET", "/api/csrf")
        self.csrf = json.loads(payload)["csrf_token"]
        body = {"username": self.name, "password": self.password}
        status, payload = await self.call("signup", "POST", "/api/signup", body)
        if status == 409:
            status, payload = await self.call("login", "POST", "/api/login", body)
        if status not in (200, 201):
            raise HttpError(f"sign-up failed: {status} {payload[:200]!r}")
        self.csrf = json.loads(payload)["csrf_token"]

    async def play(self, until: float) -> None:
        self.deadline = until
        await self.pause()  # players arrive at random offsets, not all in the same millisecond
        while time.monotonic() < until:
            status, payload = await self.call("next", "POST", "/api/rounds", {"campaign": "load"},
                                              {"X-Admin-Token": ADMIN})
            if status == 404:
                return
            rnd = json.loads(payload)["round"]
            await self.call("image", "GET", rnd["image_url"])
            for _ in range(self.rng.randint(0, 2)):
                await self.pause()
                status, payload = await self.call("reveal", "POST", f"/api/rounds/{rnd['id']}/reveal",
                                                  {"to_step": rnd["reveal_step"] + 1})
                if status == 200:
                    rnd = json.loads(payload)["round"]
                await self.call("image", "GET", rnd["image_url"])
            await self.pause()
            labels = self.rng.sample(WORDS, self.rng.randint(1, 3))
            key = uuid.uuid4().hex
            if self.rng.random() < 0.15:
                path, body = f"/api/rounds/{rnd['id']}/give-up", {"labels": labels}
            else:
                path = f"/api/rounds/{rnd['id']}/guess"
                body = {"guessed_class": self.rng.choice(rnd["class_names"]), "labels": labels}
            status, payload = await self.call("answer", "POST", path, body, {"Idempotency-Key": key},
                                              must_finish=True)
            if status not in (200, 201):
                raise HttpError(f"answer refused: {status} {payload[:200]!r}")
            data = json.loads(payload)
            fin = data["round"]
            self.stats.acked.append((self.name, fin["cluster_id"], tuple(x["text"] for x in fin["labels"]),
                                     bool(data["replayed"])))
            await self.pause()


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(db_url: str, port: int, workers: int, log: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "FEATURELENS_ADMIN_TOKEN": ADMIN}
    return subprocess.Popen(
        [sys.executable, "-m", "featurelens.cli.main", "game", "serve", "--database-url", db_url, "--host", HOST,
         "--port", str(port), "--workers", str(workers), "--rate-limit", "off", "--signup-limit", "off", "--gold-rate", "0", *extra],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def http_get(port: int, path: str, timeout: float = 1.0) -> int:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 180.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if http_get(port, "/healthz") == 200:
                return time.monotonic() - t0
        except OSError:
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


def _group_pids(pgid: int) -> list[str]:
    """The live processes of the server's process group (supervisor + workers)."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(d)
        except (OSError, ValueError, IndexError):
            continue
    return pids


def group_rss_mb(pgid: int) -> float:
    """Resident memory of the server's processes, MB."""
    total = 0
    for d in _group_pids(pgid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += next(int(line.split()[1]) for line in Path(f"/proc/{d}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
    return total / 1024


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the server's live processes."""
    ticks = 0
    for d in _group_pids(pgid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


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


# ---------------------------------------------------------------------------
# abuse traffic for the "bodies" scenario
# ---------------------------------------------------------------------------
async def big_body(port: int, size: int, stop_at: float) -> str:
    """Send an anonymous POST with a ``size``-byte JSON list as fast as the server reads it; return how
    it ended (the server's status line, or the error)."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        return type(exc).__name__
    head = (f"POST /api/rounds/1/guess HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    chunk = b'"aaaaaaa",' * 100_000  # 1 MB
    try:
        writer.write(head + b"[")
        sent = 1
        while sent < size - 1 and time.monotonic() < stop_at:
            part = chunk[: size - 1 - sent]
            writer.write(part)
            sent += len(part)
            await writer.drain()
        if sent >= size - 1:
            writer.write(b'"]'[-(size - sent):] if size - sent < 2 else b"]")
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), max(1.0, stop_at - time.monotonic()))
        return line.decode("latin-1").strip() or "closed"
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)  # a 413 may be waiting in the buffer
            if line:
                return line.decode("latin-1").strip()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        return type(exc).__name__
    finally:
        writer.close()


async def probe_health(port: int, until: float, out: list[float], failures: list[str], interval: float = 0.1,
                       conn: Conn | None = None) -> None:
    """``GET /healthz`` every ``interval`` seconds (0: back to back) until ``until``; latencies to ``out``."""
    conn = conn or Conn(port, timeout=10.0)
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            status, _h, _b = await conn.request("GET", "/healthz")
            if status != 200:
                failures.append(f"HTTP {status}")
        except HttpError as exc:
            failures.append(str(exc))
        out.append(time.monotonic() - t0)
        if interval > 0:
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    conn.close()


async def sample_memory(pgid: int, until: float, out: list[float]) -> None:
    while time.monotonic() < until:
        out.append(await asyncio.to_thread(group_rss_mb, pgid))
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------
# the floor: an empty request
# ---------------------------------------------------------------------------
async def bare_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """The smallest ASGI app: ``ok`` for every HTTP request (served by ``bare`` runs)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def start_bare(port: int, workers: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "load_game:bare_app",
         "--host", HOST, "--port", str(port), "--workers", str(workers), "--no-access-log",
         "--log-level", "warning", "--http", "featurelens.game.server:LimitedH11Protocol"],
        env=dict(os.environ), stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def run_floor(scenario: str, backend: str, db_url: str, args: argparse.Namespace, work: Path) -> dict:
    """``floor`` / ``bare``: every player's connection sends ``GET /healthz`` back to back."""
    port = free_port()
    log = work / f"server-{backend}-{scenario}.log"
    proc = (start_bare(port, args.workers, log) if scenario == "bare"
            else start(db_url, port, args.workers, log, args.serve_arg))
    await asyncio.to_thread(wait_ready, proc, port)
    conns = [Conn(port) for _ in range(args.players)]
    lat: list[float] = []
    fails: list[str] = []
    load0, t0 = loadavg(), time.monotonic()
    until = t0 + min(args.duration, 20.0)
    cpu0, client0 = group_cpu_s(proc.pid), time.process_time()

    try:
        await asyncio.gather(*(probe_health(port, until, lat, fails, 0.0, c) for c in conns))
        wall = time.monotonic() - t0
        server_cpu, client_cpu = group_cpu_s(proc.pid) - cpu0, time.process_time() - client0
    finally:
        for c in conns:
            c.close()
        stop(proc)
    return {"scenario": scenario, "backend": "none" if scenario == "bare" else backend, "players": args.players,
            "workers": args.workers, "duration_s": round(wall, 1), "think_s": 0.0, "load_avg": [load0, loadavg()],
            "requests": len(lat), "requests_per_s": len(lat) / wall, "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99), "max_ms": 1000 * max(lat) if lat else float("nan"), "errors": len(fails),
            "error_kinds": collections.Counter(fails).most_common(5), "exact": None,
            "labels_acked": 0, "labels_exported": 0,
            "server_cpu_ms_per_req": 1000 * server_cpu / max(len(lat), 1),
            "client_cpu_ms_per_req": 1000 * client_cpu / max(len(lat), 1)}


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return 1000.0 * float(np.percentile(values, q)) if values else float("nan")


async def run_load(scenario: str, backend: str, db_url: str, args: argparse.Namespace, work: Path) -> dict:
    port = free_port()
    log = work / f"server-{backend}-{scenario}.log"
    proc = start(db_url, port, args.workers, log, args.serve_arg)
    startup = await asyncio.to_thread(wait_ready, proc, port)
    think = 0.0 if scenario == "saturation" else args.think
    stats = Stats()
    players = [Player(i, port, stats, think, random.Random(i)) for i in range(args.players)]
    s0 = time.monotonic()
    sem = asyncio.Semaphore(8)  # sign-ups: argon2 is expensive, do not hammer it

    async def signup(p: Player) -> None:
        async with sem:
            await p.signup()

    await asyncio.gather(*(signup(p) for p in players))
    print(f"[{backend}/{scenario}] server ready in {startup:.1f} s; {args.players} players signed up in "
          f"{time.monotonic() - s0:.1f} s; {args.duration:g} s of load", flush=True)
    stats.latencies.clear()
    stats.failures.clear()
    load0 = loadavg()
    t0 = time.monotonic()
    until = t0 + args.duration
    rss0 = group_rss_mb(proc.pid)
    cpu0, client0 = group_cpu_s(proc.pid), time.process_time()
    tasks = [asyncio.create_task(p.play(until)) for p in players]
    health: list[float] = []
    health_fail: list[str] = []
    rss: list[float] = []
    bodies: list[str] = []
    k0 = k1 = float("inf")
    if scenario == "bodies":
        side = [asyncio.create_task(probe_health(port, until, health, health_fail)),
                asyncio.create_task(sample_memory(proc.pid, until, rss))]
        await asyncio.sleep(min(5.0, args.duration / 4))
        bodies = await asyncio.gather(*(big_body(port, 50 * 2**20, until) for _ in range(4)))
        await asyncio.gather(*side)
    elif scenario == "kill":
        await asyncio.sleep(args.duration / 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)
        k0 = time.monotonic()
        print(f"[{backend}/{scenario}] SIGKILL at t={k0 - t0:.1f} s; restarting", flush=True)
        proc = start(db_url, port, args.workers, log, args.serve_arg)
        await asyncio.to_thread(wait_ready, proc, port)
        k1 = time.monotonic()
        print(f"[{backend}/{scenario}] back after {k1 - k0:.1f} s", flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.monotonic() - t0
    server_cpu = group_cpu_s(proc.pid) - (cpu0 if scenario != "kill" else 0.0)
    client_cpu = time.process_time() - client0
    load1 = loadavg()
    # a player still waiting for the restarted server at the deadline is no server error; an answer is
    client_errors = [str(r) for r in results if isinstance(r, BaseException)
                     and (scenario != "kill" or str(r).startswith("answer"))]
    try:
        conn = Conn(port, timeout=120)
        status, _h, payload = await conn.request("GET", "/api/admin/campaigns/load/export?format=jsonl",
                                                 headers={"Authorization": f"Bearer {ADMIN}"})
        conn.close()
        if status != 200:
            raise RuntimeError(f"export failed: HTTP {status}")
        exported = [json.loads(line) for line in payload.decode().splitlines() if line]
    finally:
        stop(proc)
    for p in players:
        p.c.close()

    def in_kill_window(sent: float, dt: float) -> bool:
        return sent < k0 <= sent + dt or k0 <= sent < k1

    game = [dt for kind, dt, sent in stats.latencies if kind in GAME_KINDS and not in_kill_window(sent, dt)]
    errors = [f for f in stats.failures if not (k0 - 30 <= f[2] < k1)]
    acked = collections.Counter((a[0], a[1], lab) for a in stats.acked for lab in a[2])
    rows = collections.Counter((e["player"], e["cluster_id"], e["label"]) for e in exported)
    answers = collections.Counter((a[0], a[1]) for a in stats.acked)
    downtime = (k1 - k0) if k1 < float("inf") else 0.0
    res = {
        "scenario": scenario, "backend": backend, "players": args.players, "workers": args.workers,
        "duration_s": args.duration, "think_s": think, "load_avg": [load0, load1],
        "requests": len(game), "requests_per_s": len(game) / max(wall - downtime, 1e-9),
        "p50_ms": pct(game, 50), "p90_ms": pct(game, 90), "p99_ms": pct(game, 99),
        "max_ms": 1000 * max(game) if game else float("nan"),
        "by_kind": {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                    for k in GAME_KINDS for v in [[dt for kk, dt, _s in stats.latencies if kk == k]]},
        "errors": len(errors) + len(client_errors),
        "error_kinds": collections.Counter(f"{f[0]}: {f[1]}" for f in errors).most_common(5),
        "client_errors": client_errors[:5],
        "answers": len(stats.acked), "replayed": sum(a[3] for a in stats.acked),
        "labels_acked": sum(acked.values()), "labels_exported": sum(rows.values()),
        "exact": acked == rows and all(v == 1 for v in answers.values()) and all(v == 1 for v in rows.values()),
        "kill_downtime_s": downtime or None,
        # CPU per answered game request (load-independent): server processes (all workers) and this client
        "server_cpu_ms_per_req": 1000 * server_cpu / max(len(game), 1) if scenario != "kill" else float("nan"),
        "client_cpu_ms_per_req": 1000 * client_cpu / max(len(game), 1),
    }
    if scenario == "bodies":
        res.update(healthz_p99_ms=pct(health, 99), healthz_max_ms=1000 * max(health) if health else None,
                   healthz_failures=len(health_fail), rss_start_mb=rss0,
                   rss_growth_mb=(max(rss) - rss0) if rss else None, bodies=bodies)
    return res


# ---------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------
def verdict(r: dict) -> str:
    if r["scenario"] in ("floor", "bare"):
        return "(floor)"
    ok = r["exact"] and r["errors"] == 0
    bound, floor = TARGETS.get((r["scenario"], r["backend"]), (None, None))
    if bound is not None:
        ok = ok and r["p99_ms"] < bound
    if floor is not None:
        ok = ok and r["requests_per_s"] >= floor
    if r["scenario"] == "kill":
        ok = r["exact"]
    if r["scenario"] == "bodies":
        ok = ok and r["healthz_p99_ms"] < 200 and (r["rss_growth_mb"] or 0) < 100 and r["healthz_failures"] == 0
    return "yes" if ok else "**no**"


def table(results: list[dict]) -> str:
    out = ["| scenario | backend | load avg | req/s | p50 | p90 | p99 | max | errors | labels ack = export "
           "(exact) | CPU ms/req server + client | other | target met |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|"]
    for r in results:
        other = ""
        cpu = "–" if r["scenario"] == "kill" else \
            f"{r['server_cpu_ms_per_req']:.1f} + {r['client_cpu_ms_per_req']:.1f}"
        if r["scenario"] == "kill":
            other = f"down {r['kill_downtime_s']:.1f} s, {r['replayed']} replayed"
        if r["scenario"] == "bodies":
            ends = sorted({"413" if " 413 " in b else ("reset" if "Reset" in b else b[:20]) for b in r["bodies"]})
            other = (f"/healthz p99 {r['healthz_p99_ms']:.0f} ms, memory +{r['rss_growth_mb']:.0f} MB, "
                     f"4 × 50 MB: {'/'.join(ends)}")
        out.append(f"| {r['scenario']} | {r['backend']} | {r['load_avg'][0]:.1f}–{r['load_avg'][1]:.1f} | "
                   f"{r['requests_per_s']:.0f} | {r['p50_ms']:.0f} ms | {r['p90_ms']:.0f} ms | "
                   f"{r['p99_ms']:.0f} ms | {r['max_ms']:.0f} ms | {r['errors']} | "
                   + ("– | " if r["exact"] is None else
                      f"{r['labels_acked']} = {r['labels_exported']} ({'yes' if r['exact'] else 'NO'}) | ") +
                   f"{cpu} | {other} | "
                   f"{verdict(r)} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=100)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of load per run")
    ap.add_argument("--think", type=float, default=6.0, help="think time: uniform in [0, THINK] s")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scenarios", default="think,saturation,kill,bodies")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg-url", default=os.environ.get("FEATURELENS_TEST_DATABASE_URL"),
                    help="PostgreSQL server URL (default: $FEATURELENS_TEST_DATABASE_URL, see scripts/pg.sh)")
    ap.add_argument("--images", type=int, default=40, help="bundle size: images (× 2 layers × 4 maps)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for `game serve`")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if not 1 <= args.players <= 500 or not 1 <= args.duration <= 600:
        ap.error("keep it bounded: 1-500 players, 1-600 s")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ("think", "saturation", "kill", "bodies", "floor", "bare"):
            ap.error(f"unknown scenario {s!r}")

    from featurelens.game import store
    from featurelens.game.db import Database, make_engine, migrate
    from featurelens.game.simulate import synthetic_bundle

    results = []
    with tempfile.TemporaryDirectory(prefix="featurelens-load-") as tmp:
        work = Path(tmp)
        print(f"building the bundle ({args.images} images) ...", flush=True)
        bundle = synthetic_bundle(work / "bundle", images=args.images, layers=("blocks.12", "head"), clusters=4)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "postgres" and not args.pg_url:
                print("[postgres] skipped: no --pg-url / FEATURELENS_TEST_DATABASE_URL", flush=True)
                continue
            if backend not in ("sqlite", "postgres"):
                ap.error(f"unknown backend {backend!r}")
            for scenario in scenarios:
                if scenario == "bare" and any(r["scenario"] == "bare" for r in results):
                    continue  # no database: once is enough
                url = str(work / f"load-{scenario}.sqlite3") if backend == "sqlite" else pg_database(args.pg_url)
                engine = make_engine(url)
                migrate(engine)
                store.import_bundle(Database(engine), bundle, "load")
                engine.dispose()
                runner = run_floor if scenario in ("floor", "bare") else run_load
                res = asyncio.run(runner(scenario, backend, url, args, work))
                results.append(res)
                print(json.dumps(res, default=str), flush=True)
    print(f"\n{args.players} players, --workers {args.workers}, {args.duration:g} s per run, think time "
          f"0–{args.think:g} s (none in saturation), {args.images}-image bundle; load avg = 1-min load at start–end\n")
    print(table(results))
    base = next((r for r in results if r["scenario"] == "think"), None)
    if base:
        for r in results:
            if r is not base and r["scenario"] in ("think", "saturation"):
                print(f"ratio {r['backend']}/{r['scenario']} vs {base['backend']}/think: p99 "
                      f"{r['p99_ms'] / base['p99_ms']:.2f}, req/s {r['requests_per_s'] / base['requests_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    floor = {r["backend"]: r for r in results if r["scenario"] in ("floor", "bare")}
    for r in results:
        if r["scenario"] == "saturation":
            for name, f in floor.items():
                print(f"saturation {r['backend']} vs the {f['scenario']} floor ({name}): req/s "
                      f"{r['requests_per_s'] / f['requests_per_s']:.2f}, server CPU ms/req "
                      f"{r['server_cpu_ms_per_req']:.2f} vs {f['server_cpu_ms_per_req']:.2f}")
    return 0 if all(r["exact"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
