"""The Celery task: a thin shell over ``JobRunner.run``."""

from __future__ import annotations

from functools import cached_property

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from workers.contract import TASK_NAME
from workers.jobs import JobRunner
from workers.redis_store import RedisStore
from workers.settings import get_settings


class RestoreTask(Task):  # type: ignore[misc]
    """Celery instantiates a task once per process, so the runner (and its models) is per process."""

    @cached_property
    def runner(self) -> JobRunner:
        settings = get_settings()
        # patient: the job rides out a Redis restart instead of failing
        return JobRunner(settings, RedisStore.from_settings(settings, patient=True))


@shared_task(name=TASK_NAME, base=RestoreTask, bind=True, ignore_result=True)
def restore(self: RestoreTask, job_id: str) -> str | None:
    """Run the job stored under ``job_id``; returns its final status."""
    rec = self.runner.run(job_id, worker=self.request.hostname, limit_errors=(SoftTimeLimitExceeded,))
    return rec.status.value if rec else None
