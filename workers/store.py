"""The job store's contract: job records and image blobs, kept between the API and the workers.

Two stores keep it: ``MemoryStore`` (the embedded mode, workers/memory_store.py) and ``RedisStore``
(the Celery mode, workers/redis_store.py). Every record and blob expires: inputs and results after
``result_ttl_s``, records after ``job_ttl_s`` (longer, so an expired result answers 410 rather than
404). Status changes are not the store's business: workers/lifecycle.py makes them through ``update``.
Each store also holds the registry of live workers (workers/registry.py) on the same connection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from workers.contract import ImageFacts, JobRecord, JobSpec
from workers.registry import WorkerRegistry


class JobStore(ABC):
    """Where jobs and their bytes live between the API and the workers."""

    registry: WorkerRegistry  # the live workers' heartbeats, kept beside the jobs

    def __init__(self, result_ttl_s: int, job_ttl_s: int) -> None:
        self.result_ttl_s = result_ttl_s
        self.job_ttl_s = job_ttl_s

    @abstractmethod
    def create(self, spec: JobSpec, facts: ImageFacts, data: bytes) -> JobRecord:
        """Store the input blob and a queued record for a new job, or refuse it (a ServiceError)."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when unknown or expired."""

    @abstractmethod
    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply ``change`` atomically; it returns the new record or None to leave it as is."""

    @abstractmethod
    def queued(self) -> tuple[int, int]:
        """Jobs holding a stored input (queued or running) and the bytes of those inputs."""

    @abstractmethod
    def result_bytes(self) -> int:
        """Bytes of the results held (until they expire or are deleted)."""

    @abstractmethod
    def input(self, job_id: str) -> bytes | None:
        """The job's input, or None once dropped or expired."""

    @abstractmethod
    def drop_input(self, job_id: str) -> None:
        """Free the input of a job that is over (its room in the admission budget too)."""

    @abstractmethod
    def put_result(self, job_id: str, data: bytes) -> None:
        """Store the job's result; idempotent: a job that runs twice writes it twice."""

    @abstractmethod
    def result(self, job_id: str) -> bytes | None:
        """The job's result, or None when none was written or it expired."""

    @abstractmethod
    def drop_result(self, job_id: str) -> None:
        """Delete the job's result (a cancelled job's, which nobody may download)."""

    @abstractmethod
    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """Block until the job is terminal or ``timeout`` passes; the latest record."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached."""
