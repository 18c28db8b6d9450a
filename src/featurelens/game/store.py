"""The game's service layer: bundle import, accounts, assignment, rounds, scores and export.

Every function takes a :class:`~featurelens.game.db.Database`; every change happens in exactly one
transaction (``Database.write``). The web routes and the CLI are thin shells over these functions.

Submissions and idempotency
    Finishing a round (guess or give up, with its labels) is one transaction that flips the round
    from ``open`` to ``guessed``/``gave_up`` with a conditional ``UPDATE ... WHERE status='open'`` and
    stores the client's idempotency key in ``rounds.finish_key`` (``UNIQUE(player_id, finish_key)``).
    A retry with the same key returns the stored result (``replayed=True``) and never inserts again;
    a different key on a finished round is a conflict; a key reused for another round is rejected.

Assignment
    A player gets their open round back if they have one; otherwise a map they have never had
    (``UNIQUE(player_id, cluster_pk)``) with the fewest expected labels (``label_count + open_count``),
    ties broken at random. With probability ``gold_rate`` a gold map (known labels) is served instead,
    when one is left for the player; agreement with its known labels gives the player's reliability.

Seen photos (campaign setting ``seen_policy``)
    Once a player has finished a round, they have seen its photo and class. The other maps of that photo
    (same SHA-256 of the photo bytes, in any campaign) are then either served only after every unseen
    map, as *label-only* rounds (``label_only``, the default: every map still gets labels): no class to
    guess, no guess points; or never served to them (``skip``). A round is ``seen_before`` when the photo had been seen when it started or
    when it is answered (a round opened in another campaign meanwhile); its guess scores 0 either way, and
    the export's ``seen_before`` column says so.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import random
import re
import secrets
import struct
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import Integer, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as OrmSession

from featurelens.game.db import Database, GameError
from featurelens.game.masks import REVEAL_Q, encode_jpeg
from featurelens.game.models import (
    Campaign,
    Cluster,
    ClusterAsset,
    Image,
    Label,
    LoginFailure,
    PasswordReset,
    Player,
    Round,
    Session,
    Signup,
    utcnow,
)
from featurelens.game.scoring import (
    AGREE_CAP,
    AGREE_POINTS,
    ExactMatcher,
    LabelMatcher,
    LemmaMatcher,
    guess_points,
)

EXPORT_COLUMNS = (
    "campaign", "player", "image_id", "layer", "cluster_id", "cluster_index", "reveal_step", "q_percent",
    "guessed_class", "true_class", "correct", "label", "created_at",
    # export v2 (issue 13): the cluster map's game statistics over all its finished rounds (docs/game.md)
    "map_rounds", "map_correct", "map_wrong", "map_gave_up", "map_unknown", "map_mean_q",
    "seen_before", "verified", "language",
)
#: a player "passed gold checks" with at least this many gold rounds, and this share of them agreeing
GOLD_MIN_ROUNDS = 2
GOLD_MIN_RELIABILITY = 0.5
SEEN_POLICIES = ("skip", "label_only")
AGREEMENT_RULES = ("address", "gold")
MAX_LABELS = 5
MAX_LABEL_CHARS = 48
SESSION_DAYS = 30
# bulk UPDATEs whose rows the transaction refreshes itself (or never loaded): skip the ORM's session
# synchronisation (an evaluation in Python, or a fetch for expressions like max(open_count - 1, 0))
_NO_SYNC = {"synchronize_session": False}


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
class ValidationError(GameError):
    """Bad user input; the message is safe and meant to be shown to the user."""


class NotFound(GameError):
    pass


class Conflict(GameError):
    pass


class RateLimited(GameError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
_CAMPAIGN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$")


def _clean(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def validate_campaign_name(name: str) -> str:
    name = str(name).strip()
    if not _CAMPAIGN.match(name):
        raise ValidationError("campaign names are 1-100 characters: letters, digits, space, '_', '.', '-'")
    return name


def validate_username(name: str) -> str:
    """NFKC-normalised name; refuses invisible, blank-looking and mixed-script names (:mod:`.names`)."""
    from featurelens.game.names import NameError_, normalize_username

    try:
        return normalize_username(name)
    except NameError_ as exc:
        raise ValidationError(str(exc)) from None


def validate_password(password: str) -> str:
    if not 8 <= len(password) <= 256:
        raise ValidationError("passwords are 8 to 256 characters long")
    return password


def validate_labels(texts: Iterable[str], matcher: LabelMatcher, *, required: bool) -> list[str]:
    """Clean label texts: collapse spaces, drop empties; check count, length, characters, duplicates."""
    labels = [_clean(t) for t in texts]
    labels = [t for t in labels if t]
    if required and not labels:
        raise ValidationError("describe what you see with at least one short label")
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"at most {MAX_LABELS} labels per map")
    seen: dict[str, int] = {}
    for i, t in enumerate(labels, 1):
        if len(t) > MAX_LABEL_CHARS:
            raise ValidationError(f"label {i} is {len(t)} characters long; keep labels to {MAX_LABEL_CHARS} or fewer")
        if not t.isprintable():
            raise ValidationError(f"label {i} contains control characters")
        if not any(ch.isalpha() for ch in t):
            raise ValidationError(f"label {i} needs at least one letter (a word describing what you see)")
        key = matcher.normalize(t) or t.casefold()
        if key in seen:
            raise ValidationError(f"labels {seen[key]} and {i} say the same thing; give each idea once")
        seen[key] = i
    return labels


# ---------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------
@dataclass
class ImportSummary:
    campaign: str
    images: int
    maps: int
    gold_maps: int
    class_names: list[str]
    content_hash: str = ""


def _read_bundle(bundle: Any) -> list[tuple[Any, np.ndarray, list[tuple[Any, np.ndarray]]]]:
    """Every image's photo (H×W×3 uint8) and every cluster's feature-resolution map (float32), read
    through the bundle API (any bundle version)."""
    from featurelens.network.render import load_photo

    return [(im, load_photo(bundle, im), [(c, np.asarray(bundle.load_map(c), dtype=np.float32))
                                          for c in im.clusters]) for im in bundle.images]


def bundle_content_hash(bundle: Any, content: list | None = None) -> str:
    """SHA-256 of what a campaign is made of: every image id with its photo's pixels and every cluster id
    with its feature-resolution map (float32), in the bundle's order (metadata such as a creation time is
    left out). ``content``: what :func:`_read_bundle` returned, when already read."""
    h = hashlib.sha256()
    for im, photo, clusters in content if content is not None else _read_bundle(bundle):
        h.update(f"image\0{im.id}\0".encode())
        h.update(hashlib.sha256(np.ascontiguousarray(photo).tobytes()).digest())
        for c, m in clusters:
            h.update(f"cluster\0{c.id}\0".encode())
            h.update(hashlib.sha256(np.ascontiguousarray(m).tobytes()).digest())
    return h.hexdigest()


def _map_bytes(m: np.ndarray) -> bytes:
    """A feature-resolution map as stored in the game: ``h``, ``w`` (uint16 little-endian), float32 values."""
    m = np.ascontiguousarray(m, dtype="<f4")
    return struct.pack("<HH", *m.shape) + m.tobytes()


def _map_from_bytes(data: bytes) -> np.ndarray:
    h, w = struct.unpack_from("<HH", data)
    return np.frombuffer(data, dtype="<f4", count=h * w, offset=4).reshape(h, w)


def validate_agreement_rule(rule: str) -> str:
    if rule not in AGREEMENT_RULES:
        raise ValidationError(f"agreement_rule must be one of {', '.join(AGREEMENT_RULES)}; got {rule!r}")
    return rule


def validate_seen_policy(policy: str) -> str:
    if policy not in SEEN_POLICIES:
        raise ValidationError(f"seen_policy must be one of {', '.join(SEEN_POLICIES)}; got {policy!r}")
    return policy


@lru_cache(maxsize=32)
def _render_inputs(photo: bytes, map_npy: bytes, sigma: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The decoded photo and the map rendered at its size (cached: a round asks for several steps)."""
    from PIL import Image as PILImage

    from featurelens.network.render import image_map

    with PILImage.open(io.BytesIO(photo)) as im:
        rgb = np.asarray(im.convert("RGB"))
    m = _map_from_bytes(map_npy)
    return rgb, image_map(m, rgb.shape[:2], sigma)


