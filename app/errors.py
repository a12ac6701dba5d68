"""Problem details (RFC 9457) for every error the API answers, bad input never a 500."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.errors import NoWorker, QueueFull, StoreUnavailable

PROBLEM_TYPE = "application/problem+json"


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


def unavailable(detail: str, retry_after_s: int) -> Problem:
    return Problem(503, "Service unavailable", detail, slug="unavailable",
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
        return Problem(exc.status_code, title, str(exc.detail),
                       headers=dict(exc.headers or {})).response(request.url.path)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return unavailable(str(exc), retry_after_s).response(request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for exc_type in (StoreUnavailable, QueueFull, NoWorker):
        app.add_exception_handler(exc_type, on_unavailable)
