"""Open event streams per client, capped (``BBCU_MAX_EVENT_STREAMS``), shared like the job store.

Each open ``/jobs/{id}/events`` stream holds a slot: an entry with an expiry time that the stream
renews while it runs and removes when it ends. A process that dies without removing its entries
frees their slots when they lapse (``LEASE_S``), so no crash leaves a client locked out.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import suppress

from app.access import Caller
from app.errors import too_many
from workers.errors import StoreUnavailable
from workers.redis_store import PREFIX, RedisStore
from workers.settings import Settings
from workers.store import JobStore

LEASE_S = 60.0  # a stream renews its slot every LEASE_S / 3


class StreamSlots(ABC):
    """Slots of the clients' open streams."""

    @abstractmethod
    def open(self, client: str, stream_id: str, limit: int) -> bool:
        """Take a slot for the stream: False (nothing taken) when the client holds ``limit`` already."""

    @abstractmethod
    def renew(self, client: str, stream_id: str) -> None:
        """Push the slot's expiry ``LEASE_S`` ahead."""

    @abstractmethod
    def close(self, client: str, stream_id: str) -> None:
        """Free the slot."""


class MemoryStreamSlots(StreamSlots):
    """Slots in this process (the embedded mode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, dict[str, float]] = {}  # client -> {stream id: expiry}

    def open(self, client: str, stream_id: str, limit: int) -> bool:
        with self._lock:
            t = time.time()
            held = {s: e for s, e in self._slots.get(client, {}).items() if e > t}
            if len(held) >= limit:
                return False
            held[stream_id] = t + LEASE_S
            self._slots[client] = held
            return True

    def renew(self, client: str, stream_id: str) -> None:
        with self._lock:
            held = self._slots.get(client, {})
            if stream_id in held:
                held[stream_id] = time.time() + LEASE_S

    def close(self, client: str, stream_id: str) -> None:
        with self._lock:
            held = self._slots.get(client, {})
            held.pop(stream_id, None)
            if not held:
                self._slots.pop(client, None)


# drop lapsed slots, count, take one: atomic, so two API processes cannot both take the last slot
_OPEN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[5]) * 1000))
return 1
"""


class RedisStreamSlots(StreamSlots):
    """Slots as a sorted set per client in the broker's Redis (score: expiry), for every API process."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._open = store.client.register_script(_OPEN)

    @staticmethod
    def _key(client: str) -> str:
        return f"{PREFIX}:streams:{client}"

    def open(self, client: str, stream_id: str, limit: int) -> bool:
        t = time.time()
        with self.store.guard():
            taken = self._open(keys=[self._key(client)], args=[t, t + LEASE_S, limit, stream_id, LEASE_S])
        return bool(taken)

    def renew(self, client: str, stream_id: str) -> None:
        with self.store.guard(), self.store.client.pipeline() as pipe:
            pipe.zadd(self._key(client), {stream_id: time.time() + LEASE_S}, xx=True)
            pipe.pexpire(self._key(client), int(LEASE_S * 1000))
            pipe.execute()

    def close(self, client: str, stream_id: str) -> None:
        with self.store.guard():
            self.store.client.zrem(self._key(client), stream_id)


def stream_slots_for(store: JobStore) -> StreamSlots:
    """Slots that share the store's reach: Redis for every API process, or this process."""
    return RedisStreamSlots(store) if isinstance(store, RedisStore) else MemoryStreamSlots()


def take_slot(slots: StreamSlots, settings: Settings, caller: Caller) -> str | None:
    """The id of the caller's new stream slot; None where streams are not capped, 429 when all are held."""
    limit = settings.max_event_streams
    if not caller.limited or limit <= 0:
        return None
    stream_id = uuid.uuid4().hex
    if not slots.open(caller.client, stream_id, limit):
        raise too_many(f"{caller.client} already has {limit} event streams open (the limit); close one, or "
                       "poll GET /jobs/{id}", settings.retry_after_s, max_event_streams=limit)
    return stream_id


def free_slot(slots: StreamSlots, caller: Caller, stream_id: str | None) -> None:
    """Free a stream's slot; with the broker unreachable it lapses by itself (``LEASE_S``)."""
    if stream_id is not None:
        with suppress(StoreUnavailable):
            slots.close(caller.client, stream_id)
