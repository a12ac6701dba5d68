"""Reliability under pressure (Celery mode, real Redis and real workers): admission limits answer 503
with Retry-After before Redis fills, a lost input has its own code, stranded jobs are recovered
without any client reading them, costly jobs are refused up front, readiness waits for the pool."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from benchmarks.harness import REDIS_SERVER, ROOT, Proc, spawn, start_redis
from models import catalog
from models.config import NetworkConfig
from models.cost import per_pixel
from tests.conftest import service_env, start_api, start_worker, wait_ready
from tests.helpers import assert_problem, make_image, missing, wait_job
from workers.contract import ImageFacts, JobRecord, JobSpec, new_job_id
from workers.errors import QueueFull
from workers.redis_budget import result_reserve
from workers.redis_store import RedisStore


def redis_for(name: str, logdir: Path, *args: str) -> tuple[str, Proc]:
    """A private redis-server (on a free port) for one test; its URL and process."""
    if not Path(REDIS_SERVER).exists():
        missing("redis-server is not installed (make test installs it)")
    port, proc = start_redis(name, logdir, *args)
    return f"redis://127.0.0.1:{port}/0", proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts, stopped (last first) when it ends."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def post(c: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return c.post("/restore", params={"task": "denoise", "async": "true", **params},
                  files={"image": ("x.png", data, "image/png")})


def gauge(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


# --- admission (defect 2)


def test_admission_limits_refuse_with_503_and_give_room_back(tiny_weights: Path, logdir: Path,
                                                             procs: list[Proc]) -> None:
    """No worker runs: past max_queued_jobs, or past max_queued_bytes, a new job gets 503 queue-full
    with Retry-After and nothing is stored; a cancelled job gives its room back; /metrics shows both."""
    url, rproc = redis_for("redis-admission", logdir)
    procs.append(rproc)
    env = service_env(tiny_weights, BBCU_BROKER_URL=url, BBCU_MAX_QUEUED_JOBS="3",
                      BBCU_MAX_UPLOAD_BYTES="30000", BBCU_MAX_QUEUED_BYTES="30000", BBCU_RETRY_AFTER_S="4")
    api_url, api = start_api("api-admission", env, logdir)
    procs.append(api)
    small = make_image(8, 8, seed=1)
    big = make_image(72, 72, seed=2)  # random pixels: ~15.6 KB of PNG, two are over 30000 bytes
    assert 15_100 < len(big) < 16_000
    r = redis.Redis.from_url(url)
    with httpx.Client(base_url=api_url, timeout=30) as c:
        jobs = [post(c, small).json()["id"] for _ in range(3)]
        refused = post(c, small)
        body = assert_problem(refused, 503)
        assert body["type"] == "urn:bbcu:problem:queue-full" and refused.headers["retry-after"] == "4"
        assert "3 jobs" in body["detail"] and "limits are 3 jobs" in body["detail"]
        assert len(r.keys("bbcu:in:*")) == 3 and len(r.keys("bbcu:job:*")) == 3  # nothing stored
        metrics = c.get("/metrics").text
        assert gauge(metrics, "bbcu_queued_jobs") == 3 and gauge(metrics, "bbcu_queued_jobs_limit") == 3
        assert gauge(metrics, "bbcu_queued_bytes") == 3 * len(small)
        assert gauge(metrics, "bbcu_queued_bytes_limit") == 30000
        assert 'bbcu_uploads_rejected_total{reason="queue-full"} 1.0' in metrics
        # a synchronous request is refused the same way
        assert assert_problem(c.post("/restore", params={"task": "denoise"},
                                     files={"image": ("x.png", small, "image/png")}), 503)["type"] \
            == "urn:bbcu:problem:queue-full"

        # cancelling frees one job's room: jobs now count 2 + 1 big = 3, bytes 2 small + 1 big
        assert c.delete(f"/jobs/{jobs[0]}").status_code == 200
        assert post(c, big).status_code == 202
        # the byte limit: a second big input would pass 30000 bytes
        assert c.delete(f"/jobs/{jobs[1]}").status_code == 200
        over = post(c, big)
        assert "bytes" in assert_problem(over, 503)["detail"] and over.headers["retry-after"] == "4"
        assert gauge(c.get("/metrics").text, "bbcu_queued_bytes") == len(small) + len(big)
        # every admission key expires on its own (none outlives the inputs it counts)
        assert all(r.ttl(k) > 0 for k in r.keys("bbcu:admitted*"))


def test_admission_entries_expire_with_their_inputs(redis_port: int) -> None:
    """An input that expired no longer counts: the limit cannot leak full."""
    url = f"redis://127.0.0.1:{redis_port}/11"
    store = RedisStore(url, result_ttl_s=1, job_ttl_s=30, max_queued_jobs=1, max_queued_bytes=100)
    facts = ImageFacts(width=1, height=1, bytes=3, format="png")
    try:
        store.create(JobSpec(id=new_job_id(), task="denoise"), facts, b"abc")
        assert store.queued() == (1, 3)
        with pytest.raises(QueueFull):
            store.create(JobSpec(id=new_job_id(), task="denoise"), facts, b"abc")
        with pytest.raises(QueueFull):  # too many bytes, whatever the count
            RedisStore(url, 1, 30, max_queued_jobs=9, max_queued_bytes=5).create(
                JobSpec(id=new_job_id(), task="denoise"), facts, b"abcdef")
        time.sleep(1.2)
        assert store.queued() == (0, 0)
        third = JobSpec(id=new_job_id(), task="denoise")
        store.create(third, facts, b"abcd")
        assert store.queued() == (1, 4) and store.admitted_jobs() == [third.id]
        store.drop_input(third.id)
        store.drop_input(third.id)  # twice: counted once
        assert store.queued() == (0, 0) and store.input(third.id) is None
    finally:
        redis.Redis.from_url(url).flushdb()


def test_held_results_count_toward_the_stored_bytes(redis_port: int) -> None:
    """A job's result counts from its admission (reserved from the job's size) until it is fetched and
    dropped or expires, once however often it is written; a job that ends with none gives the
    reservation back. Records count as long as they are kept, so none of it can fill Redis."""
    url = f"redis://127.0.0.1:{redis_port}/12"
    facts = ImageFacts(width=2, height=2, bytes=4, format="png")
    reserve = result_reserve(JobSpec(id=new_job_id(), task="denoise"), facts)
    assert reserve == 2 * 2 * 3  # a PNG of random pixels is about its raw size
    probe = RedisStore(url, result_ttl_s=1, job_ttl_s=30)
    try:
        first = JobSpec(id=new_job_id(), task="denoise")
        probe.create(first, facts, b"abcd")
        assert probe.result_bytes() == reserve
        record = probe.record_bytes()
        assert record > 4096  # its JSON, the room it grows by, its keys
        probe.put_result(first.id, b"12345")
        probe.put_result(first.id, b"12345")  # a second delivery writes it again: counted once
        probe.drop_input(first.id)
        assert probe.queued() == (0, 0) and probe.result_bytes() == 5
        # room for two records, the next input and its reservation; not for the held result as well
        store = RedisStore(url, result_ttl_s=1, job_ttl_s=30, max_queued_jobs=9, max_queued_bytes=10,
                           max_stored_bytes=2 * record + 6 + reserve + 2)
        with pytest.raises(QueueFull, match="5 bytes of results"):
            store.create(JobSpec(id=new_job_id(), task="denoise"), facts, b"abcdef")
        store.drop_result(first.id)
        store.drop_result(first.id)
        assert store.result_bytes() == 0 and store.result(first.id) is None
        second = JobSpec(id=new_job_id(), task="denoise")
        store.create(second, facts, b"abcdef")
        store.put_result(second.id, b"xyz")
        # (a record's JSON may differ by a digit or two: the time it was made)
        assert store.queued() == (1, 6) and store.result_bytes() == 3
        assert abs(store.record_bytes() - 2 * record) <= 2
        time.sleep(1.2)  # inputs and results expire: they no longer count; the records are kept 30 s
        assert store.queued() == (0, 0) and store.result_bytes() == 0
        assert abs(store.record_bytes() - 2 * record) <= 2
        third = JobSpec(id=new_job_id(), task="denoise")
        probe.create(third, facts, b"abcd")
        probe.drop_input(third.id)  # it ended without a result: its reservation is given back
        assert probe.result_bytes() == 0
    finally:
        redis.Redis.from_url(url).flushdb()


def test_a_full_redis_answers_503_not_500(tiny_weights: Path, logdir: Path, procs: list[Proc]) -> None:
    """Redis at maxmemory with noeviction refuses writes: the API answers 503 with Retry-After."""
    url, rproc = redis_for("redis-full", logdir, "--maxmemory-policy", "noeviction")
    procs.append(rproc)
    env = service_env(tiny_weights, BBCU_BROKER_URL=url, BBCU_RETRY_AFTER_S="6")
    api_url, api = start_api("api-full", env, logdir)
    procs.append(api)
    r = redis.Redis.from_url(url)
    # 2 MB of filler in small writes: one 2 MB SET left a 2 MB query buffer that Redis freed a moment
    # later, taking used_memory back under the limit set below (the test then got a 202 now and then)
    for i in range(200):
        r.set(f"filler:{i}", b"x" * 10_000)
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 100_000)  # over it: writes refused
    with httpx.Client(base_url=api_url, timeout=30) as c:
        refused = post(c, make_image(64, 64, seed=3))
        body = assert_problem(refused, 503)
        assert "full" in body["detail"] and refused.headers["retry-after"] == "6"
        r.delete(*(f"filler:{i}" for i in range(200)))
        again = post(c, make_image(64, 64, seed=3))
        assert again.status_code == 202, (again.text, r.info("memory")["used_memory"])  # room again


def test_a_lost_input_fails_the_job_with_its_own_code(tiny_weights: Path, logdir: Path,
                                                      procs: list[Proc]) -> None:
    url, rproc = redis_for("redis-lost-input", logdir)
    procs.append(rproc)
    env = service_env(tiny_weights, BBCU_BROKER_URL=url)
    api_url, api = start_api("api-lost-input", env, logdir)
    procs.append(api)
    r = redis.Redis.from_url(url)
    with httpx.Client(base_url=api_url, timeout=60) as c:
        job_id = post(c, make_image(16, 16)).json()["id"]
        r.delete(f"bbcu:in:{job_id}")  # as an eviction would
        worker = start_worker("worker-lost-input", env, logdir, "--concurrency", "1")
        procs.append(worker)
        job = wait_job(c, job_id, timeout=90)
        assert job["status"] == "failed" and job["error"]["code"] == "input_lost", job
        assert "send the image again" in job["error"]["detail"]
        assert gauge(c.get("/metrics").text, "bbcu_queued_jobs") == 0


# --- stranded jobs (defect 3): recovered by the API's sweeper, with no client reading them


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _wait_status(store: RedisStore, job_id: str, statuses: set[str], timeout: float) -> JobRecord:
    """Poll the record in Redis itself (GET /jobs would be a client read)."""
    deadline = time.monotonic() + timeout
    while True:
        rec = store.get(job_id)
        if rec is not None and rec.status.value in statuses:
            return rec
        assert time.monotonic() < deadline, f"job {job_id} still {rec.status.value if rec else None}"
        time.sleep(0.05)


LONG_JOB = {"task": "sr", "scale": 4, "tile": 32}  # 256 tiles of a 512x512 input: several seconds


def test_a_killed_worker_main_process_job_runs_again_elsewhere(tiny_weights: Path, logdir: Path,
                                                               procs: list[Proc]) -> None:
    """SIGKILL of a worker's main process mid-job: its heartbeat lapses, the sweeper queues the job
    again (attempt 2) and a second worker finishes it; nobody reads the job meanwhile."""
    url, rproc = redis_for("redis-kill", logdir)
    procs.append(rproc)
    env = service_env(tiny_weights, BBCU_BROKER_URL=url)
    api_url, api = start_api("api-kill", env, logdir)
    procs.append(api)
    first = start_worker("worker-kill-a", env, logdir, "--concurrency", "1")
    procs.append(first)
    store = RedisStore(url, 3600, 86400)
    big = make_image(512, 512, seed=3)
    with httpx.Client(base_url=api_url, timeout=60) as c:
        wait_ready(api_url, first)
        job_id = post(c, big, **LONG_JOB).json()["id"]
    running = _wait_status(store, job_id, {"running"}, 60)
    assert running.worker is not None and running.worker.startswith("worker-kill-a@")
    children = _children(first.popen.pid)
    os.kill(first.popen.pid, signal.SIGKILL)
    for child in children:  # an orphaned pool process would finish the job: we want it lost
        os.kill(child, signal.SIGKILL)
    requeued = _wait_status(store, job_id, {"queued"}, 30)
    assert (requeued.attempt, requeued.worker, requeued.started_at) == (2, None, None)
    second = start_worker("worker-kill-b", env, logdir, "--concurrency", "1")
    procs.append(second)
    done = _wait_status(store, job_id, {"succeeded", "failed"}, 120)
    assert done.status.value == "succeeded" and done.attempt == 2, done
    assert done.worker is not None and done.worker.startswith("worker-kill-b@")
    assert store.result(job_id) is not None and store.input(job_id) is None
    assert store.queued() == (0, 0)


def test_a_redis_restart_mid_job_strands_nothing(tiny_weights: Path, logdir: Path, tmp_path: Path,
                                                 procs: list[Proc]) -> None:
    """Redis (append-only file) restarted while a job runs: the worker rides out the restart, the
    job ends succeeded, never left running; a job queued meanwhile runs too."""
    url, rproc = redis_for("redis-aof", logdir, "--appendonly", "yes", "--dir", str(tmp_path))
    procs.append(rproc)
    port = url.rsplit(":", 1)[1].split("/")[0]
    env = service_env(tiny_weights, BBCU_BROKER_URL=url, BBCU_REDIS_TIMEOUT_S="1")
    api_url, api = start_api("api-aof", env, logdir)
    procs.append(api)
    worker = start_worker("worker-aof", env, logdir, "--concurrency", "1")
    procs.append(worker)
    store = RedisStore(url, 3600, 86400, retry_s=20)  # the test's own reads ride out the restart too
    big = make_image(512, 512, seed=4)
    with httpx.Client(base_url=api_url, timeout=60) as c:
        wait_ready(api_url, worker)
        job_id = post(c, big, **LONG_JOB).json()["id"]
        after = post(c, make_image(32, 32, seed=5)).json()["id"]
    _wait_status(store, job_id, {"running"}, 60)
    rproc.stop()  # SIGTERM: Redis flushes its append-only file and exits
    time.sleep(2)
    restarted = spawn("redis-aof-2", [REDIS_SERVER, "--port", port, "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(tmp_path)], {}, logdir)
    procs.append(restarted)
    done = _wait_status(store, job_id, {"succeeded", "failed"}, 120)
    assert done.status.value == "succeeded", done
    assert _wait_status(store, after, {"succeeded", "failed"}, 60).status.value == "succeeded"
    assert store.queued() == (0, 0)


# --- cost (defect 4): bounded by output pixels and by estimated operations, before any worker runs


def _tall_thin_gif() -> bytes:
    """55x65535, one colour: a few KB that decode to 3.6 MP (x4 SR: 57.7 MP out)."""
    buf = io.BytesIO()
    Image.new("P", (55, 65535), 0).save(buf, format="GIF")
    return buf.getvalue()


def test_a_tiny_gif_cannot_buy_minutes_of_work(logdir: Path, procs: list[Proc]) -> None:
    """The issue's 5.8 KB GIF of 55x65535 to sr x4 with the shipped x4 network: refused at once by its
    output pixels; with the output limit raised, by its estimated operations (413, both in the body)."""
    gif = _tall_thin_gif()
    assert len(gif) < 20_000
    weights = ROOT / "models" / "weights"
    ops = per_pixel(NetworkConfig.from_dict(catalog.find("sr", 4, None, weights).metadata["config"])).ops
    default_env = service_env(weights, BBCU_MAX_PIXELS=str(4096 * 4096))
    raised_env = {**default_env, "BBCU_MAX_OUTPUT_PIXELS": str(64 << 20)}
    raised_url, raised = start_api("api-cost", raised_env, logdir)
    procs.append(raised)
    default_url, default = start_api("api-cost-default", default_env, logdir)
    procs.append(default)
    params = {"task": "sr", "scale": 4}
    files = {"image": ("tall.gif", gif, "image/gif")}
    with httpx.Client(base_url=default_url, timeout=30) as c:
        body = assert_problem(c.post("/restore", params=params, files=files), 413)
        assert body["type"] == "urn:bbcu:problem:image-too-large" and body["pixels"] == 55 * 65535
    with httpx.Client(base_url=raised_url, timeout=30) as c:
        t = time.monotonic()
        refused = c.post("/restore", params=params, files=files)
        assert time.monotonic() - t < 5
        body = assert_problem(refused, 413)
        assert body["type"] == "urn:bbcu:problem:job-too-costly" and body["max_gops"] == 1500
        assert body["gops"] == pytest.approx(55 * 65535 * ops / 1e9, abs=0.1)
        assert body["gops"] > 4900 and f"send at most {int(1500e9 / ops)} input pixels" in body["detail"]
        assert c.get("/limits").json()["max_job_gops"] == 1500
        assert 'bbcu_uploads_rejected_total{reason="job-too-costly"} 1.0' in c.get("/metrics").text


# --- readiness (defect 7): ready means a job would start


def test_ready_only_once_a_pool_process_preloaded(tiny_weights: Path, logdir: Path,
                                                   procs: list[Proc]) -> None:
    """A prefork worker beats as soon as Celery is up, but /readyz says ready only once a pool process
    has preloaded torch; a job submitted at that moment starts at once."""
    url, rproc = redis_for("redis-ready", logdir)
    procs.append(rproc)
    env = service_env(tiny_weights, BBCU_BROKER_URL=url)
    api_url, api = start_api("api-ready", env, logdir)
    procs.append(api)
    store = RedisStore(url, 3600, 86400)
    worker = start_worker("worker-ready", env, logdir, "--concurrency", "1")
    procs.append(worker)
    seen_starting = False
    with httpx.Client(base_url=api_url, timeout=30) as c:
        deadline = time.monotonic() + 120
        while (ready := c.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            body = ready.json()
            if body.get("starting", {}).get("cpu"):
                seen_starting = True  # beating, but no process has preloaded yet
                assert "still preloading" in body["detail"]
            time.sleep(0.05)
        job_id = post(c, make_image(16, 16)).json()["id"]
        [beat] = store.registry.workers("cpu")
        job = wait_job(c, job_id, timeout=60)
    assert seen_starting, "the worker was never seen beating before it was ready"
    assert beat["ready"] is True and beat["ready_processes"] == 1 and beat["concurrency"] == 1
    assert job["status"] == "succeeded" and job["timings"]["queue"] < 1500, job["timings"]


def test_concurrent_submissions_to_a_full_redis_are_refused_cleanly(logdir: Path, procs: list[Proc]) -> None:
    """Publishing from many API threads while Redis refuses writes: each one StoreUnavailable (a 503),
    never kombu's AttributeError from a channel another thread's failure closed (a 500)."""
    from workers.celery_app import CeleryDispatcher
    from workers.errors import StoreUnavailable
    from workers.settings import Settings

    url, rproc = redis_for("redis-publish-full", logdir, "--maxmemory-policy", "noeviction")
    procs.append(rproc)
    settings = Settings(broker_url=url)
    dispatcher = CeleryDispatcher(settings, RedisStore.from_settings(settings))
    r = redis.Redis.from_url(url)
    outcomes: list[str] = []

    def publish() -> None:
        for _ in range(5):
            try:
                dispatcher.submit(new_job_id(), "cpu")
                outcomes.append("sent")
            except StoreUnavailable:
                outcomes.append("refused")

    def burst() -> list[str]:
        outcomes.clear()
        threads = [threading.Thread(target=publish) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return sorted(set(outcomes))

    try:
        assert burst() == ["sent"]
        r.set("filler", b"x" * 2_000_000)
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 100_000)
        # every call answered (a crash ends its thread early), most refused: Redis lets a few through
        # as the refused calls' buffers free memory
        assert "refused" in burst() and len(outcomes) == 100
        r.delete("filler")
        assert burst() == ["sent"]
    finally:
        dispatcher.close()


def test_a_job_the_broker_refuses_gives_its_room_back(tiny_weights: Path, logdir: Path,
                                                      procs: list[Proc]) -> None:
    """Stored, then its message refused (here the queue's key holds a string): 503 with Retry-After,
    the input is dropped (it would hold admission room for an hour) and the record failed."""
    url, rproc = redis_for("redis-refusing-broker", logdir)
    procs.append(rproc)
    env = service_env(tiny_weights, BBCU_BROKER_URL=url, BBCU_RETRY_AFTER_S="3")
    api_url, api = start_api("api-refusing-broker", env, logdir)
    procs.append(api)
    r = redis.Redis.from_url(url)
    r.set("cpu", "not a list")
    with httpx.Client(base_url=api_url, timeout=30) as c:
        refused = post(c, make_image(16, 16))
        assert assert_problem(refused, 503)["type"] == "urn:bbcu:problem:unavailable"
        assert refused.headers["retry-after"] == "3"
    store = RedisStore(url, 3600, 86400)
    assert store.queued() == (0, 0) and r.keys("bbcu:in:*") == []
    [key] = r.keys("bbcu:job:*")
    rec = store.get(key.decode().rsplit(":", 1)[1])
    assert rec is not None and rec.status.value == "failed" and rec.error is not None
    assert rec.error.detail.startswith("not queued:")
