"""The API's Prometheus metrics (prometheus-client) and the middleware that counts HTTP requests.

Counters and histograms live in a registry per app. When ``PROMETHEUS_MULTIPROC_DIR`` is set (``bbcu
serve --workers N`` sets it), every API process writes its samples there and ``/metrics`` answers the
sum over all processes, whichever process serves the scrape. Gauges of the shared state (broker,
queues, workers) are read from Redis at scrape time, so they are the same from every process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when first imported


class Metrics:
    """The API's counters and histograms; one instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # label names in alphabetical order: the exposition lists them in this order
        self.requests = Counter("bbcu_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("bbcu_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.jobs_submitted = Counter("bbcu_jobs_submitted", "Jobs enqueued by task and queue",
                                      ["queue", "task"], registry=self.registry)
        self.jobs_finished = Counter("bbcu_jobs_finished",
                                     "Jobs seen finishing by synchronous requests, by status",
                                     ["status"], registry=self.registry)
        self.uploads_rejected = Counter("bbcu_uploads_rejected", "Uploads refused, by reason", ["reason"],
                                        registry=self.registry)

    def render(self, live: Callable[[], Iterable[Metric]]) -> bytes:
        """The exposition text: this app's series (summed over the API processes when several share a
        multiprocess directory) and the gauges ``live`` reads at scrape time."""
        scrape = CollectorRegistry()
        if os.environ.get(MULTIPROC_ENV):
            MultiProcessCollector(scrape)
        else:
            scrape.register(self.registry)
        scrape.register(_Each(live))
        return generate_latest(scrape)


class _Each(Collector):
    """A collector whose metrics come from a function called at each scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not the raw path, so ids do not explode)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        counted = [False]
        start = time.perf_counter()

        def count() -> None:
            if counted[0]:
                return
            counted[0] = True
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(method=scope["method"], route=route, status=str(status[0])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()  # before the last byte leaves: a scrape right after the answer includes it
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            count()  # no complete answer was sent (an error or a disconnect)
