"""The job stores (Redis and memory, one contract) and the embedded pool's own limits over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from app.main import create_app
from app.server import uvicorn_options
from benchmarks.harness import free_port
from tests.helpers import assert_problem, make_image, wait_job
from workers.contract import ACTIVE, ImageFacts, JobSpec, JobStatus, new_job_id
from workers.lifecycle import Lifecycle, move
from workers.memory_store import MemoryStore
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore

FACTS = ImageFacts(width=1, height=1, bytes=3, format="PNG")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    if request.param == "memory":
        yield MemoryStore(result_ttl_s=2, job_ttl_s=30)
        return
    port = request.getfixturevalue("redis_port")
    url = f"redis://127.0.0.1:{port}/5"
    yield RedisStore(url, result_ttl_s=2, job_ttl_s=30)
    redis.Redis.from_url(url).flushdb()


def new_job(store: JobStore) -> str:
    spec = JobSpec(id=new_job_id(), task="denoise")
    store.create(spec, FACTS, b"abc")
    return spec.id


def test_transitions_are_guarded_and_idempotent(store: JobStore) -> None:
    job = new_job(store)
    rec = store.get(job)
    assert rec is not None and rec.status == JobStatus.queued and store.input(job) == b"abc"
    assert move(store, job, JobStatus.running, ACTIVE) is not None
    assert move(store, job, JobStatus.running, ACTIVE) is not None  # a redelivery may run it again
    Lifecycle(store).progress(job, 0.5)
    assert store.get(job).progress == 0.5  # type: ignore[union-attr]
    store.put_result(job, b"out")
    store.put_result(job, b"out")
    assert move(store, job, JobStatus.succeeded, (JobStatus.running,), progress=1.0) is not None
    assert move(store, job, JobStatus.running, ACTIVE) is None  # finished jobs never restart
    assert move(store, job, JobStatus.cancelled, ACTIVE) is None
    assert store.get(job).status == JobStatus.succeeded and store.result(job) == b"out"  # type: ignore[union-attr]
    assert store.get("0" * 32) is None and move(store, "0" * 32, JobStatus.running, ACTIVE) is None


def test_every_waiter_wakes_when_a_job_ends(store: JobStore) -> None:
    job = new_job(store)
    results: list[JobStatus | None] = []

    def waiter() -> None:
        rec = store.wait(job, 20)
        results.append(rec.status if rec else None)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    move(store, job, JobStatus.failed, ACTIVE)
    for t in threads:
        t.join(20)
    assert results == [JobStatus.failed] * 3 and time.monotonic() - t0 < 3
    other = new_job(store)
    t0 = time.monotonic()
    assert store.wait(other, 0.3).status == JobStatus.queued  # type: ignore[union-attr]
    assert 0.25 < time.monotonic() - t0 < 2


def test_blobs_expire_before_records(store: JobStore) -> None:
    job = new_job(store)
    store.put_result(job, b"out")
    if isinstance(store, RedisStore):
        for kind, ttl in (("in", 2), ("out", 2), ("job", 30)):
            assert 0 < store.client.ttl(f"bbcu:{kind}:{job}") <= ttl
    time.sleep(2.1)
    assert store.result(job) is None and store.input(job) is None
    assert store.get(job) is not None  # so the API can answer 410 rather than 404


def test_heartbeats_expire(store: JobStore) -> None:
    store.registry.beat("gpu", "w1", {"worker": "w1"}, ttl_s=0.5)
    assert store.registry.workers("gpu") == [{"worker": "w1"}] and store.registry.workers("cpu") == []
    time.sleep(0.7)
    assert store.registry.workers("gpu") == []
    store.registry.beat("cpu", "w2", {"worker": "w2"}, ttl_s=5)
    store.registry.forget_worker("cpu", "w2")
    assert store.registry.workers("cpu") == []


@contextmanager
def serve_in_thread(settings: Settings) -> Iterator[str]:
    """Real HTTP to an embedded-mode app in this process (settings a subprocess would be slow to get)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_embedded_result_expiry_and_bounded_queue(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, result_ttl_s=1, job_ttl_s=60, embedded_workers=1,
                        embedded_queue=1, retry_after_s=3, torch_threads=1)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/restore", params={"task": "denoise", "async": "true"},
                   files={"image": ("x.png", make_image(16, 16), "image/png")})
        job = wait_job(c, r.json()["id"])
        assert job["status"] == "succeeded"
        time.sleep(1.2)
        assert_problem(c.get(f"/jobs/{job['id']}/result"), 410)
        # one job running, one waiting: the third is refused with Retry-After, not queued without bound
        big = make_image(512, 512, seed=2)
        ids = []
        for _ in range(2):
            a = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                       files={"image": ("b.png", big, "image/png")})
            assert a.status_code == 202
            ids.append(a.json()["id"])
        full = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                      files={"image": ("b.png", big, "image/png")})
        assert_problem(full, 503)
        assert full.headers["retry-after"] == "3"
        for job_id in ids:
            assert c.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
        for job_id in ids:
            assert wait_job(c, job_id)["status"] == "cancelled"
        # slots come back once the cancelled jobs stop
        deadline = time.monotonic() + 30
        while True:
            ok = c.post("/restore", params={"task": "denoise"},
                        files={"image": ("s.png", make_image(8, 8), "image/png")})
            if ok.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ok.status_code == 200


