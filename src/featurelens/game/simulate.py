"""Simulated players that drive the game's real HTTP API.

Any httpx-compatible client works: ``starlette.testclient.TestClient(app)`` in-process, or
``httpx.Client(base_url="http://127.0.0.1:8000")`` against a live server. Each player needs its own
client (the session cookie lives in the client's cookie jar)::

    from featurelens.game.simulate import PlayerProfile, simulate
    profiles = [PlayerProfile(f"sim{i}", accuracy=0.8, reveals=(0, 3),
                              labels={"blocks.12": ["fur", "ear"], "*": ["texture"]}) for i in range(5)]
    result = simulate(lambda: TestClient(app), profiles, rounds=4, truth=bundle, admin_token=TOKEN)
    result.submissions  # every acknowledged answer (player, cluster_id, labels, ...)

Configurable per player (:class:`PlayerProfile`): which labels they type (a mapping keyed by cluster id,
``"<layer>/<index>"``, layer, image id, or true class — first match wins, ``"*"`` as fallback — or a
callable ``round_dict -> list[str]``), how accurate their guesses are (needs ``truth``, the bundle or an
``{image_id: class}`` mapping; otherwise they guess at random), how many times they press "Show more"
(a number or an inclusive ``(lo, hi)`` range), how often they give up, and a think time.

Robustness: every request is retried on connection errors and 5xx/503 answers until ``deadline``;
answers carry an idempotency key that stays the same across retries, so a server killed and restarted
mid-request never records an answer twice, and every answer the server acknowledged is recorded
exactly once in :attr:`SimulationResult.submissions`.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LabelSpec = Mapping[str, Sequence[str]] | Callable[[dict[str, Any]], Sequence[str]] | None


@dataclass
class PlayerProfile:
    name: str
    password: str = "correct horse battery"
    accuracy: float = 0.7
    reveals: int | tuple[int, int] = (0, 2)
    labels: LabelSpec = None
    give_up_rate: float = 0.0
    think_time: float = 0.0
    fetch_images: bool = True
    seed: int | None = None  # None: derived from the name, the same in every process


@dataclass
class Submission:
    """An answer the server acknowledged (HTTP 201 new, or 200 replay of the same key)."""

    player: str
    round_id: int
    cluster_id: str
    image_id: str
    layer: str
    reveal_step: int
    guessed_class: str  # "" when the player gave up
    correct: bool
    labels: list[str]
    points: int
    idempotency_key: str
    replayed: bool
    seen_before: bool = False  # a label-only round: the player had seen this photo, the guess scores nothing


@dataclass
class SimulationResult:
    submissions: list[Submission] = field(default_factory=list)
    # (endpoint kind, seconds, time.monotonic() when the request was sent)
    latencies: list[tuple[str, float, float]] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def merge(self, other: SimulationResult) -> None:
        with self._lock:
            self.submissions += other.submissions
            self.latencies += other.latencies
            self.requests += other.requests
            self.retries += other.retries
            self.rate_limited += other.rate_limited
            self.errors += other.errors


class SimulationError(RuntimeError):
    pass


_DEFAULT_WORDS = ("fur", "ear", "eye", "edge", "stripes", "wheel", "sky", "face", "texture", "metal", "leaf")


def _labels_for(spec: LabelSpec, rnd: dict[str, Any], truth: str | None, rng: random.Random) -> list[str]:
    if callable(spec):
        return [str(x) for x in spec(rnd)]
    if spec:
        for key in (rnd["cluster_id"] or "\0", f"{rnd['layer']}/{rnd['cluster_index']}", rnd["layer"],
                    rnd["image_id"] or "\0", truth or "\0", "*"):
            if key in spec:
                return [str(x) for x in spec[key]]
    return [rng.choice(_DEFAULT_WORDS)]


class _Player:
    def __init__(self, client: Any, profile: PlayerProfile, truth: Mapping[str, str | None], campaign: str | None,
                 deadline: float, result: SimulationResult, admin_token: str | None = None) -> None:
        self.c, self.p, self.truth, self.campaign = client, profile, truth, campaign
        self.oracle = {"X-Admin-Token": admin_token} if admin_token else {}
        self.deadline, self.res = deadline, result
        # not hash(name): str hashes are salted per process, so runs would not repeat
        self.rng = random.Random(profile.seed if profile.seed is not None else zlib.crc32(profile.name.encode()))
        self.csrf = ""

    # one HTTP call with retries; returns the response for any status < 500 (except 429: wait and retry)
    def call(self, kind: str, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None,
             must_finish: bool = False) -> Any:
        delay = 0.05
        while True:
            h = {"X-CSRF-Token": self.csrf, **(headers or {})}
            sent = time.monotonic()
            t0 = time.perf_counter()
            try:
                r = self.c.request(method, url, json=json, headers=h)
            except Exception as exc:  # connection refused/reset while the server restarts
                r, err = None, exc
            dt = time.perf_counter() - t0
            self.res.requests += 1
            if r is not None and r.status_code < 500 and r.status_code != 429:
                self.res.latencies.append((kind, dt, sent))
                return r
            if r is not None and r.status_code == 429:
                self.res.rate_limited += 1
                wait = float(r.headers.get("retry-after", "1") or 1)
            else:
                wait = delay
                delay = min(delay * 2, 1.0)
                if r is None:
                    err_text = type(err).__name__
                else:
                    err_text = f"HTTP {r.status_code}"
                if len(self.res.errors) < 50:
                    self.res.errors.append(f"{self.p.name} {kind}: {err_text}")
            self.res.retries += 1
            # answers must be retried until acknowledged (bounded by a generous grace period)
            limit = self.deadline + (60.0 if must_finish else 0.0)
            if time.monotonic() + wait > limit:
                raise SimulationError(f"{self.p.name}: {kind} not answered before the deadline")
            time.sleep(wait)

    def login(self) -> None:
        r = self.call("csrf", "GET", "/api/csrf")
        self.csrf = r.json()["csrf_token"]
        body = {"username": self.p.name, "password": self.p.password}
        r = self.call("signup", "POST", "/api/signup", json=body)
        if r.status_code == 409:  # exists (e.g. a retried sign-up that was committed): log in
            r = self.call("login", "POST", "/api/login", json=body)
        if r.status_code not in (200, 201):
            raise SimulationError(f"{self.p.name}: sign-up/login failed: HTTP {r.status_code} {r.text[:200]}")
        self.csrf = r.json()["csrf_token"]

    def play_round(self) -> bool:
        r = self.call("next", "POST", "/api/rounds", json={"campaign": self.campaign}, headers=self.oracle)
        if r.status_code == 404:
            return False
        if r.status_code != 200:
            raise SimulationError(f"{self.p.name}: next round: HTTP {r.status_code} {r.text[:200]}")
        rnd = r.json()["round"]
        if self.p.fetch_images:
            self.call("image", "GET", rnd["image_url"])
        lo, hi = (self.p.reveals, self.p.reveals) if isinstance(self.p.reveals, int) else self.p.reveals
        target = min(self.rng.randint(lo, hi), rnd["max_step"])
        while rnd["reveal_step"] < target:
            time.sleep(self.p.think_time)
            r = self.call("reveal", "POST", f"/api/rounds/{rnd['id']}/reveal", json={"to_step": rnd["reveal_step"] + 1},
                          headers=self.oracle)
            if r.status_code != 200:
                raise SimulationError(f"{self.p.name}: reveal: HTTP {r.status_code} {r.text[:200]}")
            rnd = r.json()["round"]
            if self.p.fetch_images:
                self.call("image", "GET", rnd["image_url"])
        time.sleep(self.p.think_time)
        truth = self.truth.get(rnd["image_id"] or "")
        labels = _labels_for(self.p.labels, rnd, truth, self.rng)
        key = uuid.uuid4().hex
        give_up = self.rng.random() < self.p.give_up_rate
        if give_up:
            url, body = f"/api/rounds/{rnd['id']}/give-up", {"labels": labels}
        else:
            classes = rnd["class_names"]
            if truth is not None and truth in classes and self.rng.random() < self.p.accuracy:
                guess = truth
            else:
                wrong = [c for c in classes if c != truth] or classes
                guess = self.rng.choice(wrong)
            url, body = f"/api/rounds/{rnd['id']}/guess", {"guessed_class": guess, "labels": labels}
        r = self.call("answer", "POST", url, json=body, headers={"Idempotency-Key": key}, must_finish=True)
        if r.status_code not in (200, 201):
            raise SimulationError(f"{self.p.name}: answer: HTTP {r.status_code} {r.text[:300]}")
        data = r.json()
        fin = data["round"]
        self.res.submissions.append(Submission(
            player=self.p.name, round_id=fin["id"], cluster_id=fin["cluster_id"], image_id=fin["image_id"],
            layer=fin["layer"], reveal_step=fin["reveal_step"], guessed_class=fin["guessed_class"] or "",
            correct=bool(fin["correct"]), labels=[x["text"] for x in fin["labels"]], points=int(data["points"]),
            idempotency_key=key, replayed=bool(data["replayed"]), seen_before=bool(fin.get("label_only", False))))
        return True


def run_player(client: Any, profile: PlayerProfile, *, rounds: int | None = None, duration: float | None = None,
               truth: Any = None, campaign: str | None = None, admin_token: str | None = None,
               start_barrier: threading.Barrier | None = None) -> SimulationResult:
    """One simulated player: sign up (or log in), then play ``rounds`` rounds or until ``duration`` s pass
    (whichever comes first), or until no map is left for them. With ``start_barrier`` the player waits
    there after logging in, and ``duration`` counts from the moment all players have passed it."""
    if rounds is None and duration is None:
        raise ValueError("give rounds, duration or both")
    res = SimulationResult()
    budget = duration if duration is not None else 3600.0
    pl = _Player(client, profile, truth_map(truth), campaign, time.monotonic() + budget + 600.0, res, admin_token)
    try:
        try:
            pl.login()
        finally:
            if start_barrier is not None:
                start_barrier.wait()
        deadline = pl.deadline = time.monotonic() + budget
        n = 0
        while (rounds is None or n < rounds) and time.monotonic() < deadline:
            if not pl.play_round():
                break
            n += 1
    except SimulationError as exc:
        res.errors.append(str(exc))
    return res


def simulate(client_factory: Callable[[], Any], profiles: Sequence[PlayerProfile], *, rounds: int | None = None,
             duration: float | None = None, truth: Any = None, campaign: str | None = None,
             concurrency: int | None = None, admin_token: str | None = None) -> SimulationResult:
    """Run every profile concurrently (threads), each with its own client from ``client_factory``.

    A running round hides its image and cluster ids from players (they can name the class). Pass the
    server's ``admin_token`` to make the players "oracles" that see them: needed for ``accuracy`` (with
    ``truth``) and for labels keyed by cluster id, image id or class; without it players guess at random
    and labels are chosen by layer, ``"<layer>/<index>"`` or ``"*"``."""
    total = SimulationResult()

    def one(profile: PlayerProfile) -> None:
        client = client_factory()
        try:
            total.merge(run_player(client, profile, rounds=rounds, duration=duration, truth=truth,
                                   campaign=campaign, admin_token=admin_token))
        finally:
            close = getattr(client, "close", None)
            if close:
                close()

    with ThreadPoolExecutor(max_workers=concurrency or max(1, len(profiles))) as pool:
        list(pool.map(one, profiles))
    return total


def truth_map(truth: Any) -> dict[str, str | None]:
    """``{image_id: class}`` from a bundle (path or loaded), a mapping, or ``None``."""
    if truth is None:
        return {}
    if isinstance(truth, Mapping):
        return dict(truth)
    from featurelens.network.bundle import Bundle, load_bundle

    bundle = truth if isinstance(truth, Bundle) else load_bundle(truth)
    return {im.id: im.true_class or im.predicted_class for im in bundle.images}


def synthetic_bundle(out: str | Path, *, images: int = 4, layers: Sequence[str] = ("blocks.12", "head"),
                     clusters: int = 3, size: int = 224, seed: int = 0) -> Path:
    """A small valid bundle for tests, load tests and demos, without a model: real scikit-image photos
    and synthetic cluster maps (Gaussian blobs). Image ``i`` uses photo ``i mod 6``; every third image has
    ``true_class = null`` (so the predicted class is the truth)."""
    from PIL import Image as PILImage

    from featurelens.imaging import sample_images
    from featurelens.network.bundle import BundleWriter

    names = ["coffee", "chelsea", "astronaut", "rocket", "horse", "camera"]
    classes = {"coffee": "coffee mug", "chelsea": "tabby cat", "astronaut": "astronaut", "rocket": "rocket",
               "horse": "horse", "camera": "camera"}
    photos = sample_images(names)
    rng = np.random.default_rng(seed)
    w = BundleWriter(out, model={"name": "synthetic", "input_size": [size, size]},
                     target={"kind": "predicted-class", "description": "synthetic test bundle"},
                     class_names=list(classes.values()), params={"synthetic": True, "seed": seed})
    feat = 7
    for layer in layers:
        w.add_layer(layer, channels=64, feature_size=(feat, feat))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(images):
        name = names[i % len(names)]
        rgb = np.asarray(photos[name].convert("RGB").resize((size, size), PILImage.BILINEAR), dtype=np.uint8)
        cls = classes[name]
        img_id = w.add_image(rgb, source=f"skimage:{name}", predicted_class=cls,
                             predicted_index=list(classes.values()).index(cls), score=float(rng.uniform(5, 12)),
                             true_class=None if i % 3 == 2 else cls, image_id=f"{name}_{i}")
        for layer in layers:
            for _k in range(clusters):
                cy, cx = rng.uniform(0.15, 0.85, size=2)
                s = rng.uniform(0.06, 0.2)
                m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(np.float32)
                m = (m - m.min()) / (m.max() - m.min())
                fm = np.asarray(PILImage.fromarray((m * 255).astype(np.uint8)).resize((feat, feat)),
                                dtype=np.float32) / 255.0
                w.add_cluster(img_id, layer, channels=sorted(rng.choice(64, size=3, replace=False).tolist()),
                              weight=float(rng.uniform(5, 40)), feature_map=fm, image_map=m)
    w.close()
    return Path(out)
