"""Admission that follows the Redis it talks to (issue 20 item 1, issue 19 item 1): its maxmemory
bounds inputs, results and job records with no BBCU_MAX_* setting, one API key holds at most its
share, and an eviction policy that could drop accepted jobs is refused or guarded against."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.uploads import MAX_FILENAME_BYTES
from tests.conftest import service_env, start_api
from tests.helpers import assert_problem, make_image
from tests.test_service_faults import redis_for
from workers.callback_urls import MAX_CALLBACK_URL
from workers.contract import ImageFacts, JobSpec, JobStatus, new_job_id
from workers.errors import QueueFull, StoreFull
from workers.memory_store import MemoryStore
from workers.redis_budget import KEY_SHARE, SAFE_FRACTION
from workers.redis_store import RedisStore
from workers.settings import Settings

MAXMEMORY = 24 << 20
FACTS = ImageFacts(width=64, height=64, bytes=12_288, format="png")


def spec(owner: str, **fields: str) -> JobSpec:
    return JobSpec(id=new_job_id(), task="denoise", owner=owner, **fields)  # type: ignore[arg-type]


def test_one_key_flooding_a_small_redis_leaves_room_for_another(logdir: Path) -> None:
    """Redis maxmemory 24mb, no BBCU_MAX_* settings: bob's jobs with long callback URLs and file names
    are refused once they hold his share; alice's are all admitted, and Redis never fills."""
    url, proc = redis_for("redis-24mb", logdir, "--maxmemory", "24mb", "--maxmemory-policy", "noeviction")
    try:
        store = RedisStore.from_settings(Settings(broker_url=url))
        budget = store.memory.budget()
        assert (budget.maxmemory, budget.policy) == (MAXMEMORY, "noeviction")
        assert budget.stored_bytes == int(MAXMEMORY * SAFE_FRACTION) < Settings().max_stored_bytes
        assert budget.key_bytes == int(budget.stored_bytes * KEY_SHARE)
        data = os.urandom(FACTS.bytes)
        bob_jobs, refusal = 0, ""
        while not refusal:
            try:
                store.create(spec("bob", callback_url="https://hooks.example/" + "a" * 60_000,
                                  filename="f" * 4000 + ".png"), FACTS, data)
                bob_jobs += 1
            except QueueFull as e:
                refusal = str(e)
            assert bob_jobs < 1000
        # each of bob's jobs counts its input, its result (reserved) and its 64 KB record
        assert 40 < bob_jobs < budget.key_bytes // (60_000 + 2 * FACTS.bytes)
        assert "the jobs of bob hold" in refusal and str(budget.key_bytes) in refusal
        assert store.owner_bytes("bob") <= budget.key_bytes
        for _ in range(20):
            store.create(spec("alice"), FACTS, data)
        info = redis.Redis.from_url(url).info()
        assert info["used_memory"] < MAXMEMORY * 0.9 and info["evicted_keys"] == 0
    finally:
        proc.stop()


