"""Celery-mode specifics: no torch in the API, jobs waiting for a worker, time limits, the broker
down, result expiry, key TTLs, what travels in broker messages, lost workers."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from benchmarks.harness import ROOT, bbcu, free_port, spawn, wait_until
from tests.conftest import Service, service_env, start_api, start_worker, wait_ready
from tests.helpers import assert_problem, assert_same_image, make_image, reference, wait_job
from workers.celery_app import create_celery
from workers.redis_store import RedisStore
from workers.settings import Settings

NO_TORCH_SCRIPT = """
import io
import sys
from fastapi.testclient import TestClient
from PIL import Image
from app.main import create_app

buf = io.BytesIO()
Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
with TestClient(create_app()) as c:
    r = c.post("/restore?task=denoise", files={"image": ("a.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    job = "/jobs/" + r.headers["x-job-id"]
    for path in ("/models", "/readyz", "/metrics", job, job + "/result", "/openapi.json"):
        assert c.get(path).status_code == 200, path
import cli.main
cli.main.build_parser()
print("TORCH_MODULES", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_api_process_never_imports_torch(celery_service: Service) -> None:
    out = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT], cwd=ROOT, env=_env(celery_service.env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TORCH_MODULES []" in out.stdout


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("BBCU_")}, **extra}


def test_job_waits_for_a_worker_and_messages_carry_no_image(tiny_weights: Path, redis_port: int,
                                                            logdir: Path) -> None:
    """A job queued while no worker runs completes once one starts; time limits fail a job cleanly."""
    redis_url = f"redis://127.0.0.1:{redis_port}/1"
    env = service_env(tiny_weights, BBCU_BROKER_URL=redis_url)
    url, api = start_api("api-db1", env, logdir)
    procs = [api]
    r = redis.Redis.from_url(redis_url)
    try:
        data = make_image(48, 40, seed=42)
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/readyz").status_code == 503
            assert c.get("/readyz").json()["detail"] == "no live worker for queue(s): cpu"
            resp = c.post("/restore", params={"task": "denoise", "async": "true"},
                          files={"image": ("q.png", data, "image/png")})
            assert resp.status_code == 202
            job_id = resp.json()["id"]
            # the broker message holds the job id only, never the image bytes
            messages = r.lrange("cpu", 0, -1)
            assert len(messages) == 1 and len(messages[0]) < 4096 < len(data)
            body = json.loads(base64.b64decode(json.loads(messages[0])["body"]))
            assert body[0] == [job_id]
            time.sleep(1.0)
            assert c.get(f"/jobs/{job_id}").json()["status"] == "queued"
            worker = start_worker("worker-db1", env, logdir, "--concurrency", "1")
            procs.append(worker)
            job = wait_job(c, job_id, timeout=90)
            assert job["status"] == "succeeded", job
            wait_ready(url, worker)
            res = c.get(f"/jobs/{job_id}/result")
            assert_same_image(res.content, reference(tiny_weights, "denoise", None, data))
            worker.stop()
            procs.remove(worker)

            # a worker whose soft limit is 1 s fails a long job with a reason, then takes the next one;
            # the portable C core keeps the job long on any CPU (the x4 job below: ~10 s there, 1.0 s
            # with the AMX core of an Intel Xeon, where it sometimes finished in time)
            limited = start_worker("worker-db1-limited", {**env, "BBCU_SOFT_TIME_LIMIT_S": "1",
                                                          "BBCU_HARD_TIME_LIMIT_S": "6",
                                                          "BBCU_KERNEL_ISA": "scalar"}, logdir,
                                   "--concurrency", "1")
            procs.append(limited)
            big = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                         files={"image": ("b.png", make_image(512, 512, seed=1), "image/png")})
            failed = wait_job(c, big.json()["id"], timeout=90)
            assert failed["status"] == "failed" and failed["error"]["code"] == "timeout", failed
            assert "time limit" in failed["error"]["detail"]
            ok = c.post("/restore", params={"task": "denoise"}, files={"image": ("s.png", data, "image/png")})
            assert ok.status_code == 200
    finally:
        for p in reversed(procs):
            p.stop()
        r.flushdb()


def test_sync_wait_limit_gives_504_unless_a_202_was_asked_for(tiny_weights: Path, redis_port: int,
                                                              logdir: Path) -> None:
    """No worker runs: a synchronous request gets 504 at the wait limit, never a 202 it did not ask for."""
    redis_url = f"redis://127.0.0.1:{redis_port}/2"
    env = service_env(tiny_weights, BBCU_BROKER_URL=redis_url, BBCU_SYNC_WAIT_S="0.5")
    url, api = start_api("api-db2", env, logdir)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            t = time.monotonic()
            resp = c.post("/restore", params={"task": "denoise"},
                          files={"image": ("q.png", make_image(8, 8), "image/png")})
            assert resp.status_code == 504 and 0.5 <= time.monotonic() - t < 5
            assert resp.headers["content-type"] == "application/problem+json"
            job_id = resp.json()["job_id"]
            assert c.get(f"/jobs/{job_id}").json()["status"] == "queued"  # it goes on when a worker comes
            # Prefer: wait=N opts into a 202, and shortens the wait below the setting, never lengthens it
            t = time.monotonic()
            env_wait = c.post("/restore", params={"task": "denoise"}, headers={"Prefer": "wait=100"},
                              files={"image": ("q.png", make_image(8, 8), "image/png")})
            assert env_wait.status_code == 202 and time.monotonic() - t < 5
            assert env_wait.headers["location"] == f"/jobs/{env_wait.json()['id']}"
            assert "preference-applied" not in env_wait.headers
    finally:
        api.stop()
        redis.Redis.from_url(redis_url).flushdb()


def test_broker_unreachable_503(tiny_weights: Path, logdir: Path) -> None:
    env = service_env(tiny_weights, BBCU_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
                      BBCU_RETRY_AFTER_S="7", BBCU_REDIS_TIMEOUT_S="1")
    url, api = start_api("api-nobroker", env, logdir)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/restore", params={"task": "denoise"},
                       files={"image": ("x.png", make_image(8, 8), "image/png")})
            body = assert_problem(r, 503)
            assert r.headers["retry-after"] == "7" and body["retry_after_s"] == 7
            assert "unreachable" in body["detail"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["broker"] == "unreachable"
            assert c.get("/healthz").status_code == 200
            assert "bbcu_broker_up 0" in c.get("/metrics").text
            assert_problem(c.get("/jobs/" + "a" * 32), 503)
    finally:
        api.stop()


def test_result_expiry_410_and_every_key_has_ttl(celery_service: Service) -> None:
    r = redis.Redis.from_url(celery_service.redis_url or "")
    with celery_service.client() as c:
        resp = c.post("/restore", params={"task": "denoise", "async": "true"},
                      files={"image": ("x.png", make_image(16, 16), "image/png")})
        job_id = resp.json()["id"]
        assert wait_job(c, job_id)["status"] == "succeeded"
        ours = [k.decode() for k in r.scan_iter(match="bbcu:*")]
        assert f"bbcu:job:{job_id}" in ours and f"bbcu:out:{job_id}" in ours
        assert f"bbcu:in:{job_id}" not in ours  # the input is dropped once the job ends
        no_ttl = [k for k in ours if r.ttl(k) < 0]
        assert no_ttl == []
        assert 3500 <= r.ttl(f"bbcu:out:{job_id}") <= 3600
        assert r.ttl(f"bbcu:job:{job_id}") > 3600
        r.pexpire(f"bbcu:out:{job_id}", 1)
        time.sleep(0.05)
        body = assert_problem(c.get(f"/jobs/{job_id}/result"), 410)
        assert body["job_id"] == job_id
        assert c.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_celery_configuration() -> None:
    s = Settings(broker_url="redis://127.0.0.1:1/0", soft_time_limit_s=100, hard_time_limit_s=120)
    conf = create_celery(s).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_create_missing_queues is False
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (110, 120)
    assert conf.worker_proc_alive_timeout >= 60
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert sorted(q.name for q in conf.task_queues) == ["cpu", "gpu"]
    with pytest.raises(ValueError):
        Settings(soft_time_limit_s=10, hard_time_limit_s=5)
    with pytest.raises(ValueError, match="backend 'gpu' unknown; choose from auto, float"):
        Settings(backend="gpu")


def test_worker_command_refusals(logdir: Path) -> None:
    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(bbcu("worker", *args), cwd=ROOT, env=_env(env), capture_output=True,
                              text=True, timeout=120)

    broker = {"BBCU_BROKER_URL": "redis://127.0.0.1:1/0"}
    assert "BBCU_BROKER_URL" in run(env={}).stderr
    bad = run("--queues", "tpu", env=broker)
    assert bad.returncode == 2 and "unknown queue" in bad.stderr
    fork = run("--queues", "gpu", "--pool", "prefork", env=broker)
    assert fork.returncode == 2 and "solo or threads" in fork.stderr


def test_worker_pool_defaults() -> None:
    from cli.service import pool_and_concurrency

    # GPU workers: threads, so that decoding and encoding overlap the GPU work of other jobs
    assert pool_and_concurrency(True, None, None, gpu_threads=3) == ("threads", 3)
    assert pool_and_concurrency(True, "threads", 5, gpu_threads=3) == ("threads", 5)
    assert pool_and_concurrency(True, "solo", 4, gpu_threads=3) == ("solo", 1)
    assert pool_and_concurrency(False, None, None, gpu_threads=3) == ("prefork", os.cpu_count() or 1)
    assert pool_and_concurrency(False, "prefork", 2, gpu_threads=3) == ("prefork", 2)


def test_service_docs_list_every_setting() -> None:
    doc = (ROOT / "docs" / "service.md").read_text()
    names = [f"BBCU_{name.upper()}" for name in Settings.model_fields]
    missing = [n for n in names if f"`{n}`" not in doc]
    assert missing == []


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_killed_pool_process_job_reruns_and_dead_worker_is_reported(tiny_weights: Path, redis_port: int,
                                                                    logdir: Path) -> None:
    """A pool process killed mid-job: the message is rejected, requeued and the job still succeeds.
    The whole worker killed: once its heartbeat lapses the job is queued again and another worker
    finishes it (tests/test_job_logic.py: a second loss fails it)."""
    import os
    import signal

    redis_url = f"redis://127.0.0.1:{redis_port}/4"
    env = service_env(tiny_weights, BBCU_BROKER_URL=redis_url)
    url, api = start_api("api-db4", env, logdir)
    worker = start_worker("worker-db4", env, logdir, "--concurrency", "1")
    workers = [worker]
    big = make_image(512, 512, seed=3)
    try:
        wait_ready(url, worker)
        with httpx.Client(base_url=url, timeout=60) as c:

            def submit_running() -> str:
                job_id = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                                files={"image": ("b.png", big, "image/png")}).json()["id"]
                deadline = time.monotonic() + 60
                while c.get(f"/jobs/{job_id}").json()["status"] != "running":
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                return job_id

            job_id = submit_running()
            [child] = _children(worker.popen.pid)
            os.kill(child, signal.SIGKILL)
            job = wait_job(c, job_id, timeout=120)
            assert job["status"] == "succeeded", job
            assert job["worker"] == "worker-db4"  # the name, not the host it runs on

            lost = submit_running()
            first = c.get(f"/jobs/{lost}").json()["worker"]
            for pid in [*_children(worker.popen.pid), worker.popen.pid]:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: c.get(f"/jobs/{lost}").json()["status"] == "queued", 30,
                       what="the lost job queued again")
            again = c.get(f"/jobs/{lost}").json()
            assert (again["attempt"], again["worker"], again["started_at"]) == (2, None, None), again
            second = start_worker("worker-db4b", env, logdir, "--concurrency", "1")
            workers.append(second)
            job = wait_job(c, lost, timeout=120)
            assert job["status"] == "succeeded" and job["attempt"] == 2, job
            assert job["worker"] == "worker-db4b" and first == "worker-db4"
            assert_same_image(c.get(f"/jobs/{lost}/result").content, reference(tiny_weights, "sr", 4, big))

    finally:
        for w in workers:
            w.stop()
        api.stop()
        redis.Redis.from_url(redis_url).flushdb()


