"""``Idempotency-Key`` on ``POST /restore``: a retried request gets the job its first try created.

A key is scoped to its caller (an API key's owner, or an address when keys are off) and kept as long
as job records (``job_ttl_s``). It maps to the job id the first request claimed and a fingerprint of
what that request asked for (the parameters, the file name and the image bytes, not the multipart
framing, which differs between tries): the same key with another request is a 422. ``MemoryKeys``
serves the embedded mode, ``RedisKeys`` every API process of a Celery deployment.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

from workers.redis_store import RedisStore
from workers.store import JobStore

HEADER = "Idempotency-Key"
# printable ASCII without spaces, as the draft's examples and Stripe's keys are; long enough for a UUID
# with a prefix, short enough to keep records small
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


@dataclass(frozen=True)
class Claim:
    """What a key names: the job its first request created, and that request's fingerprint."""

    job_id: str
    fingerprint: str


def scoped(client: str, key: str) -> str:
    """The stored name of ``key`` sent by ``client``: one caller's keys never meet another's."""
    return hashlib.sha256(f"{client}\n{key}".encode()).hexdigest()


def fingerprint(fields: dict[str, object], data: bytes) -> str:
    """A digest of what a request asks for: its parameters and its image bytes."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


class IdempotencyKeys(ABC):
    """Keys claimed by first requests, each kept ``ttl_s``."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s

    @abstractmethod
    def claim(self, name: str, claim: Claim) -> Claim | None:
        """Claim ``name`` for ``claim``: None if it was free (the caller creates the job), else the
        claim already there."""

    @abstractmethod
    def release(self, name: str, job_id: str) -> None:
        """Free ``name`` if ``job_id`` still holds it (its job was never created)."""


class MemoryKeys(IdempotencyKeys):
    """Claims in this process: one TTL for all, so the oldest claim is always the first to expire."""

    def __init__(self, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self._lock = threading.Lock()
        self._claims: OrderedDict[str, tuple[float, Claim]] = OrderedDict()

    def claim(self, name: str, claim: Claim) -> Claim | None:
        with self._lock:
            t = time.monotonic()
            while self._claims and next(iter(self._claims.values()))[0] <= t:
                self._claims.popitem(last=False)
            held = self._claims.get(name)
            if held is not None:
                return held[1]
            self._claims[name] = (t + self.ttl_s, claim)
            return None

    def release(self, name: str, job_id: str) -> None:
        with self._lock:
            held = self._claims.get(name)
            if held is not None and held[1].job_id == job_id:
                del self._claims[name]


# KEYS: the claim. Deletes it only while it names ARGV[1]'s job.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['job'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisKeys(IdempotencyKeys):
    """Claims as Redis strings written with SET NX, shared by every API process."""

    def __init__(self, store: RedisStore, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.store = store
        self._release = store.client.register_script(_RELEASE)

    @staticmethod
    def _key(name: str) -> str:
        return RedisStore.key("idem", name)

    def claim(self, name: str, claim: Claim) -> Claim | None:
        value = json.dumps({"job": claim.job_id, "fp": claim.fingerprint})
        with self.store.guard():
            while True:
                if self.store.client.set(self._key(name), value, nx=True, ex=max(1, int(self.ttl_s))):
                    return None
                held = self.store.client.get(self._key(name))
                if held:  # else it expired between the two commands: claim it again
                    found = json.loads(held)
                    return Claim(found["job"], found["fp"])

    def release(self, name: str, job_id: str) -> None:
        with self.store.guard():
            self._release(keys=[self._key(name)], args=[job_id])


def keys_for(store: JobStore, ttl_s: float) -> IdempotencyKeys:
    """Claims that reach as far as the store: Redis for every API process, or this process."""
    return RedisKeys(store, ttl_s) if isinstance(store, RedisStore) else MemoryKeys(ttl_s)
