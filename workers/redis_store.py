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
from typing import TYPE_CHECKING, Any

from workers.contract import ImageFacts, JobRecord, JobSpec
from workers.errors import QueueFull, StoreUnavailable
from workers.lifecycle import created
from workers.redis_budget import SAFE_FRACTION, RedisMemory, check_policy, record_cost, result_reserve
from workers.registry import RedisRegistry
from workers.store import JobStore

if TYPE_CHECKING:
    from workers.settings import Settings

PREFIX = "bbcu"

# The ledger: three groups of entries (inputs of unfinished jobs, results held or reserved, records),
# each a sorted set scored by when the entry lapses, a hash of "size|owner" per job id and a total;
# and one hash of the bytes each owner (API key) holds across the groups. Entries are pruned when they
# lapse (their key expired) and released when their key is deleted.
_LEDGER = """
local function split(v)
  if not v then return 0, '' end
  local size, owner = string.match(v, '^(%d+)|(.*)$')
  if size then return tonumber(size), owner end
  return tonumber(v) or 0, ''
end
local function forget(set, sizes, total, owners, id)
  local size, owner = split(redis.call('HGET', sizes, id))
  redis.call('ZREM', set, id)
  redis.call('HDEL', sizes, id)
  redis.call('DECRBY', total, size)
  if owner ~= '' then redis.call('HINCRBY', owners, owner, -size) end
  return owner
end
local function add(set, sizes, total, owners, id, size, owner, lapses)
  forget(set, sizes, total, owners, id)
  redis.call('ZADD', set, lapses, id)
  redis.call('HSET', sizes, id, size .. '|' .. owner)
  redis.call('INCRBY', total, size)
  if owner ~= '' then redis.call('HINCRBY', owners, owner, size) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""
# KEYS: the three groups (inputs 1-3, results 4-6, records 7-9), the owners' hash (10), the input and
# the record. Lapsed entries are pruned first; with no ARGV the script only counts. Returns {admitted,
# jobs, input bytes, result bytes, record bytes, the owner's bytes}.
_ADMIT = _LEDGER + """
for base = 0, 6, 3 do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[base + 1], '-inf', now)) do
    forget(KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[10], id)
  end
end
local jobs = redis.call('ZCARD', KEYS[1])
local inputs = tonumber(redis.call('GET', KEYS[3]) or '0')
local results = tonumber(redis.call('GET', KEYS[6]) or '0')
local records = tonumber(redis.call('GET', KEYS[9]) or '0')
if #ARGV == 0 then return {1, jobs, inputs, results, records, 0} end
local id, size, owner = ARGV[1], tonumber(ARGV[2]), ARGV[10]
local ttl, job_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local reserve, record = tonumber(ARGV[12]), tonumber(ARGV[13])
local held = 0
if owner ~= '' then held = tonumber(redis.call('HGET', KEYS[10], owner) or '0') end
local need = size + reserve + record
if jobs + 1 > tonumber(ARGV[3]) or inputs + size > tonumber(ARGV[4])
   or inputs + results + records + need > tonumber(ARGV[9])
   or (owner ~= '' and held + need > tonumber(ARGV[11])) then
  return {0, jobs, inputs, results, records, held}
end
if ARGV[14] == '1' then  -- a volatile-* policy evicts keys with a TTL: none until the job ends
  redis.call('SET', KEYS[11], ARGV[7])
  redis.call('SET', KEYS[12], ARGV[8])
else
  redis.call('SET', KEYS[11], ARGV[7], 'EX', ttl)
  redis.call('SET', KEYS[12], ARGV[8], 'EX', job_ttl)
end
add(KEYS[1], KEYS[2], KEYS[3], KEYS[10], id, size, owner, now + ttl)
add(KEYS[4], KEYS[5], KEYS[6], KEYS[10], id, reserve, owner, now + ttl)  -- its result, reserved
add(KEYS[7], KEYS[8], KEYS[9], KEYS[10], id, record, owner, now + job_ttl)
if ARGV[14] ~= '1' then  -- the ledger lapses when idle, never before an entry it counts
  for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end
  for i = 7, 10 do redis.call('EXPIRE', KEYS[i], job_ttl) end
