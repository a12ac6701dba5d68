"""Idempotency-Key on POST /restore (issue 20, item 4): a client whose first answer was lost retries
with the same key and gets the same job, never a second one; in both modes, scoped per API key."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tests.conftest import Service
from tests.helpers import assert_problem, make_image, wait_job
from tests.test_service_store import serve_in_thread
from workers.settings import Settings


class DroppingProxy:
    """A TCP proxy to ``127.0.0.1:upstream`` that loses the answer of its first ``drop`` connections:
    their request reaches the server whole, and the client's connection is closed (unanswered) as
    soon as the server starts answering."""

    def __init__(self, upstream: int, drop: int = 1) -> None:
        self.upstream, self.left_to_drop = upstream, drop
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            drop = self.left_to_drop > 0
            self.left_to_drop -= drop
            threading.Thread(target=self._serve, args=(client, drop), daemon=True).start()

    def _serve(self, client: socket.socket, drop: bool) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as server:
            threading.Thread(target=_pump, args=(client, server), daemon=True).start()
            if drop:
                server.recv(1)  # the answer begins: the server has handled the request
                self.dropped += 1
                client.shutdown(socket.SHUT_RDWR)
                return
            _pump(server, client)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)


@contextmanager
def dropping_proxy(url: str) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(int(url.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


def post_retrying(url: str, data: bytes, key: str, **params: str) -> tuple[httpx.Response, int]:
    """POST /restore until an answer arrives, as a client that retries on a dropped connection does;
    the answer and the tries it took."""
    with httpx.Client(base_url=url, timeout=60) as c:
        for tries in range(1, 4):
            try:
                r = c.post("/restore", params={"task": "denoise", **params}, headers={"Idempotency-Key": key},
                           files={"image": ("x.png", data, "image/png")})
                return r, tries
            except httpx.TransportError:
                continue
    raise AssertionError("no answer in 3 tries")


def submitted(c: httpx.Client) -> int:
    text = c.get("/metrics").text
    return sum(int(float(n)) for n in re.findall(r'^bbcu_jobs_submitted_total\{[^}]*\} (\S+)', text, re.M))


def test_retry_after_a_dropped_answer_gets_the_same_job(service: Service) -> None:
    image, other = make_image(24, 24, seed=20), make_image(24, 24, seed=21)
    key = f"retry-{service.mode}-{hashlib.sha256(image).hexdigest()[:8]}"
    with service.client() as c:
        before = submitted(c)
        with dropping_proxy(service.url) as proxy:
            # synchronous: the first answer (the image) is lost, the retry gets the same job's image
            r, tries = post_retrying(proxy.url, image, key)
        assert (proxy.dropped, tries, r.status_code) == (1, 2, 200), r.text
        job_id = r.headers["x-job-id"]
        assert submitted(c) == before + 1
        # asked again asynchronously: the same job, not a new one
        again = c.post("/restore", params={"task": "denoise", "async": "true"},
                       headers={"Idempotency-Key": key}, files={"image": ("x.png", image, "image/png")})
        assert again.status_code == 202 and again.json()["id"] == job_id
        # the same key with another image, or other parameters: refused, nothing submitted
        for params, data in (({"task": "denoise"}, other), ({"task": "deblock"}, image)):
            reused = c.post("/restore", params=params, headers={"Idempotency-Key": key},
                            files={"image": ("x.png", data, "image/png")})
            assert assert_problem(reused, 422)["type"] == "urn:bbcu:problem:idempotency-key-reused"
        assert submitted(c) == before + 1
        # an asynchronous first try lost the same way: the retry answers the 202 of the same job
        with dropping_proxy(service.url) as proxy:
            first, tries = post_retrying(proxy.url, other, key + "-async", **{"async": "true"})
        assert (proxy.dropped, tries, first.status_code) == (1, 2, 202)
        assert submitted(c) == before + 2
        assert wait_job(c, first.json()["id"])["status"] == "succeeded"
        bad = c.post("/restore", params={"task": "denoise"}, headers={"Idempotency-Key": "has space"},
                     files={"image": ("x.png", image, "image/png")})
        assert_problem(bad, 422)


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_keys_are_scoped_per_api_key(tiny_weights: Path) -> None:
    """Two tenants may pick the same Idempotency-Key: each gets its own job, neither a 422."""
    settings = Settings(weights_dir=tiny_weights, torch_threads=1,
                        api_keys=f"alice={_digest('key-a')},bob={_digest('key-b')}")
    image = make_image(16, 16, seed=3)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        ids = []
        for api_key, data in (("key-a", image), ("key-b", image), ("key-b", make_image(16, 16, seed=4)),
                              ("key-a", image)):
            r = c.post("/restore", params={"task": "denoise", "async": "true"},
                       headers={"Idempotency-Key": "order-1", "X-API-Key": api_key},
                       files={"image": ("x.png", data, "image/png")})
            ids.append((r.status_code, r.json().get("id")))
    (a1, alice), (b1, bob), (b2, _), (a2, alice_again) = ids
    assert (a1, b1, a2, b2) == (202, 202, 202, 422)
    assert alice != bob and alice_again == alice