def render_asset(conn: Any, cluster_pk: int, kind: str) -> bytes | None:
    """A map's reveal step ``r<i>`` or its ``overlay`` (JPEG), rendered on demand from the map stored at
    import (feature resolution, kind ``map``) over the campaign's photo, with the rule of
    :mod:`featurelens.network.render` and :func:`featurelens.game.masks.reveal`; ``None`` if there is none.
    ``conn``: a SQLAlchemy connection or session (the request path reads with Core)."""
    c, k, a, i = Cluster.__table__, Campaign.__table__, ClusterAsset.__table__, Image.__table__
    data = conn.scalar(select(a.c.data).where(a.c.cluster_pk == cluster_pk, a.c.kind == "map"))
    if data is None:
        return None
    params = json.loads(conn.scalar(select(k.c.params_json).join(c, c.c.campaign_id == k.c.id)
                                    .where(c.c.id == cluster_pk)) or "{}")
    qs = params.get("reveal_q") or REVEAL_Q
    if kind != "overlay" and not (re.fullmatch(r"r[0-9]{1,2}", kind) and int(kind[1:]) < len(qs)):
        return None
    photo = conn.scalar(select(i.c.photo).join(c, c.c.image_pk == i.c.id).where(c.c.id == cluster_pk))
    sigma = params.get("smooth_sigma")
    q = None if kind == "overlay" else float(qs[int(kind[1:])])
    return _render_jpeg(bytes(photo), bytes(data), float(sigma) if sigma else None, q)


def warm_renderer() -> None:
    """Load the renderer (torch, the map rule, JPEG) now: the first render in a worker otherwise imports
    them on a request thread, about 1.7 s holding the GIL, and every request of that worker waits."""
    from featurelens.game.masks import reveal
    from featurelens.network.render import image_map, overlay_image

    rgb = np.zeros((8, 8, 3), np.uint8)
    imap = image_map(np.eye(2, dtype=np.float32), (8, 8), None)
    encode_jpeg(overlay_image(rgb, imap))
    encode_jpeg(reveal(rgb, imap, float(REVEAL_Q[0])))


@lru_cache(maxsize=64)
def _render_jpeg(photo: bytes, map_data: bytes, sigma: float | None, q: float | None) -> bytes:
    """One rendered step (``q`` %) or the overlay (``q = None``) as JPEG, cached by content: every player
    of a map asks for the same steps."""
    from featurelens.game.masks import reveal
    from featurelens.network.render import overlay_image

    rgb, imap = _render_inputs(photo, map_data, sigma)
    return encode_jpeg(overlay_image(rgb, imap) if q is None else reveal(rgb, imap, q))


def load_gold(path: str | Path) -> dict[str, list[str]]:
    """Gold labels from JSON ``{cluster_id: [label, ...]}`` or CSV rows ``cluster_id,label``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GameError(f"cannot read gold labels {path}: {exc}") from None
    gold: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GameError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise GameError(f"{path}: expected an object {{cluster_id: [label, ...]}}")
        return {str(k): [str(x) for x in v] for k, v in data.items()}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[0] != "cluster_id":
            gold.setdefault(row[0], []).append(row[1])
    return gold


def import_bundle(
    db: Database,
    bundle_path: str | Path,
    campaign: str,
    *,
    gold: Mapping[str, Sequence[str]] | None = None,
    seen_policy: str = "label_only",
    agreement_rule: str = "address",
) -> ImportSummary:
    """Import an explanation bundle as a new campaign: photos and maps at feature resolution (their reveal
    steps and overlay are rendered when first served, then cached by content).

    ``true_class`` of an image is kept as is; where it is null the export and the scoring use the
    model's ``predicted_class`` instead. A true class missing from the bundle's class list is added
    to the campaign's class list, so a correct guess is always possible.

    A bundle whose content (:func:`bundle_content_hash`) is already in a campaign is refused with
    :class:`Conflict`: its players would replay maps they already know.
    """
    from featurelens.network.bundle import load_bundle

    name = validate_campaign_name(campaign)
    validate_seen_policy(seen_policy)
    validate_agreement_rule(agreement_rule)
    bundle = load_bundle(bundle_path)
    try:
        content = _read_bundle(bundle)
        content_hash = bundle_content_hash(bundle, content)
    except OSError as exc:
        raise GameError(f"cannot read the bundle's files: {exc}") from None
    gold = {str(k): [_clean(x) for x in v if _clean(x)] for k, v in (gold or {}).items()}
    known = {c.id for _, c in bundle.clusters()}
    unknown = sorted(set(gold) - known)
    if unknown:
        raise GameError(f"gold labels name clusters that are not in the bundle: {', '.join(unknown[:5])}")
    class_names = list(dict.fromkeys(bundle.class_names))
    for im in bundle.images:
        truth = im.true_class or im.predicted_class
        if truth not in class_names:
            class_names.append(truth)

    def _check(s: OrmSession) -> None:
        if s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
            raise Conflict(f"campaign {name!r} already exists; choose another name")
        other = s.scalar(select(Campaign.name).where(Campaign.content_hash == content_hash))
        if other is not None:
            raise Conflict(f"this bundle is already imported as campaign {other!r} (same content, sha256 "
                           f"{content_hash[:12]}...); importing it again would let players replay maps they know")

    with db.read() as s:
        _check(s)

    # everything is read and encoded before the write transaction; a map is stored once, at feature
    # resolution, and its reveal steps and overlay are rendered when first served (render_asset)
    rendered: list[tuple[Any, bytes, list[tuple[Any, bytes]]]] = []
    for im, photo, maps in content:
        rendered.append((im, encode_jpeg(photo, quality=90), [(c, _map_bytes(m)) for c, m in maps]))
    sigma = bundle.method.get("smooth_sigma") if bundle.method else None

    def _write(s: OrmSession) -> ImportSummary:
        camp = Campaign(
            name=name,
            class_names_json=json.dumps(class_names),
            source=str(Path(bundle_path).resolve()),
            params_json=json.dumps({"model": bundle.model, "target": bundle.target, "reveal_q": REVEAL_Q,
                                    "smooth_sigma": sigma}),
            active=True,
            created_at=utcnow(),
            content_hash=content_hash,
            seen_policy=seen_policy,
            agreement_rule=agreement_rule,
        )
        s.add(camp)
        s.flush()
        # bulk inserts (one statement per table, ids returned in order): 1,000 images x 90 maps in seconds
        image_rows = [{"campaign_id": camp.id, "image_key": im.id, "true_class": im.true_class,
                       "predicted_class": im.predicted_class, "photo": photo,
                       "photo_hash": hashlib.sha256(photo).hexdigest()} for im, photo, _ in rendered]
        image_pks = list(s.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), image_rows))
        cluster_rows, maps = [], []
        for pk, (_, _, clusters) in zip(image_pks, rendered, strict=True):
            for c, data in clusters:
                labels = gold.get(c.id, [])
                cluster_rows.append({"campaign_id": camp.id, "image_pk": pk, "cluster_key": c.id, "layer": c.layer,
                                     "cluster_index": c.index, "weight": c.weight, "is_gold": bool(labels),
                                     "gold_labels_json": json.dumps(labels), "label_count": 0, "open_count": 0})
                maps.append(data)
        n_gold = sum(bool(r["is_gold"]) for r in cluster_rows)
        if cluster_rows:
            cluster_pks = list(s.scalars(insert(Cluster).returning(Cluster.id, sort_by_parameter_order=True),
                                         cluster_rows))
            s.execute(insert(ClusterAsset), [{"cluster_pk": pk, "kind": "map", "data": d}
                                             for pk, d in zip(cluster_pks, maps, strict=True)])
        return ImportSummary(name, len(rendered), len(cluster_rows), n_gold, class_names, content_hash)

    try:
        return db.write(_write)
    except IntegrityError:
        with db.read() as s:  # a concurrent import won: say which constraint
            _check(s)
        raise Conflict(f"campaign {name!r} already exists; choose another name") from None


def campaign_settings(db: Database, campaign: str, *, seen_policy: str | None = None,
                      agreement_rule: str | None = None) -> dict[str, str]:
    """Read (and, for the arguments given, change) a campaign's settings."""
    if seen_policy is not None:
        validate_seen_policy(seen_policy)
    if agreement_rule is not None:
        validate_agreement_rule(agreement_rule)

    def _w(s: OrmSession) -> dict[str, str]:
        camp = _campaign(s, campaign)
        if seen_policy is not None:
            camp.seen_policy = seen_policy
        if agreement_rule is not None:
            camp.agreement_rule = agreement_rule
        return {"campaign": camp.name, "seen_policy": camp.seen_policy, "agreement_rule": camp.agreement_rule}

    return db.write(_w)


