"""The Celery mode's job store: records, blobs and admission in Redis.

Records are JSON strings updated with WATCH/MULTI; a ``done`` list per job wakes synchronous waiters.
The Redis store admits a job only while the jobs holding an input (queued or running) and their
bytes stay under ``max_queued_jobs`` and ``max_queued_bytes``, and while those inputs plus the results
held stay under ``max_stored_bytes`` (so results, kept ``result_ttl_s``, cannot fill Redis and leave
no room for the results of jobs already accepted). A sorted set of the inputs (scored by when each
expires, so an entry never outlives its blob) and their sizes are updated in the same Lua script that
stores the input, and again when the input is dropped; results have a set of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from workers.contract import ImageFacts, JobRecord, JobSpec
from workers.errors import QueueFull, StoreUnavailable
from workers.lifecycle import created
from workers.registry import RedisRegistry
from workers.store import JobStore

if TYPE_CHECKING:
    from workers.settings import Settings

PREFIX = "bbcu"

# KEYS: admitted jobs (sorted set scored by input expiry), their sizes (hash), total bytes, input,
# record, then the same three for the results held. Expired entries of both are pruned first; with no
# ARGV the script only counts. Returns {admitted, jobs, input bytes, result bytes}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for base = 0, 5, 5 do
  local set, sizes, total = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', now)) do
    redis.call('ZREM', set, id)
    redis.call('DECRBY', total, redis.call('HGET', sizes, id) or 0)
    redis.call('HDEL', sizes, id)
  end
end
local jobs = redis.call('ZCARD', KEYS[1])
local bytes = tonumber(redis.call('GET', KEYS[3]) or '0')
local results = tonumber(redis.call('GET', KEYS[8]) or '0')
if #ARGV == 0 then return {1, jobs, bytes, results} end
local size, ttl = tonumber(ARGV[2]), tonumber(ARGV[5])
if jobs + 1 > tonumber(ARGV[3]) or bytes + size > tonumber(ARGV[4])
   or bytes + results + size > tonumber(ARGV[9]) then
  return {0, jobs, bytes, results}
end
redis.call('SET', KEYS[4], ARGV[7], 'EX', ttl)
redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[6])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], size)
redis.call('INCRBY', KEYS[3], size)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return {1, jobs + 1, bytes + size, results}
"""
# KEYS: the results' set, sizes and total, then the result. A job run twice counts its result once.
_PUT_RESULT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ttl)
redis.call('DECRBY', KEYS[3], redis.call('HGET', KEYS[2], ARGV[1]) or 0)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
"""
# KEYS: the same three (of inputs or of results), then the blob. ZREM first: once a script has
# written, Redis lets its later writes through even at maxmemory, so a job always gives its room back.
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[3], redis.call('HGET', KEYS[2], ARGV[1]) or 0)
  redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('DEL', KEYS[4])
return 1
"""


