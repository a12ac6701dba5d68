"""Response bodies and headers shared by the routes."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict

from app.errors import Problem
from workers.contract import ErrorCode, JobRecord, JobStatus

# job error code -> (HTTP status, title) when a synchronous request's job fails
ERROR_STATUS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.bad_image: (415, "Unsupported media type"),
    ErrorCode.too_large: (413, "Image too large"),
    ErrorCode.unknown_model: (422, "Unknown model"),
    ErrorCode.timeout: (504, "Job timed out"),
    ErrorCode.cancelled: (409, "Job cancelled"),
    ErrorCode.worker_lost: (503, "Worker lost"),
    ErrorCode.internal: (500, "Job failed"),
}

JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01", "status": "succeeded", "task": "denoise", "queue": "cpu",
    "progress": 1.0, "created_at": 1764100000.0, "started_at": 1764100000.01, "finished_at": 1764100000.2,
    "timings": {"queue": 8.1, "load": 0.0, "decode": 2.3, "inference": 151.0, "encode": 9.7, "total": 174.0},
    "model": {"name": "bbcu_denoise_l", "task": "denoise", "variant": "l", "scale": 1, "params": 558000,
              "sha256": "9d2c...", "device": "cpu", "backend": "float",
              "ops": {"flops": 1.1e9, "bops": 3.4e10, "ops_paper": 1.6e9, "height": 256, "width": 256}},
    "input": {"width": 256, "height": 256, "bytes": 120345, "format": "png"},
    "output": {"width": 256, "height": 256, "bytes": 118002, "format": "png"},
    "error": None,
    "spec": {"id": "3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01", "task": "denoise", "scale": 1, "variant": "l",
             "format": "png", "queue": "cpu", "tile": None},
    "links": {"self": "/jobs/3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01",
              "result": "/jobs/3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01/result"},
}


class JobView(JobRecord):
    """A job as the API shows it: the record plus links to itself and its result."""

    links: dict[str, str]

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    @classmethod
    def of(cls, rec: JobRecord) -> JobView:
        links = {"self": job_url(rec.id)}
        if rec.status == JobStatus.succeeded:
            links["result"] = job_url(rec.id) + "/result"
        return cls(**rec.model_dump(), links=links)


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def job_headers(rec: JobRecord) -> dict[str, str]:
    """X-Job-Id, Link, Server-Timing and X-Model (name and weights checksum) of a job."""
    headers = {"X-Job-Id": rec.id, "Link": f'<{job_url(rec.id)}>; rel="monitor"'}
    timing = rec.timings.server_timing()
    if timing:
        headers["Server-Timing"] = timing
    if rec.model:
        headers["X-Model"] = f'{rec.model.get("name")}; sha256={rec.model.get("sha256")}'
    return headers


def accepted(rec: JobRecord, *, preference_applied: bool) -> JSONResponse:
    """202 with the job and where to poll it."""
    headers = {"Location": job_url(rec.id), "Retry-After": "1", **job_headers(rec)}
    if preference_applied:
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(JobView.of(rec).model_dump(mode="json"), status_code=202, headers=headers)


def image_response(rec: JobRecord, data: bytes) -> Response:
    headers = {**job_headers(rec),
               "Content-Disposition": f'inline; filename="{rec.id}.{rec.spec.format}"'}
    return Response(data, media_type=rec.content_type, headers=headers)


def job_problem(rec: JobRecord) -> Problem:
    """The problem a synchronous request answers when its job did not succeed."""
    if rec.status == JobStatus.cancelled:
        code, detail = ErrorCode.cancelled, "the job was cancelled"
    elif rec.error is not None:
        code, detail = rec.error.code, rec.error.detail
    else:
        code, detail = ErrorCode.internal, f"the job ended as {rec.status.value}"
    status, title = ERROR_STATUS[code]
    return Problem(status, title, detail, slug=f"job-{code.value}", job_id=rec.id,
                   headers={"X-Job-Id": rec.id, "Link": f'<{job_url(rec.id)}>; rel="monitor"'})
