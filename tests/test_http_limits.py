"""Slow clients (issue 11, defect 5: a request head or an upload dribbled in is cut off, and the
API keeps answering meanwhile) and the small contract fixes of defect 9."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from models.errors import OptionError
from tests.helpers import assert_problem, make_image
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


def test_gpu_without_a_gpu_worker_is_422_unless_one_is_expected(tiny_weights: Path, redis_port: int) -> None:
    """device=gpu that retrying cannot fix is the request's fault (422); 503 + Retry-After only while a
    GPU worker is expected (BBCU_REQUIRED_QUEUES lists gpu, or one beat lately: it may be restarting)."""
    import pytest

    from workers.celery_app import CeleryDispatcher
    from workers.errors import NoWorker
    from workers.redis_store import RedisStore

    if _has_cuda():
        pytest.skip("this machine has a CUDA device: the embedded mode serves device=gpu")
    with serve_in_thread(Settings(weights_dir=tiny_weights, torch_threads=1)) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/restore", params={"task": "denoise", "device": "gpu"},
                   files={"image": ("x.png", make_image(8, 8), "image/png")})
    body = assert_problem(r, 422)
    assert "no CUDA device" in body["detail"] and "device=auto" in body["detail"]
    assert "retry-after" not in r.headers
    url = f"redis://127.0.0.1:{redis_port}/9"
    store = RedisStore(url, 60, 60)
    plain = CeleryDispatcher(Settings(broker_url=url), store)  # BBCU_REQUIRED_QUEUES=cpu
    required = CeleryDispatcher(Settings(broker_url=url, required_queues="cpu,gpu"), store)
    try:
        with pytest.raises(OptionError, match="no GPU worker"):
            plain.pick_queue("gpu")
        with pytest.raises(NoWorker, match="one is expected"):
            required.pick_queue("gpu")
        store.registry.beat("gpu", "w@gpu", {"worker": "w@gpu"}, ttl_s=0.2)
        assert plain.pick_queue("gpu") == "gpu"
        time.sleep(0.3)  # its heartbeat lapsed: it is expected back, so retrying may help
        assert store.registry.seen("gpu") and not store.registry.workers("gpu")
        with pytest.raises(NoWorker, match="one is expected"):
            plain.pick_queue("gpu")
    finally:
        plain.close()
        required.close()
        store.client.flushdb()


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def test_models_show_no_training_paths(tiny_weights: Path, tmp_path: Path) -> None:
    import shutil

    from models import checkpoints
    from models.config import denoise_config
    from tests.factories import random_net

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_weights / "tiny_denoise_l.safetensors", weights)
    config = denoise_config(nf=8, depth=4)
    training = {"config": {"data": ["/home/trainer/corpora/corpus.tar"], "run_dir": "/srv/runs/denoise",
                           "init": "C:\\Users\\t\\x2.safetensors", "out": None, "lr": 1e-4},
                "data": ["corpus.tar"], "iterations": 10}
    checkpoints.save(weights / "trained_denoise_l.safetensors", random_net(config, 1), config,
                     {"training": training, "provenance": {"data": "open corpus"}})
    with serve_in_thread(Settings(weights_dir=weights)) as url, httpx.Client(base_url=url, timeout=30) as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
    shown = models["trained_denoise_l"]["training"]
    assert shown["config"] == {"data": ["corpus.tar"], "run_dir": "denoise", "init": "x2.safetensors",
                               "out": None, "lr": 1e-4}
    assert shown["data"] == ["corpus.tar"] and shown["iterations"] == 10
    assert "/home/" not in str(models) and "/srv/" not in str(models)
    assert models["trained_denoise_l"]["provenance"] == {"data": "open corpus"}
