"""Problem details (RFC 9457) for every error the API answers, bad input never a 500."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models.errors import BBCUError, ImageTooLargeError, JobTooCostlyError, TooManyFramesError
from workers.errors import ErrorCode, QueueFull, ServiceError, code_of

PROBLEM_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Answer:
    """How the API answers an error code: HTTP status, problem title, and the problem type slug a
    refused request gets (a failed job's slug is ``job-<code>``)."""

    status: int
    title: str
    slug: str


ANSWERS: dict[ErrorCode, Answer] = {
    ErrorCode.bad_image: Answer(415, "Unsupported media type", "not-an-image"),
    ErrorCode.bad_option: Answer(422, "Invalid request", "invalid-request"),
    ErrorCode.too_large: Answer(413, "Image too large", "image-too-large"),
    ErrorCode.too_costly: Answer(413, "Job too costly", "job-too-costly"),
    ErrorCode.unknown_model: Answer(422, "Unknown model", "unknown-model"),
    ErrorCode.timeout: Answer(504, "Job timed out", "timeout"),
    ErrorCode.cancelled: Answer(409, "Job cancelled", "cancelled"),
    ErrorCode.worker_lost: Answer(503, "Worker lost", "worker-lost"),
    ErrorCode.input_lost: Answer(503, "Input lost", "input-lost"),
    ErrorCode.device_unavailable: Answer(503, "Device unavailable", "device-unavailable"),
    ErrorCode.internal: Answer(500, "Job failed", "internal"),
}


class Problem(Exception):
    """An error answered as ``application/problem+json``; extra keyword fields go into the body."""

    def __init__(self, status: int, title: str, detail: str, *, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": f"urn:bbcu:problem:{self.slug}", "title": self.title,
                                "status": self.status, "detail": self.detail}
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(instance), status_code=self.status, headers=self.headers,
                            media_type=PROBLEM_TYPE)


def refused(error: BBCUError) -> Problem:
    """The problem a request answers when its own input is refused (before any job exists)."""
    answer = ANSWERS[code_of(error)]
    extra: dict[str, Any] = {}
    if isinstance(error, ImageTooLargeError):
        extra = {"max_pixels": error.max_pixels}
        if error.pixels is not None:  # None: Pillow refused the file before its size was known
            extra["pixels"] = error.pixels
    elif isinstance(error, TooManyFramesError):
        extra = {"frames": error.frames, "max_frames": error.max_frames}
    elif isinstance(error, JobTooCostlyError):
        extra = {"gops": round(error.gops, 1), "max_gops": error.max_gops}
    return Problem(answer.status, answer.title, str(error), slug=answer.slug, **extra)


def job_failed(code: ErrorCode, detail: str, job_id: str, headers: dict[str, str],
               retry_after_s: int) -> Problem:
    """The problem a synchronous request answers when its job did not succeed; a 503 (the service
    lost the job, sending it again may work) says when to retry."""
    answer = ANSWERS[code]
    if answer.status == 503:
        headers = {**headers, "Retry-After": str(retry_after_s)}
    return Problem(answer.status, answer.title, detail, slug=f"job-{code.value}", job_id=job_id,
                   headers=headers)


def unavailable(detail: str, retry_after_s: int) -> Problem:
    return Problem(503, "Service unavailable", detail, slug="unavailable",
                   headers={"Retry-After": str(retry_after_s)}, retry_after_s=retry_after_s)


def too_many(detail: str, retry_after_s: float, **extra: Any) -> Problem:
    """429 for a client over its own limit; Retry-After is when it may try again (whole seconds, >= 1)."""
    seconds = max(1, math.ceil(retry_after_s))
    return Problem(429, "Too many requests", detail, slug="too-many-requests",
                   headers={"Retry-After": str(seconds)}, retry_after_s=seconds, **extra)


def queue_full(detail: str, retry_after_s: int) -> Problem:
    """Load shedding: the queue is at its job or byte limit; nothing was stored."""
    return Problem(503, "Queue full", detail, slug="queue-full",
                   headers={"Retry-After": str(retry_after_s)}, retry_after_s=retry_after_s)


def install(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers that turn errors into problem details."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return exc.response(request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return Problem(422, "Invalid request", detail, slug="invalid-request",
                       errors=errors).response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            headers["Allow"] = ", ".join(allowed_methods(request))
        return Problem(exc.status_code, title, str(exc.detail), headers=headers).response(request.url.path)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        answer = queue_full if isinstance(exc, QueueFull) else unavailable
        return answer(str(exc), retry_after_s).response(request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ServiceError, on_unavailable)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (asked of the router, method by method)."""
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
