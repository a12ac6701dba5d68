"""OpenAPI response documentation and examples of the routes (literals only, no logic)."""

from __future__ import annotations

from typing import Any

from app.access import NO_KEY
from models.vocab import MEDIA_TYPES

JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01", "status": "succeeded", "task": "denoise", "queue": "cpu",
    "progress": 1.0, "created_at": 1764100000.0, "started_at": 1764100000.01, "finished_at": 1764100000.2,
    "worker": "celery@worker-host", "attempt": 1,
    "timings": {"queue": 8.1, "load": 0.0, "decode": 2.3, "inference": 151.0, "encode": 9.7, "total": 174.0},
    "model": {"name": "bbcu_denoise_l", "task": "denoise", "variant": "l", "scale": 1, "params": 558000,
              "sha256": "9d2c...", "device": "cpu", "backend": "float",
              "ops": {"flops": 1.1e9, "bops": 3.4e10, "ops_paper": 1.6e9, "height": 256, "width": 256}},
    "input": {"width": 256, "height": 256, "bytes": 120345, "format": "png"},
    "output": {"width": 256, "height": 256, "bytes": 118002, "format": "png"},
    "stages": [{"task": "denoise", "model": "bbcu_denoise_l", "inference_ms": 151.0, "tile": 256,
                "tiles": 1, "redundancy": 1.0, "sigma": 24.6, "strength": 1.0}],
    "error": None,
    "spec": {"id": "3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01", "task": "denoise", "scale": 1, "variant": "l",
             "format": "png", "quality": None, "strength": None, "queue": "cpu", "tile": None,
             "filename": "photo.png"},
    "links": {"self": "/jobs/3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01",
              "result": "/jobs/3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01/result"},
}


def _problem_example(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    # the schema (ProblemDetails) is attached to every 4xx/5xx by app.api.openapi
    return {"application/problem+json": {"example": {"type": "urn:bbcu:problem:...", "title": title,
                                                     "status": status, "detail": detail, **extra}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


# an image answer: the bytes, in the format asked for
IMAGE_CONTENT = {ct: {"schema": {"type": "string", "format": "binary"}} for ct in MEDIA_TYPES.values()}
# the raw upload: an image of at least one byte
_IMAGE_BYTES = {"type": "string", "format": "binary", "minLength": 1}

_ID = "3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01"
_MONITOR_HEADERS = {"X-Job-Id": _header("The job id"),
                    "Link": _header('The job resource: </jobs/{id}>; rel="monitor"')}

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Keys are required (BBCU_API_KEYS) and none, or an unknown one, was sent",
          "headers": {"WWW-Authenticate": _header("Bearer")},
          "content": _problem_example(401, "Unauthorized", NO_KEY)},
    429: {"description": "The key's request rate (BBCU_RATE_LIMIT_PER_MIN) or, for POST /restore, its "
                         "queued and running jobs (BBCU_MAX_ACTIVE_JOBS) are used up: retry after "
                         "Retry-After",
          "headers": {"Retry-After": _header("Seconds until a request would be accepted", "integer")},
          "content": _problem_example(429, "Too many requests", "more than 600 requests per minute (bursts "
                                      "of 60) from key:alice", retry_after_s=2, limit_per_min=600)},
    503: {"description": "Broker unreachable (see Retry-After)",
          "headers": {"Retry-After": _header("Seconds to wait before retrying", "integer")},
          "content": _problem_example(503, "Service unavailable", "Redis unreachable", retry_after_s=5)},
}

_JOB_LINKS = {
    "job": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"},
            "description": "The job: poll it until its status is succeeded, failed or cancelled"},
    "result": {"operationId": "get_result", "parameters": {"job_id": "$response.body#/id"},
               "description": "The restored image, once the job succeeded"},
    "events": {"operationId": "job_events", "parameters": {"job_id": "$response.body#/id"},
               "description": "The job's progress as Server-Sent Events"},
    "cancel": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/id"},
               "description": "Cancel the job"},
}

OPERATOR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "An operator key is set (BBCU_METRICS_KEY) and it was not sent",
          "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
          "content": _problem_example(401, "Unauthorized", "this needs the operator key (BBCU_METRICS_KEY); "
                                      "API keys do not open it")},
    403: {"description": "API keys are on and no operator key is set: nobody may read it",
          "content": _problem_example(403, "Forbidden", "this is for the operator, and no operator key is "
                                      "set (BBCU_METRICS_KEY)")},
}

RESTORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The restored image", "content": IMAGE_CONTENT,
          "headers": {**_MONITOR_HEADERS,
                      "Server-Timing": _header("queue, load, decode, inference, encode, total and each "
                                               "stage's inference (ms)"),
                      "X-Strength": _header("denoise: the strength used (0 keeps the input)"),
                      "X-Noise-Sigma": _header("denoise, strength auto: the estimated noise sigma (0..255) "
                                               "the strength came from"),
                      "X-Model": _header("Model name and weights SHA-256"),
                      "Content-Disposition": _header('inline; filename="<stem>-<task>.<format>"')}},
    202: {"description": "Accepted, when asked for (async=true, Prefer: respond-async or wait=N): poll the "
                         "Location",
          "content": {"application/json": {"schema": _ref("JobView"), "example": {
              **JOB_EXAMPLE, "status": "queued", "progress": 0.0}}},
          "headers": {"Location": {**_header("The job resource, /jobs/{id}"), "required": True},
                      "Retry-After": {**_header("Seconds before the first poll", "integer"),
                                      "required": True},
                      "X-Job-Id": {**_header("The job id"), "required": True},
                      "Link": _MONITOR_HEADERS["Link"],
                      "Preference-Applied": _header("respond-async, when that preference was applied")},
          "links": _JOB_LINKS},
    400: {"description": "A malformed multipart body (no boundary, a broken part) or an upload the client "
                         "closed halfway", "content": _problem_example(
        400, "Malformed multipart body", "the multipart content type has no boundary")},
    408: {"description": "The upload was not complete in time (BBCU_HTTP_BODY_TIMEOUT_S); the connection "
                         "closes", "content": _problem_example(
        408, "Request timeout", "the upload was not complete after 60 s (1000 bytes arrived)")},
    409: {"description": "A synchronous request whose job was cancelled meanwhile, or a retry whose "
                         "Idempotency-Key's first request is still being submitted",
          "headers": _MONITOR_HEADERS,
          "content": _problem_example(409, "Job cancelled", "the job was cancelled", job_id=_ID)},
    410: {"description": "A synchronous request whose result expired before it could be sent",
          "content": _problem_example(410, "Result expired", f"the result of job {_ID} expired",
                                      job_id=_ID)},
    413: {"description": "Upload, image, output or job cost too large (see GET /limits)",
          "content": _problem_example(
        413, "Image too large", "image is 5000x4000 = 20000000 pixels, over the limit of 16777216 pixels",
        pixels=20000000, max_pixels=16777216)},
    415: {"description": "Not an image, or a content type that is neither multipart, image/* nor "
                         "application/octet-stream", "content": _problem_example(
        415, "Unsupported media type", "not a readable image")},
    422: {"description": "An invalid option (each listed in errors), no shipped network for the options, "
                         "a refused callback, an Idempotency-Key sent before with another request, or "
                         "device=gpu where no GPU worker is configured",
          "content": _problem_example(422, "Unknown model",
                                      "no shipped weights for task=sr scale=3 variant=m")},
    500: {"description": "A synchronous request whose job failed in the engine", "headers": _MONITOR_HEADERS,
          "content": _problem_example(500, "Job failed", "the engine failed", job_id=_ID)},
    504: {"description": "A synchronous request whose job did not finish in time (the job goes on), or "
                         "whose job ran past its time limit", "headers": _MONITOR_HEADERS,
          "content": _problem_example(504, "Job not finished", "the job did not finish within 330 s",
                                      job_id=_ID)},
    **AUTH_RESPONSES,
    503: {"description": "Broker unreachable, queue full, or the job's worker or input was lost (see "
                         "Retry-After)",
          "headers": {"Retry-After": _header("Seconds to wait before retrying", "integer")},
          "content": _problem_example(503, "Queue full", "the queue holds 200 jobs", retry_after_s=5)},
}

RESTORE_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {**_IMAGE_BYTES, "description": "The image file"}}},
        "encoding": {"image": {"contentType": "image/png, image/jpeg, image/webp, image/*"}}},
    "image/*": {"schema": _IMAGE_BYTES},
    "application/octet-stream": {"schema": _IMAGE_BYTES},
}}}

_UNKNOWN_JOB = {"description": "Unknown job (never created, expired, or another key's)",
                "content": _problem_example(404, "Unknown job", "no job 3f1c... (never created, or its "
                                            "record expired)", job_id="3f1c...")}

JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": JOB_EXAMPLE}}}, 404: _UNKNOWN_JOB, **AUTH_RESPONSES}

CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The cancelled job"}, 404: _UNKNOWN_JOB,
    409: {"description": "The job already finished", "content": _problem_example(
        409, "Job already finished", f"job {_ID} is succeeded", job_id=_ID, status_of_job="succeeded")},
    **AUTH_RESPONSES}

RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The restored image", "content": IMAGE_CONTENT,
          "headers": {**_MONITOR_HEADERS, "Content-Disposition": _header("inline; filename=...")}},
    404: _UNKNOWN_JOB,
    409: {"description": "The job has not succeeded (yet): queued or running (with Retry-After), failed "
                         "or cancelled", "content": _problem_example(
        409, "Result not available", f"job {_ID} is running", job_id=_ID, status_of_job="running")},
    410: {"description": "The result expired (results are kept BBCU_RESULT_TTL_S)",
          "content": _problem_example(
        410, "Result expired", f"the result of job {_ID} expired", job_id=_ID)},
    **AUTH_RESPONSES}

EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _UNKNOWN_JOB, **AUTH_RESPONSES,
    429: {**AUTH_RESPONSES[429], "description": "The key's request rate is used up, or it holds "
                                                "BBCU_MAX_EVENT_STREAMS open streams: retry after "
                                                "Retry-After"}}

MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"example": {
    "models": [{"name": "bbcu_sr_x4_l", "task": "sr", "scale": 4, "variant": "l",
                "file": "bbcu_sr_x4_l.safetensors", "size_bytes": 1234567, "sha256": "9d2c...",
                "config": {"nf": 64, "depth": 16}, "eval": {"Set5": {"psnr_y": 30.9}}, "training": {},
                "provenance": {}}]}}}}}

LIMITS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"example": {
    "max_upload_bytes": 67108864, "max_input_pixels": 16777216, "max_output_pixels": 16777216,
    "max_input_pixels_by_task": {"denoise": 16777216, "deblock": 16777216, "sr_x2": 4194304,
                                 "sr_x3": 1864135, "sr_x4": 1048576},
    "max_job_gops": 1500.0}}}}}

READY_RESPONSES: dict[int | str, dict[str, Any]] = {503: {
    "description": "Not ready: the broker is unreachable, a required queue has no live worker, or no "
                   "model files were found (the members of the readiness check, in a problem)",
    "headers": {"Retry-After": _header("Seconds to wait before asking again", "integer")},
    "content": _problem_example(503, "Not ready", "no live worker for queue(s): cpu", ready=False,
                                mode="celery", broker="ok", required_queues=["cpu"], workers={"cpu": 0})}}
