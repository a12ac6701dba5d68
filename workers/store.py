"""Job records and image blobs, in Redis or in process memory, behind one interface.

Every key written has a TTL: inputs and results ``result_ttl_s``, job records ``job_ttl_s``
(longer, so an expired result answers 410 rather than 404), worker heartbeats three periods.

The Redis store admits a job only while the jobs holding an input (queued or running) and their
bytes stay under ``max_queued_jobs`` and ``max_queued_bytes``, and while those inputs plus the results
held stay under ``max_stored_bytes`` (so results, kept ``result_ttl_s``, cannot fill Redis and leave
no room for the results of jobs already accepted). A sorted set of the inputs (scored by when each
expires, so an entry never outlives its blob) and their sizes are updated in the same Lua script that
stores the input, and again when the input is dropped; results have a set of their own.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from workers.contract import ImageFacts, JobRecord, JobSpec, JobStatus, now
from workers.errors import QueueFull, StoreFull, StoreUnavailable

if TYPE_CHECKING:
    from workers.settings import Settings

ACTIVE = (JobStatus.queued, JobStatus.running)
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


class JobStore(ABC):
    """Where jobs and their bytes live between the API and the workers."""

    def __init__(self, result_ttl_s: int, job_ttl_s: int) -> None:
        self.result_ttl_s = result_ttl_s
        self.job_ttl_s = job_ttl_s

    def create(self, spec: JobSpec, facts: ImageFacts, data: bytes) -> JobRecord:
        """Store the input blob and a queued record for a new job."""
        record = JobRecord(id=spec.id, status=JobStatus.queued, task=spec.task, queue=spec.queue,
                           created_at=now(), input=facts, spec=spec)
        self._put_blob("in", spec.id, data)
        self._put_record(record, create=True)
        return record

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when unknown or expired."""

    @abstractmethod
    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply ``change`` atomically; it returns the new record or None to leave it as is."""

    def transition(self, job_id: str, to: JobStatus, allowed: tuple[JobStatus, ...],
                   **fields: Any) -> JobRecord | None:
        """Move a job to ``to`` if its status is in ``allowed``; None if it was not."""

        def change(rec: JobRecord) -> JobRecord | None:
            if rec.status not in allowed:
                return None
            return rec.model_copy(update={"status": to, **fields})

        return self.update(job_id, change)

    def set_progress(self, job_id: str, progress: float, eta_s: float | None = None) -> JobRecord | None:
        """Record a running job's progress (to 0.1 %) and time left (to 0.1 s); None if not running."""
        update = {"progress": round(min(1.0, max(0.0, progress)), 3),
                  "eta_s": None if eta_s is None else round(max(0.0, eta_s), 1)}
        return self.update(job_id, lambda r: r.model_copy(update=update)
                           if r.status == JobStatus.running else None)

    @abstractmethod
    def queued(self) -> tuple[int, int]:
        """Jobs holding a stored input (queued or running) and the bytes of those inputs."""

    @abstractmethod
    def result_bytes(self) -> int:
        """Bytes of the results held (until they expire or are deleted)."""

    def input(self, job_id: str) -> bytes | None:
        return self._get_blob("in", job_id)

    def drop_input(self, job_id: str) -> None:
        self._del_blob("in", job_id)

    def put_result(self, job_id: str, data: bytes) -> None:
        """Idempotent: a job that runs twice writes the same key twice."""
        self._put_blob("out", job_id, data)

    def result(self, job_id: str) -> bytes | None:
        return self._get_blob("out", job_id)

    def drop_result(self, job_id: str) -> None:
        self._del_blob("out", job_id)

    @abstractmethod
    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """Block until the job is terminal or ``timeout`` passes; the latest record."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached."""

    @abstractmethod
    def beat(self, queue: str, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        """Announce a live worker for ``queue`` for ``ttl_s`` seconds."""

    @abstractmethod
    def forget_worker(self, queue: str, worker: str) -> None: ...

    @abstractmethod
    def workers(self, queue: str) -> list[dict[str, Any]]:
        """The live workers of a queue (their heartbeat info)."""

    @abstractmethod
    def seen(self, queue: str) -> bool:
        """Whether a worker of the queue has beaten within ``job_ttl_s`` (one may be restarting)."""

    @abstractmethod
    def _put_record(self, record: JobRecord, *, create: bool = False) -> None: ...

    @abstractmethod
    def _put_blob(self, kind: str, job_id: str, data: bytes) -> None: ...

    @abstractmethod
    def _get_blob(self, kind: str, job_id: str) -> bytes | None: ...

    @abstractmethod
    def _del_blob(self, kind: str, job_id: str) -> None: ...


class MemoryStore(JobStore):
    """The embedded mode's store: dictionaries with expiry times, one condition for waiters.

    Expiry is a heap of (time, table, key) entries read lazily: each operation pops only what is
    due, O(log n) per entry, instead of scanning every record. An entry whose key was written again
    since (a later expiry) or deleted is skipped when popped. Blobs share a byte budget: past it the
    oldest results are dropped first (their GET answers 410, as for an expired result), and a new
    job is refused (``StoreFull``, a 503) while the inputs of accepted jobs fill it; an accepted job's
    input is never dropped to make room.
    """

    def __init__(self, result_ttl_s: int, job_ttl_s: int, max_bytes: int = 1 << 30) -> None:
        super().__init__(result_ttl_s, job_ttl_s)
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._records: dict[str, tuple[float, JobRecord]] = {}
        self._blobs: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._beats: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._seen: dict[str, float] = {}  # queue -> last beat (monotonic)
        self._tables: dict[str, dict[Any, tuple[float, Any]]] = {
            "record": self._records, "blob": self._blobs, "beat": self._beats}
        self._expiry: list[tuple[float, int, str, Any]] = []  # (when, tie-break, table, key)
        self._order = itertools.count()
        self._results: dict[str, None] = {}  # job ids with a result blob, oldest written first
        self.held_bytes = 0  # bytes of every blob held
        self._inputs = (0, 0)  # input blobs held and their bytes (kept as they change: no scan to count)
        self.swept = 0  # heap entries popped (the cost of expiry, for tests)

    def _expire_at(self, table: str, key: Any, ttl_s: float) -> float:
        when = time.monotonic() + ttl_s
        heapq.heappush(self._expiry, (when, next(self._order), table, key))
        return when

    def _sweep(self) -> None:
        """Drop what is due: the heap's top entries up to now (stale entries are skipped)."""
        t = time.monotonic()
        while self._expiry and self._expiry[0][0] <= t:
            when, _, table, key = heapq.heappop(self._expiry)
            self.swept += 1
            item = self._tables[table].get(key)
            if item is None or item[0] != when:
                continue  # deleted, or written again with a later expiry
            if table == "blob":
                self._forget_blob(key)
            else:
                del self._tables[table][key]
        # a heap of mostly stale entries (keys written again and again) is rebuilt from the live ones
        live = len(self._records) + len(self._blobs) + len(self._beats)
        if len(self._expiry) > 64 and len(self._expiry) > 4 * live:
            self._expiry = [(exp, next(self._order), name, key) for name, tab in self._tables.items()
                            for key, (exp, _) in tab.items()]
            heapq.heapify(self._expiry)

    def _forget_blob(self, key: tuple[str, str]) -> None:
        _, data = self._blobs.pop(key)
        self.held_bytes -= len(data)
        if key[0] == "out":
            self._results.pop(key[1], None)
        elif key[0] == "in":
            self._inputs = (self._inputs[0] - 1, self._inputs[1] - len(data))

    def _make_room(self, size: int, keep: str | None = None) -> None:
        """Drop the oldest results (not ``keep``'s) until ``size`` more bytes fit the budget; the cost
        is the results dropped, not the results held."""
        victims: list[str] = []
        held = self.held_bytes
        for job_id in self._results:  # oldest first
            if held + size <= self.max_bytes:
                break
            if job_id != keep:
                victims.append(job_id)
                held -= len(self._blobs[("out", job_id)][1])
        for job_id in victims:
            self._forget_blob(("out", job_id))

    def create(self, spec: JobSpec, facts: ImageFacts, data: bytes) -> JobRecord:
        """Refuse a job whose input does not fit the budget even with every result dropped."""
        with self._cond:
            self._sweep()
            self._make_room(len(data))
            if self.held_bytes + len(data) > self.max_bytes:
                raise StoreFull(f"the inputs of accepted jobs fill the memory budget "
                                f"({self.held_bytes} of {self.max_bytes} bytes, BBCU_MEMORY_STORE_MAX_BYTES)")
            return super().create(spec, facts, data)

    def get(self, job_id: str) -> JobRecord | None:
        with self._cond:
            self._sweep()
            item = self._records.get(job_id)
            return item[1] if item else None

    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        with self._cond:
            self._sweep()
            item = self._records.get(job_id)
            if item is None:
                return None
            new = change(item[1])
            if new is None:
                return None
            self._records[job_id] = (item[0], new)
            if new.status.terminal:
                self._cond.notify_all()
            return new

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                item = self._records.get(job_id)
                if item is None or item[1].status.terminal:
                    return item[1] if item else None
                left = deadline - time.monotonic()
                if left <= 0:
                    return item[1]
                self._cond.wait(left)

    def ping(self) -> None:
        return None

    def queued(self) -> tuple[int, int]:
        with self._cond:
            self._sweep()
            return self._inputs

    def result_bytes(self) -> int:
        with self._cond:
            self._sweep()
            return self.held_bytes - self._inputs[1]

    def beat(self, queue: str, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        with self._cond:
            self._sweep()
            self._beats[(queue, worker)] = (self._expire_at("beat", (queue, worker), ttl_s), info)
            self._seen[queue] = time.monotonic()

    def forget_worker(self, queue: str, worker: str) -> None:
        with self._cond:
            self._beats.pop((queue, worker), None)

    def workers(self, queue: str) -> list[dict[str, Any]]:
        with self._cond:
            self._sweep()
            return [info for (q, _), (_, info) in self._beats.items() if q == queue]

    def seen(self, queue: str) -> bool:
        with self._cond:
            last = self._seen.get(queue)
            return last is not None and time.monotonic() - last < self.job_ttl_s

    def _put_record(self, record: JobRecord, *, create: bool = False) -> None:
        with self._cond:
            self._sweep()
            self._records[record.id] = (self._expire_at("record", record.id, self.job_ttl_s), record)

    def _put_blob(self, kind: str, job_id: str, data: bytes) -> None:
        with self._cond:
            self._sweep()
            if (kind, job_id) in self._blobs:
                self._forget_blob((kind, job_id))
            if kind == "out":  # an accepted job's result is kept: older results make room for it
                self._make_room(len(data), keep=job_id)
                self._results[job_id] = None
            self._blobs[(kind, job_id)] = (self._expire_at("blob", (kind, job_id), self.result_ttl_s), data)
            self.held_bytes += len(data)
            if kind == "in":
                self._inputs = (self._inputs[0] + 1, self._inputs[1] + len(data))

    def _get_blob(self, kind: str, job_id: str) -> bytes | None:
        with self._cond:
            self._sweep()
            item = self._blobs.get((kind, job_id))
            return item[1] if item else None

    def _del_blob(self, kind: str, job_id: str) -> None:
        with self._cond:
            if (kind, job_id) in self._blobs:
                self._forget_blob((kind, job_id))


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

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Redis errors as StoreUnavailable (for the callers that use ``client`` directly)."""
        try:
            yield
        except self._redis_errors as e:
            raise StoreUnavailable(f"Redis unreachable: {e}") from e
        except self._full_error as e:
            # noeviction: Redis refuses writes rather than dropping accepted inputs
            raise StoreUnavailable(f"Redis is full (maxmemory): {e}") from e

    def _admission_keys(self) -> list[str]:
        return [self._key("admitted"), self._key("admitted", "bytes"), self._key("admitted", "total")]

    def _result_keys(self) -> list[str]:
        return [self._key("results"), self._key("results", "bytes"), self._key("results", "total")]

    def create(self, spec: JobSpec, facts: ImageFacts, data: bytes) -> JobRecord:
        """Store the input and a queued record in one step, or raise QueueFull past the limits."""
        record = JobRecord(id=spec.id, status=JobStatus.queued, task=spec.task, queue=spec.queue,
                           created_at=now(), input=facts, spec=spec)
        keys = [*self._admission_keys(), self._key("in", spec.id), self._key("job", spec.id),
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
            self._put_result(keys=[*self._result_keys(), self._key("out", job_id)],
                             args=[job_id, len(data), self.result_ttl_s, data])

    def drop_result(self, job_id: str) -> None:
        with self.guard():
            self._release(keys=[*self._result_keys(), self._key("out", job_id)], args=[job_id])

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of ``job_ids`` (None where unknown or expired), read at once."""
        if not job_ids:
            return []
        with self.guard():
            raws = self.client.mget([self._key("job", i) for i in job_ids])
        return [JobRecord.model_validate_json(raw) if raw else None for raw in raws]

    def claim(self, name: str, ttl_s: float) -> bool:
        """True for the first caller of ``name`` in ``ttl_s`` seconds, across every process."""
        with self.guard():
            return bool(self.client.set(self._key("lock", name), "1", nx=True, px=max(1, int(ttl_s * 1000))))

    def admitted_jobs(self) -> list[str]:
        """The ids of the jobs holding an input (queued or running), for recovery to look at."""
        with self.guard():
            ids = self.client.zrange(self._key("admitted"), 0, -1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def drop_input(self, job_id: str) -> None:
        with self.guard():
            self._release(keys=[*self._admission_keys(), self._key("in", job_id)], args=[job_id])

    @staticmethod
    def _key(*parts: str) -> str:
        return ":".join((PREFIX, *parts))

    def get(self, job_id: str) -> JobRecord | None:
        with self.guard():
            raw = self.client.get(self._key("job", job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        key = self._key("job", job_id)
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
                        done = self._key("done", job_id)
                        pipe.lpush(done, "1")
                        pipe.expire(done, self.job_ttl_s)
                    pipe.execute()
                    return new
                except self._watch_error:
                    continue

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        done = self._key("done", job_id)
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

    def beat(self, queue: str, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        with self.guard(), self.client.pipeline() as pipe:
            pipe.set(self._key("worker", queue, worker), json.dumps(info), px=int(ttl_s * 1000))
            pipe.set(self._key("seen", queue), "1", ex=self.job_ttl_s)
            pipe.execute()

    def forget_worker(self, queue: str, worker: str) -> None:
        with self.guard():
            self.client.delete(self._key("worker", queue, worker))

    def workers(self, queue: str) -> list[dict[str, Any]]:
        with self.guard():
            keys = list(self.client.scan_iter(match=self._key("worker", queue, "*"), count=100))
            values = self.client.mget(keys) if keys else []
        return [json.loads(v) for v in values if v]

    def seen(self, queue: str) -> bool:
        with self.guard():
            return bool(self.client.exists(self._key("seen", queue)))

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu keeps a Redis list named after the queue)."""
        with self.guard():
            return int(self.client.llen(queue))

    def _put_record(self, record: JobRecord, *, create: bool = False) -> None:
        with self.guard():
            self.client.set(self._key("job", record.id), record.model_dump_json(), ex=self.job_ttl_s,
                            nx=create)

    def _put_blob(self, kind: str, job_id: str, data: bytes) -> None:
        with self.guard():
            self.client.set(self._key(kind, job_id), data, ex=self.result_ttl_s)

    def _get_blob(self, kind: str, job_id: str) -> bytes | None:
        with self.guard():
            raw = self.client.get(self._key(kind, job_id))
        return bytes(raw) if raw is not None else None  # type: ignore[arg-type]

    def _del_blob(self, kind: str, job_id: str) -> None:
        with self.guard():
            self.client.delete(self._key(kind, job_id))