class RedisStore(JobStore):
    """Records as JSON strings updated with WATCH/MULTI; a ``done`` list wakes synchronous waiters."""

    _POLL_S = 1.0

    def __init__(self, url: str, result_ttl_s: int, job_ttl_s: int, timeout_s: float = 3.0, *,
                 max_connections: int = 160, max_queued_jobs: int = 500, max_queued_bytes: int = 1 << 30,
                 max_stored_bytes: int = 3 << 29, retry_s: float = 0.0) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        super().__init__(result_ttl_s, job_ttl_s)
        self.max_queued_jobs = max_queued_jobs
        self.max_queued_bytes = max_queued_bytes
        self.max_stored_bytes = max_stored_bytes
        self._redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._full_error = redis.exceptions.OutOfMemoryError
        self._watch_error = redis.exceptions.WatchError
        # retry_s: a worker rides out a Redis restart (each retry waits up to 1 s) instead of failing
        # the job it runs; the API answers 503 at once instead
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=int(retry_s) + 1 if retry_s else 0)
        # a blocking pool: past the cap (sized above the API's threads) a caller waits for a free
        # connection instead of failing with "Too many connections" as if Redis were down
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s + self._POLL_S,
            socket_connect_timeout=timeout_s, health_check_interval=30, retry=retry)
        self.client = redis.Redis(connection_pool=pool)
        self.registry = RedisRegistry(self)
        self._admit = self.client.register_script(_ADMIT)
        self._release = self.client.register_script(_RELEASE)
        self._put_result = self.client.register_script(_PUT_RESULT)

    @classmethod
    def from_settings(cls, settings: Settings, *, patient: bool = False) -> RedisStore:
        """The store every process of a Celery deployment uses: the broker's Redis, the settings' TTLs
        and admission limits; ``patient`` (workers) retries through a Redis restart."""
        if not settings.broker_url:
            raise ValueError("a Redis store needs BBCU_BROKER_URL")
        return cls(settings.broker_url, settings.result_ttl_s, settings.job_ttl_s, settings.redis_timeout_s,
                   max_connections=settings.redis_max_connections, max_queued_jobs=settings.max_queued_jobs,
                   max_queued_bytes=settings.max_queued_bytes, max_stored_bytes=settings.max_stored_bytes,
                   retry_s=settings.store_retry_s if patient else 0.0)

    @staticmethod
    def key(*parts: str) -> str:
        """The Redis key of ``parts`` under the service's prefix."""
        return ":".join((PREFIX, *parts))

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Redis errors as StoreUnavailable (for the callers that use ``client`` directly)."""
        try:
            yield
        except self._redis_errors as e:
            # not the error's text: it names Redis's host and port, and this goes to clients in a 503
            raise StoreUnavailable(f"Redis unreachable ({type(e).__name__})") from e
        except self._full_error as e:
            # noeviction: Redis refuses writes rather than dropping accepted inputs
            raise StoreUnavailable(f"Redis is full (maxmemory): {e}") from e

    def _admission_keys(self) -> list[str]:
        return [self.key("admitted"), self.key("admitted", "bytes"), self.key("admitted", "total")]

    def _result_keys(self) -> list[str]:
        return [self.key("results"), self.key("results", "bytes"), self.key("results", "total")]

    def create(self, spec: JobSpec, facts: ImageFacts, data: bytes) -> JobRecord:
        """Store the input and a queued record in one step, or raise QueueFull past the limits."""
        record = created(spec, facts)
        keys = [*self._admission_keys(), self.key("in", spec.id), self.key("job", spec.id),
                *self._result_keys()]
        args: list[str | int | bytes] = [spec.id, len(data), self.max_queued_jobs, self.max_queued_bytes,
                                         self.result_ttl_s, self.job_ttl_s, data, record.model_dump_json(),
                                         self.max_stored_bytes]
        with self.guard():
            admitted, jobs, size, results = self._admit(keys=keys, args=args)
        if not admitted:
            raise QueueFull(f"{jobs} jobs holding {size} bytes are queued or running and {results} bytes of "
                            f"results are held; the limits are {self.max_queued_jobs} jobs, "
                            f"{self.max_queued_bytes} input bytes and {self.max_stored_bytes} bytes in all")
        return record

    def _counts(self) -> tuple[int, int, int]:
        with self.guard():
            _, jobs, size, results = self._admit(keys=[*self._admission_keys(), "", "", *self._result_keys()],
                                                 args=[])
        return int(jobs), int(size), int(results)

    def queued(self) -> tuple[int, int]:
        jobs, size, _ = self._counts()
        return jobs, size

    def result_bytes(self) -> int:
        return self._counts()[2]

    def put_result(self, job_id: str, data: bytes) -> None:
        """Idempotent, and counted once against ``max_stored_bytes`` however often it runs."""
        with self.guard():
            self._put_result(keys=[*self._result_keys(), self.key("out", job_id)],
                             args=[job_id, len(data), self.result_ttl_s, data])

    def drop_result(self, job_id: str) -> None:
        with self.guard():
            self._release(keys=[*self._result_keys(), self.key("out", job_id)], args=[job_id])

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of ``job_ids`` (None where unknown or expired), read at once."""
        if not job_ids:
            return []
        with self.guard():
            raws = self.client.mget([self.key("job", i) for i in job_ids])
        return [JobRecord.model_validate_json(raw) if raw else None for raw in raws]

    def claim(self, name: str, ttl_s: float) -> bool:
        """True for the first caller of ``name`` in ``ttl_s`` seconds, across every process."""
        with self.guard():
            return bool(self.client.set(self.key("lock", name), "1", nx=True, px=max(1, int(ttl_s * 1000))))

    def admitted_jobs(self) -> list[str]:
        """The ids of the jobs holding an input (queued or running), for recovery to look at."""
        with self.guard():
            ids = self.client.zrange(self.key("admitted"), 0, -1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def drop_input(self, job_id: str) -> None:
        with self.guard():
            self._release(keys=[*self._admission_keys(), self.key("in", job_id)], args=[job_id])

    def get(self, job_id: str) -> JobRecord | None:
        with self.guard():
            raw = self.client.get(self.key("job", job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        key = self.key("job", job_id)
        with self.guard(), self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if not raw:
                        return None
                    new = change(JobRecord.model_validate_json(raw))
                    if new is None:
                        return None
                    pipe.multi()
                    pipe.set(key, new.model_dump_json(), keepttl=True)
                    if new.status.terminal:
                        done = self.key("done", job_id)
                        pipe.lpush(done, "1")
                        pipe.expire(done, self.job_ttl_s)
                    pipe.execute()
                    return new
                except self._watch_error:
                    continue

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        done = self.key("done", job_id)
        while True:
            rec = self.get(job_id)
            left = deadline - time.monotonic()
            if rec is None or rec.status.terminal or left <= 0:
                return rec
            with self.guard():
                # rotating the list onto itself leaves the marker for every other waiter
                self.client.blmove(done, done, min(left, self._POLL_S), "RIGHT", "LEFT")  # type: ignore[arg-type]

    def ping(self) -> None:
        with self.guard():
            self.client.ping()

    def input(self, job_id: str) -> bytes | None:
        return self._get_blob("in", job_id)

    def result(self, job_id: str) -> bytes | None:
        return self._get_blob("out", job_id)

    def _get_blob(self, kind: str, job_id: str) -> bytes | None:
        with self.guard():
            raw = self.client.get(self.key(kind, job_id))
        return bytes(raw) if raw is not None else None  # type: ignore[arg-type]