def _job_with_input(store: JobStore, data: bytes, **spec: object) -> str:
    job = JobSpec(id=new_job_id(), task="denoise", **spec)  # type: ignore[arg-type]
    store.create(job, ImageFacts(width=16, height=16, bytes=len(data), format="png"), data)
    return job.id


def test_runner_is_idempotent_under_redelivery(tiny_weights: Path) -> None:
    """A message delivered twice (in turn, or at once) runs the job to one result."""
    from workers.jobs import JobRunner

    settings = Settings(weights_dir=tiny_weights, torch_threads=1)
    store = MemoryStore(60, 60)
    runner = JobRunner(settings, store)
    job = _job_with_input(store, make_image(16, 16, seed=1))
    first = runner.run(job)
    assert first is not None and first.status == JobStatus.succeeded
    result = store.result(job)
    again = runner.run(job)
    assert again is not None and again.status == JobStatus.succeeded
    assert again.finished_at == first.finished_at  # not run a second time
    assert store.result(job) == result

    twice = _job_with_input(store, make_image(64, 64, seed=2), tile=32)
    threads = [threading.Thread(target=runner.run, args=(twice,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rec = store.get(twice)
    assert rec is not None and rec.status == JobStatus.succeeded and store.result(twice) is not None


def test_runner_failures_carry_a_code(tiny_weights: Path) -> None:
    from workers.jobs import JobRunner

    store = MemoryStore(60, 60)
    runner = JobRunner(Settings(weights_dir=tiny_weights, torch_threads=1, max_pixels=100), store)
    cases = {"bad_image": make_image(8, 8)[:50], "too_large": make_image(16, 16)}
    for code, data in cases.items():
        rec = runner.run(_job_with_input(store, data))
        assert rec is not None and rec.status == JobStatus.failed and rec.error is not None
        assert rec.error.code.value == code and rec.error.detail
    missing = _job_with_input(store, make_image(8, 8), variant="zz")
    rec = runner.run(missing)
    assert rec is not None and rec.error is not None and rec.error.code.value == "unknown_model"
    expired = _job_with_input(store, make_image(8, 8))
    store.drop_input(expired)
    rec = runner.run(expired)
    assert rec is not None and rec.error is not None and rec.error.code.value == "input_lost"
    assert "inputs are kept 3600 s" in rec.error.detail


def test_a_job_for_a_missing_cuda_device_is_the_service_at_fault(tiny_weights: Path) -> None:
    """Issue 24: a GPU-queue job where CUDA is missing failed unknown_model, a 422 blaming the request."""
    import torch

    from app.jobs import job_problem
    from workers.jobs import JobRunner

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the job would run")
    store = MemoryStore(60, 60)
    runner = JobRunner(Settings(weights_dir=tiny_weights, torch_threads=1), store)
    rec = runner.run(_job_with_input(store, make_image(8, 8), queue="gpu"))
    assert rec is not None and rec.status == JobStatus.failed and rec.error is not None
    assert rec.error.code.value == "device_unavailable" and "CUDA" in rec.error.detail
    problem = job_problem(rec, retry_after_s=7)
    assert (problem.status, problem.slug, problem.headers["Retry-After"]) == (503, "job-device_unavailable",
                                                                               "7")


def test_runner_logs_failed_jobs(tiny_weights: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24: JobRunner logged nothing when a job failed (timeouts end through the same path)."""
    from workers.jobs import JobRunner

    store = MemoryStore(60, 60)
    runner = JobRunner(Settings(weights_dir=tiny_weights, torch_threads=1), store)
    with caplog.at_level("WARNING", logger="workers.jobs"):
        bad = runner.run(_job_with_input(store, make_image(8, 8)[:50]))
        missing = runner.run(_job_with_input(store, make_image(8, 8), variant="zz"))
        fine = runner.run(_job_with_input(store, make_image(8, 8)))
    assert bad is not None and missing is not None and fine is not None
    assert fine.status == JobStatus.succeeded
    logged = [r.getMessage() for r in caplog.records if r.name == "workers.jobs"]
    assert len(logged) == 2, logged  # the two failures, not the success
    assert bad.id in logged[0] and "bad_image" in logged[0]
    assert missing.id in logged[1] and "unknown_model" in logged[1] and "zz" in logged[1]


def test_more_waiters_than_the_default_pool_share_connections(redis_port: int) -> None:
    """Issue 11, defect 1: redis-py's default pool of 100 connections answered "Too many connections"
    (reported as Redis unreachable) to the 101st synchronous request waiting at once."""
    url = f"redis://127.0.0.1:{redis_port}/8"
    settings = Settings(broker_url=url, api_threads=150)
    store = RedisStore.from_settings(settings)
    job = new_job(store)
    errors: list[BaseException] = []
    seen: list[JobStatus] = []

    def waiter() -> None:
        try:
            rec = store.wait(job, 1.5)
            seen.append(rec.status if rec else JobStatus.failed)
        except Exception as e:  # noqa: BLE001  (every failure is what the test counts)
            errors.append(e)

    threads = [threading.Thread(target=waiter) for _ in range(settings.api_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    redis.Redis.from_url(url).flushdb()
    assert errors == [] and seen == [JobStatus.queued] * settings.api_threads


def _fill(store: MemoryStore, n: int) -> list[str]:
    ids = [new_job_id() for _ in range(n)]
    spec = JobSpec(id=ids[0], task="denoise")
    for job_id in ids:
        store.create(spec.model_copy(update={"id": job_id}), FACTS, b"abc")
    return ids


def _gets_cost(store: MemoryStore, job_id: str, n: int = 2000) -> tuple[float, int]:
    """Seconds for ``n`` gets (best of three) and the expiry entries they popped."""
    swept = store.swept
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            assert store.get(job_id) is not None
        best = min(best, time.perf_counter() - t0)
    return best, store.swept - swept


def test_memory_store_get_does_not_scan_every_record() -> None:
    """Issue 11, defect 6: each operation swept every record under the lock (8.1 ms per get at 100k)."""
    small, big = MemoryStore(60, 60), MemoryStore(60, 60)
    one = _fill(small, 1)[0]
    ids = _fill(big, 100_000)
    t_small, popped_small = _gets_cost(small, one)
    t_big, popped_big = _gets_cost(big, ids[50_000])
    assert popped_small == popped_big == 0  # nothing is due: a get pops no expiry entry
    # a full scan made this ratio about 10^4; a dict lookup and a heap peek keep it near 1
    assert t_big < 5 * t_small + 0.05, (t_small, t_big)


def test_memory_store_expiry_pops_only_what_is_due() -> None:
    store = MemoryStore(result_ttl_s=1, job_ttl_s=2)
    ids = _fill(store, 1000)
    store.put_result(ids[0], b"out")
    store.put_result(ids[0], b"out2")  # written again: the first expiry entry goes stale
    assert store.result(ids[0]) == b"out2" and store.held_bytes == 1000 * 3 + 4
    time.sleep(1.1)
    assert store.get(ids[1]) is not None and store.result(ids[0]) is None and store.input(ids[1]) is None
    assert store.held_bytes == 0 and store.swept == 1002  # the inputs, the result and its stale entry
    time.sleep(1.2)
    assert store.get(ids[1]) is None and store.swept == 2002  # then each record, once


def test_memory_store_byte_budget() -> None:
    """Results make room oldest first (410 then); inputs of accepted jobs are never dropped: a new job
    that does not fit is refused."""
    from workers.errors import StoreFull

    store = MemoryStore(60, 60, max_bytes=1000)
    a, b = (_job_with_input(store, b"i" * 300) for _ in range(2))
    store.drop_input(a)
    store.put_result(a, b"r" * 300)
    store.drop_input(b)
    store.put_result(b, b"r" * 300)
    assert store.held_bytes == 600
    c = _job_with_input(store, b"i" * 300)
    assert store.held_bytes == 900
    d = _job_with_input(store, b"i" * 300)  # a's result (the oldest) makes room
    assert store.result(a) is None and store.get(a) is not None and store.result(b) == b"r" * 300
    assert store.held_bytes == 900
    e = _job_with_input(store, b"i" * 200)  # b's result goes too
    assert store.result(b) is None and store.held_bytes == 800
    with pytest.raises(StoreFull, match="1000 bytes"):
        _job_with_input(store, b"i" * 400)  # inputs alone fill it: refused, nothing dropped
    assert [store.input(j) is not None for j in (c, d, e)] == [True, True, True]
    assert store.held_bytes == 800 and store.queued() == (3, 800)  # inputs only, counted as they change
    store.drop_input(e)
    assert store.held_bytes == 600 and store.queued() == (2, 600)


def test_embedded_memory_budget_over_http(tiny_weights: Path) -> None:
    """Past BBCU_MEMORY_STORE_MAX_BYTES a new job is refused with 503 + Retry-After; the accepted job's
    input is kept, and room comes back when it ends."""
    big = make_image(512, 512, seed=6)
    settings = Settings(weights_dir=tiny_weights, torch_threads=1, embedded_workers=1, retry_after_s=4,
                        memory_store_max_bytes=len(big) * 3 // 2)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        first = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                       files={"image": ("b.png", big, "image/png")})
        assert first.status_code == 202, first.text
        refused = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                         files={"image": ("b.png", big, "image/png")})
        body = assert_problem(refused, 503)
        assert refused.headers["retry-after"] == "4" and "BBCU_MEMORY_STORE_MAX_BYTES" in body["detail"]
        assert c.get(f"/jobs/{first.json()['id']}").json()["status"] in ("queued", "running")
        assert c.delete(f"/jobs/{first.json()['id']}").json()["status"] == "cancelled"
        ok = c.post("/restore", params={"task": "denoise"}, files={"image": ("s.png", make_image(8, 8),
                                                                             "image/png")})
        assert ok.status_code == 200