# ---------------------------------------------------------------------------
# accounts and sessions
# ---------------------------------------------------------------------------
class PasswordHasher:
    """argon2id (memory-hard) with OWASP's minimum parameters: m = 19 MiB, t = 2, p = 1.

    At most ``concurrency`` hashes run at once per process, which bounds memory (19 MiB each).
    """

    def __init__(self, time_cost: int = 2, memory_cost: int = 19456, parallelism: int = 1,
                 concurrency: int = 4) -> None:
        from argon2 import PasswordHasher as _PH

        self._ph = _PH(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        self._sem = threading.BoundedSemaphore(concurrency)
        self._dummy = self._ph.hash(secrets.token_hex(8))

    def hash(self, password: str) -> str:
        with self._sem:
            return self._ph.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        with self._sem:
            try:
                return self._ph.verify(stored or self._dummy, password) and stored is not None
            except (VerificationError, InvalidHashError):
                return False


@dataclass
class PlayerSession:
    token: str  # the cookie value; only its SHA-256 is stored
    player_id: int
    username: str
    csrf_token: str
    language: str | None = None  # the player's chosen UI language, if any


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_key(address: str | None) -> str | None:
    """What is stored of a client address: a (salted-prefix) SHA-256, 32 hex digits; ``None`` if unknown."""
    if not address:
        return None
    return hashlib.sha256(b"featurelens-client\0" + address.encode("utf-8", "replace")).hexdigest()[:32]


def _signup_retry(s: OrmSession, key: str, limit: tuple[int, float]) -> None:
    retry = _window_retry(s, Signup.at, Signup.client_key == key, limit, 1.0)
    if retry is not None:
        raise RateLimited(f"too many new accounts from your address (at most {limit[0]} per {limit[1]:g} s); "
                          "try again later", retry)


def create_player(db: Database, hasher: PasswordHasher, username: str, password: str, *,
                  client_addr: str | None = None, signup_limit: tuple[int, float] | None = None) -> int:
    """A new account. With ``signup_limit=(n, seconds)`` and a client address, at most ``n`` sign-ups per
    address per window (counted in the database, so all workers agree); more raise :class:`RateLimited`."""
    username = validate_username(username)
    validate_password(password)
    key = client_key(client_addr)
    limit = signup_limit if key else None
    if limit:
        with db.read() as s:  # cheap check before the (deliberately slow) password hash
            _signup_retry(s, key, limit)  # type: ignore[arg-type]
    from featurelens.game.names import username_skeleton

    skeleton = username_skeleton(username)
    taken = Conflict("that user name is taken, or looks too much like one that is; choose another")
    with db.read() as s:
        if s.scalar(select(Player.id).where((Player.username_skeleton == skeleton)
                                            | (Player.username_key == username.casefold()))) is not None:
            raise taken
    pw_hash = hasher.hash(password)

    def _w(s: OrmSession) -> int:
        now = utcnow()
        if limit:
            _signup_retry(s, key, limit)  # type: ignore[arg-type]
            s.execute(delete(Signup).where(Signup.at < now - dt.timedelta(seconds=limit[1])))
            s.add(Signup(client_key=key, at=now))
        p = Player(username=username, username_key=username.casefold(), password_hash=pw_hash,
                   created_at=now, username_skeleton=skeleton)
        s.add(p)
        s.flush()
        return p.id

    try:
        return db.write(_w)
    except IntegrityError:
        raise taken from None


def _name_keys(username: str) -> list[str]:
    """Lookup keys of a typed name: the NFKC casefold (names since revision 0004), and the older NFC one."""
    return list(dict.fromkeys([" ".join(unicodedata.normalize("NFKC", str(username)).split()).casefold(),
                               _clean(username).casefold()]))


def _find_player(s: OrmSession, username: str) -> Any:
    for key in _name_keys(username):
        row = s.execute(select(Player.id, Player.password_hash, Player.username)
                        .where(Player.username_key == key)).first()
        if row is not None:
            return row
    return None


def authenticate(db: Database, hasher: PasswordHasher, username: str, password: str) -> int | None:
    with db.read() as s:
        row = _find_player(s, username)
    ok = hasher.verify(row.password_hash if row else None, password)
    return row.id if (ok and row) else None


def _login_key(username: str) -> str:
    return _clean(username).casefold()[:200]


def login_retry_after(db: Database, username: str, limit: tuple[int, float], *, client_addr: str | None = None,
                      address_limit: tuple[int, float] | None = None) -> float | None:
    """Seconds until a log-in as ``username`` from ``client_addr`` may be tried again, or ``None``.

    Backoff per (name, address): with ``limit = (n, window)`` and ``f`` failures of this pair in the last
    ``window`` seconds, once ``f >= n`` the pair waits ``min(2^(f-n), window)`` seconds after its last
    failure. Failures from *other* addresses do not count, so nobody can lock an owner out from elsewhere.
    ``address_limit = (m, window)``: at most ``m`` failures per address over all names (password spraying).
    Without an address the failures are counted per name only. Counted in the database (all workers agree)."""
    key = client_key(client_addr)
    count, window = limit
    with db.read() as s:
        where = LoginFailure.username_key == _login_key(username)
        if key is not None:
            where = and_(where, LoginFailure.client_key == key)
        since = utcnow() - dt.timedelta(seconds=window)
        times = s.scalars(select(LoginFailure.at).where(where, LoginFailure.at >= since)
                          .order_by(LoginFailure.at.desc()).limit(count + 64)).all()
        if len(times) >= count:
            wait = min(2.0 ** (len(times) - count), window)
            retry = wait - (utcnow() - times[0]).total_seconds()
            if retry > 0:
                return max(retry, 1.0)
        if key is not None and address_limit:
            return _window_retry(s, LoginFailure.at, LoginFailure.client_key == key, address_limit, 1.0)
    return None


def record_login_failure(db: Database, username: str, window: float, *, client_addr: str | None = None) -> None:
    """Store one failed log-in for ``username`` from ``client_addr``. Failures older than ``window`` seconds
    (of any name) are pruned, so guessing many names cannot grow the table beyond one window of failures."""
    key = _login_key(username)
    ckey = client_key(client_addr)

    def _w(s: OrmSession) -> None:
        now = utcnow()
        s.execute(delete(LoginFailure).where(LoginFailure.at < now - dt.timedelta(seconds=window)))
        s.add(LoginFailure(username_key=key, at=now, client_key=ckey))

    db.write(_w)


def clear_login_failures(db: Database, username: str, client_addr: str | None) -> None:
    """After a successful log-in: forget the failures of this (name, address)."""
    ckey = client_key(client_addr)
    where = LoginFailure.username_key == _login_key(username)
    where = and_(where, LoginFailure.client_key == ckey) if ckey else where
    db.write(lambda s: s.execute(delete(LoginFailure).where(where)))


def open_session(db: Database, player_id: int) -> PlayerSession:
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)

    def _w(s: OrmSession) -> PlayerSession:
        now = utcnow()
        s.execute(delete(Session).where(Session.player_id == player_id, Session.expires_at < now))
        s.add(Session(token_hash=_token_hash(token), player_id=player_id, csrf_token=csrf, created_at=now,
                      expires_at=now + dt.timedelta(days=SESSION_DAYS)))
        name = s.scalar(select(Player.username).where(Player.id == player_id))
        return PlayerSession(token, player_id, str(name), csrf)

    return db.write(_w)


