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
    return {"application/problem+json": {"example": {"type": "urn:bbcu:problem:...", "title": title,
                                                     "status": status, "detail": detail, **extra}}}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Keys are required (BBCU_API_KEYS) and none, or an unknown one, was sent",
          "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
          "content": _problem_example(401, "Unauthorized", NO_KEY)},
    429: {"description": "The key's request rate (BBCU_RATE_LIMIT_PER_MIN) or, for POST /restore, its "
                         "queued and running jobs (BBCU_MAX_ACTIVE_JOBS) are used up: retry after "
                         "Retry-After",
          "headers": {"Retry-After": {"description": "Seconds until a request would be accepted",
                                      "schema": {"type": "integer"}}},
          "content": _problem_example(429, "Too many requests", "more than 600 requests per minute (bursts "
                                      "of 60) from key:alice", retry_after_s=2, limit_per_min=600)},
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
    200: {"description": "The restored image", "content": {ct: {} for ct in MEDIA_TYPES.values()},
          "headers": {"X-Job-Id": {"description": "The job id", "schema": {"type": "string"}},
                      "Server-Timing": {"description": "queue, load, decode, inference, encode, total "
                                                       "and each stage's inference (ms)",
                                        "schema": {"type": "string"}},
                      "X-Strength": {"description": "denoise: the strength used (0 keeps the input)",
                                     "schema": {"type": "string"}},
                      "X-Noise-Sigma": {"description": "denoise, strength auto: the estimated noise sigma "
                                                       "(0..255) the strength came from",
                                        "schema": {"type": "string"}},
                      "X-Model": {"description": "Model name and weights SHA-256",
                                  "schema": {"type": "string"}},
                      "Link": {"description": "The job resource", "schema": {"type": "string"}}}},
    202: {"description": "Accepted, when asked for (async=true, Prefer: respond-async or wait=N): poll the "
                         "Location", "content": {"application/json": {"example": {
                             **JOB_EXAMPLE, "status": "queued", "progress": 0.0}}}},
    413: {"description": "Upload or image too large (see GET /limits)", "content": _problem_example(
        413, "Image too large", "image is 5000x4000 = 20000000 pixels, over the limit of 16777216 pixels",
        pixels=20000000, max_pixels=16777216)},
    415: {"description": "Not an image", "content": _problem_example(
        415, "Unsupported media type", "not a readable image")},
    422: {"description": "Unknown task, pipeline, scale, variant or strength; device=gpu where no GPU "
                         "worker is configured", "content": _problem_example(
        422, "Unknown model", "no shipped weights for task=sr scale=3 variant=m")},
    504: {"description": "A synchronous request whose job did not finish in time (the job goes on)",
          "content": _problem_example(504, "Job not finished", "the job did not finish within 330 s",
                                      job_id="3f1c0e9a5b7d4c2e8f6a1b3c5d7e9f01")},
    503: {"description": "Broker unreachable or queue full (see Retry-After)", "content": _problem_example(
        503, "Service unavailable", "Redis unreachable", retry_after_s=5)},
    **AUTH_RESPONSES,
}

RESTORE_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "The image file"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}

_UNKNOWN_JOB = {"description": "Unknown job (never created, expired, or another key's)",
                "content": _problem_example(404, "Unknown job", "no job 3f1c... (never created, or its "
                                            "record expired)", job_id="3f1c...")}

JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": JOB_EXAMPLE}}}, 404: _UNKNOWN_JOB, **AUTH_RESPONSES}

CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _UNKNOWN_JOB, 409: {"description": "The job already finished"}, **AUTH_RESPONSES}

RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {ct: {} for ct in MEDIA_TYPES.values()}},
    404: _UNKNOWN_JOB, 409: {"description": "Not ready"},
    410: {"description": "Result expired"}, **AUTH_RESPONSES}

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
