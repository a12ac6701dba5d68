"""Failing jobs whose worker is gone: a running job has no one left to finish it.

Celery redelivers a job whose worker process died only when the worker itself survives; a worker
killed outright, or one past the hard time limit, leaves the record ``running`` forever. The API
judges a running job when a client reads it, from the workers' heartbeats and the time limit.
"""

from __future__ import annotations

from models.errors import ErrorCode
from workers.contract import JobError, JobRecord, JobStatus, now
from workers.dispatch import Dispatcher
from workers.settings import Settings
from workers.store import JobStore

GRACE_S = 30.0


def fail_if_lost(rec: JobRecord, store: JobStore, settings: Settings, dispatcher: Dispatcher) -> JobRecord:
    """``rec``, or its failed (``worker_lost``) successor when its worker vanished or it ran past the
    hard time limit."""
    if dispatcher.mode != "celery" or rec.status != JobStatus.running or rec.started_at is None:
        return rec
    limit = settings.hard_time_limit_s + GRACE_S
    alive = {w.get("worker") for ws in dispatcher.workers().values() for w in ws}
    # a heartbeat lapses after three periods: judge only jobs older than that
    if rec.worker and rec.worker not in alive and now() - rec.started_at > 3 * settings.heartbeat_s:
        reason = f"worker {rec.worker} stopped (no heartbeat) while running the job"
    elif now() - rec.started_at > limit:
        reason = f"no result {limit:.0f} s after the job started: the worker hit the hard time limit or died"
    else:
        return rec
    lost = store.transition(rec.id, JobStatus.failed, (JobStatus.running,), finished_at=now(),
                            error=JobError(code=ErrorCode.worker_lost, detail=reason))
    return lost or store.get(rec.id) or rec
