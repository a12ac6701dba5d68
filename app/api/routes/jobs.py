"""The job resource: status, result download, cancellation."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.access import Caller
from app.api.deps import CallerDep, SettingsDep, StoreDep, WebhooksDep
from app.api.examples import CANCEL_RESPONSES, JOB_RESPONSES, RESULT_RESPONSES
from app.api.views import JobView, image_response
from app.errors import Problem
from workers.contract import ACTIVE, JobRecord, JobStatus
from workers.lifecycle import Lifecycle
from workers.store import JobStore

router = APIRouter(prefix="/jobs", tags=["jobs"])


def read_job(job_id: str, caller: Caller, store: JobStore) -> JobRecord:
    """The job's record (404 if unknown, or another caller's); jobs whose worker is gone are recovered
    by the sweeper (workers/lost.py), whether or not anyone reads them."""
    rec = store.get(job_id)
    if rec is None or rec.spec.owner != caller.owner:  # another key's job is as unknown as a made-up id
        raise Problem(404, "Unknown job", f"no job {job_id} (never created, or its record expired)",
                      slug="unknown-job", job_id=job_id)
    return rec


@router.get("/{job_id}", responses=JOB_RESPONSES)
def get_job(job_id: str, caller: CallerDep, store: StoreDep) -> JobView:
    """The job's status, progress, timings, model metadata, sizes and error."""
    return JobView.of(read_job(job_id, caller, store))


@router.get("/{job_id}/result", response_class=Response, responses=RESULT_RESPONSES)
def get_result(job_id: str, caller: CallerDep, store: StoreDep, settings: SettingsDep) -> Response:
    """The restored image: 409 while the job is not done, 410 once the result expired."""
    rec = read_job(job_id, caller, store)
    if rec.status != JobStatus.succeeded:
        headers = {"Retry-After": "1"} if rec.status in ACTIVE else {}
        raise Problem(409, "Result not available", f"job {job_id} is {rec.status.value}", slug="not-ready",
                      headers=headers, job_id=job_id, status_of_job=rec.status.value,
                      error=rec.error.model_dump(mode="json") if rec.error else None)
    data = store.result(job_id)
    if data is None:
        raise Problem(410, "Result expired", f"the result of job {job_id} expired (results are kept "
                      f"{settings.result_ttl_s} s, or less when the embedded store's memory is short)",
                      slug="expired", job_id=job_id)
    return image_response(rec, data)


@router.delete("/{job_id}", responses=CANCEL_RESPONSES)
def cancel_job(job_id: str, caller: CallerDep, store: StoreDep, webhooks: WebhooksDep) -> JobView:
    """Cancel a queued or running job (a running job stops at its next tile)."""
    read_job(job_id, caller, store)  # 404 unless the caller's job
    rec = Lifecycle(store, webhooks.notify).cancel(job_id)
    if rec is None:
        existing = read_job(job_id, caller, store)
        raise Problem(409, "Job already finished", f"job {job_id} is {existing.status.value}",
                      slug="already-finished", job_id=job_id, status_of_job=existing.status.value)
    return JobView.of(rec)