def get_session(db: Database, token: str | None) -> PlayerSession | None:
    if not token or len(token) > 200:
        return None
    with db.connect() as conn:
        row = conn.execute(_Q_SESSION, {"th": _token_hash(token), "now": utcnow()}).first()
    return PlayerSession(token, row.player_id, row.username, row.csrf_token, row.language) if row else None


def close_session(db: Database, token: str) -> None:
    db.write(lambda s: s.execute(delete(Session).where(Session.token_hash == _token_hash(token))))


def set_player_language(db: Database, player_id: int, language: str | None) -> None:
    db.write(lambda s: s.execute(update(Player).where(Player.id == player_id).values(language=language)))


def player_language(db: Database, player_id: int) -> str | None:
    with db.read() as s:
        return s.scalar(select(Player.language).where(Player.id == player_id))


def close_all_sessions(db: Database, player_id: int, *, except_token: str | None = None) -> int:
    """"Log out everywhere": end every session of the player (but ``except_token``); the number ended."""

    def _w(s: OrmSession) -> int:
        q = delete(Session).where(Session.player_id == player_id)
        if except_token:
            q = q.where(Session.token_hash != _token_hash(except_token))
        return int(s.execute(q).rowcount or 0)

    return db.write(_w)


def change_password(db: Database, hasher: PasswordHasher, player_id: int, current: str, new: str, *,
                    keep_token: str | None = None) -> None:
    """Change a password after checking the current one; every other session of the player is ended."""
    validate_password(new)
    with db.read() as s:
        stored = s.scalar(select(Player.password_hash).where(Player.id == player_id))
    if stored is None:
        raise NotFound("no such player")
    if not hasher.verify(stored, current):
        raise ValidationError("the current password is not right")
    pw_hash = hasher.hash(new)

    def _w(s: OrmSession) -> None:
        s.execute(update(Player).where(Player.id == player_id).values(password_hash=pw_hash))
        q = delete(Session).where(Session.player_id == player_id)
        if keep_token:
            q = q.where(Session.token_hash != _token_hash(keep_token))
        s.execute(q)

    db.write(_w)


RESET_HOURS = 24


def issue_password_reset(db: Database, username: str, *, hours: float = RESET_HOURS) -> tuple[str, str]:
    """An admin-issued one-time reset token for ``username`` (valid ``hours``); returns (token, exact name).
    Only its SHA-256 is stored; issuing a new one voids the player's older unused tokens."""
    token = secrets.token_urlsafe(32)

    def _w(s: OrmSession) -> str:
        row = _find_player(s, username)
        if row is None:
            raise NotFound(f"no player named {username!r}")
        now = utcnow()
        s.execute(delete(PasswordReset).where(PasswordReset.player_id == row.id))
        s.add(PasswordReset(token_hash=_token_hash(token), player_id=row.id, created_at=now,
                            expires_at=now + dt.timedelta(hours=hours)))
        return str(row.username)

    return token, db.write(_w)


def reset_password_with_token(db: Database, hasher: PasswordHasher, token: str, new: str) -> int:
    """Set a new password with a reset token: once only, before it expires; all sessions of the player
    end. Returns the player id; a used, expired or unknown token is :class:`NotFound`."""
    validate_password(new)
    if not token or len(token) > 200:
        raise NotFound("this reset link is not valid (used, expired or mistyped); ask for a new one")
    pw_hash = hasher.hash(new)

    def _w(s: OrmSession) -> int:
        now = utcnow()
        th = _token_hash(token)
        pid = s.scalar(select(PasswordReset.player_id).where(
            PasswordReset.token_hash == th, PasswordReset.used_at.is_(None), PasswordReset.expires_at > now))
        res = s.execute(update(PasswordReset).where(PasswordReset.token_hash == th, PasswordReset.used_at.is_(None))
                        .values(used_at=now))
        if pid is None or res.rowcount != 1:
            raise NotFound("this reset link is not valid (used, expired or mistyped); ask for a new one")
        s.execute(update(Player).where(Player.id == pid).values(password_hash=pw_hash))
        s.execute(delete(Session).where(Session.player_id == pid))
        return int(pid)

    return db.write(_w)


def reset_token_valid(db: Database, token: str) -> bool:
    if not token or len(token) > 200:
        return False
    with db.read() as s:
        return s.scalar(select(PasswordReset.player_id).where(
            PasswordReset.token_hash == _token_hash(token), PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > utcnow())) is not None


# ---------------------------------------------------------------------------
# campaigns and rounds
# ---------------------------------------------------------------------------
@dataclass
class RoundView:
    id: int
    campaign: str
    cluster_id: str
    image_id: str
    layer: str
    cluster_index: int
    status: str
    reveal_step: int
    q_percent: float
    max_step: int
    class_names: list[str]
    is_gold: bool = False
    label_only: bool = False  # the player has seen this photo: labels only, no guess points
    # only once finished:
    guessed_class: str | None = None
    correct: bool | None = None
    true_class: str | None = None
    guess_points: int | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("is_gold")  # players are not told which maps are gold
        return d


def list_campaigns(db: Database) -> list[dict[str, Any]]:
    with db.read() as s:
        rows = s.execute(
            select(Campaign.name, Campaign.active, Campaign.created_at, func.count(Cluster.id))
            .outerjoin(Cluster, Cluster.campaign_id == Campaign.id)
            .group_by(Campaign.id)
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        ).all()
    return [{"name": r[0], "active": bool(r[1]), "created_at": r[2], "maps": int(r[3])} for r in rows]


def _campaign(s: OrmSession, name: str | None) -> Campaign:
    q = select(Campaign)
    q = q.where(Campaign.name == name) if name else q.where(Campaign.active.is_(True))
    camp = s.scalars(q.order_by(Campaign.created_at.desc(), Campaign.id.desc()).limit(1)).first()
    if camp is None:
        raise NotFound(f"no campaign named {name!r}" if name else "no campaign has been imported yet")
    return camp


# -- the hot paths (next round, reveal, answer, image, session) in SQLAlchemy Core ---------------------
# Statements are built once at import time (SQLAlchemy then reuses their compiled form); reads run on a
# Core connection outside any write transaction, and a write job does only its conditional statements,
# so the serialised part (SQLite's single writer) stays short. Maps, images and campaign class lists
# never change once imported: each worker keeps them in ``Database.immutable`` / ``Database.assets``.
_R, _C, _I, _A, _L, _K = (m.__table__ for m in (Round, Cluster, Image, ClusterAsset, Label, Campaign))
_S, _P = Session.__table__, Player.__table__
_ROUND_COLS = (_R.c.id, _R.c.player_id, _R.c.cluster_pk, _R.c.campaign_id, _R.c.status, _R.c.reveal_step,
               _R.c.guessed_class, _R.c.correct, _R.c.guess_points, _R.c.finish_key, _R.c.is_gold,
               _R.c.seen_before)
_Q_ROUND = select(*_ROUND_COLS).where(_R.c.id == bindparam("rid"), _R.c.player_id == bindparam("pid"))
_Q_OPEN = (select(*_ROUND_COLS).where(_R.c.player_id == bindparam("pid"), _R.c.campaign_id == bindparam("cid"),
                                      _R.c.status == "open").order_by(_R.c.id).limit(1))
_Q_HAS_OPEN = select(_R.c.id).where(_R.c.player_id == bindparam("pid"), _R.c.campaign_id == bindparam("cid"),
                                    _R.c.status == "open").limit(1)
_Q_MAP = (select(_C.c.campaign_id, _C.c.cluster_key, _C.c.layer, _C.c.cluster_index, _C.c.gold_labels_json,
                 _I.c.image_key, _I.c.true_class, _I.c.predicted_class, _I.c.photo_hash)
          .join(_I, _I.c.id == _C.c.image_pk).where(_C.c.id == bindparam("cpk")))
