"""Per-client request rates (a token bucket) and active-job quotas, behind one interface.

``MemoryThrottle`` serves the embedded mode (one process); ``RedisThrottle`` keeps the same state in
the broker's Redis so that every API process of a Celery deployment counts against one bucket and
one quota per key. A client is an API key's owner (or, with ``BBCU_ANONYMOUS_LIMITS``, an address).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

from app.access import Caller
from app.errors import too_many
from workers.contract import ACTIVE, JobRecord, JobStatus
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore

# a job id in a quota set that has no record yet may be one whose submission is still storing it:
# it counts for this long before it is taken for a failed submission and dropped
_UNSTORED_GRACE_S = 60.0


class Throttle(ABC):
    """Rates and quotas of clients; the job store tells which claimed jobs are still active."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    @abstractmethod
    def take(self, client: str, per_s: float, burst: int) -> float:
        """Take one request from the client's bucket: 0.0 if allowed, else the seconds until one is."""

    def claim(self, client: str, job_id: str, limit: int) -> list[JobRecord] | None:
        """Count ``job_id`` among the client's active jobs: None if it fits within ``limit``, else
        (the job not counted) the client's active jobs. Ended jobs leave the count as they are seen."""
        members = self._add(client, job_id)
        active: list[JobRecord] = []
        storing = 0
        gone: list[str] = []
        t = time.time()
        for other, added in members.items():
            if other == job_id:
                continue
            rec = self.store.get(other)
            if rec is not None and rec.status in ACTIVE:
                active.append(rec)
            elif rec is None and t - added <= _UNSTORED_GRACE_S:
                storing += 1
            else:
                gone.append(other)
        over = len(active) + storing >= limit
        if over:
            gone.append(job_id)
        self._remove(client, gone)
        return active if over else None

    def release(self, client: str, job_id: str) -> None:
        """Uncount a claimed job whose submission failed before it was stored."""
        self._remove(client, [job_id])

    @abstractmethod
    def _add(self, client: str, job_id: str) -> dict[str, float]:
        """Add the job to the client's set; every member with the time it was added."""

    @abstractmethod
    def _remove(self, client: str, job_ids: list[str]) -> None: ...


def refill(tokens: float, elapsed_s: float, per_s: float, burst: int) -> tuple[float, float]:
    """The bucket after ``elapsed_s`` and one request: (tokens left, seconds to wait; 0 if allowed)."""
    tokens = min(float(burst), tokens + max(0.0, elapsed_s) * per_s)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / per_s


class MemoryThrottle(Throttle):
    """Buckets and quota sets in this process (the embedded mode)."""

    _MAX_CLIENTS = 10_000  # past this many buckets, full (idle) ones are forgotten

    def __init__(self, store: JobStore) -> None:
        super().__init__(store)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, monotonic time)
        self._jobs: dict[str, dict[str, float]] = {}  # client -> {job id: time added}

    def take(self, client: str, per_s: float, burst: int) -> float:
        with self._lock:
            t = time.monotonic()
            tokens, last = self._buckets.get(client, (float(burst), t))
            tokens, wait = refill(tokens, t - last, per_s, burst)
            self._buckets[client] = (tokens, t)
            if len(self._buckets) > self._MAX_CLIENTS:
                self._buckets = {c: (k, s) for c, (k, s) in self._buckets.items()
                                 if k + (t - s) * per_s < burst}
            return wait

    def _add(self, client: str, job_id: str) -> dict[str, float]:
        with self._lock:
            jobs = self._jobs.setdefault(client, {})
            jobs[job_id] = time.time()
            return dict(jobs)

    def _remove(self, client: str, job_ids: list[str]) -> None:
        with self._lock:
            jobs = self._jobs.get(client, {})
            for job_id in job_ids:
                jobs.pop(job_id, None)
            if not jobs:
                self._jobs.pop(client, None)


# the bucket in one round trip, on Redis' clock (the same for every API process)
_TAKE = """
local per_s = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * per_s)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / per_s end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / per_s * 1000) + 1000)
return tostring(wait)
"""


class RedisThrottle(Throttle):
    """Buckets as Redis hashes updated by a Lua script; quota sets as sorted sets (score: time added)."""

    def __init__(self, store: RedisStore) -> None:
        super().__init__(store)
        self.redis_store = store
        self.client = store.client
        self._take = self.client.register_script(_TAKE)

    @staticmethod
    def _key(*parts: str) -> str:
        return RedisStore.key(*parts)

    def take(self, client: str, per_s: float, burst: int) -> float:
        with self.redis_store.guard():
            wait = self._take(keys=[self._key("rate", client)], args=[repr(per_s), burst])
        return float(wait)

    def _add(self, client: str, job_id: str) -> dict[str, float]:
        key = self._key("active", client)
        with self.redis_store.guard(), self.client.pipeline() as pipe:
            pipe.zadd(key, {job_id: time.time()})
            pipe.expire(key, self.redis_store.job_ttl_s)
            pipe.zrange(key, 0, -1, withscores=True)
            members = pipe.execute()[-1]
        return {m.decode() if isinstance(m, bytes) else str(m): float(s) for m, s in members}

    def _remove(self, client: str, job_ids: list[str]) -> None:
        if job_ids:
            with self.redis_store.guard():
                self.client.zrem(self._key("active", client), *job_ids)


def throttle_for(store: JobStore) -> Throttle:
    """The throttle that shares the store's reach: Redis for every API process, or this process."""
    return RedisThrottle(store) if isinstance(store, RedisStore) else MemoryThrottle(store)


def check_rate(throttle: Throttle, settings: Settings, caller: Caller) -> None:
    """429 when the caller's bucket is empty, with the seconds until it holds a request again."""
    if caller.limited and settings.rate_limit_per_min > 0:
        wait = throttle.take(caller.client, settings.rate_limit_per_min / 60.0, settings.rate_limit_burst)
        if wait > 0:
            raise too_many(f"more than {settings.rate_limit_per_min:g} requests per minute "
                           f"(bursts of {settings.rate_limit_burst}) from {caller.client}", wait,
                           limit_per_min=settings.rate_limit_per_min)


def claim_job(throttle: Throttle, settings: Settings, caller: Caller | None, job_id: str) -> bool:
    """Count a new job against the caller's quota (True when counted); 429 when it is full."""
    limit = settings.max_active_jobs
    if caller is None or not caller.limited or limit <= 0:
        return False
    active = throttle.claim(caller.client, job_id, limit)
    if active is None:
        return True
    # the soonest a running job expects to end, else the usual retry interval
    etas = [r.eta_s for r in active if r.status == JobStatus.running and r.eta_s is not None]
    raise too_many(f"{caller.client} already has {len(active)} queued or running jobs (the limit is "
                   f"{limit}); wait for one to end or cancel one", min(etas, default=settings.retry_after_s),
                   max_active_jobs=limit)
