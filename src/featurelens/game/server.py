"""The game's HTTP server: uvicorn with connection limits it lacks, and the ``game serve`` runner.

uvicorn's HTTP/1.1 protocol closes a keep-alive connection after ``timeout_keep_alive`` seconds without a
new request, but never closes a connection that has not finished sending its request head: a socket
opened and left silent, or a request head sent one byte every few seconds ("slowloris"), stays open
forever. :class:`LimitedH11Protocol` adds, per connection:

* a **header timeout**: a connection must deliver a complete request head within ``header_timeout``
  seconds of opening or of starting to send it (a new request after a keep-alive pause re-arms it);
* a **cap on idle connections** per worker process: a connection counts as idle from its opening or the
  end of its last response until a complete request head arrives; when more than ``max_idle`` are idle,
  the oldest idle one is closed.

The body read timeout and the body caps are in :mod:`featurelens.game.limits` (ASGI). The limits reach the
worker processes through the environment variable ``FEATURELENS_GAME_LIMITS`` (JSON of
:class:`~featurelens.game.limits.Limits` fields), set by :func:`serve`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from featurelens.game.limits import ENV_LIMITS, Limits, limits_from_env


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a per-process cap on idle connections."""

    limits: ClassVar[Limits] = limits_from_env()
    _idle: ClassVar[collections.OrderedDict[LimitedH11Protocol, None]] = collections.OrderedDict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    # -- idle bookkeeping --------------------------------------------------------
    def _set_idle(self) -> None:
        idle = type(self)._idle
        idle[self] = None
        idle.move_to_end(self)
        while len(idle) > self.limits.max_idle:
            oldest, _ = idle.popitem(last=False)
            oldest._close("too many idle connections")

    def _set_busy(self) -> None:
        type(self)._idle.pop(self, None)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._close,
                                                    "request head not received in time")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _close(self, reason: str) -> None:
        self._cancel_head_timer()
        self._set_busy()
        if not self.transport.is_closing():
            self.logger.debug("closing connection: %s", reason)
            self.transport.close()

    # -- protocol events ------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        self._set_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._set_busy()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._close("closed")
        elif self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # a request head has started (or is still) arriving
        else:
            self._cancel_head_timer()  # the head is complete: a request is running
            self._set_busy()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._set_idle()  # waiting for the next request (uvicorn's keep-alive timer runs too)


def serve(app: str, *, host: str, port: int, workers: int, limits: Limits, log_level: str = "warning",
          limit_concurrency: int | None = None) -> None:
    """Run ``app`` (an import string of an app factory) under uvicorn with :class:`LimitedH11Protocol`."""
    import uvicorn

    os.environ[ENV_LIMITS] = json.dumps(dataclasses.asdict(limits))
    LimitedH11Protocol.limits = limits
    uvicorn.run(app, factory=True, host=host, port=port, workers=workers, log_level=log_level, access_log=False,
                http=LimitedH11Protocol if workers <= 1 else "featurelens.game.server:LimitedH11Protocol",
                timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
                h11_max_incomplete_event_size=limits.max_header_bytes,
                limit_concurrency=limit_concurrency,
                # a worker imports torch through the featurelens package (seconds on a busy machine):
                # give it time before the supervisor declares it dead
                timeout_worker_healthcheck=120)