_CAMP_COLS = (_K.c.id, _K.c.name, _K.c.class_names_json, _K.c.seen_policy, _K.c.agreement_rule)
_CAMP_ORDER = (_K.c.created_at.desc(), _K.c.id.desc())
_Q_CAMP_NAMED = select(*_CAMP_COLS).where(_K.c.name == bindparam("name")).order_by(*_CAMP_ORDER).limit(1)
_Q_CAMP_ACTIVE = select(*_CAMP_COLS).where(_K.c.active.is_(True)).order_by(*_CAMP_ORDER).limit(1)
_Q_CAMP_ID = select(*_CAMP_COLS).where(_K.c.id == bindparam("cid"))
_Q_LABELS = select(_L.c.text, _L.c.points).where(_L.c.round_id == bindparam("rid")).order_by(_L.c.position)
_Q_SESSION = (select(_S.c.player_id, _S.c.csrf_token, _P.c.username, _P.c.language)
              .join(_P, _P.c.id == _S.c.player_id)
              .where(_S.c.token_hash == bindparam("th"), _S.c.expires_at > bindparam("now")))
_Q_ASSET = select(_A.c.data).where(_A.c.cluster_pk == bindparam("cpk"), _A.c.kind == bindparam("kind"))
_Q_PHOTO = select(_I.c.photo).join(_C, _C.c.image_pk == _I.c.id).where(_C.c.id == bindparam("cpk"))


def _seen_subquery(extra: Sequence[Any] = ()):  # type: ignore[no-untyped-def]
    """SHA-256 of every photo the player ``:pid`` has seen (the photos of their finished rounds)."""
    im, cl, rd = _I.alias("seen_im"), _C.alias("seen_cl"), _R.alias("seen_rd")
    q = (select(im.c.photo_hash).join(cl, cl.c.image_pk == im.c.id).join(rd, rd.c.cluster_pk == cl.c.id)
         .where(rd.c.player_id == bindparam("pid"), rd.c.status != "open", im.c.photo_hash.is_not(None)))
    return q.where(*(f(im, rd) for f in extra))


_SEEN_FLAG = _I.c.photo_hash.in_(_seen_subquery())
# has the player :pid seen the photo :ph in a finished round other than :rid?
_Q_SEEN_ONE = _seen_subquery([lambda im, rd: rd.c.id != bindparam("rid"),
                              lambda im, rd: im.c.photo_hash == bindparam("ph")]).limit(1)


def _pick_query(gold: bool, skip_seen: bool):  # type: ignore[no-untyped-def]
    q = (select(_C.c.id, _C.c.is_gold, _SEEN_FLAG.label("seen")).join(_I, _I.c.id == _C.c.image_pk)
         .where(_C.c.campaign_id == bindparam("cid"), _C.c.is_gold.is_(gold),
                _C.c.id.not_in(select(_R.c.cluster_pk).where(_R.c.player_id == bindparam("pid")))))
    if skip_seen:
        q = q.where(~_SEEN_FLAG)
    return q.order_by(func.cast(_SEEN_FLAG, Integer), _C.c.label_count + _C.c.open_count, func.random()).limit(1)


_Q_PICK = {(g, k): _pick_query(g, k) for g in (False, True) for k in (False, True)}
_INS_ROUND = insert(_R)
_UPD_OPEN_INC = update(_C).where(_C.c.id == bindparam("cpk")).values(open_count=_C.c.open_count + 1)
_UPD_REVEAL = (update(_R).where(_R.c.id == bindparam("rid"), _R.c.player_id == bindparam("pid"),
                                _R.c.status == "open", _R.c.reveal_step < bindparam("step"))
               .values(reveal_step=bindparam("step")))
_UPD_FINISH = (update(_R).where(_R.c.id == bindparam("rid"), _R.c.player_id == bindparam("pid"),
                                _R.c.status == "open")
               .values(status=bindparam("st"), guessed_class=bindparam("g"), correct=bindparam("ok"),
                       guess_points=bindparam("gp"), finish_key=bindparam("fk"), finished_at=bindparam("at"),
                       gold_hit=bindparam("gh"), seen_before=bindparam("sb"), client_key=bindparam("ck")))
_Q_OTHERS = (select(_L.c.id, _L.c.player_id, _L.c.text, _L.c.norm, _R.c.client_key)
             .join(_R, _R.c.id == _L.c.round_id)
             .where(_L.c.cluster_pk == bindparam("cpk"), _L.c.player_id != bindparam("pid")))
_INS_LABELS = insert(_L)
_UPD_VERIFY = update(_L).where(_L.c.id.in_(bindparam("ids", expanding=True))).values(verified=True)
_UPD_BUMP = (update(_L).where(_L.c.id.in_(bindparam("ids", expanding=True)), _L.c.points < AGREE_POINTS * AGREE_CAP)
             .values(points=_L.c.points + AGREE_POINTS))
_UPD_CLUSTER_DONE = {
    name: update(_C).where(_C.c.id == bindparam("cpk")).values(
        label_count=_C.c.label_count + bindparam("n"), open_count=fn(_C.c.open_count - 1, 0))
    for name, fn in (("sqlite", func.max), ("postgresql", func.greatest))
}


@dataclass(frozen=True)
class _MapInfo:
    """What a round shows of its map; immutable once imported."""

    campaign_id: int
    cluster_key: str
    layer: str
    cluster_index: int
    image_key: str
    truth: str
    photo_hash: str | None
    gold_labels: tuple[str, ...]


@dataclass(frozen=True)
class _Camp:
    id: int
    name: str
    class_names: tuple[str, ...]
    seen_policy: str
    agreement_rule: str


_IMMUTABLE_MAX = 200_000  # cached map / campaign entries per worker; beyond, the cache starts afresh


def _map_info(db: Database, conn: Any, cluster_pk: int) -> _MapInfo:
    key = ("map", cluster_pk)
    info = db.immutable.get(key)
    if info is None:
        r = conn.execute(_Q_MAP, {"cpk": cluster_pk}).one()
        info = _MapInfo(r.campaign_id, r.cluster_key, r.layer, int(r.cluster_index), r.image_key,
                        r.true_class or r.predicted_class, r.photo_hash, tuple(json.loads(r.gold_labels_json)))
        if len(db.immutable) >= _IMMUTABLE_MAX:
            db.immutable.clear()
        db.immutable[key] = info
    return info  # type: ignore[return-value]


def _camp(row: Any) -> _Camp:
    return _Camp(row.id, row.name, tuple(json.loads(row.class_names_json)), row.seen_policy, row.agreement_rule)


def _campaign_core(conn: Any, name: str | None) -> _Camp:
    row = (conn.execute(_Q_CAMP_NAMED, {"name": name}) if name else conn.execute(_Q_CAMP_ACTIVE)).first()
    if row is None:
        raise NotFound(f"no campaign named {name!r}" if name else "no campaign has been imported yet")
    return _camp(row)


def _camp_names(db: Database, conn: Any, campaign_id: int) -> tuple[str, tuple[str, ...]]:
    """A campaign's name and class list (both fixed at import)."""
    key = ("camp", campaign_id)
    hit = db.immutable.get(key)
    if hit is None:
        c = _camp(conn.execute(_Q_CAMP_ID, {"cid": campaign_id}).one())
        hit = db.immutable[key] = (c.name, c.class_names)
    return hit  # type: ignore[return-value]


def _view(db: Database, conn: Any, rnd: Any, labels: list[dict[str, Any]] | None = None) -> RoundView:
    """The :class:`RoundView` of a round row (a Core row or an ORM ``Round``: the same attribute names).
    A finished round's labels are read from ``conn`` unless given."""
    info = _map_info(db, conn, rnd.cluster_pk)
    camp_name, classes = _camp_names(db, conn, rnd.campaign_id)
    view = RoundView(
        id=rnd.id, campaign=camp_name, cluster_id=info.cluster_key, image_id=info.image_key, layer=info.layer,
        cluster_index=info.cluster_index, status=rnd.status, reveal_step=rnd.reveal_step,
        q_percent=REVEAL_Q[rnd.reveal_step], max_step=len(REVEAL_Q) - 1, class_names=list(classes),
        is_gold=bool(rnd.is_gold), label_only=bool(rnd.seen_before),
    )
    if rnd.status != "open":
        view.guessed_class = rnd.guessed_class
        view.correct = bool(rnd.correct)
        view.true_class = info.truth
        view.guess_points = rnd.guess_points
        if labels is None:
            labels = [{"text": t, "points": p} for t, p in conn.execute(_Q_LABELS, {"rid": rnd.id})]
        view.labels = labels
    return view


