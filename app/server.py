"""uvicorn's connection limits, sized by the open files this process may hold, and a protocol that
closes slow request heads and sheds them first when connections run short.

uvicorn times out idle keep-alive connections but not a client that opens a connection and sends
its request head a byte at a time (slowloris): enough of those exhaust file descriptors, and every
open connection counts against ``limit_concurrency``, past which even ``/healthz`` answers 503.
"""

from __future__ import annotations

import asyncio
import functools
import random
import resource
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from workers.settings import Settings

# descriptors kept for what is not a client connection: the listening socket, the event loop,
# log files, the webhook clients, imported modules' files (the Redis pool is counted apart)
RESERVED_DESCRIPTORS = 64
# connections per process when BBCU_HTTP_LIMIT_CONCURRENCY leaves it to the descriptors: each holds
# buffers, and a request in the app may hold an upload
MAX_DERIVED_CONNECTIONS = 4096
# when raising the soft limit to an unlimited hard one (not on Linux): a finite, generous target
_UNLIMITED_TARGET = 1 << 16


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def open_files_limit() -> int:
    """The soft limit of open files of this process."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class ConnectionBudget:
    """How many client connections a process takes, from the descriptors it may open."""

    limit_concurrency: int  # uvicorn answers 503 to requests past this many connections or tasks
    backlog: int  # the listen queue, and the most connections asyncio accepts in one go
    shed_at: int  # a new connection that makes this many sheds the oldest that sent no full head...
    shed_to: int  # ...until this many are left

    @classmethod
    def for_descriptors(cls, settings: Settings, descriptors: int) -> ConnectionBudget:
        """Connections fit in the descriptors left once Redis' pool and the rest are counted, with
        room for one accept burst (up to ``backlog``) and the shed connections of another still
        closing; shedding starts below ``limit_concurrency`` so that a complete request finds room."""
        free = max(64, descriptors - settings.redis_max_connections - RESERVED_DESCRIPTORS)
        backlog = min(settings.http_backlog, max(16, free // 8))
        wanted = settings.http_limit_concurrency or MAX_DERIVED_CONNECTIONS
        limit = max(32, min(wanted, free - 2 * backlog))
        headroom = max(4, limit // 10)
        return cls(limit_concurrency=limit, backlog=backlog, shed_at=limit - headroom,
                   shed_to=limit - 2 * headroom)


class HalfOpen:
    """The connections of one server that have not sent a complete request head, oldest first."""

    def __init__(self, shed_at: int, shed_to: int) -> None:
        self.shed_at = shed_at
        self.shed_to = shed_to
        self._waiting: dict[HeadTimeoutProtocol, None] = {}  # insertion order: oldest first
        self.shed = 0  # connections closed to make room (for tests and logs)

    def add(self, protocol: HeadTimeoutProtocol) -> None:
        self._waiting.setdefault(protocol, None)

    def discard(self, protocol: HeadTimeoutProtocol) -> None:
        self._waiting.pop(protocol, None)

    def make_room(self, connections: int, keep: HeadTimeoutProtocol) -> None:
        """With ``connections`` open, at ``shed_at`` or more: close the oldest half-open ones (never
        ``keep``, the newest) until ``shed_to`` are left, or none half-open is."""
        if connections < self.shed_at:
            return
        excess = connections - self.shed_to
        for protocol in list(self._waiting):
            if excess <= 0:
                break
            if protocol is keep:
                continue
            del self._waiting[protocol]
            protocol.shed()
            self.shed += 1
            excess -= 1


class HeadTimeoutProtocol(H11Protocol):
    """Closes a connection whose request head is not complete ``head_timeout_s`` after it began, and
    sheds the oldest such connections when a new one finds the server near its connection budget."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, head_timeout_s: float,
                 half_open: HalfOpen) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_timeout_s = head_timeout_s
        self.half_open = half_open
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self.half_open.add(self)
        self.half_open.make_room(len(self.connections), keep=self)

    def data_received(self, data: bytes) -> None:
        # the first bytes of the next request on a kept-alive connection start its clock
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete: the request is the app's now
            self._disarm()
            self.half_open.discard(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # kept alive and idle until the next request's head: sheddable again
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.half_open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.half_open.discard(self)
        super().connection_lost(exc)

    def shed(self) -> None:
        """Close this connection to make room: it has no request in the app, so nobody waits for it."""
        self._disarm()
        # uncounted now, not when connection_lost runs on a later turn of the loop: otherwise every
        # connection of one accept burst would find the server full, shed another batch, and its
        # requests would meet uvicorn's 503
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        # spread over the last quarter of the timeout: a flood opened at once is not closed at once,
        # so its reconnections do not arrive in one burst either
        timeout_s = self.head_timeout_s * (0.75 + 0.25 * random.random())  # noqa: S311 (not a secret)
        self._head_timer = self.loop.call_later(timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        # still reading the head: nothing was handed to the app yet, so nobody is waiting for an answer
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings, descriptors: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` that bound what clients can hold open, within
    ``descriptors`` open files (default: this process's soft limit)."""
    budget = ConnectionBudget.for_descriptors(settings, descriptors or open_files_limit())
    # a partial of module-level classes: `bbcu serve --workers N` pickles it into each process,
    # where each gets its own (empty) HalfOpen
    protocol = functools.partial(HeadTimeoutProtocol, head_timeout_s=settings.http_header_timeout_s,
                                 half_open=HalfOpen(budget.shed_at, budget.shed_to))
    return {"http": protocol, "limit_concurrency": budget.limit_concurrency, "backlog": budget.backlog,
            "timeout_keep_alive": settings.http_keep_alive_s}
