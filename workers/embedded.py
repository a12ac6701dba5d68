"""The embedded mode: with no broker configured, jobs run in a bounded thread pool in the API process.

The same ``JobRunner`` as the Celery task runs each job against an in-memory store. At most
``embedded_workers`` jobs run at once and at most ``embedded_queue`` wait; past that ``submit``
raises ``QueueFull`` (the API answers 503 with Retry-After).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from typing import Any

from models.errors import OptionError
from workers.errors import QueueFull
from workers.jobs import JobRunner
from workers.memory_store import MemoryStore
from workers.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedPool:
    """A bounded in-process pool running the shared job function."""

    mode = "embedded"

    def __init__(self, settings: Settings, store: MemoryStore) -> None:
        self.settings = settings
        self.store = store
        self.runner = JobRunner(settings, store)
        self._executor = ThreadPoolExecutor(settings.embedded_workers, thread_name_prefix="bbcu-job")
        self._slots = threading.BoundedSemaphore(settings.embedded_workers + settings.embedded_queue)
        self._lock = threading.Lock()
        self._pending = 0

    @cached_property
    def has_gpu(self) -> bool:
        import torch

        return bool(torch.cuda.is_available())

    def pick_queue(self, device: str) -> str:
        if device == "cpu":
            return "cpu"
        if device == "gpu" and not self.has_gpu:
            raise OptionError("device=gpu: this server runs jobs in its own process (embedded mode) and "
                              "has no CUDA device; send device=auto or cpu")
        return "gpu" if self.has_gpu else "cpu"

    def submit(self, job_id: str, queue: str) -> None:
        if not self._slots.acquire(blocking=False):
            raise QueueFull(f"{self.settings.embedded_queue} jobs are already waiting")
        with self._lock:
            self._pending += 1
        future = self._executor.submit(self.runner.run, job_id)
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
        self._slots.release()
        error = future.exception()
        if error is not None:  # the job is already marked failed; keep the traceback visible
            log.error("job crashed", exc_info=error)

    def workers(self) -> dict[str, list[dict[str, Any]]]:
        me = {"worker": "embedded", "threads": self.settings.embedded_workers}
        return {"cpu": [me], "gpu": [me] if "has_gpu" in self.__dict__ and self.has_gpu else []}

    def queue_lengths(self) -> dict[str, int]:
        with self._lock:
            waiting = max(0, self._pending - self.settings.embedded_workers)
        return {"cpu": waiting, "gpu": 0}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.runner.webhooks.close()