def _check_round_id(round_id: int) -> None:
    if not 0 < round_id < 2**63:  # a database integer: a larger id cannot exist (and would not bind)
        raise NotFound("no such round")


def _own_round(conn: Any, player_id: int, round_id: int) -> Any:
    """The round row, if it is the player's (someone else's round looks exactly like a missing one)."""
    _check_round_id(round_id)
    rnd = conn.execute(_Q_ROUND, {"rid": round_id, "pid": player_id}).first()
    if rnd is None:
        raise NotFound("no such round")
    return rnd


def next_round(db: Database, player_id: int, campaign: str | None = None, *, gold_rate: float = 0.1,
               rng: random.Random | None = None) -> RoundView | None:
    """The player's open round, or a new one on the best map for them; ``None`` when none is left.

    The choice is read outside the write; the write inserts the round only if the player still has no
    open round in the campaign (else the loop reads again and returns that one), and ``UNIQUE(player_id,
    cluster_pk)`` refuses a map picked twice by concurrent requests (the loop picks again)."""
    rng = rng or random.Random()
    use_gold = rng.random() < gold_rate
    for attempt in range(5):
        with db.connect() as conn:
            camp = _campaign_core(conn, campaign)
            open_rnd = conn.execute(_Q_OPEN, {"pid": player_id, "cid": camp.id}).first()
            if open_rnd is not None:
                return _view(db, conn, open_rnd)
            pick = None
            for gold in ((True, False) if use_gold else (False, True)):
                pick = conn.execute(_Q_PICK[(gold, camp.seen_policy == "skip")],
                                    {"pid": player_id, "cid": camp.id}).first()
                if pick is not None:
                    break
            if pick is None:
                return None
            info = _map_info(db, conn, pick.id)  # cached for the view, outside the write
        row = {"player_id": player_id, "cluster_pk": pick.id, "campaign_id": camp.id, "status": "open",
               "reveal_step": 0, "correct": False, "guess_points": 0, "is_gold": bool(pick.is_gold),
               "started_at": utcnow(), "seen_before": bool(pick.seen)}

        def _w(c: Any, row: dict[str, Any] = row, cid: int = camp.id, cpk: int = pick.id) -> int | None:
            if c.execute(_Q_HAS_OPEN, {"pid": player_id, "cid": cid}).first() is not None:
                return None  # a concurrent request opened one: return that
            rid = c.execute(_INS_ROUND, row).inserted_primary_key[0]
            c.execute(_UPD_OPEN_INC, {"cpk": cpk})
            return int(rid)

        try:
            rid = db.write_core(_w)
        except IntegrityError:  # two concurrent requests picked the same map for this player
            if attempt == 4:
                raise
            continue
        if rid is None:
            continue
        return RoundView(id=rid, campaign=camp.name, cluster_id=info.cluster_key, image_id=info.image_key,
                         layer=info.layer, cluster_index=info.cluster_index, status="open", reveal_step=0,
                         q_percent=REVEAL_Q[0], max_step=len(REVEAL_Q) - 1, class_names=list(camp.class_names),
                         is_gold=bool(pick.is_gold), label_only=bool(pick.seen))
    return None


def get_round(db: Database, player_id: int, round_id: int) -> RoundView:
    with db.connect() as conn:
        return _view(db, conn, _own_round(conn, player_id, round_id))


def reveal_more(db: Database, player_id: int, round_id: int, to_step: int | None = None) -> RoundView:
    """Show more: set the round's reveal step to ``to_step`` (default: one more). Idempotent by design:
    the step only grows (a conditional ``UPDATE``), and a retried request for the same step changes nothing."""
    for _ in range(10):
        with db.connect() as conn:
            rnd = _own_round(conn, player_id, round_id)
            if rnd.status != "open":
                raise Conflict("this round is already finished")
            target = rnd.reveal_step + 1 if to_step is None else int(to_step)
            target = min(max(target, rnd.reveal_step), len(REVEAL_Q) - 1)
            view = _view(db, conn, rnd)
        if target == rnd.reveal_step:
            return view
        changed = db.write_core(lambda c, t=target: c.execute(
            _UPD_REVEAL, {"rid": round_id, "pid": player_id, "step": t}).rowcount)
        if changed == 1:
            view.reveal_step, view.q_percent = target, REVEAL_Q[target]
            return view
        # a concurrent reveal went further or the round was finished meanwhile: read again
    raise Conflict("this round changed too often; try again")


@dataclass
class FinishResult:
    round: RoundView
    replayed: bool
    points: int  # guess points + label points of this round (at the time of the answer)


def _window_retry(s: Any, at: Any, where: Any, limit: tuple[int, float], floor: float) -> float | None:
    """Sliding window: with ``limit = (n, seconds)``, the seconds (at least ``floor``) until fewer than
    ``n`` rows matching ``where`` have their time column ``at`` inside the window; ``None`` if already so.
    ``s``: an ORM session or a Core connection."""
    count, window = limit
    since = utcnow() - dt.timedelta(seconds=window)
    times = s.scalars(select(at).where(where, at >= since).order_by(at)).all()
    if len(times) < count:
        return None
    oldest = times[len(times) - count]
    return max(floor, window - (utcnow() - oldest).total_seconds())


def _check_rate(s: Any, player_id: int, limit: tuple[int, float] | None) -> None:
    if not limit:
        return
    retry = _window_retry(s, _R.c.finished_at, _R.c.player_id == player_id, limit, 0.1)
    if retry is not None:
        raise RateLimited(f"slow down: at most {limit[0]} answers per {limit[1]:g} s", retry)


def _passed_gold(s: Any, player_ids: set[int]) -> set[int]:
    """The players among ``player_ids`` who passed gold checks: at least :data:`GOLD_MIN_ROUNDS` gold rounds
    with labels, and at least :data:`GOLD_MIN_RELIABILITY` of them agreeing with a known label."""
    rows = s.execute(
        select(_R.c.player_id, func.count(_R.c.id), func.sum(func.cast(_R.c.gold_hit, Integer)))
        .where(_R.c.player_id.in_(sorted(player_ids)), _R.c.gold_hit.is_not(None)).group_by(_R.c.player_id)
    ).all()
    return {pid for pid, n, hits in rows if n >= GOLD_MIN_ROUNDS and (hits or 0) / n >= GOLD_MIN_RELIABILITY}


def _independent(rule: str, other_id: int, other_key: str | None, my_id: int, my_key: str | None,
                 trusted: set[int]) -> object | None:
    """Whose agreement this is, as an independent source for a label by ``my_id`` at ``my_key``, or
    ``None`` when it does not count. Rule ``address``: the other label's client address, if both are known
    and differ (so accounts behind one address agree with each other for nothing). Rule ``gold``: the other
    player, if they passed gold checks (:func:`_passed_gold`). Points = 10 × distinct sources (at most 5)."""
    if other_id == my_id:
        return None
    if rule == "gold":
        return ("player", other_id) if other_id in trusted else None
    if other_key is None or my_key is None or other_key == my_key:
        return None
    return ("address", other_key)


def _agrees(matcher: LabelMatcher, text: str, norm: str, other_text: str, other_norm: str) -> bool:
    if isinstance(matcher, LemmaMatcher | ExactMatcher):
        return bool(norm) and norm == other_norm
    return matcher.agree(text, other_text)


