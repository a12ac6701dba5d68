"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import errors, web
from app.api import openapi
from app.api.routes import events, health, jobs, limits, models, restore
from app.metrics import Metrics, MetricsMiddleware
from app.services import Services
from app.web import redoc
from workers.settings import Settings, get_settings

DESCRIPTION = """
Image restoration with BBCU binarized networks: super-resolution (`sr`), color denoising
(`denoise`) and JPEG deblocking (`deblock`).

`POST /restore?task=...` with the image answers the restored image (synchronous: the image or an
error status, `504` if the job outlasts the wait), or `202` with a job to poll only when asked with
`Prefer: respond-async`, `?async=true`, or `Prefer: wait=N` (the result within N s, else 202).
`task=deblock,sr` runs a pipeline in one job. Size limits: `GET /limits`. `GET /jobs/{id}/events`
follows a job live (Server-Sent Events); `callback_url` has its record POSTed, signed, as it runs.
Errors are problem details (RFC 9457). The page at `/` does all of this in a browser.
"""

# request headers a page on another origin may send
ALLOWED_HEADERS = ["Content-Type", "Accept", "Prefer", "Last-Event-ID", "Authorization", "X-API-Key",
                   "Idempotency-Key"]
# response headers a page on another origin may read (CORS hides all but a few by default)
EXPOSED_HEADERS = ["X-Job-Id", "X-Model", "Server-Timing", "Location", "Link", "Retry-After",
                   "Preference-Applied", "Content-Disposition"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the store and the job backend start with the app's lifespan."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # synchronous requests wait in worker threads: size the pool for them, not anyio's 40
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        services = Services.start(settings, metrics)
        app.state.services = services
        try:
            yield
        finally:
            services.close()

    # FastAPIOffline serves the Swagger UI assets from its package: /docs works offline; /redoc is
    # app.web.redoc's (the bundle without its CDN logo)
    app = FastAPIOffline(title="BBCU restoration service", version="0.1.0", description=DESCRIPTION,
                         lifespan=lifespan, redoc_url=None, generate_unique_id_function=openapi.operation_id)
    openapi.install(app, settings)
    errors.install(app, settings.retry_after_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=ALLOWED_HEADERS,
                           expose_headers=EXPOSED_HEADERS, max_age=600)
    for module in (restore, events, jobs, models, limits, health):
        app.include_router(module.router)
    web.install(app)
    redoc.install(app)
    return app
