"""The registry of live workers: each announces itself per queue with a heartbeat that expires.

A heartbeat carries what the worker reports (its pool, memory, the jobs it holds, when it started);
the API reads them for readiness, for ``device=auto`` and for the sweeper (workers/lost.py). A queue
whose worker beat within ``job_ttl_s`` is one that may be restarting, not one the service lacks.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.redis_store import RedisStore


class WorkerRegistry(ABC):
    """Live workers by queue, from their expiring heartbeats."""

    @abstractmethod
    def beat(self, queue: str, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        """Announce a live worker for ``queue`` for ``ttl_s`` seconds."""

    @abstractmethod
    def forget_worker(self, queue: str, worker: str) -> None:
        """Withdraw a worker that stops (before its heartbeat would expire)."""

    @abstractmethod
    def workers(self, queue: str) -> list[dict[str, Any]]:
        """The live workers of a queue (their heartbeat info)."""

    @abstractmethod
    def seen(self, queue: str) -> bool:
        """Whether a worker of the queue has beaten within ``job_ttl_s`` (one may be restarting)."""


class MemoryRegistry(WorkerRegistry):
    """The embedded mode's registry: heartbeats in a dictionary, expired when read."""

    def __init__(self, job_ttl_s: int) -> None:
        self.job_ttl_s = job_ttl_s
        self._lock = threading.Lock()
        self._beats: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}  # -> (expires, info)
        self._seen: dict[str, float] = {}  # queue -> last beat (monotonic)

    def beat(self, queue: str, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        with self._lock:
            self._beats[(queue, worker)] = (time.monotonic() + ttl_s, info)
            self._seen[queue] = time.monotonic()

    def forget_worker(self, queue: str, worker: str) -> None:
        with self._lock:
            self._beats.pop((queue, worker), None)

    def workers(self, queue: str) -> list[dict[str, Any]]:
        t = time.monotonic()
        with self._lock:
            # a handful of workers: dropping the expired ones on each read is cheap
            self._beats = {k: v for k, v in self._beats.items() if v[0] > t}
            return [info for (q, _), (_, info) in self._beats.items() if q == queue]

    def seen(self, queue: str) -> bool:
        with self._lock:
            last = self._seen.get(queue)
            return last is not None and time.monotonic() - last < self.job_ttl_s


class RedisRegistry(WorkerRegistry):
    """Heartbeats as expiring JSON keys ``bbcu:worker:{queue}:{worker}`` in the store's Redis."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def beat(self, queue: str, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        store = self.store
        with store.guard(), store.client.pipeline() as pipe:
            pipe.set(store.key("worker", queue, worker), json.dumps(info), px=int(ttl_s * 1000))
            pipe.set(store.key("seen", queue), "1", ex=store.job_ttl_s)
            pipe.execute()

    def forget_worker(self, queue: str, worker: str) -> None:
        with self.store.guard():
            self.store.client.delete(self.store.key("worker", queue, worker))

    def workers(self, queue: str) -> list[dict[str, Any]]:
        client = self.store.client
        with self.store.guard():
            keys = list(client.scan_iter(match=self.store.key("worker", queue, "*"), count=100))
            values = client.mget(keys) if keys else []
        return [json.loads(v) for v in values if v]

    def seen(self, queue: str) -> bool:
        with self.store.guard():
            return bool(self.store.client.exists(self.store.key("seen", queue)))
