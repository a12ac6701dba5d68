"""Jobs whose worker is gone: a running job has no one left to finish it.

Celery redelivers a job whose worker process died only when the worker itself survives; a worker
killed outright (or restarted under the same name, as a container is) leaves its message
unacknowledged until the visibility timeout and the record ``running``. The API judges a running
job when a client reads it, from the workers' heartbeats and the time limit: a lost job is queued
again ``LOST_WORKER_RETRIES`` times, then failed (``worker_lost``), as is one past the hard limit.
"""

from __future__ import annotations

from models.errors import ErrorCode
from workers.contract import LOST_WORKER_RETRIES, JobError, JobRecord, JobStatus, now
from workers.dispatch import Dispatcher
from workers.settings import Settings
from workers.store import JobStore

GRACE_S = 30.0


def recover_if_lost(rec: JobRecord, store: JobStore, settings: Settings, dispatcher: Dispatcher) -> JobRecord:
    """``rec``; or, when its worker vanished or restarted, the job queued again (or failed once it
    was lost before); or failed when it ran past the hard time limit."""
    if dispatcher.mode != "celery" or rec.status != JobStatus.running or rec.started_at is None:
        return rec
    limit = settings.hard_time_limit_s + GRACE_S
    beats = {w.get("worker"): w for ws in dispatcher.workers().values() for w in ws}
    beat = beats.get(rec.worker)
    # a heartbeat lapses after three periods: judge only jobs older than that
    if rec.worker and beat is None and now() - rec.started_at > 3 * settings.heartbeat_s:
        reason = f"worker {rec.worker} stopped (no heartbeat) while running the job"
    elif rec.worker and beat is not None and beat.get("since", 0.0) > rec.started_at:
        reason = f"worker {rec.worker} restarted while running the job"
    elif now() - rec.started_at > limit:
        return _fail(rec, store, f"no result {limit:.0f} s after the job started: the worker hit the "
                                 "hard time limit or died")
    else:
        return rec
    if rec.attempt > LOST_WORKER_RETRIES:
        return _fail(rec, store, reason)
    # only the run that was judged: a job another worker took meanwhile is left alone; the dead
    # worker's own message, redelivered after the visibility timeout, finds the job finished
    again = store.update(rec.id, lambda r: r.model_copy(update={
        "status": JobStatus.queued, "attempt": r.attempt + 1, "worker": None, "started_at": None,
        "progress": 0.0}) if r.status == JobStatus.running and r.worker == rec.worker else None)
    if again is None:
        return store.get(rec.id) or rec
    dispatcher.submit(rec.id, again.queue)
    return again


def _fail(rec: JobRecord, store: JobStore, reason: str) -> JobRecord:
    lost = store.transition(rec.id, JobStatus.failed, (JobStatus.running,), finished_at=now(),
                            error=JobError(code=ErrorCode.worker_lost, detail=reason))
    return lost or store.get(rec.id) or rec
