"""Webhooks: a job's record POSTed to its ``callback_url`` when it starts, progresses or ends.

Deliveries run on one background thread per process, so a worker only puts an event on a queue
and never waits for a receiver. Each body is signed (``workers.signing``); a delivery that fails
(connection error, timeout or a non-2xx answer) is retried after ``webhook_backoff_s``, doubled
each time, up to ``webhook_attempts`` tries. Deliveries still waiting when the process exits are
lost: receivers that must not miss the end of a job also poll ``GET /jobs/{id}``.

Callback hosts are checked twice, when the job is submitted and again before each delivery (a
name may resolve elsewhere later): with ``webhook_hosts`` set, the host must match an entry; with
it empty, every address the host resolves to must be public (no loopback, private, link-local or
reserved networks).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from workers import signing
from workers.contract import JobRecord, JobStatus
from workers.settings import Settings

log = logging.getLogger(__name__)


class CallbackRefused(ValueError):
    """The callback URL may not be called (scheme, host or address not allowed)."""


def event_of(rec: JobRecord) -> str | None:
    """The webhook event a record stands for: start, progress, completed, or None (queued)."""
    if rec.status.terminal:
        return "completed"
    if rec.status == JobStatus.running:
        return "progress" if rec.progress > 0 else "start"
    return None


def _host_matches(host: str, entry: str) -> bool:
    if entry.startswith("*."):
        return host.endswith(entry[1:])
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return host == entry.lower()


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise CallbackRefused(f"callback host {host} does not resolve ({e})") from e
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_callback(url: str, allowed_hosts: list[str]) -> None:
    """Raise ``CallbackRefused`` unless ``url`` is http(s) to an allowed host (see the module text)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback_url must be an http or https URL with a host, got {url!r}")
    host = parts.hostname.lower()
    if allowed_hosts:
        if not any(_host_matches(host, entry) for entry in allowed_hosts):
            raise CallbackRefused(f"callback host {host} is not in the allow-list (BBCU_WEBHOOK_HOSTS)")
        return
    internal = [str(a) for a in _addresses(host) if not a.is_global]
    if internal:
        raise CallbackRefused(f"callback host {host} resolves to non-public address(es) "
                              f"{', '.join(sorted(set(internal)))}; allow it with BBCU_WEBHOOK_HOSTS")


@dataclass
class Delivery:
    """One event for one receiver; ``body`` may be replaced by a newer progress record before it is sent."""

    url: str
    event: str
    job_id: str
    body: bytes
    attempt: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class WebhookSender:
    """Queues deliveries and sends them from one daemon thread, started on the first event."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self._allowed = settings.webhook_host_list
        self._attempts = settings.webhook_attempts
        self._backoff_s = settings.webhook_backoff_s
        self._timeout_s = settings.webhook_timeout_s
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Delivery]] = []  # a heap by due time
        self._order = itertools.count()
        self._progress: dict[str, Delivery] = {}  # per job, a progress event not sent yet
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._warned = False

    def notify(self, rec: JobRecord | None) -> None:
        """Queue the event ``rec`` stands for if its job asked for it; never blocks on the network."""
        if rec is None or rec.spec.callback_url is None:
            return
        if self._secret is None:  # the API accepted the callback, so its secret is set: ours is not
            if not self._warned:
                log.warning("job %s asks for webhooks but BBCU_WEBHOOK_SECRET is not set in this process: "
                            "no webhooks are sent from it", rec.id)
                self._warned = True
            return
        event = event_of(rec)
        if event is None or event not in rec.spec.callback_events:
            return
        body = rec.model_dump_json(exclude={"spec": {"owner"}}).encode()  # as GET /jobs/{id} shows it
        with self._cond:
            if self._closed:
                return
            waiting = self._progress.get(rec.id)
            if event == "progress" and waiting is not None:
                waiting.body = body  # receivers want the latest progress, not every step
                return
            delivery = Delivery(rec.spec.callback_url, event, rec.id, body)
            if event == "progress":
                self._progress[rec.id] = delivery
            self._schedule(delivery, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="bbcu-webhooks", daemon=True)
                self._thread.start()

    def _schedule(self, delivery: Delivery, due: float) -> None:
        heapq.heappush(self._due, (due, next(self._order), delivery))
        self._cond.notify_all()

    def _next(self) -> Delivery | None:
        with self._cond:
            while True:
                if self._closed and not self._due:
                    return None
                if self._due:
                    wait = self._due[0][0] - time.monotonic()
                    if wait <= 0:
                        delivery = heapq.heappop(self._due)[2]
                        if self._progress.get(delivery.job_id) is delivery:
                            del self._progress[delivery.job_id]
                        self._in_flight += 1
                        return delivery
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _loop(self) -> None:
        with httpx.Client(timeout=self._timeout_s, follow_redirects=False) as client:
            while (delivery := self._next()) is not None:
                error, retry = self._send(client, delivery)
                with self._cond:
                    self._in_flight -= 1
                    if error is not None and retry and delivery.attempt < self._attempts and not self._closed:
                        delay = self._backoff_s * 2 ** (delivery.attempt - 1)
                        delivery.attempt += 1
                        self._schedule(delivery, time.monotonic() + delay)
                    elif error is not None:
                        log.warning("webhook %s of job %s to %s dropped after %d attempt(s): %s",
                                    delivery.event, delivery.job_id, delivery.url, delivery.attempt, error)
                    self._cond.notify_all()

    def _send(self, client: httpx.Client, delivery: Delivery) -> tuple[str | None, bool]:
        """Deliver once: why it failed (None if it did not), and whether a retry may succeed."""
        assert self._secret is not None  # notify() queues nothing without a secret
        try:
            check_callback(delivery.url, self._allowed)
        except CallbackRefused as e:
            return str(e), False
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "bbcu-webhooks/1",
                   signing.EVENT_HEADER: delivery.event, signing.DELIVERY_HEADER: delivery.id,
                   signing.TIMESTAMP_HEADER: str(timestamp),
                   signing.SIGNATURE_HEADER: signing.sign(self._secret, timestamp, delivery.body)}
        try:
            answer = client.post(delivery.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}", True
        return (None if answer.is_success else f"HTTP {answer.status_code}"), True

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is due now or in flight (retries scheduled later do not count)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight or (self._due and self._due[0][0] <= time.monotonic()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is due within ``timeout``, then stop the thread (later retries are dropped)."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._due.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
