"""What a running app holds: its settings, the job store, the dispatcher, the metrics and the API keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from app.access import KeyRing
from app.idempotency import IdempotencyKeys, keys_for
from app.metrics import Metrics
from app.stream_slots import StreamSlots, stream_slots_for
from app.throttle import Throttle, throttle_for
from workers.dispatch import Dispatcher, create_backend
from workers.lost import Sweeper
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore
from workers.webhooks import WebhookSender

if TYPE_CHECKING:
    from workers.celery_app import CeleryDispatcher


@dataclass
class Services:
    settings: Settings
    store: JobStore
    dispatcher: Dispatcher
    metrics: Metrics
    webhooks: WebhookSender  # for the events the API itself causes (a cancelled job, a lost one)
    access: KeyRing
    throttle: Throttle  # rates and job quotas per key, shared like the store
    streams: StreamSlots  # open event streams per key, shared like the store
    idempotency: IdempotencyKeys  # Idempotency-Key claims, shared like the store
    sweeper: Sweeper | None = None  # Celery mode: recovers jobs whose worker is gone

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> Services:
        access = KeyRing.from_settings(settings)  # a malformed key list stops the start, before anything runs
        store, dispatcher = create_backend(settings)
        webhooks = WebhookSender(settings)
        sweeper = None
        if isinstance(store, RedisStore):  # the Celery mode
            sweeper = Sweeper(store, settings, cast("CeleryDispatcher", dispatcher), webhooks.notify)
            sweeper.start()
        return cls(settings, store, dispatcher, metrics, webhooks, access, throttle_for(store),
                   stream_slots_for(store), keys_for(store, settings.job_ttl_s), sweeper)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        self.dispatcher.close()
        self.webhooks.close()