def test_device_routing_follows_gpu_worker_heartbeats(tiny_weights: Path, redis_port: int,
                                                      logdir: Path) -> None:
    """device=auto goes to the gpu queue while a GPU worker beats, else to cpu; device=gpu needs one."""

    redis_url = f"redis://127.0.0.1:{redis_port}/6"
    env = service_env(tiny_weights, BBCU_BROKER_URL=redis_url)
    url, api = start_api("api-db6", env, logdir)
    store = RedisStore(redis_url, 60, 60)
    r = redis.Redis.from_url(redis_url)
    image = {"image": ("x.png", make_image(8, 8), "image/png")}
    try:
        with httpx.Client(base_url=url, timeout=30) as c:

            def queue_of(device: str) -> str:
                resp = c.post("/restore", params={"task": "denoise", "device": device, "async": "true"},
                              files=image)
                assert resp.status_code == 202, resp.text
                return str(resp.json()["queue"])

            assert queue_of("auto") == "cpu"
            # no GPU worker in this deployment: retrying cannot help, the request is at fault
            refused = c.post("/restore", params={"task": "denoise", "device": "gpu"}, files=image)
            body = assert_problem(refused, 422)
            assert "no GPU worker" in body["detail"] and "retry-after" not in refused.headers
            store.registry.beat("gpu", "gpu-worker@elsewhere", {"worker": "gpu-worker@elsewhere"}, ttl_s=30)
            assert queue_of("auto") == "gpu" and queue_of("gpu") == "gpu" and queue_of("cpu") == "cpu"
            assert (r.llen("gpu"), r.llen("cpu")) == (2, 2)
            store.registry.forget_worker("gpu", "gpu-worker@elsewhere")
            assert queue_of("auto") == "cpu"
            # one ran lately and is gone (restarting?): 503, worth a retry
            gone = c.post("/restore", params={"task": "denoise", "device": "gpu"}, files=image)
            assert "one is expected" in assert_problem(gone, 503)["detail"]
            assert gone.headers["retry-after"] == "5"
    finally:
        api.stop()
        r.flushdb()


