"""What a running app holds: its settings, the job store, the dispatcher and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from app.metrics import Metrics
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

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> Services:
        store, dispatcher = create_backend(settings)
        return cls(settings, store, dispatcher, metrics, WebhookSender(settings))

    def close(self) -> None:
        self.dispatcher.close()
        self.webhooks.close()
