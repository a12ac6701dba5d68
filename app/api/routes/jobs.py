"""The job resource: status, result download, cancellation."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import CallerDep, SettingsDep, StoreDep, WebhooksDep
from app.api.examples import CANCEL_RESPONSES, JOB_RESPONSES, RESULT_RESPONSES
from app.api.views import JobView, image_response
from app.jobs import already_finished, not_ready, read_job, result_expired
from workers.contract import JobStatus
from workers.lifecycle import Lifecycle

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", responses=JOB_RESPONSES)
def get_job(job_id: str, caller: CallerDep, store: StoreDep) -> JobView:
    """The job's status, progress, timings, model metadata, sizes and error."""
    return JobView.of(read_job(job_id, caller, store))


@router.get("/{job_id}/result", response_class=Response, responses=RESULT_RESPONSES)
def get_result(job_id: str, caller: CallerDep, store: StoreDep, settings: SettingsDep) -> Response:
    """The restored image: 409 while the job is not done, 410 once the result expired."""
    rec = read_job(job_id, caller, store)
    if rec.status != JobStatus.succeeded:
        raise not_ready(rec)
    data = store.result(job_id)
    if data is None:
        raise result_expired(job_id, settings.result_ttl_s)
    return image_response(rec, data)


@router.delete("/{job_id}", responses=CANCEL_RESPONSES)
def cancel_job(job_id: str, caller: CallerDep, store: StoreDep, webhooks: WebhooksDep) -> JobView:
    """Cancel a queued or running job (a running job stops at its next tile)."""
    read_job(job_id, caller, store)  # 404 unless the caller's job
    rec = Lifecycle(store, webhooks.notify).cancel(job_id)
    if rec is None:
        raise already_finished(read_job(job_id, caller, store))
    return JobView.of(rec)
