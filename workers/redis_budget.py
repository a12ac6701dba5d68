"""What the Redis a deployment talks to allows: its ``maxmemory`` and eviction policy, read with INFO
(refreshed), turned into the admission budget of the Redis store.

The settings' limits (``BBCU_MAX_QUEUED_BYTES``, ``BBCU_MAX_STORED_BYTES``) are ceilings; a Redis
with a smaller ``maxmemory`` lowers them to ``SAFE_FRACTION`` of it, so an operator's own (or a
managed) Redis is never filled by the service whatever the settings say. Of that budget one API
key may hold ``KEY_SHARE``: one tenant's flood cannot take the store from the others.

Policies: ``noeviction`` is what the service wants (a full Redis refuses writes, nothing accepted is
dropped). ``volatile-*`` evicts keys that have a TTL: the service warns and keeps the inputs and
records of unfinished jobs without one (``persist``). ``allkeys-*`` may evict anything, Celery's
queues included: the service refuses to start on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.contract import ImageFacts, JobSpec

log = logging.getLogger(__name__)

# of maxmemory: what inputs, results and records may take. The rest covers what the count leaves
# out: the allocator's rounding of large values (up to a quarter), Celery's messages, Redis itself
SAFE_FRACTION = 0.6
KEY_SHARE = 0.5  # of the budget, for the jobs of one API key
REFRESH_S = 10.0  # how often INFO is read again (an operator may change maxmemory at run time)
# bytes a stored key costs beyond its value: Redis's dict entry, object and expiry, our ledger entries
KEY_OVERHEAD = 256
RECORD_ROOM = 4096  # a record grows as its job runs (stages, timings, error, worker)
JOB_KEYS = 4  # the keys of one job: input, result, record, the done list that wakes waiters


@dataclass(frozen=True)
class Budget:
    """The admission limits in force."""

    queued_bytes: int  # inputs of unfinished jobs
    stored_bytes: int  # inputs, results (held or reserved) and records
    key_bytes: int  # the same, for one API key's jobs
    maxmemory: int  # 0: Redis has no limit (the settings' limits alone)
    policy: str

    @property
    def persist(self) -> bool:
        """Keep unfinished jobs' inputs and records without a TTL (a volatile-* policy evicts those)."""
        return self.policy.startswith("volatile-")


def budget_for(max_queued_bytes: int, max_stored_bytes: int, maxmemory: int, policy: str) -> Budget:
    """The settings' ceilings, lowered to what ``maxmemory`` holds safely."""
    stored = max_stored_bytes
    if maxmemory > 0:
        stored = min(stored, int(maxmemory * SAFE_FRACTION))
    return Budget(queued_bytes=min(max_queued_bytes, stored), stored_bytes=stored,
                  key_bytes=int(stored * KEY_SHARE), maxmemory=maxmemory, policy=policy)


def check_policy(policy: str) -> None:
    """Refuse a policy that may evict what accepted jobs need; warn about one that evicts keys with a TTL."""
    if policy.startswith("allkeys-"):
        raise ValueError(f"Redis's maxmemory-policy is {policy}: it may evict any key, Celery's queues and "
                         "accepted jobs' inputs included; set maxmemory-policy noeviction (or a volatile-* "
                         "policy) on the Redis of BBCU_BROKER_URL")
    if policy.startswith("volatile-"):
        log.warning("Redis's maxmemory-policy is %s: keys with a TTL may be evicted. Unfinished jobs' inputs "
                    "and records are kept without a TTL until they end, and admission stays under %.0f%% of "
                    "maxmemory; noeviction is the policy to use", policy, SAFE_FRACTION * 100)


def result_reserve(spec: JobSpec, facts: ImageFacts) -> int:
    """The bytes a job's result is counted for from its admission until it is written: a PNG of
    random pixels is about its raw size; JPEG and WebP at most half of it; an animation or a video
    is re-encoded at about its input's rate per pixel."""
    area = spec.scale * spec.scale
    if facts.frames > 1:
        return facts.bytes * area * 2
    raw = facts.width * facts.height * area * 3
    return (raw if spec.format == "png" else raw // 2) + raw // 64


def record_cost(record_json: str) -> int:
    """The bytes a job's record is counted for while it is kept: its JSON, the room it grows by, and
    what each of the job's keys costs beyond its value (the record outlives them all)."""
    return len(record_json) + RECORD_ROOM + JOB_KEYS * KEY_OVERHEAD


class RedisMemory:
    """The budget of one Redis, from ``INFO memory`` read at most every ``REFRESH_S``."""

    def __init__(self, info: Callable[[], dict[str, Any]], max_queued_bytes: int,
                 max_stored_bytes: int) -> None:
        self._info = info
        self._ceilings = (max_queued_bytes, max_stored_bytes)
        self._lock = threading.Lock()
        self._budget = budget_for(*self._ceilings, 0, "noeviction")
        self._read_at = -REFRESH_S  # never read yet

    def budget(self) -> Budget:
        """The budget in force, read again when ``REFRESH_S`` has passed (StoreUnavailable if Redis
        does not answer then: it cannot admit a job either)."""
        if time.monotonic() - self._read_at >= REFRESH_S:
            return self.read()
        return self._budget

    def read(self) -> Budget:
        """Read ``maxmemory`` and the policy now (raises StoreUnavailable if Redis does not answer)."""
        info = self._info()
        with self._lock:
            self._read_at = time.monotonic()
            self._budget = budget_for(*self._ceilings, int(info.get("maxmemory", 0)),
                                      str(info.get("maxmemory_policy", "noeviction")))
            return self._budget