def _models_requests_per_process(directory: Path) -> list[float]:
    """GET /models requests recorded by each API process in a multiprocess metrics directory."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = []
    for f in sorted(directory.glob("counter_*.db")):
        samples = [s for metric in MultiProcessCollector.merge([str(f)], accumulate=False)
                   for s in metric.samples]
        counts.append(sum(s.value for s in samples
                          if s.name == "bbcu_http_requests_total" and s.labels.get("route") == "/models"))
    return counts


def test_metrics_sum_over_api_processes(celery_service: Service, logdir: Path, tmp_path: Path) -> None:
    """`bbcu serve --workers 2`: whichever process answers /metrics counts every process's requests."""
    port = free_port()
    env = {**celery_service.env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    api = spawn("api-two-processes", bbcu("serve", "--port", str(port), "--workers", "2", "--log-level",
                                          "warning"), env, logdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, api)
        sent = 0
        # fresh connections until both processes have served some
        while len(per := _models_requests_per_process(tmp_path)) < 2 or min(per) == 0:
            assert httpx.get(url + "/models", timeout=30).status_code == 200
            sent += 1
            assert sent < 500, f"one API process served every request: {per}"
        assert sum(per) == sent
        pattern = re.compile(r'bbcu_http_requests_total\{method="GET",route="/models",status="200"\} (\S+)')
        for _ in range(6):  # each answer, from either process, holds both processes' counts
            text = httpx.get(url + "/metrics", timeout=30).text
            m = pattern.search(text)
            assert m and float(m.group(1)) == sent, text[:2000]
            assert "bbcu_broker_up 1" in text
    finally:
        api.stop()
