"""Slow clients (issue 11, defect 5: a request head or an upload dribbled in is cut off, and the
API keeps answering meanwhile) and the small contract fixes of defect 9."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.test_service_store import serve_in_thread
from workers.settings import Settings


def test_slow_request_heads_and_bodies_are_cut_off(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, http_header_timeout_s=1, http_body_timeout_s=1)
    with serve_in_thread(settings) as url:
        host, port = url.removeprefix("http://").split(":")
        slow = []
        for _ in range(30):
            s = socket.create_connection((host, int(port)), timeout=15)
            s.sendall(b"POST /restore?task=denoise HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            slow.append(s)
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/healthz").status_code == 200
        assert [s.recv(100) for s in slow] == [b""] * 30  # closed by the server, no answer
        for s in slow:
            s.close()
        with socket.create_connection((host, int(port)), timeout=15) as s:
            s.sendall(b"POST /restore?task=denoise HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
            answer = b"".join(iter(lambda: s.recv(4096), b"")).decode()  # until the server closes
        assert answer.startswith("HTTP/1.1 408") and "upload-timeout" in answer


def test_contract_fixes(tiny_weights: Path) -> None:
    """An empty variant is named as such; the job resource documents its 404; a 405 lists every method."""
    settings = Settings(weights_dir=tiny_weights)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        empty = c.post("/restore", params={"task": "denoise", "variant": ""},
                       files={"image": ("x.png", b"x", "image/png")})
        assert empty.status_code == 422 and "variant" in empty.json()["detail"]
        assert "at least 1 character" in empty.json()["detail"]
        schema = c.get("/openapi.json").json()["paths"]["/jobs/{job_id}"]
        assert "404" in schema["get"]["responses"] and "404" in schema["delete"]["responses"]
        not_allowed = c.post("/jobs/" + "a" * 32)
        assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "DELETE, GET"
