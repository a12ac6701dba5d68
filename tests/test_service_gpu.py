"""A GPU worker end to end (runs only where CUDA is available)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis

from benchmarks.harness import bbcu, spawn, wait_until
from tests.conftest import service_env, start_api
from tests.helpers import make_image, pixels, reference

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_gpu_worker_takes_auto_and_gpu_jobs(tiny_weights: Path, redis_port: int, logdir: Path) -> None:
    redis_url = f"redis://127.0.0.1:{redis_port}/3"
    env = service_env(tiny_weights, BBCU_BROKER_URL=redis_url, BBCU_REQUIRED_QUEUES="gpu")
    url, api = start_api("api-gpu", env, logdir)
    worker = spawn("worker-gpu", bbcu("worker", "--queues", "gpu", "--pool", "solo", "--log-level",
                                      "warning"), env, logdir)
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 120, worker,
                   "gpu worker")
        data = make_image(64, 48, seed=9)
        with httpx.Client(base_url=url, timeout=120) as c:
            for device in ("gpu", "auto"):
                r = c.post("/restore", params={"task": "sr", "scale": 2, "device": device},
                           files={"image": ("g.png", data, "image/png")})
                assert r.status_code == 200, r.text
                job = c.get(f"/jobs/{r.headers['x-job-id']}").json()
                assert job["queue"] == "gpu" and job["model"]["device"].startswith("cuda")
                diff = abs(pixels(r.content) - reference(tiny_weights, "sr", 2, data))
                assert diff.mean() < 2.0  # fp16 on the GPU vs float on the CPU
            assert 'bbcu_worker_gpu_memory_bytes{kind="reserved"' in c.get("/metrics").text
    finally:
        worker.stop()
        api.stop()
        redis.Redis.from_url(redis_url).flushdb()
