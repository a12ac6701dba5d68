"""The Celery tasks: thin shells over ``JobRunner.run`` (a job) and ``JobRunner.run_chunk`` (a chunk of
a job's frames, workers/chunks.py)."""

from __future__ import annotations

from functools import cached_property

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from workers.chunks import CHUNK_TASK_NAME, Fanout
from workers.contract import TASK_NAME
from workers.jobs import JobRunner
from workers.redis_store import RedisStore
from workers.settings import get_settings


class RestoreTask(Task):
    """Celery instantiates a task once per process, so the runner (and its models) is per process."""

    @cached_property
    def runner(self) -> JobRunner:
        settings = get_settings()
        # patient: the job rides out a Redis restart instead of failing
        store = RedisStore.from_settings(settings, patient=True)
        return JobRunner(settings, store, fanout=Fanout(store, settings, self._send_chunk))

    def _send_chunk(self, ref: str, queue: str) -> None:
        self.app.send_task(CHUNK_TASK_NAME, args=[ref], queue=queue, ignore_result=True)


@shared_task(name=TASK_NAME, base=RestoreTask, bind=True, ignore_result=True)
def restore(self: RestoreTask, job_id: str) -> str | None:
    """Run the job stored under ``job_id``; returns its final status."""
    rec = self.runner.run(job_id, worker=self.request.hostname, limit_errors=(SoftTimeLimitExceeded,))
    return rec.status.value if rec else None


@shared_task(name=CHUNK_TASK_NAME, base=RestoreTask, bind=True, ignore_result=True)
def restore_chunk(self: RestoreTask, ref: str) -> str:
    """Restore one chunk of frames (``job:attempt:index``) if its job's run still wants it."""
    return self.runner.run_chunk(ref, self.request.hostname)
