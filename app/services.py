"""What a running app holds: its settings, the job store, the dispatcher, the metrics and the API keys."""

from __future__ import annotations

from dataclasses import dataclass

from app.access import KeyRing
from app.metrics import Metrics
from app.throttle import Throttle, throttle_for
from workers.dispatch import Dispatcher, create_backend
from workers.settings import Settings
from workers.store import JobStore
from workers.webhooks import WebhookSender


@dataclass
class Services:
    settings: Settings
    store: JobStore
    dispatcher: Dispatcher
    metrics: Metrics
    webhooks: WebhookSender  # for the events the API itself causes (a cancelled job)
    access: KeyRing
    throttle: Throttle  # rates and job quotas per key, shared like the store

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> Services:
        access = KeyRing.from_settings(settings)  # a malformed key list stops the start, before anything runs
        store, dispatcher = create_backend(settings)
        return cls(settings, store, dispatcher, metrics, WebhookSender(settings), access, throttle_for(store))

    def close(self) -> None:
        self.dispatcher.close()
        self.webhooks.close()
