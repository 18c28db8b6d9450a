"""HTTP limits of the game, as one pure ASGI middleware in front of the FastAPI app.

For every HTTP request, before the application sees it:

* ``HEAD`` is routed as ``GET`` and answered without a body (FastAPI's ``@app.get`` routes refuse it);
* the security headers (CSP, ``nosniff``, ``Referrer-Policy``, ``X-Frame-Options``) are added to the reply;
* a request whose ``Content-Length`` exceeds the cap is answered ``413`` at once, without reading a byte of
  its body, and its connection is closed; the cap is :attr:`Limits.max_body` (64 KB), or
  :attr:`Limits.max_import_body` for the admin import;
* ``authorize(scope)`` (from the app) is awaited before the body is read, so an anonymous request to a
  route that needs a player or the admin token is refused (``401``/``303``) without reading its body;
* the body is then read here, counting bytes as they arrive: past the cap the reply is ``413`` (also for
  chunked bodies without ``Content-Length``), and a body that does not arrive completely within
  :attr:`Limits.body_timeout` seconds is answered ``408``; only then is it handed to the app (at most the
  cap is ever held in memory). Refusals carry ``Connection: close``.

Header read timeouts, the keep-alive timeout and the cap on idle connections live in the HTTP server
(:mod:`featurelens.game.server`), since only it sees a connection before its request head is complete.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# authorize(scope) -> None to go on, or (status, headers, body) to answer without reading the body
Refusal = tuple[int, list[tuple[bytes, bytes]], bytes]
Authorize = Callable[[Scope], Awaitable[Refusal | None]]

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
IMPORT_PATH = "/api/admin/import"
ENV_LIMITS = "FEATURELENS_GAME_LIMITS"  # JSON of Limits fields, for worker processes (set by ``game serve``)


@dataclass(frozen=True)
class Limits:
    """Request limits (bytes and seconds). The server-side ones are used by :mod:`featurelens.game.server`."""

    max_body: int = 64 * 1024  # any request body
    max_import_body: int = 1024 * 1024  # POST /api/admin/import
    body_timeout: float = 30.0  # to receive a whole body, once its head is in
    header_timeout: float = 10.0  # server: to receive a complete request head (also a new connection's first)
    keep_alive_timeout: float = 5.0  # server: idle time allowed between two requests on one connection
    max_idle: int = 200  # server: idle keep-alive connections per worker process; beyond, the oldest is closed
    max_header_bytes: int = 16 * 1024  # server: request line + headers

    def __post_init__(self) -> None:
        for name in ("max_body", "max_import_body", "max_idle", "max_header_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("body_timeout", "header_timeout", "keep_alive_timeout"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive")

    def cap(self, path: str) -> int:
        return self.max_import_body if path == IMPORT_PATH else self.max_body


def limits_from_env() -> Limits:
    """:class:`Limits` from ``$FEATURELENS_GAME_LIMITS`` (JSON of its fields), else the defaults."""
    raw = os.environ.get(ENV_LIMITS)
    return Limits(**json.loads(raw)) if raw else Limits()


def _refusal(scope: Scope, status: int, message: str) -> Refusal:
    if scope["path"].startswith("/api/"):
        body, ctype = json.dumps({"detail": message}).encode(), b"application/json"
    else:
        body, ctype = message.encode(), b"text/plain; charset=utf-8"
    return status, [(b"content-type", ctype)], body


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class LimitsMiddleware:
    """The pure ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, limits: Limits | None = None, authorize: Authorize | None = None) -> None:
        self.app, self.limits, self.authorize = app, limits or Limits(), authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        send = self._wrap_send(send, head)
        cap = self.limits.cap(scope["path"])
        length, chunked = None, False
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = -1
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if length is not None and length < 0:
            await self._answer(send, _refusal(scope, 400, "invalid Content-Length"))
            return
        if length is not None and length > cap:
            await self._answer(send, _refusal(scope, 413, f"the request body is larger than {cap} bytes"))
            return
        if self.authorize is not None:
            refused = await self.authorize(scope)
            if refused is not None:
                await self._answer(send, refused)
                return
        if not length and not chunked:
            await self.app(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(self._read(receive, cap), self.limits.body_timeout)
        except TimeoutError:
            await self._answer(send, _refusal(scope, 408, "the request body did not arrive in time"))
            return
        except _BodyError as exc:
            await self._answer(send, _refusal(scope, exc.status, exc.message))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _read(receive: Receive, cap: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _BodyError(400, "the client went away")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise _BodyError(413, f"the request body is larger than {cap} bytes")
            parts.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _wrap_send(send: Send, head: bool) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        return wrapped

    @staticmethod
    async def _answer(send: Send, refusal: Refusal) -> None:
        status, headers, body = refusal
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
