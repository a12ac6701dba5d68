"""The embedded mode's job store: records and blobs in process memory, with expiry and a byte budget."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from workers.contract import ImageFacts, JobRecord, JobSpec
from workers.errors import StoreFull
from workers.lifecycle import created
from workers.redis_budget import KEY_SHARE, RECORD_ROOM
from workers.registry import MemoryRegistry
from workers.store import JobStore


class MemoryStore(JobStore):
    """The embedded mode's store: dictionaries with expiry times, one condition for waiters.

    Expiry is a heap of (time, table, key) entries read lazily: each operation pops only what is
    due, O(log n) per entry, instead of scanning every record. An entry whose key was written again
    since (a later expiry) or deleted is skipped when popped. Blobs share a byte budget: past it the
    oldest results are dropped first (their GET answers 410, as for an expired result), and a new
    job is refused (``StoreFull``, a 503) while the inputs of accepted jobs fill it; an accepted job's
    input is never dropped to make room. One API key's unfinished inputs and kept records may hold
    ``KEY_SHARE`` of the budget: its flood leaves the rest to the other keys.
    """

    def __init__(self, result_ttl_s: int, job_ttl_s: int, max_bytes: int = 1 << 30) -> None:
        super().__init__(result_ttl_s, job_ttl_s)
        self.registry = MemoryRegistry(job_ttl_s)
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._records: dict[str, tuple[float, JobRecord]] = {}
        self._blobs: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._tables: dict[str, dict[Any, tuple[float, Any]]] = {"record": self._records, "blob": self._blobs}
        self._expiry: list[tuple[float, int, str, Any]] = []  # (when, tie-break, table, key)
        self._order = itertools.count()
        self._results: dict[str, None] = {}  # job ids with a result blob, oldest written first
        self.held_bytes = 0  # bytes of every blob held
        self._inputs = (0, 0)  # input blobs held and their bytes (kept as they change: no scan to count)
        self._owned: dict[str, int] = {}  # API key owner -> bytes of its inputs and records held
        self._owner_of: dict[str, tuple[str, int]] = {}  # job id -> (owner, its record's cost)
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
                self._forget_owner(key)
        # a heap of mostly stale entries (keys written again and again) is rebuilt from the live ones
        live = len(self._records) + len(self._blobs)
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
            self._own(key[1], -len(data))

    def _own(self, job_id: str, size: int) -> None:
        """Count ``size`` more bytes for the owner of ``job_id`` (none: keys are off)."""
        owner = self._owner_of.get(job_id, ("", 0))[0]
        if owner:
            self._owned[owner] = self._owned.get(owner, 0) + size

    def _forget_owner(self, job_id: str) -> None:
        """The job's record is gone: its cost leaves its owner's count."""
        owner, cost = self._owner_of.pop(job_id, ("", 0))
        if owner:
            left = self._owned.get(owner, 0) - cost
            if left > 0:
                self._owned[owner] = left
            else:
                self._owned.pop(owner, None)

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
            record = created(spec, facts)
            cost = len(record.model_dump_json()) + RECORD_ROOM
            share = int(self.max_bytes * KEY_SHARE)
            owned = self._owned.get(spec.owner or "", 0)
            if spec.owner and owned + len(data) + cost > share:
                raise StoreFull(f"the jobs of {spec.owner} hold {owned} bytes of inputs and records, their "
                                f"share of {share} (half of BBCU_MEMORY_STORE_MAX_BYTES)")
            self._owner_of[spec.id] = (spec.owner or "", cost)
            self._own(spec.id, cost)
            self._put_blob("in", spec.id, data)
            self._records[spec.id] = (self._expire_at("record", spec.id, self.job_ttl_s), record)
            return record

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

    def input(self, job_id: str) -> bytes | None:
        return self._get_blob("in", job_id)

    def drop_input(self, job_id: str) -> None:
        self._del_blob("in", job_id)

    def put_result(self, job_id: str, data: bytes) -> None:
        with self._cond:
            self._sweep()
            self._put_blob("out", job_id, data)

    def result(self, job_id: str) -> bytes | None:
        return self._get_blob("out", job_id)

    def drop_result(self, job_id: str) -> None:
        self._del_blob("out", job_id)

    def _put_blob(self, kind: str, job_id: str, data: bytes) -> None:
        """Under the lock, swept: hold ``data`` as the job's ``kind`` blob (replacing any)."""
        if (kind, job_id) in self._blobs:
            self._forget_blob((kind, job_id))
        if kind == "out":  # an accepted job's result is kept: older results make room for it
            self._make_room(len(data), keep=job_id)
            self._results[job_id] = None
        self._blobs[(kind, job_id)] = (self._expire_at("blob", (kind, job_id), self.result_ttl_s), data)
        self.held_bytes += len(data)
        if kind == "in":
            self._inputs = (self._inputs[0] + 1, self._inputs[1] + len(data))
            self._own(job_id, len(data))

    def _get_blob(self, kind: str, job_id: str) -> bytes | None:
        with self._cond:
            self._sweep()
            item = self._blobs.get((kind, job_id))
            return item[1] if item else None

    def _del_blob(self, kind: str, job_id: str) -> None:
        with self._cond:
            if (kind, job_id) in self._blobs:
                self._forget_blob((kind, job_id))
