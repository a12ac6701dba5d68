"""Choosing the execution mode: Celery on Redis when a broker is configured, else the embedded pool."""

from __future__ import annotations

from typing import Any, Protocol

from workers.memory_store import MemoryStore
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore


class Dispatcher(Protocol):
    """What the API needs from an execution mode."""

    mode: str

    def pick_queue(self, device: str) -> str: ...

    def submit(self, job_id: str, queue: str) -> None: ...

    def workers(self) -> dict[str, list[dict[str, Any]]]: ...

    def queue_lengths(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def create_backend(settings: Settings) -> tuple[JobStore, Dispatcher]:
    """The store and dispatcher for the configured mode (the Celery path never imports torch)."""
    if settings.broker_url:
        from workers.celery_app import CeleryDispatcher

        redis_store = RedisStore.from_settings(settings)
        return redis_store, CeleryDispatcher(settings, redis_store)
    from workers.embedded import EmbeddedPool

    memory = MemoryStore(settings.result_ttl_s, settings.job_ttl_s, settings.memory_store_max_bytes)
    return memory, EmbeddedPool(settings, memory)