end
return {1, jobs + 1, inputs + size, results + reserve, records + record, held + need}
"""
# KEYS: the results' group, the owners' hash, then the result. The written size replaces the
# reservation (or an earlier run's size: a job run twice counts its result once), for the same owner.
_PUT_RESULT = _LEDGER + """
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[5], ARGV[4], 'EX', ttl)
local owner = forget(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
add(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[2]), owner, now + ttl)
-- a set or hash emptied by forget was deleted and made again without a TTL: the group lapses together
if ARGV[5] ~= '1' then for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end end
return 1
"""
# KEYS: a group (of inputs or of results), the owners' hash, then the blob; for an input, then the
# results' group and the result: a job that ends with no result written gives its reservation back.
# Releasing first: once a script has written, Redis lets its later writes through even at maxmemory,
# so a job always gives its room back.
_RELEASE = _LEDGER + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then forget(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]) end
if #KEYS > 5 and redis.call('EXISTS', KEYS[9]) == 0 and redis.call('ZSCORE', KEYS[6], ARGV[1]) then
  forget(KEYS[6], KEYS[7], KEYS[8], KEYS[4], ARGV[1])
end
redis.call('DEL', KEYS[5])
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
        # the limits in force: the settings' ceilings, lowered to what this Redis's maxmemory holds
        self.memory = RedisMemory(self._memory_info, max_queued_bytes, max_stored_bytes)

    def _memory_info(self) -> dict[str, Any]:
        with self.guard():
            return dict(self.client.info("memory"))

    def check_policy(self) -> None:
        """Refuse a Redis whose eviction policy may drop what accepted jobs need (ValueError); warn about
        one that evicts keys with a TTL. A Redis that does not answer yet is checked at admission."""
        try:
            budget = self.memory.read()
        except StoreUnavailable:
            return
        check_policy(budget.policy)

    @classmethod
    def from_settings(cls, settings: Settings, *, patient: bool = False) -> RedisStore:
        """The store every process of a Celery deployment uses: the broker's Redis, the settings' TTLs
        and admission limits (lowered to what its maxmemory holds); ``patient`` (workers) retries
        through a Redis restart. ValueError if Redis's eviction policy may drop accepted jobs."""
        if not settings.broker_url:
            raise ValueError("a Redis store needs BBCU_BROKER_URL")
        store = cls(settings.broker_url, settings.result_ttl_s, settings.job_ttl_s, settings.redis_timeout_s,
                    max_connections=settings.redis_max_connections, max_queued_jobs=settings.max_queued_jobs,
                    max_queued_bytes=settings.max_queued_bytes, max_stored_bytes=settings.max_stored_bytes,
                    retry_s=settings.store_retry_s if patient else 0.0)
        store.check_policy()  # an allkeys-* Redis stops the start: it may evict accepted jobs
        return store

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

    def _group(self, name: str) -> list[str]:
        """The ledger keys of one group: its sorted set, sizes and total."""
        return [self.key(name), self.key(name, "bytes"), self.key(name, "total")]

    def _ledger_keys(self) -> list[str]:
        return [*self._group("admitted"), *self._group("results"), *self._group("records"), self._owners]

    @property
    def _owners(self) -> str:
        """The hash of the bytes each API key's jobs hold, across the ledger's groups."""
        return self.key("owners", "bytes")

    def create(self, spec: JobSpec, facts: ImageFacts, data: bytes) -> JobRecord:
        """Store the input and a queued record in one step, reserving room for the result, or raise
        QueueFull past the limits (the whole store's, or the job's API key's share)."""
        record = created(spec, facts)
        budget = self.memory.budget()
        if budget.policy.startswith("allkeys-"):
            raise StoreUnavailable(f"Redis's maxmemory-policy is {budget.policy}: it may evict accepted "
                                   "jobs; no job is admitted until it is noeviction")
        raw = record.model_dump_json()
        keys = [*self._ledger_keys(), self.key("in", spec.id), self.key("job", spec.id)]
        args: list[str | int | bytes] = [
            spec.id, len(data), self.max_queued_jobs, budget.queued_bytes, self.result_ttl_s,
            self.job_ttl_s, data, raw, budget.stored_bytes, spec.owner or "", budget.key_bytes,
            result_reserve(spec, facts), record_cost(raw), int(budget.persist)]
        with self.guard():
            admitted, jobs, inputs, results, records, held = self._admit(keys=keys, args=args)
        if not admitted:
            limits = (f"the limits are {self.max_queued_jobs} jobs, {budget.queued_bytes} input bytes and "
                      f"{budget.stored_bytes} bytes in all")
            if budget.maxmemory:
                limits += f" ({SAFE_FRACTION:.0%} of Redis's maxmemory of {budget.maxmemory} at most)"
            if spec.owner:
                limits += f"; the jobs of {spec.owner} hold {held} bytes of their share of {budget.key_bytes}"
            raise QueueFull(f"{jobs} jobs holding {inputs} input bytes are queued or running, {results} "
                            f"bytes of results are held or reserved and {records} bytes of job records; "
                            f"{limits}")
        return record

    def _counts(self) -> tuple[int, int, int, int]:
        with self.guard():
            _, jobs, inputs, results, records, _ = self._admit(keys=[*self._ledger_keys(), "", ""], args=[])
        return int(jobs), int(inputs), int(results), int(records)

    def queued(self) -> tuple[int, int]:
        jobs, inputs, _, _ = self._counts()
        return jobs, inputs

    def result_bytes(self) -> int:
        return self._counts()[2]

    def record_bytes(self) -> int:
        """Bytes counted for the job records kept (until they expire)."""
        return self._counts()[3]

    def owner_bytes(self, owner: str) -> int:
        """Bytes the jobs of one API key's owner hold: inputs, results (held or reserved), records."""
        with self.guard():
            return int(self.client.hget(self._owners, owner) or 0)

    def put_result(self, job_id: str, data: bytes) -> None:
        """Idempotent, and counted once (in place of the reservation) however often it runs."""
        with self.guard():
            self._put_result(keys=[*self._group("results"), self._owners, self.key("out", job_id)],
                             args=[job_id, len(data), self.result_ttl_s, data,
                                   int(self.memory.budget().persist)])

    def drop_result(self, job_id: str) -> None:
        with self.guard():
            self._release(keys=[*self._group("results"), self._owners, self.key("out", job_id)],
                          args=[job_id])

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
        """Free the input; a job that ends without a result gives its result's reservation back too."""
        with self.guard():
            self._release(keys=[*self._group("admitted"), self._owners, self.key("in", job_id),
                                *self._group("results"), self.key("out", job_id)], args=[job_id])

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
                        # kept without a TTL while it ran (a volatile-* policy): it expires from now
                        pipe.expire(key, self.job_ttl_s, nx=True)
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
