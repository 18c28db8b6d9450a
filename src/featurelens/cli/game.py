"""``featurelens game``: import a bundle as a campaign, serve the labelling game, export its labels.

    featurelens game import BUNDLE --campaign NAME [--database-url URL] [--gold gold.json]
    featurelens game serve [--database-url URL] [--host 127.0.0.1] [--port 8000] [--workers N]
                           [--max-body BYTES] [--header-timeout S] [--body-timeout S] [--max-idle-connections N]
    featurelens game export --campaign NAME --out labels.csv|labels.jsonl [--database-url URL]
    featurelens game progress --campaign NAME
    featurelens game reset-password NAME [--base-url http://127.0.0.1:8000] [--hours 24]
    featurelens game settings --campaign NAME [--seen-policy skip|label_only] [--agreement-rule address|gold]

The database defaults to ``$FEATURELENS_GAME_DATABASE_URL`` or the SQLite file ``featurelens-game.sqlite3``.
``import``/``export``/``progress`` work on the database directly, or through a running server's admin API
with ``--server URL`` (then the admin token is needed). The admin token comes from ``--admin-token`` or
``$FEATURELENS_ADMIN_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from featurelens.errors import FeaturelensError

DEFAULT_DB = "featurelens-game.sqlite3"


def _db_url(args: argparse.Namespace) -> str:
    return args.database_url or os.environ.get("FEATURELENS_GAME_DATABASE_URL") or DEFAULT_DB


def _token(args: argparse.Namespace) -> str | None:
    return args.admin_token or os.environ.get("FEATURELENS_ADMIN_TOKEN") or None


def _database(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from featurelens.game.db import Database, make_engine, migrate

    engine = make_engine(_db_url(args))
    migrate(engine)
    return Database(engine)


def _admin(args: argparse.Namespace, method: str, path: str, **kw):  # type: ignore[no-untyped-def]
    import httpx

    token = _token(args)
    if not token:
        raise FeaturelensError("--server needs the admin token (--admin-token or FEATURELENS_ADMIN_TOKEN)")
    try:
        r = httpx.request(method, args.server.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"},
                          timeout=600, **kw)
    except httpx.HTTPError as exc:
        raise FeaturelensError(f"cannot reach {args.server}: {exc}") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise FeaturelensError(f"server answered {r.status_code}: {detail}")
    return r


def cmd_import(args: argparse.Namespace) -> int:
    from featurelens.game import store

    gold = store.load_gold(args.gold) if args.gold else None
    if args.server:
        body = {"bundle": str(Path(args.bundle).resolve()), "campaign": args.campaign, "gold": gold,
                "seen_policy": args.seen_policy, "agreement_rule": args.agreement_rule}
        data = _admin(args, "POST", "/api/admin/import", json=body).json()
        print(f"imported campaign {data['campaign']!r}: {data['images']} images, {data['maps']} maps "
              f"({data['gold_maps']} gold)")
        return 0
    s = store.import_bundle(_database(args), args.bundle, args.campaign, gold=gold, seen_policy=args.seen_policy,
                            agreement_rule=args.agreement_rule)
    print(f"imported campaign {s.campaign!r}: {s.images} images, {s.maps} maps ({s.gold_maps} gold), "
          f"{len(s.class_names)} classes")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from featurelens.game import store

    out = Path(args.out)
    if args.server:
        fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(out.suffix.lower())
        if fmt is None:
            raise FeaturelensError(f"{out}: the export file must end in .csv or .jsonl")
        r = _admin(args, "GET", f"/api/admin/campaigns/{args.campaign}/export", params={"format": fmt})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(r.text, encoding="utf-8")
        print(f"wrote {out}")
        return 0
    n = store.export_file(_database(args), args.campaign, out)
    print(f"wrote {n} label rows to {out}")
    return 0


def cmd_progress(args: argparse.Namespace) -> int:
    from featurelens.game import store

    if args.server:
        data = _admin(args, "GET", f"/api/admin/campaigns/{args.campaign}/progress").json()
    else:
        data = store.progress(_database(args), args.campaign)
    print(json.dumps(data, indent=1))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from featurelens.game import store

    data = store.campaign_settings(_database(args), args.campaign, seen_policy=args.seen_policy,
                                   agreement_rule=args.agreement_rule)
    print(json.dumps(data))
    return 0


def cmd_reset_password(args: argparse.Namespace) -> int:
    from featurelens.game import store

    if args.hours <= 0:
        raise FeaturelensError("--hours must be positive")
    token, name = store.issue_password_reset(_database(args), args.name, hours=args.hours)
    print(f"{args.base_url.rstrip('/')}/reset/{token}")
    print(f"one-time reset link for {name!r}, valid {args.hours:g} h; give it to the player privately",
          file=sys.stderr)
    return 0


def _parse_rate(text: str) -> str:
    if text.lower() in ("off", "none"):
        return "off"
    n, _, w = text.partition("/")
    try:
        if int(n) <= 0 or float(w or 60) <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError("expected N/SECONDS (e.g. 30/60) or off") from None
    return text


def cmd_serve(args: argparse.Namespace) -> int:
    from featurelens.game.app import parse_networks
    from featurelens.game.db import make_engine, migrate
    from featurelens.game.limits import Limits
    from featurelens.game.server import serve

    try:
        limits = Limits(max_body=args.max_body, max_import_body=args.max_import_body,
                        body_timeout=args.body_timeout, header_timeout=args.header_timeout,
                        keep_alive_timeout=args.keep_alive_timeout, max_idle=args.max_idle)
    except ValueError as exc:
        raise FeaturelensError(f"game serve: {exc}") from None
    parse_networks(args.trusted_proxy or [])  # a bad --trusted-proxy: one line on stderr, before any worker
    url = _db_url(args)
    engine = make_engine(url)
    migrate(engine)  # once, before the workers start
    engine.dispose()
    token = _token(args)
    os.environ.update({
        "FEATURELENS_GAME_DATABASE_URL": url,
        "FEATURELENS_GAME_RATE_LIMIT": args.rate_limit,
        "FEATURELENS_GAME_GOLD_RATE": str(args.gold_rate),
        "FEATURELENS_GAME_MIGRATE": "0",
        "FEATURELENS_GAME_SIGNUP_LIMIT": args.signup_limit,
        "FEATURELENS_GAME_TRUSTED_PROXIES": ",".join(args.trusted_proxy or []),
    })
    if token:
        os.environ["FEATURELENS_ADMIN_TOKEN"] = token
    else:
        print("featurelens: no admin token given: admin endpoints are disabled", file=sys.stderr)
    serve("featurelens.game.app:app_from_env", host=args.host, port=args.port, workers=args.workers,
          limits=limits, log_level=args.log_level, limit_concurrency=args.limit_concurrency)
    return 0


def _limit_defaults():  # type: ignore[no-untyped-def]
    from featurelens.game.limits import Limits

    return Limits()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("game", help="the labelling game: import a bundle, serve, export labels",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="game_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser, server: bool = True) -> None:
        q.add_argument("--database-url", help=f"SQLAlchemy URL or SQLite file (default: {DEFAULT_DB})")
        q.add_argument("--admin-token", help="admin token (default: $FEATURELENS_ADMIN_TOKEN)")
        if server:
            q.add_argument("--server", help="use a running server's admin API instead of the database")

    q = sub.add_parser("import", help="import an explanation bundle as a campaign")
    q.add_argument("bundle", help="bundle folder (or its bundle.json)")
    q.add_argument("--campaign", required=True, help="campaign name")
    q.add_argument("--gold", help="gold labels: JSON {cluster_id: [label, ...]} or CSV cluster_id,label")
    q.add_argument("--seen-policy", choices=("label_only", "skip"), default="label_only",
                   help="maps of a photo the player has seen: label-only rounds after the unseen ones (default) "
                        "or never served (skip)")
    q.add_argument("--agreement-rule", choices=("address", "gold"), default="address",
                   help="agreement points only from other client addresses, or from players who passed gold checks")
    common(q)
    q.set_defaults(func=cmd_import)

    q = sub.add_parser("reset-password", help="print a one-time password-reset link for a player")
    q.add_argument("name", help="the player's user name")
    q.add_argument("--base-url", default="http://127.0.0.1:8000", help="the game's public address")
    q.add_argument("--hours", type=float, default=24.0, help="how long the link is valid")
    common(q, server=False)
    q.set_defaults(func=cmd_reset_password)

    q = sub.add_parser("settings", help="show or change a campaign's settings")
    q.add_argument("--campaign", required=True)
    q.add_argument("--seen-policy", choices=("skip", "label_only"))
    q.add_argument("--agreement-rule", choices=("address", "gold"))
    common(q, server=False)
    q.set_defaults(func=cmd_settings)

    q = sub.add_parser("serve", help="run the web app")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--workers", type=int, default=1, help="worker processes (SQLite WAL and PostgreSQL both work)")
    q.add_argument("--rate-limit", type=_parse_rate, default="30/60", help="answers per player: N/SECONDS or off")
    q.add_argument("--gold-rate", type=float, default=0.1, help="share of rounds served on gold maps")
    q.add_argument("--signup-limit", type=_parse_rate, default="20/3600",
                   help="new accounts per client address: N/SECONDS or off")
    q.add_argument("--trusted-proxy", action="append", metavar="ADDRESS",
                   help="a reverse proxy (address or network) whose X-Forwarded-For is believed; repeatable")
    q.add_argument("--log-level", default="warning")
    d = _limit_defaults()
    for flag, field, kind, metavar, text in (
        ("--max-body", "max_body", int, "BYTES", "request body cap, answered 413"),
        ("--max-import-body", "max_import_body", int, "BYTES", "body cap of the admin import"),
        ("--header-timeout", "header_timeout", float, "S", "seconds to send a complete request head"),
        ("--body-timeout", "body_timeout", float, "S", "seconds to send a whole request body"),
        ("--keep-alive-timeout", "keep_alive_timeout", float, "S", "idle seconds between two requests"),
        ("--max-idle-connections", "max_idle", int, "N", "idle connections per worker; the oldest beyond N is closed"),
    ):
        default = getattr(d, field)
        q.add_argument(flag, dest=field, type=kind, default=default, metavar=metavar, help=f"{text} (default {default:{'g' if kind is float else 'd'}})")
    q.add_argument("--limit-concurrency", type=int, default=None, metavar="N",
                   help="connections + running requests per worker before uvicorn answers 503 (default: none)")
    common(q, server=False)
    q.set_defaults(func=cmd_serve)

    q = sub.add_parser("export", help="export a campaign's labels (one row per label)")
    q.add_argument("--campaign", required=True)
    q.add_argument("--out", required=True, help="labels.csv or labels.jsonl")
    common(q)
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("progress", help="a campaign's progress as JSON")
    q.add_argument("--campaign", required=True)
    common(q)
    q.set_defaults(func=cmd_progress)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
