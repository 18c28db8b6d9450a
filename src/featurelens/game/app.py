"""The labelling game ("Deep Reveal") as a FastAPI application.

``create_app(database_url, admin_token=...)`` returns the ASGI app: server-rendered pages (Jinja2,
autoescaped) plus a JSON API under ``/api`` that the pages' small script and the simulated players use.

Protection
    * passwords: argon2id (:class:`~featurelens.game.store.PasswordHasher`);
    * sessions: random token in an ``HttpOnly; SameSite=Lax`` cookie (``Secure`` behind HTTPS), only its
      SHA-256 stored server-side, so every worker sees every session;
    * CSRF: every state-changing request from a browser carries a token (hidden form field or
      ``X-CSRF-Token`` header): the session's token once logged in, a double-submit cookie before;
    * per-player rate limit on answers, counted in the database (so it holds across workers);
    * admin endpoints need ``Authorization: Bearer <token>`` (or ``X-Admin-Token``), compared in constant
      time; with no admin token configured they are disabled;
    * a strict Content-Security-Policy (no inline script, everything served locally);
    * request limits (:mod:`featurelens.game.limits`): a body cap enforced while reading (``413``), the
      player or admin check before a body is read, a body read timeout, and ``422`` replies that never
      echo the input.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from featurelens.errors import FeaturelensError
from featurelens.game import i18n, store
from featurelens.game.db import Database, make_engine, migrate
from featurelens.game.limits import Limits, LimitsMiddleware, Refusal, limits_from_env
from featurelens.game.masks import REVEAL_Q
from featurelens.game.scoring import AGREE_CAP, AGREE_POINTS, GUESS_POINTS, LabelMatcher, LemmaMatcher

HERE = Path(__file__).parent
SESSION_COOKIE = "fl_session"
LANG_COOKIE = "fl_lang"
CSRF_COOKIE = "fl_csrf"

_STATUS = {store.ValidationError: 422, store.NotFound: 404, store.Conflict: 409, store.RateLimited: 429}


def _status(exc: FeaturelensError) -> int:
    for cls, code in _STATUS.items():
        if isinstance(exc, cls):
            return code
    return 400


class Credentials(BaseModel):
    username: str = Field(max_length=200)
    password: str = Field(max_length=1000)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1000)
    new_password: str = Field(max_length=1000)


class PasswordResetBody(BaseModel):
    token: str = Field(max_length=200)
    new_password: str = Field(max_length=1000)


class NextRound(BaseModel):
    campaign: str | None = Field(default=None, max_length=100)


class Reveal(BaseModel):
    to_step: int | None = None


class Answer(BaseModel):
    guessed_class: str | None = Field(default=None, max_length=200)
    labels: list[str] = Field(default_factory=list, max_length=20)
    idempotency_key: str | None = Field(default=None, max_length=100)


class ImportRequest(BaseModel):
    bundle: str
    campaign: str
    gold: dict[str, list[str]] | None = None
    seen_policy: str = Field(default="label_only", max_length=16)
    agreement_rule: str = Field(default="address", max_length=16)


def create_app(
    database_url: str,
    *,
    admin_token: str | None,
    matcher: LabelMatcher | None = None,
    rate_limit: tuple[int, float] | None = (30, 60.0),
    login_limit: tuple[int, float] = (10, 300.0),
    gold_rate: float = 0.1,
    secure_cookies: bool | None = None,
    hasher: store.PasswordHasher | None = None,
    run_migrations: bool = True,
    pool_size: int = 40,
    limits: Limits | None = None,
    signup_limit: tuple[int, float] | None = (20, 3600.0),
    login_address_limit: tuple[int, float] | None = (100, 300.0),
    trusted_proxies: Sequence[str] = (),
) -> FastAPI:
    """Build the game app on ``database_url`` (SQLite file URL/path or PostgreSQL URL).

    ``rate_limit=(n, seconds)``: at most ``n`` answers per player per window (``None`` disables it).
    ``login_limit=(n, seconds)``: ``n`` failed log-ins per (user name, client address) per window, then an
    exponential backoff for that pair only (:func:`store.login_retry_after`); ``login_address_limit``: failed
    log-ins per address over all names; ``signup_limit``: new accounts per address. All are counted in the
    database (so they hold across worker processes) and answered with HTTP 429 without a password check.
    ``trusted_proxies``: addresses or networks of reverse proxies whose ``X-Forwarded-For`` is believed
    (the client is the right-most address that is not a trusted proxy); otherwise the peer address is used.
    ``secure_cookies``: force the ``Secure`` cookie flag (default: when the request came over HTTPS).
    ``limits``: body caps and the body read timeout (:class:`~featurelens.game.limits.Limits`).
    """
    engine = make_engine(database_url, pool_size=pool_size)
    if run_migrations:
        migrate(engine)
    db = Database(engine)
    matcher = matcher or LemmaMatcher()
    matcher.normalize("warm up")  # loads lemminflect's tables now (1.5 s holding the GIL), not on a first answer
    store.warm_renderer()  # torch and the map rule load with the worker, not on its first image request
    hasher = hasher or store.PasswordHasher()
    admin_token = admin_token or None

    app = FastAPI(title="featurelens Deep Reveal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db
    app.state.matcher = matcher
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(REVEAL_Q=REVEAL_Q, GUESS_POINTS=GUESS_POINTS, AGREE_POINTS=AGREE_POINTS,
                                 AGREE_CAP=AGREE_CAP, MAX_LABELS=store.MAX_LABELS,
                                 MAX_LABEL_CHARS=store.MAX_LABEL_CHARS)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # security headers, HEAD, body caps and the auth check before the body: one pure ASGI middleware
    app.add_middleware(LimitsMiddleware, limits=limits or Limits(), authorize=lambda scope: _authorize(scope))

    # -- helpers ----------------------------------------------------------
    proxies = parse_networks(trusted_proxies)

    def client_addr(request: Request) -> str:
        return _client_address(request, proxies)

    def _secure(request: Request) -> bool:
        return secure_cookies if secure_cookies is not None else request.url.scheme == "https"

    def current(request: Request) -> store.PlayerSession | None:
        if "player" not in request.scope.setdefault("state", {}):
            request.scope["state"]["player"] = store.get_session(db, request.cookies.get(SESSION_COOKIE))
        return request.scope["state"]["player"]

    def anon_csrf(request: Request) -> str:
        token = request.cookies.get(CSRF_COOKIE)
        if not token or len(token) > 100:
            token = request.scope.setdefault("state", {}).get("new_csrf") or secrets.token_urlsafe(24)
            request.scope["state"]["new_csrf"] = token
        return token

    def csrf_token(request: Request) -> str:
        player = current(request)
        return player.csrf_token if player else anon_csrf(request)

    def check_csrf(request: Request, provided: str | None) -> None:
        provided = provided or request.headers.get("x-csrf-token") or ""
        player = current(request)
        expected = player.csrf_token if player else request.cookies.get(CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(provided.encode(), expected.encode()):
            raise _CsrfError()

    def finish_response(request: Request, response: Response) -> Response:
        new = request.scope.get("state", {}).get("new_csrf")
        if new:
            response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", secure=_secure(request),
                                path="/")
        return response

    def language(request: Request) -> str:
        """The request's UI language (see :mod:`featurelens.game.i18n`)."""
        state = request.scope.setdefault("state", {})
        if "lang" not in state:
            lang = i18n.valid_language(request.cookies.get(LANG_COOKIE))
            player = current(request)
            if lang is None and player is not None:
                lang = i18n.valid_language(player.language)  # read with the session
            state["lang"] = lang or i18n.negotiate(request.headers.get("accept-language")) or i18n.DEFAULT
        return state["lang"]

    def page(request: Request, name: str, status_code: int = 200, **ctx: Any) -> Response:
        cat = i18n.catalog(language(request))
        ctx.update(player=current(request), csrf=csrf_token(request), lang=cat.lang, _=cat.gettext,
                   ngettext=cat.ngettext, LANGUAGES=i18n.LANGUAGES)
        resp = templates.TemplateResponse(request, name, ctx, status_code=status_code)
        resp.headers["Cache-Control"] = "no-store"
        return finish_response(request, resp)

    def login_cookie(request: Request, response: Response, sess: store.PlayerSession) -> None:
        response.set_cookie(SESSION_COOKIE, sess.token, httponly=True, samesite="lax", secure=_secure(request),
                            max_age=store.SESSION_DAYS * 86400, path="/")

    def require_admin(request: Request) -> None:
        if admin_token is None:
            raise _AdminError("admin endpoints are disabled: start the server with an admin token")
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-admin-token", "")
        if not given or not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise _AdminError("a valid admin token is required")

    def api_player(request: Request) -> store.PlayerSession:
        player = current(request)
        if player is None:
            raise _AuthError()
        return player

    async def _authorize(scope: dict[str, Any]) -> Refusal | None:
        """Before a request body is read: the admin token for admin routes, a player for round routes."""
        if scope["method"] not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        path = scope["path"]
        if path.startswith("/api/admin/"):
            try:
                require_admin(Request(scope))
            except _AdminError as exc:
                return (401 if admin_token else 403, [(b"content-type", b"application/json"),
                                                      (b"www-authenticate", b"Bearer")],
                        json.dumps({"detail": str(exc)}).encode())
        elif path.startswith(("/api/rounds", "/round/")):
            if await run_in_threadpool(current, Request(scope)) is None:
                if path.startswith("/api/"):
                    return 401, [(b"content-type", b"application/json")], b'{"detail": "log in first"}'
                return 303, [(b"location", b"/login")], b""
        return None

    # -- error handlers ---------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        # never the submitted input (a too-long password, 20 MB of JSON, a NaN that JSON cannot encode)
        errors = [{"loc": [str(x)[:64] for x in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200],
                   "type": str(e.get("type", ""))} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    def _is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(FeaturelensError)
    async def _game_error(request: Request, exc: FeaturelensError):  # type: ignore[no-untyped-def]
        code = _status(exc)
        headers = {"Retry-After": f"{exc.retry_after:.0f}"} if isinstance(exc, store.RateLimited) else None
        if _is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)
        resp = page(request, "error.html", status_code=code, message=str(exc))
        if headers:
            resp.headers.update(headers)
        return resp

    @app.exception_handler(_CsrfError)
    async def _csrf_error(request: Request, exc: _CsrfError):  # type: ignore[no-untyped-def]
        msg = "the form expired or came from another site (CSRF check failed); reload the page and try again"
        if _is_api(request):
            return JSONResponse({"detail": msg}, status_code=403)
        return page(request, "error.html", status_code=403, message=msg)

    @app.exception_handler(_AuthError)
    async def _auth_error(request: Request, exc: _AuthError):  # type: ignore[no-untyped-def]
        if _is_api(request):
            return JSONResponse({"detail": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(_AdminError)
    async def _admin_error(request: Request, exc: _AdminError):  # type: ignore[no-untyped-def]
        return JSONResponse({"detail": str(exc)}, status_code=401 if admin_token else 403,
                            headers={"WWW-Authenticate": "Bearer"})

    # -- pages ----------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        stats = store.player_stats(db, current(request).player_id) if current(request) else None  # type: ignore[union-attr]
        return page(request, "index.html", campaigns=store.list_campaigns(db), stats=stats,
                    top=store.leaderboard(db, limit=5))

    @app.get("/instructions", response_class=HTMLResponse)
    def instructions(request: Request) -> Response:
        return page(request, "instructions.html")

    @app.get("/signup", response_class=HTMLResponse)
    def signup_page(request: Request) -> Response:
        return page(request, "signup.html", error=None, username="")

    @app.post("/signup")
    def signup_form(request: Request, username: str = Form(""), password: str = Form(""),
                    csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        try:
            pid = store.create_player(db, hasher, username, password, client_addr=client_addr(request),
                                      signup_limit=signup_limit)
        except (store.ValidationError, store.Conflict, store.RateLimited) as exc:
            resp = page(request, "signup.html", status_code=_status(exc), error=str(exc), username=username)
            if isinstance(exc, store.RateLimited):
                resp.headers["Retry-After"] = f"{exc.retry_after:.0f}"
            return resp
        resp = RedirectResponse("/play", status_code=303)
        login_cookie(request, resp, store.open_session(db, pid))
        return resp

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> Response:
        return page(request, "login.html", error=None, username="")

    @app.post("/login")
    def login_form(request: Request, username: str = Form(""), password: str = Form(""),
                   csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        addr = client_addr(request)
        retry = store.login_retry_after(db, username, login_limit, client_addr=addr,
                                        address_limit=login_address_limit)
        if retry is not None:
            resp = page(request, "login.html", status_code=429, username=username,
                        error="too many failed log-ins for this name; wait a few minutes")
            resp.headers["Retry-After"] = f"{retry:.0f}"
            return resp
        pid = store.authenticate(db, hasher, username, password)
        if pid is None:
            store.record_login_failure(db, username, login_limit[1], client_addr=addr)
            return page(request, "login.html", status_code=401, error="wrong user name or password",
                        username=username)
        store.clear_login_failures(db, username, addr)
        resp = RedirectResponse("/play", status_code=303)
        login_cookie(request, resp, store.open_session(db, pid))
        return resp

    @app.post("/logout")
    def logout_form(request: Request, csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        player = current(request)
        if player:
            store.close_session(db, player.token)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- accounts: password change, log out everywhere, one-time reset links ------------------
    @app.get("/account", response_class=HTMLResponse)
    def account_page(request: Request, done: str | None = None) -> Response:
        api_player(request)
        messages = {"password": "Your password was changed; other sessions were logged out.",
                    "sessions": "All your other sessions were logged out."}
        return page(request, "account.html", error=None, message=messages.get(done or ""))

    @app.post("/account/password")
    def account_password(request: Request, current_password: str = Form(""), new_password: str = Form(""),
                         csrf_token: str = Form("")) -> Response:
        player = api_player(request)
        check_csrf(request, csrf_token)
        try:
            store.change_password(db, hasher, player.player_id, current_password, new_password,
                                  keep_token=player.token)
        except store.ValidationError as exc:
            return page(request, "account.html", status_code=422, error=str(exc), message=None)
        return RedirectResponse("/account?done=password", status_code=303)

    @app.post("/account/logout-all")
    def account_logout_all(request: Request, csrf_token: str = Form("")) -> Response:
        player = api_player(request)
        check_csrf(request, csrf_token)
        store.close_all_sessions(db, player.player_id)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/reset/{token}", response_class=HTMLResponse)
    def reset_page(request: Request, token: str) -> Response:
        valid = store.reset_token_valid(db, token)
        return page(request, "reset.html", status_code=200 if valid else 404, token=token, valid=valid, error=None)

    @app.post("/reset/{token}")
    def reset_form(request: Request, token: str, new_password: str = Form(""), csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        try:
            store.reset_password_with_token(db, hasher, token, new_password)
        except store.ValidationError as exc:
            return page(request, "reset.html", status_code=422, token=token, valid=True, error=str(exc))
        except store.NotFound:
            return page(request, "reset.html", status_code=404, token=token, valid=False, error=None)
        return RedirectResponse("/login", status_code=303)

    @app.post("/api/password")
    def api_password(request: Request, body: PasswordChange) -> dict[str, Any]:
        player = api_player(request)
        check_csrf(request, None)
        store.change_password(db, hasher, player.player_id, body.current_password, body.new_password,
                              keep_token=player.token)
        return {"ok": True}

    @app.post("/api/logout-all")
    def api_logout_all(request: Request) -> Response:
        player = api_player(request)
        check_csrf(request, None)
        n = store.close_all_sessions(db, player.player_id)
        resp = JSONResponse({"ok": True, "sessions_ended": n})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.post("/api/reset")
    def api_reset(request: Request, body: PasswordResetBody) -> dict[str, Any]:
        check_csrf(request, None)
        store.reset_password_with_token(db, hasher, body.token, body.new_password)
        return {"ok": True}

    @app.post("/language")
    def language_form(request: Request, lang: str = Form(""), next: str = Form("/"),
                      csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        code = i18n.valid_language(lang)
        if code is None:
            raise store.ValidationError(f"unknown language; choose one of {', '.join(i18n.LANGUAGES)}")
        player = current(request)
        if player is not None:
            store.set_player_language(db, player.player_id, code)
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", secure=_secure(request), path="/")
        return resp

    @app.get("/play")
    def play(request: Request, campaign: str | None = None) -> Response:
        player = api_player(request)
        rnd = store.next_round(db, player.player_id, campaign, gold_rate=gold_rate)
        if rnd is None:
            return page(request, "done.html")
        return RedirectResponse(f"/round/{rnd.id}", status_code=303)

    @app.get("/round/{round_id}", response_class=HTMLResponse)
    def round_page(request: Request, round_id: int, error: str | None = None) -> Response:
        player = api_player(request)
        view = store.get_round(db, player.player_id, round_id)
        if view.status == "open":
            return page(request, "round.html", r=view, key=uuid.uuid4().hex, error=None, labels=[], guess="")
        return page(request, "result.html", r=view, points=(view.guess_points or 0)
                    + sum(x["points"] for x in view.labels), stats=store.player_stats(db, player.player_id))

    @app.post("/round/{round_id}/reveal")
    def reveal_form(request: Request, round_id: int, csrf_token: str = Form(""),
                    to_step: int | None = Form(None)) -> Response:
        player = api_player(request)
        check_csrf(request, csrf_token)
        try:
            store.reveal_more(db, player.player_id, round_id, to_step)
        except store.Conflict:
            pass  # finished meanwhile: the round page shows the result
        return RedirectResponse(f"/round/{round_id}", status_code=303)

    def _answer_form(request: Request, round_id: int, guess: str | None, labels: list[str], key: str,
                     csrf: str) -> Response:
        player = api_player(request)
        check_csrf(request, csrf)
        try:
            store.finish_round(db, player.player_id, round_id, guessed_class=guess, labels=labels,
                               idempotency_key=key, matcher=matcher, rate_limit=rate_limit,
                               client_addr=client_addr(request), language=language(request))
        except (store.ValidationError, store.RateLimited) as exc:
            view = store.get_round(db, player.player_id, round_id)
            resp = page(request, "round.html", status_code=_status(exc), r=view, key=key, error=str(exc),
                        labels=labels, guess=guess or "")
            if isinstance(exc, store.RateLimited):
                resp.headers["Retry-After"] = f"{exc.retry_after:.0f}"
            return resp
        return RedirectResponse(f"/round/{round_id}", status_code=303)

    @app.post("/round/{round_id}/guess")
    def guess_form(request: Request, round_id: int, guessed_class: str = Form(""),
                   labels: Annotated[list[str] | None, Form()] = None, idempotency_key: str = Form(""),
                   csrf_token: str = Form("")) -> Response:
        return _answer_form(request, round_id, guessed_class, labels or [], idempotency_key, csrf_token)

    @app.post("/round/{round_id}/give-up")
    def give_up_form(request: Request, round_id: int, labels: Annotated[list[str] | None, Form()] = None,
                     idempotency_key: str = Form(""), csrf_token: str = Form("")) -> Response:
        return _answer_form(request, round_id, None, labels or [], idempotency_key, csrf_token)

    @app.get("/round/{round_id}/image/{kind}.jpg")
    def round_image(request: Request, round_id: int, kind: str) -> Response:
        player = api_player(request)
        data = store.asset(db, player.player_id, round_id, kind)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/leaderboard", response_class=HTMLResponse)
    def leaderboard_page(request: Request) -> Response:
        return page(request, "leaderboard.html", rows=store.leaderboard(db, limit=50))

    @app.get("/history", response_class=HTMLResponse)
    def history_page(request: Request) -> Response:
        player = api_player(request)
        return page(request, "history.html", rows=store.history(db, player.player_id),
                    stats=store.player_stats(db, player.player_id))

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:  # no thread hop: the cheapest request, a floor for load tests
        return "ok"

    # -- JSON API ---------------------------------------------------------------------
    @app.get("/api/csrf")
    def api_csrf(request: Request) -> Response:
        return finish_response(request, JSONResponse({"csrf_token": csrf_token(request)}))

    @app.post("/api/signup", status_code=201)
    def api_signup(request: Request, body: Credentials) -> Response:
        check_csrf(request, None)
        pid = store.create_player(db, hasher, body.username, body.password, client_addr=client_addr(request),
                                  signup_limit=signup_limit)
        sess = store.open_session(db, pid)
        resp = JSONResponse({"player": sess.username, "csrf_token": sess.csrf_token}, status_code=201)
        login_cookie(request, resp, sess)
        return resp

    @app.post("/api/login")
    def api_login(request: Request, body: Credentials) -> Response:
        check_csrf(request, None)
        addr = client_addr(request)
        retry = store.login_retry_after(db, body.username, login_limit, client_addr=addr,
                                        address_limit=login_address_limit)
        if retry is not None:
            raise store.RateLimited("too many failed log-ins for this name; wait a few minutes", retry)
        pid = store.authenticate(db, hasher, body.username, body.password)
        if pid is None:
            store.record_login_failure(db, body.username, login_limit[1], client_addr=addr)
            return JSONResponse({"detail": "wrong user name or password"}, status_code=401)
        store.clear_login_failures(db, body.username, addr)
        sess = store.open_session(db, pid)
        resp = JSONResponse({"player": sess.username, "csrf_token": sess.csrf_token})
        login_cookie(request, resp, sess)
        return resp

    @app.post("/api/logout")
    def api_logout(request: Request) -> Response:
        player = api_player(request)
        check_csrf(request, None)
        store.close_session(db, player.token)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/api/me")
    def api_me(request: Request) -> dict[str, Any]:
        player = api_player(request)
        return {"player": player.username, "csrf_token": player.csrf_token,
                "stats": store.player_stats(db, player.player_id)}

    def _is_admin(request: Request) -> bool:
        try:
            require_admin(request)
            return True
        except _AdminError:
            return False

    def _round_json(view: store.RoundView, request: Request) -> dict[str, Any]:
        d = view.to_dict()
        d["image_url"] = f"/round/{view.id}/image/r{view.reveal_step}.jpg"
        if view.status == "open" and not _is_admin(request):
            # image and cluster ids can name the class ("cat_3/head/1"): hidden until the round is over,
            # except for simulations that send the admin token ("oracle" players)
            d["cluster_id"] = d["image_id"] = None
        return d

    @app.post("/api/rounds")
    def api_next(request: Request, body: Annotated[NextRound | None, Body()] = None) -> Response:
        player = api_player(request)
        check_csrf(request, None)
        view = store.next_round(db, player.player_id, body.campaign if body else None, gold_rate=gold_rate)
        if view is None:
            return JSONResponse({"detail": "no maps left for you in this campaign", "round": None}, status_code=404)
        return JSONResponse({"round": _round_json(view, request)})

    @app.get("/api/rounds/{round_id}")
    def api_round(request: Request, round_id: int) -> dict[str, Any]:
        player = api_player(request)
        return {"round": _round_json(store.get_round(db, player.player_id, round_id), request)}

    @app.post("/api/rounds/{round_id}/reveal")
    def api_reveal(request: Request, round_id: int, body: Annotated[Reveal | None, Body()] = None) -> Response:
        player = api_player(request)
        check_csrf(request, None)
        view = store.reveal_more(db, player.player_id, round_id, body.to_step if body else None)
        return JSONResponse({"round": _round_json(view, request)})

    def _api_answer(request: Request, round_id: int, body: Answer, give_up: bool) -> Response:
        player = api_player(request)
        check_csrf(request, None)
        key = request.headers.get("idempotency-key") or body.idempotency_key or ""
        res = store.finish_round(db, player.player_id, round_id,
                                 guessed_class=None if give_up else (body.guessed_class or ""),
                                 labels=body.labels, idempotency_key=key, matcher=matcher, rate_limit=rate_limit,
                                 client_addr=client_addr(request), language=language(request))
        return JSONResponse({"round": _round_json(res.round, request), "points": res.points, "replayed": res.replayed},
                            status_code=200 if res.replayed else 201)

    @app.post("/api/rounds/{round_id}/guess")
    def api_guess(request: Request, round_id: int, body: Answer) -> Response:
        return _api_answer(request, round_id, body, give_up=False)

    @app.post("/api/rounds/{round_id}/give-up")
    def api_give_up(request: Request, round_id: int, body: Annotated[Answer | None, Body()] = None) -> Response:
        return _api_answer(request, round_id, body or Answer(), give_up=True)

    @app.get("/api/leaderboard")
    def api_leaderboard(limit: int = 20) -> dict[str, Any]:
        return {"leaderboard": store.leaderboard(db, limit=min(max(limit, 1), 200))}

    @app.get("/api/history")
    def api_history(request: Request) -> dict[str, Any]:
        player = api_player(request)
        return {"history": store.history(db, player.player_id)}

    @app.get("/api/stats")
    def api_stats(request: Request) -> dict[str, Any]:
        return store.player_stats(db, api_player(request).player_id)

    # -- admin ---------------------------------------------------------------------------
    @app.get("/api/admin/campaigns")
    def admin_campaigns(request: Request) -> dict[str, Any]:
        require_admin(request)
        return {"campaigns": [{**c, "created_at": store._iso(c["created_at"])} for c in store.list_campaigns(db)]}

    @app.post("/api/admin/import", status_code=201)
    def admin_import(request: Request, body: ImportRequest) -> dict[str, Any]:
        require_admin(request)
        summary = store.import_bundle(db, body.bundle, body.campaign, gold=body.gold, seen_policy=body.seen_policy,
                                      agreement_rule=body.agreement_rule)
        return {"campaign": summary.campaign, "images": summary.images, "maps": summary.maps,
                "gold_maps": summary.gold_maps, "class_names": summary.class_names}

    @app.get("/api/admin/campaigns/{name}/progress")
    def admin_progress(request: Request, name: str) -> dict[str, Any]:
        require_admin(request)
        return store.progress(db, name)

    @app.get("/api/admin/campaigns/{name}/export")
    def admin_export(request: Request, name: str, format: str = "jsonl") -> Response:
        require_admin(request)
        import io

        rows = store.export_rows(db, name)
        buf = io.StringIO()
        store.write_export(rows, buf, format)
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        return Response(buf.getvalue(), media_type=f"{media}; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="labels.{format}"'})

    return app


def parse_networks(items: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Trusted proxies as networks (``10.0.0.1``, ``10.0.0.0/8``, ``::1``); a bad entry is a GameError."""
    nets = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise store.GameError(f"trusted proxy {item!r} is not an IP address or network") from None
    return nets


def _in(addr: str, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in nets)


def _client_address(request: Request, proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The client's address: the TCP peer; behind a trusted proxy, the right-most ``X-Forwarded-For`` entry
    that is not itself a trusted proxy (entries left of it could be forged by the client)."""
    peer = request.client.host if request.client else ""
    if not proxies or not _in(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    while hops and _in(hops[-1], proxies):
        hops.pop()
    return hops[-1][:100] if hops else peer


class _CsrfError(Exception):
    pass


class _AuthError(Exception):
    pass


class _AdminError(Exception):
    pass


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` workers: configuration from environment variables
    ``FEATURELENS_GAME_DATABASE_URL``, ``FEATURELENS_ADMIN_TOKEN``, ``FEATURELENS_GAME_RATE_LIMIT``
    (``N/SECONDS`` or ``off``), ``FEATURELENS_GAME_GOLD_RATE``, ``FEATURELENS_GAME_SIGNUP_LIMIT``
    (``N/SECONDS`` or ``off``, default 20/3600) ``FEATURELENS_GAME_TRUSTED_PROXIES`` (comma-separated) and ``FEATURELENS_GAME_LIMITS``."""

    def _limit(text: str) -> tuple[int, float] | None:
        if text.lower() in ("off", "none", "0"):
            return None
        n, _, w = text.partition("/")
        return (int(n), float(w or 60))

    import torch

    # a worker renders small maps on many request threads: one intra-op thread each, no OpenMP spin-wait
    torch.set_num_threads(1)
    limit = _limit(os.environ.get("FEATURELENS_GAME_RATE_LIMIT", "30/60"))
    return create_app(
        os.environ.get("FEATURELENS_GAME_DATABASE_URL", "featurelens-game.sqlite3"),
        admin_token=os.environ.get("FEATURELENS_ADMIN_TOKEN") or None,
        rate_limit=limit,
        gold_rate=float(os.environ.get("FEATURELENS_GAME_GOLD_RATE", "0.1")),
        run_migrations=os.environ.get("FEATURELENS_GAME_MIGRATE", "1") != "0",
        limits=limits_from_env(),
        signup_limit=_limit(os.environ.get("FEATURELENS_GAME_SIGNUP_LIMIT", "20/3600")),
        trusted_proxies=[x for x in os.environ.get("FEATURELENS_GAME_TRUSTED_PROXIES", "").split(",") if x.strip()],
    )