def test_an_allkeys_policy_is_refused_and_a_volatile_one_keeps_jobs_without_ttl(logdir: Path) -> None:
    url, proc = redis_for("redis-policies", logdir, "--maxmemory", "64mb", "--maxmemory-policy",
                            "allkeys-lru")
    try:
        with pytest.raises(ValueError, match="allkeys-lru.*noeviction"):
            RedisStore.from_settings(Settings(broker_url=url))
        r = redis.Redis.from_url(url)
        r.config_set("maxmemory-policy", "volatile-ttl")
        store = RedisStore.from_settings(Settings(broker_url=url))
        job = spec("alice")
        store.create(job, FACTS, os.urandom(FACTS.bytes))
        # a volatile policy evicts keys with a TTL: an unfinished job's input and record have none
        assert r.ttl(f"bbcu:in:{job.id}") == -1 and r.ttl(f"bbcu:job:{job.id}") == -1
        store.update(job.id, lambda rec: rec.model_copy(update={"status": JobStatus.succeeded}))
        assert 0 < r.ttl(f"bbcu:job:{job.id}") <= Settings().job_ttl_s  # ended: it expires from now
        store.drop_input(job.id)
        assert not r.exists(f"bbcu:in:{job.id}") and store.queued() == (0, 0)
    finally:
        proc.stop()


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_bob_flooding_over_http_never_turns_alice_away(tiny_weights: Path, logdir: Path) -> None:
    """From the outside (Celery mode, keys alice and bob, Redis maxmemory 24mb, no BBCU_MAX_* byte
    setting; quotas off so that only the bytes limit bob): bob's asynchronous jobs with the longest
    callback URLs and file names allowed meet 503 + Retry-After at his share, alice's are accepted."""
    url, proc = redis_for("redis-24mb-api", logdir, "--maxmemory", "24mb", "--maxmemory-policy",
                            "noeviction")
    env = service_env(tiny_weights, BBCU_BROKER_URL=url, BBCU_MAX_ACTIVE_JOBS="0",
                      BBCU_RATE_LIMIT_PER_MIN="0",
                      BBCU_API_KEYS=f"alice={_digest('key-alice')},bob={_digest('key-bob')}")
    api = None
    try:
        api_url, api = start_api("api-24mb", env, logdir)
        image = make_image(64, 64, seed=5)
        params = {"task": "denoise", "async": "true",
                  "callback_url": "http://127.0.0.1:9/hook/" + "a" * (MAX_CALLBACK_URL - 30)}
        with httpx.Client(base_url=api_url, timeout=30) as c:
            accepted, refused = 0, None
            while refused is None and accepted < 2000:
                r = c.post("/restore", params=params, headers={"X-API-Key": "key-bob"},
                           files={"image": ("b" * (MAX_FILENAME_BYTES - 4) + ".png", image, "image/png")})
                if r.status_code == 202:
                    accepted += 1
                else:
                    refused = r
            assert refused is not None and accepted > 20
            body = assert_problem(refused, 503)
            assert body["type"] == "urn:bbcu:problem:queue-full"
            assert "the jobs of bob hold" in body["detail"]
            assert refused.headers["retry-after"].isdigit()
            for i in range(10):
                r = c.post("/restore", params={"task": "denoise", "async": "true"},
                           headers={"X-API-Key": "key-alice"},
                           files={"image": ("a.png", make_image(64, 64, seed=i), "image/png")})
                assert r.status_code == 202, r.text
        info = redis.Redis.from_url(url).info()
        assert info["used_memory"] < MAXMEMORY * 0.9 and info["evicted_keys"] == 0
    finally:
        if api is not None:
            api.stop()
        proc.stop()


def test_embedded_store_gives_one_key_half_of_its_budget() -> None:
    """The embedded mode: one key's unfinished inputs and kept records hold at most half of
    BBCU_MEMORY_STORE_MAX_BYTES; another key is still admitted; ended jobs' records count until they
    expire."""
    store = MemoryStore(result_ttl_s=60, job_ttl_s=1, max_bytes=2_000_000)
    data = os.urandom(FACTS.bytes)

    def flood() -> list[str]:
        ids: list[str] = []
        with pytest.raises(StoreFull, match="the jobs of bob hold"):
            for _ in range(1000):
                job = spec("bob", callback_url="https://hooks.example/" + "a" * 2000, filename="f" * 250)
                store.create(job, FACTS, data)
                ids.append(job.id)
        return ids

    first = flood()
    assert 40 < len(first) < 1_000_000 // FACTS.bytes
    for _ in range(20):
        store.create(spec("alice"), FACTS, data)
    for job_id in first:
        store.drop_input(job_id)  # they ended: their records are kept a while yet, and count
    second = flood()
    assert 0 < len(second) < len(first)
    time.sleep(1.1)  # the records expire
    store.create(spec("bob"), FACTS, data)
