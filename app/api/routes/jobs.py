"""The job resource: status, result download, cancellation."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import DispatcherDep, SettingsDep, StoreDep
from app.api.views import JOB_EXAMPLE, JobView, image_response
from app.errors import Problem
from workers.contract import ErrorCode, JobError, JobRecord, JobStatus, now
from workers.dispatch import Dispatcher
from workers.settings import Settings
from workers.store import ACTIVE, JobStore

router = APIRouter(prefix="/jobs", tags=["jobs"])

_GRACE_S = 30.0


def _unknown(job_id: str) -> Problem:
    return Problem(404, "Unknown job", f"no job {job_id} (never created, or its record expired)",
                   slug="unknown-job", job_id=job_id)


def current(job_id: str, store: JobStore, settings: Settings, dispatcher: Dispatcher) -> JobRecord:
    """The job's record; a running job whose worker vanished, or that ran past the hard time limit,
    is reported failed (``worker_lost``)."""
    rec = store.get(job_id)
    if rec is None:
        raise _unknown(job_id)
    if dispatcher.mode != "celery" or rec.status != JobStatus.running or rec.started_at is None:
        return rec
    limit = settings.hard_time_limit_s + _GRACE_S
    alive = {w.get("worker") for ws in dispatcher.workers().values() for w in ws}
    # a heartbeat lapses after three periods: judge only jobs older than that
    if rec.worker and rec.worker not in alive and now() - rec.started_at > 3 * settings.heartbeat_s:
        reason = f"worker {rec.worker} stopped (no heartbeat) while running the job"
    elif now() - rec.started_at > limit:
        reason = f"no result {limit:.0f} s after the job started: the worker hit the hard time limit or died"
    else:
        return rec
    lost = store.transition(job_id, JobStatus.failed, (JobStatus.running,), finished_at=now(),
                            error=JobError(code=ErrorCode.worker_lost, detail=reason))
    return lost or store.get(job_id) or rec


@router.get("/{job_id}", responses={200: {"content": {"application/json": {"example": JOB_EXAMPLE}}}})
def get_job(job_id: str, store: StoreDep, settings: SettingsDep, dispatcher: DispatcherDep) -> JobView:
    """The job's status, progress, timings, model metadata, sizes and error."""
    return JobView.of(current(job_id, store, settings, dispatcher))


@router.get("/{job_id}/result", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}}},
                       404: {"description": "Unknown job"}, 409: {"description": "Not ready"},
                       410: {"description": "Result expired"}})
def get_result(job_id: str, store: StoreDep, settings: SettingsDep, dispatcher: DispatcherDep) -> Response:
    """The restored image: 409 while the job is not done, 410 once the result expired."""
    rec = current(job_id, store, settings, dispatcher)
    if rec.status != JobStatus.succeeded:
        headers = {"Retry-After": "1"} if rec.status in ACTIVE else {}
        raise Problem(409, "Result not available", f"job {job_id} is {rec.status.value}", slug="not-ready",
                      headers=headers, job_id=job_id, status_of_job=rec.status.value,
                      error=rec.error.model_dump(mode="json") if rec.error else None)
    data = store.result(job_id)
    if data is None:
        raise Problem(410, "Result expired", f"the result of job {job_id} expired "
                      f"(results are kept {settings.result_ttl_s} s)", slug="expired", job_id=job_id)
    return image_response(rec, data)


@router.delete("/{job_id}", responses={409: {"description": "The job already finished"}})
def cancel_job(job_id: str, store: StoreDep, settings: SettingsDep, dispatcher: DispatcherDep) -> JobView:
    """Cancel a queued or running job (a running job stops at its next tile)."""
    rec = store.transition(job_id, JobStatus.cancelled, ACTIVE, finished_at=now(),
                           error=JobError(code=ErrorCode.cancelled, detail="cancelled by the client"))
    if rec is None:
        existing = current(job_id, store, settings, dispatcher)
        raise Problem(409, "Job already finished", f"job {job_id} is {existing.status.value}",
                      slug="already-finished", job_id=job_id, status_of_job=existing.status.value)
    store.drop_input(job_id)
    return JobView.of(rec)
