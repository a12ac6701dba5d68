"""A caller's jobs: reading one, where it lives, and every problem answered about a job (each built here)."""

from __future__ import annotations

from app.access import Caller
from app.errors import Problem, job_failed
from workers.contract import ACTIVE, JobRecord, JobStatus
from workers.errors import ErrorCode
from workers.store import JobStore


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def monitor_headers(job_id: str) -> dict[str, str]:
    """X-Job-Id and the Link to the job resource."""
    return {"X-Job-Id": job_id, "Link": f'<{job_url(job_id)}>; rel="monitor"'}


def read_job(job_id: str, caller: Caller, store: JobStore) -> JobRecord:
    """The job's record (404 if unknown, or another caller's); jobs whose worker is gone are recovered
    by the sweeper (workers/lost.py), whether or not anyone reads them."""
    rec = store.get(job_id)
    if rec is None or rec.spec.owner != caller.owner:  # another key's job is as unknown as a made-up id
        raise Problem(404, "Unknown job", f"no job {job_id} (never created, or its record expired)",
                      slug="unknown-job", job_id=job_id)
    return rec


def result_expired(job_id: str, ttl_s: int) -> Problem:
    """410: the job succeeded but its result is gone."""
    return Problem(410, "Result expired", f"the result of job {job_id} expired (results are kept {ttl_s} s, "
                   "or less when the embedded store's memory is short)", slug="expired", job_id=job_id)


def not_ready(rec: JobRecord) -> Problem:
    """409 for the result of a job that did not succeed (Retry-After while it may still)."""
    headers = {"Retry-After": "1"} if rec.status in ACTIVE else {}
    return Problem(409, "Result not available", f"job {rec.id} is {rec.status.value}", slug="not-ready",
                   headers=headers, job_id=rec.id, status_of_job=rec.status.value,
                   error=rec.error.model_dump(mode="json") if rec.error else None)


def already_finished(rec: JobRecord) -> Problem:
    """409 for cancelling a job that already ended."""
    return Problem(409, "Job already finished", f"job {rec.id} is {rec.status.value}",
                   slug="already-finished", job_id=rec.id, status_of_job=rec.status.value)


def still_running(job_id: str, waited_s: float) -> Problem:
    """504 for a synchronous request whose job outlasted the wait: the job goes on, here is where."""
    return Problem(504, "Job not finished",
                   f"the job did not finish within {waited_s:g} s; it goes on: poll {job_url(job_id)} "
                   "(send Prefer: respond-async or Prefer: wait=N to get a 202 and the job instead)",
                   slug="sync-timeout", job_id=job_id, headers=monitor_headers(job_id))


def job_problem(rec: JobRecord, retry_after_s: int) -> Problem:
    """The problem a synchronous request answers when its job did not succeed."""
    if rec.status == JobStatus.cancelled:
        code, detail = ErrorCode.cancelled, "the job was cancelled"
    elif rec.error is not None:
        code, detail = rec.error.code, rec.error.detail
    else:
        code, detail = ErrorCode.internal, f"the job ended as {rec.status.value}"
    return job_failed(code, detail, rec.id, headers=monitor_headers(rec.id), retry_after_s=retry_after_s)