def finish_round(
    db: Database,
    player_id: int,
    round_id: int,
    *,
    guessed_class: str | None,
    labels: Sequence[str],
    idempotency_key: str,
    matcher: LabelMatcher | None = None,
    rate_limit: tuple[int, float] | None = None,
    client_addr: str | None = None,
    language: str | None = None,
) -> FinishResult:
    """Guess (``guessed_class`` given) or give up (``None``), storing the labels; see module docstring.

    Agreement points follow the campaign's ``agreement_rule`` (see :func:`_independent`). The round, its
    map and the campaign are read first; the write job then flips the round with a conditional ``UPDATE``
    (``status='open'``), reads the other players' labels of the map and stores this answer's, all in one
    transaction; the result is returned only after its commit."""
    matcher = matcher or LemmaMatcher()
    key = str(idempotency_key or "").strip()
    if not 8 <= len(key) <= 100:
        raise ValidationError("an idempotency key of 8 to 100 characters is required")
    gave_up = guessed_class is None
    my_key = client_key(client_addr)
    texts = validate_labels(labels, matcher, required=not gave_up)
    norms = [matcher.normalize(t) for t in texts]

    for _ in range(3):
        with db.connect() as conn:
            rnd = _own_round(conn, player_id, round_id)
            if rnd.status != "open":
                if rnd.finish_key == key:
                    view = _view(db, conn, rnd)
                    return FinishResult(view, True, int(view.guess_points or 0) + sum(x["points"] for x in view.labels))
                raise Conflict("this round is already finished")
            view = _view(db, conn, rnd)
            info = _map_info(db, conn, rnd.cluster_pk)
            rule = conn.execute(_Q_CAMP_ID, {"cid": rnd.campaign_id}).one().agreement_rule
        guess = None
        if not gave_up:
            by_key = {c.casefold(): c for c in view.class_names}
            guess = by_key.get(_clean(guessed_class or "").casefold())
            if guess is None:
                raise ValidationError("choose the class from the campaign's class list")
        correct = guess is not None and guess == info.truth
        gold_hit = None
        if rnd.is_gold and texts:
            gold_hit = any(matcher.agree(t, g) for t in texts for g in info.gold_labels)

        def _w(c: Any, rnd: Any = rnd, info: _MapInfo = info, rule: str = rule, guess: str | None = guess,
               correct: bool = correct, gold_hit: bool | None = gold_hit) -> tuple[bool, int, list[dict[str, Any]], int]:
            _check_rate(c, player_id, rate_limit)
            seen_before = bool(rnd.seen_before) or (info.photo_hash is not None and c.execute(
                _Q_SEEN_ONE, {"pid": player_id, "rid": rnd.id, "ph": info.photo_hash}).first() is not None)
            gpts = 0 if seen_before else guess_points(correct, rnd.reveal_step)
            now = utcnow()
            res = c.execute(_UPD_FINISH, {"rid": rnd.id, "pid": player_id, "st": "gave_up" if gave_up else "guessed",
                                          "g": guess, "ok": correct, "gp": gpts, "fk": key, "at": now, "gh": gold_hit,
                                          "sb": seen_before, "ck": my_key})
            if res.rowcount != 1:
                raise _Raced()
            others = c.execute(_Q_OTHERS, {"cpk": rnd.cluster_pk, "pid": player_id}).all()
            trusted = (_passed_gold(c, {o.player_id for o in others} | {player_id}) if rule == "gold" and others
                       else set())
            bump: set[int] = set()
            total = gpts
            rows, shown = [], []
            for pos, (t, n) in enumerate(zip(texts, norms)):
                agreeing = [o for o in others if _agrees(matcher, t, n, o.text, o.norm)]
                sources = {_independent(rule, o.player_id, o.client_key, player_id, my_key, trusted) for o in agreeing}
                sources.discard(None)
                pts = AGREE_POINTS * min(len(sources), AGREE_CAP)
                for o in agreeing:  # an earlier label earns once more if this answer is a new independent source
                    mine = _independent(rule, player_id, my_key, o.player_id, o.client_key, trusted)
                    before = {_independent(rule, a.player_id, a.client_key, o.player_id, o.client_key, trusted)
                              for a in agreeing if a.id != o.id}
                    if mine is not None and mine not in before:
                        bump.add(o.id)
                rows.append({"round_id": rnd.id, "player_id": player_id, "cluster_pk": rnd.cluster_pk,
                             "position": pos, "text": t, "norm": n, "points": pts, "created_at": now,
                             "verified": pts > 0, "language": language})
                shown.append({"text": t, "points": pts})
                total += pts
            if rows:
                c.execute(_INS_LABELS, rows)
            if bump:
                ids = sorted(bump)
                c.execute(_UPD_VERIFY, {"ids": ids})
                c.execute(_UPD_BUMP, {"ids": ids})
            c.execute(_UPD_CLUSTER_DONE[c.dialect.name], {"cpk": rnd.cluster_pk, "n": len(texts)})
            return seen_before, gpts, shown, total

        try:
            seen_before, gpts, shown, total = db.write_core(_w)
        except _Raced:
            continue  # a concurrent request finished it first: read again (replay or conflict)
        except IntegrityError:
            raise Conflict("this idempotency key was already used for another round") from None
        view.status = "gave_up" if gave_up else "guessed"
        view.label_only = seen_before
        view.guessed_class, view.correct, view.true_class = guess, correct, info.truth
        view.guess_points, view.labels = gpts, shown
        return FinishResult(view, False, total)
    raise Conflict("this round is already finished")


class _Raced(Exception):
    pass


# ---------------------------------------------------------------------------
# scores, history, stats
# ---------------------------------------------------------------------------
def _score_query():  # type: ignore[no-untyped-def]
    g = (select(Round.player_id.label("pid"), func.sum(Round.guess_points).label("g"),
                func.count(Round.id).label("n"), func.sum(func.cast(Round.correct, Integer)).label("c"))
         .where(Round.status != "open").group_by(Round.player_id).subquery())
    lab = (select(Label.player_id.label("pid"), func.sum(Label.points).label("l"), func.count(Label.id).label("k"))
           .group_by(Label.player_id).subquery())
    score = (func.coalesce(g.c.g, 0) + func.coalesce(lab.c.l, 0)).label("score")
    return (select(Player.id, Player.username, score, func.coalesce(g.c.n, 0).label("rounds"),
                   func.coalesce(g.c.c, 0).label("correct"), func.coalesce(lab.c.k, 0).label("labels"))
            .outerjoin(g, g.c.pid == Player.id).outerjoin(lab, lab.c.pid == Player.id))


