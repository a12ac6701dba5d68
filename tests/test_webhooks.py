"""Webhooks against both modes (a real receiver on this machine), the host allow-list, the signature, CORS."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import CORS_ORIGIN, WEBHOOK_SECRET, Service
from tests.helpers import assert_problem, make_image, wait_job
from workers import signing
from workers.callback_urls import CallbackRefused, allow_list, check_callback


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def record(self) -> dict:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """An HTTP server recording POSTs; it answers 500 to the first ``fail_first`` and can hold requests."""

    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    failed: list[Delivery] = field(default_factory=list)
    fail_first: int = 0
    held: int = 0  # requests waiting for ``release``
    release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Delivery]:
        return self.wait_until(lambda got: len(got) >= count, timeout)

    def wait_until(self, done: Callable[[list[Delivery]], bool], timeout: float = 60.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not done(self.deliveries):
                left = deadline - time.monotonic()
                assert left > 0, f"gave up waiting; deliveries: {[d.headers for d in self.deliveries]}"
                self.arrived.wait(left)
            return list(self.deliveries)


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A receiver on a free port of 127.0.0.1 until the block ends."""
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server name)
            rec = state["r"]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got = Delivery({k.lower(): v for k, v in self.headers.items()}, body)
            with rec.arrived:
                rec.held += 1
                rec.arrived.notify_all()
            rec.release.wait(60)
            with rec.arrived:
                rec.held -= 1
                failing = len(rec.failed) < rec.fail_first
                (rec.failed if failing else rec.deliveries).append(got)
                rec.arrived.notify_all()
            self.send_response(500 if failing else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
    state["r"].release.set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        state["r"].release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def submit(service: Service, url: str, events: str | None = None, size: int = 32, **params: object):  # type: ignore[no-untyped-def]
    query = {"task": "denoise", "async": "true", "callback_url": url, **params}
    if events is not None:
        query["callback_events"] = events
    with service.client() as c:
        return c.post("/restore", params=query,
                      files={"image": ("w.png", make_image(size, size), "image/png")})


def assert_signed(d: Delivery) -> None:
    stamp, signature = d.headers["x-bbcu-timestamp"], d.headers["x-bbcu-signature"]
    assert signing.verify(WEBHOOK_SECRET, d.body, stamp, signature)
    assert not signing.verify("another secret", d.body, stamp, signature)
    assert not signing.verify(WEBHOOK_SECRET, d.body + b" ", stamp, signature)


def test_webhooks_signed_in_order_and_filtered(service: Service, receiver: Receiver) -> None:
    r = submit(service, receiver.url, "start,completed")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["spec"]["callback_events"] == ["start", "completed"]
    got = receiver.wait_for(2)
    assert [d.headers["x-bbcu-event"] for d in got] == ["start", "completed"]
    assert [d.record["status"] for d in got] == ["running", "succeeded"]
    assert all(d.record["id"] == job["id"] for d in got)
    assert all("owner" not in d.record["spec"] for d in got)  # the record as GET /jobs/{id} shows it
    assert got[1].record["output"] == {"width": 32, "height": 32, "bytes": got[1].record["output"]["bytes"],
                                       "format": "png", "frames": 1, "fps": None}
    for d in got:
        assert_signed(d)


def test_webhook_progress_events_only_when_asked(service: Service, receiver: Receiver) -> None:
    r = submit(service, receiver.url, "progress,completed", size=256, task="sr", scale=4, tile=32)
    assert r.status_code == 202, r.text
    got = receiver.wait_until(lambda ds: any(d.headers["x-bbcu-event"] == "completed" for d in ds))
    kinds = [d.headers["x-bbcu-event"] for d in got]
    assert kinds[-1] == "completed" and set(kinds[:-1]) == {"progress"}
    progress = [d.record["progress"] for d in got[:-1]]
    assert progress == sorted(progress) and all(0 < p < 1 for p in progress)
    assert all(d.record["status"] == "running" and d.record["eta_s"] is not None for d in got[:-1])
    for d in got:
        assert_signed(d)


def test_webhook_retried_after_a_failing_receiver(service: Service, receiver: Receiver) -> None:
    receiver.fail_first = 2
    r = submit(service, receiver.url)  # default filter: completed only
    assert r.status_code == 202, r.text
    got = receiver.wait_for(1)
    assert len(receiver.failed) == 2 and len(got) == 1
    ids = {d.headers["x-bbcu-delivery"] for d in [*receiver.failed, *got]}
    assert len(ids) == 1  # the same delivery, tried three times
    assert got[0].headers["x-bbcu-event"] == "completed" and got[0].record["status"] == "succeeded"
    assert_signed(got[0])


def test_a_slow_receiver_never_blocks_the_job(service: Service, receiver: Receiver) -> None:
    receiver.release.clear()  # the receiver holds every delivery until released
    r = submit(service, receiver.url, "start,completed")
    with service.client() as c:
        final = wait_job(c, r.json()["id"])
    assert final["status"] == "succeeded" and receiver.deliveries == []
    receiver.release.set()
    assert [d.headers["x-bbcu-event"] for d in receiver.wait_for(2)] == ["start", "completed"]


@pytest.mark.parametrize("url,events,fragment", [
    ("http://10.1.2.3/hook", None, "not in the allow-list"),
    ("http://localhost:9/hook", None, "not in the allow-list"),
    ("ftp://127.0.0.1/hook", None, "http or https"),
    ("http://127.0.0.1:9/hook", "start,finished", "unknown callback event(s) finished"),
])
def test_refused_callbacks_422(service: Service, url: str, events: str | None, fragment: str) -> None:
    body = assert_problem(submit(service, url, events), 422)
    assert fragment in body["detail"] and body["type"] == "urn:bbcu:problem:invalid-callback"


def test_callback_checks_without_an_allow_list() -> None:
    for internal in ("http://127.0.0.1/h", "http://localhost/h", "http://[::1]/h", "http://169.254.169.254/h",
                     "http://192.168.1.10/h", "http://10.0.0.1/h"):
        with pytest.raises(CallbackRefused, match="non-public"):
            check_callback(internal, ())
    check_callback("https://8.8.8.8/hook", ())  # a public address needs no allow-list
    check_callback("http://10.4.5.6/h", allow_list(["10.0.0.0/8"]))
    check_callback("https://hooks.example.com/h", allow_list(["*.example.com"]))
    with pytest.raises(CallbackRefused, match="allow-list"):
        check_callback("https://example.com.evil.test/h", allow_list(["*.example.com", "example.com"]))


def test_an_empty_secret_means_no_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.settings import Settings

    monkeypatch.setenv("BBCU_WEBHOOK_SECRET", "")  # what compose passes when the host has none
    assert Settings().webhook_secret is None
    monkeypatch.setenv("BBCU_WEBHOOK_SECRET", "s3")
    secret = Settings().webhook_secret
    assert secret is not None and secret.get_secret_value() == "s3"


def test_signature_rejects_old_timestamps() -> None:
    body = b'{"id": "x"}'
    sig = signing.sign("k", 1_000_000, body)
    assert signing.verify("k", body, "1000000", sig, at=1_000_100)
    assert not signing.verify("k", body, "1000000", sig, at=1_000_000 + 301)
    assert not signing.verify("k", body, None, sig) and not signing.verify("k", body, "abc", sig)


def test_cors_allow_list(service: Service) -> None:
    with service.client() as c:
        pre = c.options("/restore", headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "prefer"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "prefer" in pre.headers["access-control-allow-headers"].lower()
        other = c.options("/restore", headers={"Origin": "http://elsewhere.example",
                                               "Access-Control-Request-Method": "POST"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        r = c.post("/restore", params={"task": "denoise"}, headers={"Origin": CORS_ORIGIN},
                   files={"image": ("c.png", make_image(16, 16), "image/png")})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == CORS_ORIGIN
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"x-job-id", "server-timing", "x-model", "location"} <= exposed
        plain = c.get("/models", headers={"Origin": "http://elsewhere.example"})
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_cors_off_by_default() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from workers.settings import Settings

    settings = Settings()
    assert settings.cors_origins == "" and settings.webhook_secret is None
    with TestClient(create_app(settings)) as c:
        r = c.get("/healthz", headers={"Origin": CORS_ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = c.options("/restore", headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


def test_a_jobs_events_are_sent_one_at_a_time_in_order(receiver: Receiver) -> None:
    """A lane sends two deliveries at once; two events of one job must still not race: while the
    receiver holds "start", "completed" waits (it was sent beside it, and could arrive first)."""
    from workers.contract import JobRecord, JobSpec, JobStatus, new_job_id, now
    from workers.settings import Settings
    from workers.webhooks import WebhookSender

    receiver.release.clear()
    job_id = new_job_id()
    spec = JobSpec(id=job_id, task="denoise", callback_url=receiver.url,
                   callback_events=["start", "completed"])
    running = JobRecord(id=job_id, status=JobStatus.running, task="denoise", queue="cpu", created_at=now(),
                        started_at=now(), spec=spec)
    ended = running.model_copy(update={"status": JobStatus.succeeded, "finished_at": now()})
    sender = WebhookSender(Settings(webhook_secret=WEBHOOK_SECRET, webhook_hosts="127.0.0.1",
                                    webhook_lane_concurrency=2))
    try:
        sender.notify(running)
        sender.notify(ended)
        with receiver.arrived:
            assert receiver.arrived.wait_for(lambda: receiver.held == 1, 30)
            assert not receiver.arrived.wait_for(lambda: receiver.held > 1, 1.0)  # completed waits
        receiver.release.set()
        assert [d.headers["x-bbcu-event"] for d in receiver.wait_for(2)] == ["start", "completed"]
    finally:
        receiver.release.set()
        sender.close()
