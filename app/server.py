"""uvicorn's connection limits from the settings, and a protocol that closes slow request heads.

uvicorn times out idle keep-alive connections but not a client that opens a connection and sends
its request head a byte at a time (slowloris): enough of those exhaust file descriptors.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from workers.settings import Settings


class HeadTimeoutProtocol(H11Protocol):
    """Closes a connection whose request head is not complete ``head_timeout_s`` after it began."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, head_timeout_s: float) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # the first bytes of the next request on a kept-alive connection start its clock
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        # still reading the head: nothing was handed to the app yet, so nobody is waiting for an answer
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` that bound what clients can hold open."""
    # a partial of a module-level class: `bbcu serve --workers N` pickles it into each process
    protocol = functools.partial(HeadTimeoutProtocol, head_timeout_s=settings.http_header_timeout_s)
    return {"http": protocol, "limit_concurrency": settings.http_limit_concurrency,
            "backlog": settings.http_backlog, "timeout_keep_alive": settings.http_keep_alive_s}