def leaderboard(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    q = _score_query()
    with db.read() as s:
        rows = s.execute(q.order_by(q.selected_columns.score.desc(), Player.id).limit(limit)).all()
    return [{"rank": i + 1, "player": r.username, "score": int(r.score), "rounds": int(r.rounds),
             "correct": int(r.correct), "labels": int(r.labels)} for i, r in enumerate(rows) if r.rounds > 0]


def player_stats(db: Database, player_id: int) -> dict[str, Any]:
    q = _score_query()
    with db.read() as s:
        me = s.execute(q.where(Player.id == player_id)).first()
        if me is None:
            raise NotFound("no such player")
        sub = q.subquery()
        better = s.scalar(select(func.count()).select_from(sub).where(sub.c.score > me.score, sub.c.rounds > 0))
        mean_step = s.scalar(select(func.avg(Round.reveal_step)).where(
            Round.player_id == player_id, Round.correct.is_(True)))
        agreed = s.scalar(select(func.count(Label.id)).where(Label.player_id == player_id, Label.points > 0))
        gold_n = s.scalar(select(func.count(Round.id)).where(Round.player_id == player_id,
                                                              Round.gold_hit.is_not(None)))
        gold_hits = s.scalar(select(func.count(Round.id)).where(Round.player_id == player_id,
                                                                 Round.gold_hit.is_(True)))
    rounds = int(me.rounds)
    return {
        "player": me.username, "score": int(me.score), "rank": int(better or 0) + 1 if rounds else None,
        "rounds": rounds, "correct": int(me.correct),
        "accuracy": (int(me.correct) / rounds) if rounds else None,
        "mean_reveal_step_when_correct": float(mean_step) if mean_step is not None else None,
        "labels": int(me.labels), "labels_agreed": int(agreed or 0),
        "reliability": (gold_hits / gold_n) if gold_n else None, "gold_rounds": int(gold_n or 0),
    }


def history(db: Database, player_id: int, limit: int = 100) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rounds = conn.execute(
            select(*_ROUND_COLS, _R.c.finished_at).where(_R.c.player_id == player_id, _R.c.status != "open")
            .order_by(_R.c.finished_at.desc(), _R.c.id.desc()).limit(limit)
        ).all()
        out = []
        for r in rounds:
            v = _view(db, conn, r)
            out.append({"round_id": r.id, "campaign": v.campaign, "cluster_id": v.cluster_id, "layer": v.layer,
                        "reveal_step": v.reveal_step, "q_percent": v.q_percent, "status": v.status,
                        "guessed_class": v.guessed_class or "", "true_class": v.true_class, "correct": v.correct,
                        "guess_points": v.guess_points, "labels": v.labels,
                        "finished_at": _iso(r.finished_at)})
    return out


def asset(db: Database, player_id: int, round_id: int, kind: str) -> bytes:
    """A round's image, only as far as the player may see it: reveal steps up to the current one while
    the round is open; the full photo and the overlay only once it is finished. The round is read on
    every request; the image bytes (immutable) come from the worker's :class:`~featurelens.game.db.BytesCache`."""
    with db.connect() as conn:
        rnd = _own_round(conn, player_id, round_id)
        if re.fullmatch(r"r[0-9]{1,2}", kind):  # ASCII digits only: "r²" and "r" + 5,000 digits are no step
            if int(kind[1:]) > rnd.reveal_step and rnd.status == "open":
                raise NotFound("not revealed yet")
        elif kind in ("photo", "overlay"):
            if rnd.status == "open":
                raise NotFound("finish the round first")
        else:
            raise NotFound("no such image")
        cache_key = (rnd.cluster_pk, kind)
        data = db.assets.get(cache_key)
        if data is None:
            raw = conn.scalar(_Q_PHOTO if kind == "photo" else _Q_ASSET, {"cpk": rnd.cluster_pk, "kind": kind})
            if raw is None and kind != "photo":  # maps imported at feature resolution render when first served
                raw = render_asset(conn, rnd.cluster_pk, kind)
            if raw is None:
                raise NotFound("no such image")
            data = bytes(raw)
            db.assets.put(cache_key, data)
    return data


# ---------------------------------------------------------------------------
# admin: progress and export
# ---------------------------------------------------------------------------
def progress(db: Database, campaign: str) -> dict[str, Any]:
    with db.read() as s:
        camp = _campaign(s, campaign)
        counts = s.scalars(select(Cluster.label_count).where(Cluster.campaign_id == camp.id)).all()
        gold = s.scalar(select(func.count(Cluster.id)).where(Cluster.campaign_id == camp.id,
                                                             Cluster.is_gold.is_(True)))
        by_status = dict(s.execute(select(Round.status, func.count(Round.id)).where(Round.campaign_id == camp.id)
                                   .group_by(Round.status)).all())
        players = s.scalar(select(func.count(func.distinct(Round.player_id))).where(Round.campaign_id == camp.id))
        rel = s.execute(
            select(Player.username, func.count(Round.id), func.sum(func.cast(Round.gold_hit, Integer)))
            .join(Round, Round.player_id == Player.id)
            .where(Round.campaign_id == camp.id, Round.gold_hit.is_not(None)).group_by(Player.id)
        ).all()
    arr = np.asarray(counts or [0])
    return {
        "campaign": camp.name, "maps": len(counts), "gold_maps": int(gold or 0),
        "maps_labelled": int((arr > 0).sum()) if counts else 0, "labels": int(arr.sum()),
        "labels_per_map": {"min": int(arr.min()), "median": float(np.median(arr)), "max": int(arr.max())},
        "rounds": {k: int(v) for k, v in by_status.items()}, "players": int(players or 0),
        "reliability": {u: {"gold_rounds": int(n), "hits": int(h or 0)} for u, n, h in rel},
    }


def _iso(t: dt.datetime | None) -> str:
    return "" if t is None else t.replace(tzinfo=dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _map_stats(s: Any, campaign_id: int) -> dict[int, dict[str, Any]]:
    """cluster pk -> the ``map_*`` export columns over the map's finished rounds (with or without labels).

    A round is gave up (status ``gave_up``), unknown (a guess whose correctness is unknown: a
    ``seen_before`` round, once the rounds table has that column), correct or wrong; ``map_mean_q`` is
    the mean of ``REVEAL_Q[reveal_step]`` at answer time.
    """
    seen = getattr(Round, "seen_before", None)
    cols = [Round.cluster_pk, Round.status, Round.correct, Round.reveal_step]
    rows = s.execute(select(*cols, *([seen] if seen is not None else []))
                     .where(Round.campaign_id == campaign_id, Round.status != "open")).all()
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        st = out.setdefault(r[0], {"map_rounds": 0, "map_correct": 0, "map_wrong": 0, "map_gave_up": 0,
                                   "map_unknown": 0, "_q": 0.0})
        st["map_rounds"] += 1
        st["_q"] += REVEAL_Q[int(r[3])]
        if r[1] == "gave_up":
            st["map_gave_up"] += 1
        elif len(r) > 4 and r[4]:
            st["map_unknown"] += 1
        else:
            st["map_correct" if r[2] else "map_wrong"] += 1
    for st in out.values():
        st["map_mean_q"] = round(st.pop("_q") / st["map_rounds"], 4)
    return out


def export_rows(db: Database, campaign: str) -> list[dict[str, Any]]:
    """One row per label text, columns :data:`EXPORT_COLUMNS` (see docs/game.md)."""
    with db.read() as s:
        camp = _campaign(s, campaign)
        stats = _map_stats(s, camp.id)
        rows = s.execute(
            select(Player.username, Image.image_key, Cluster.layer, Cluster.cluster_key, Cluster.cluster_index,
                   Round.reveal_step, Round.guessed_class, Image.true_class, Image.predicted_class, Round.correct,
                   Label.text, Label.created_at, Round.seen_before, Label.verified, Label.language, Cluster.id)
            .select_from(Label)
            .join(Round, Round.id == Label.round_id)
            .join(Player, Player.id == Label.player_id)
            .join(Cluster, Cluster.id == Label.cluster_pk)
            .join(Image, Image.id == Cluster.image_pk)
            .where(Round.campaign_id == camp.id)
            .order_by(Label.created_at, Label.id)
        ).all()
    return [
        {"campaign": camp.name, "player": r[0], "image_id": r[1], "layer": r[2], "cluster_id": r[3],
         "cluster_index": int(r[4]), "reveal_step": int(r[5]), "q_percent": REVEAL_Q[int(r[5])],
         "guessed_class": r[6] or "", "true_class": r[7] or r[8], "correct": bool(r[9]), "label": r[10],
         "created_at": _iso(r[11]), "seen_before": bool(r[12]),
         "verified": None if r[13] is None else bool(r[13]), "language": r[14] or "", **stats[r[15]]}
        for r in rows
    ]


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with ``= + - @``, a tab or a carriage return
    gets a leading ``'`` (OWASP's "CSV injection" advice); booleans become ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_export(rows: Sequence[Mapping[str, Any]], out: IO[str], fmt: str) -> None:
    """Write rows as ``csv`` (header, ``true``/``false``, formulas neutralised by :func:`csv_cell`) or
    ``jsonl`` (verbatim texts, JSON booleans and numbers)."""
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(EXPORT_COLUMNS)
        for r in rows:
            w.writerow([csv_cell(r[c]) for c in EXPORT_COLUMNS])
    elif fmt == "jsonl":
        for r in rows:
            out.write(json.dumps({c: r[c] for c in EXPORT_COLUMNS}, ensure_ascii=False) + "\n")
    else:
        raise GameError(f"unknown export format {fmt!r}: use csv or jsonl")


def export_file(db: Database, campaign: str, out: str | Path) -> int:
    """Export to ``out`` (format from its suffix: .csv or .jsonl); return the number of rows."""
    out = Path(out)
    fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(out.suffix.lower())
    if fmt is None:
        raise GameError(f"{out}: the export file must end in .csv or .jsonl")
    rows = export_rows(db, campaign)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        write_export(rows, fh, fmt)
    tmp.replace(out)
    return len(rows)
