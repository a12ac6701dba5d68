"""Webhooks: a job's record POSTed to its ``callback_url`` when it starts, progresses or ends.

Deliveries run on a small pool of background threads per process, so a worker only puts an event
on a queue and never waits for a receiver. Each tenant (an API key's owner; the receiver's host
when keys are off) has its own lane: at most ``webhook_lane_concurrency`` of its deliveries are in
flight at once, and the next due delivery of another lane takes the next free thread, so a tenant
whose receiver never answers delays its own webhooks only. Each body is signed
(``workers.signing``); a delivery that fails (connection error, timeout or a non-2xx answer) is
retried after ``webhook_backoff_s``, doubled each time, up to ``webhook_attempts`` tries.
Deliveries still waiting when the process exits are lost: receivers that must not miss the end of
a job also poll ``GET /jobs/{id}``.

Before each try the URL is checked again (``workers.callback_urls``) and the connection goes to
the address that check resolved, never to a second resolution of the name.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from workers import signing
from workers.callback_urls import CallbackRefused, allow_list, check_callback
from workers.contract import JobRecord, JobStatus
from workers.settings import Settings

log = logging.getLogger(__name__)

# deliveries one lane may hold waiting; past it the lane's new events are dropped (and logged)
MAX_LANE_BACKLOG = 1000


def event_of(rec: JobRecord) -> str | None:
    """The webhook event a record stands for: start, progress, completed, or None (queued)."""
    if rec.status.terminal:
        return "completed"
    if rec.status == JobStatus.running:
        return "progress" if rec.progress > 0 else "start"
    return None


@dataclass
class Delivery:
    """One event for one receiver; ``body`` may be replaced by a newer progress record before it is sent."""

    url: str
    event: str
    job_id: str
    body: bytes
    lane: str  # whose deliveries these are: an owner, or the receiver's host when keys are off
    attempt: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


def lane_of(rec: JobRecord) -> str:
    """The tenant a job's deliveries queue behind: its owner, else (keys off) its receiver's host."""
    if rec.spec.owner is not None:
        return f"key:{rec.spec.owner}"
    return "host:" + (urlsplit(rec.spec.callback_url or "").hostname or "")


class WebhookSender:
    """Queues deliveries per lane and sends them from a pool of daemon threads, started on the first
    event; a thread ended by a fault starts its successor."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self._allowed = allow_list(settings.webhook_host_list)
        self._attempts = settings.webhook_attempts
        self._backoff_s = settings.webhook_backoff_s
        self._timeout_s = settings.webhook_timeout_s
        self._pool_size = settings.webhook_workers
        self._lane_limit = settings.webhook_lane_concurrency
        self._cond = threading.Condition()
        self._lanes: dict[str, list[tuple[float, int, Delivery]]] = {}  # per lane, a heap by due time
        self._busy: Counter[str] = Counter()  # per lane, deliveries in flight
        self._sending: set[str] = set()  # jobs with a delivery in flight
        self._order = itertools.count()
        self._progress: dict[str, Delivery] = {}  # per job, a progress event not sent yet
        self._threads: list[threading.Thread] = []
        self._client: httpx.Client | None = None
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
        body = json.dumps(rec.for_clients(), separators=(",", ":")).encode()  # as GET /jobs/{id} shows it
        with self._cond:
            if self._closed:
                return
            waiting = self._progress.get(rec.id)
            if event == "progress" and waiting is not None:
                waiting.body = body  # receivers want the latest progress, not every step
                return
            delivery = Delivery(rec.spec.callback_url, event, rec.id, body, lane_of(rec))
            if len(self._lanes.get(delivery.lane, ())) >= MAX_LANE_BACKLOG:
                log.warning("webhook %s of job %s dropped: %s already has %d deliveries waiting",
                            event, rec.id, delivery.lane, MAX_LANE_BACKLOG)
                return
            if event == "progress":
                self._progress[rec.id] = delivery
            self._schedule(delivery, time.monotonic())
            self._staff()

    def _staff(self) -> None:
        """Start threads up to the pool size (the first time, or where one died); under the lock."""
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._client is None:
            # trust_env off: a proxy from the environment would connect to the name, not the checked address
            self._client = httpx.Client(timeout=self._timeout_s, follow_redirects=False, trust_env=False)
        while len(self._threads) < self._pool_size:
            thread = threading.Thread(target=self._loop, args=(self._client,), daemon=True,
                                      name=f"bbcu-webhooks-{next(self._order)}")
            thread.start()
            self._threads.append(thread)

    def _schedule(self, delivery: Delivery, due: float) -> None:
        heapq.heappush(self._lanes.setdefault(delivery.lane, []), (due, next(self._order), delivery))
        self._cond.notify_all()

    def _next(self) -> Delivery | None:
        """The earliest due delivery of a lane with a free slot; None once closed."""
        with self._cond:
            while True:
                if self._closed and not self._lanes:
                    return None
                # a job's next event waits while another of its events is in flight: a lane sends up
                # to lane_limit at once, and a job's receiver must still get start before completed
                ready = [heap for lane, heap in self._lanes.items() if self._busy[lane] < self._lane_limit]
                first = min((item for heap in ready for item in heap if item[2].job_id not in self._sending),
                            default=None, key=lambda item: item[:2])
                wait = None if first is None else first[0] - time.monotonic()
                if first is not None and wait is not None and wait <= 0:
                    delivery = first[2]
                    heap = self._lanes[delivery.lane]
                    heap.remove(first)
                    heapq.heapify(heap)
                    if not heap:
                        del self._lanes[delivery.lane]
                    self._sending.add(delivery.job_id)
                    if self._progress.get(delivery.job_id) is delivery:
                        del self._progress[delivery.job_id]
                    self._busy[delivery.lane] += 1
                    return delivery
                self._cond.wait(wait)

    def _loop(self, client: httpx.Client) -> None:
        try:
            while (delivery := self._next()) is not None:
                error: str | None = "the try raised"  # kept if _send raises what it does not expect
                retry = False
                try:
                    error, retry = self._send(client, delivery)
                finally:
                    self._done(delivery, error, retry)
        finally:
            # only close() ends the loop normally: a thread leaving otherwise (a fault nobody foresaw,
            # reported by threading's excepthook) starts its successor, so the deliveries go on
            with self._cond:
                self._threads = [t for t in self._threads if t is not threading.current_thread()]
                if not self._closed:
                    self._staff()

    def _done(self, delivery: Delivery, error: str | None, retry: bool) -> None:
        with self._cond:
            self._busy[delivery.lane] -= 1
            if not self._busy[delivery.lane]:
                del self._busy[delivery.lane]
            self._sending.discard(delivery.job_id)
            if error is not None and retry and delivery.attempt < self._attempts and not self._closed:
                delay = self._backoff_s * 2 ** (delivery.attempt - 1)
                delivery.attempt += 1
                self._schedule(delivery, time.monotonic() + delay)
            elif error is not None:
                log.warning("webhook %s of job %s to %s dropped after %d attempt(s): %s",
                            delivery.event, delivery.job_id, delivery.url[:200], delivery.attempt, error)
            self._cond.notify_all()

    def _send(self, client: httpx.Client, delivery: Delivery) -> tuple[str | None, bool]:
        """Deliver once: why it failed (None if it did not), and whether a retry may succeed."""
        assert self._secret is not None  # notify() queues nothing without a secret
        try:
            target = check_callback(delivery.url, self._allowed)
            url, address = target.pinned()
        except CallbackRefused as e:
            return str(e), False
        timestamp = int(time.time())
        headers = {"Host": target.url.netloc.decode("ascii"), "Content-Type": "application/json",
                   "User-Agent": "bbcu-webhooks/1", signing.EVENT_HEADER: delivery.event,
                   signing.DELIVERY_HEADER: delivery.id, signing.TIMESTAMP_HEADER: str(timestamp),
                   signing.SIGNATURE_HEADER: signing.sign(self._secret, timestamp, delivery.body)}
        # TLS names the host (SNI, and the certificate is checked against it) while the socket goes to
        # the checked address
        extensions = {"sni_hostname": target.host} if url.scheme == "https" else {}
        try:
            answer = client.post(url, content=delivery.body, headers=headers, extensions=extensions)
        except (httpx.HTTPError, OSError) as e:
            return f"{type(e).__name__} (to {address}): {e}", True
        except (httpx.InvalidURL, ValueError) as e:
            return f"{type(e).__name__}: {e}", False
        return (None if answer.is_success else f"HTTP {answer.status_code}"), True

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is due now or in flight (retries scheduled later do not count)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or any(heap[0][0] <= time.monotonic() for heap in self._lanes.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is due within ``timeout``, then stop the threads (later retries are dropped)."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._lanes.clear()
            self._cond.notify_all()
            threads, client = list(self._threads), self._client
        for thread in threads:
            thread.join(timeout / max(len(threads), 1))
        if client is not None and not any(t.is_alive() for t in threads):
            client.close()
