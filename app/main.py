"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from app import errors
from app.api.routes import health, jobs, models, restore
from app.metrics import Metrics, MetricsMiddleware
from app.services import Services
from workers.settings import Settings, get_settings

DESCRIPTION = """
Image restoration with BBCU binarized networks: super-resolution (`sr`), color denoising
(`denoise`) and JPEG deblocking (`deblock`).

`POST /restore?task=...` with the image answers the restored image (synchronous), or `202` with a
job to poll when asked with `Prefer: respond-async` or `?async=true`. Errors are problem details
(RFC 9457).
"""


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

    app = FastAPI(title="BBCU restoration service", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    errors.install(app, settings.retry_after_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for module in (restore, jobs, models, health):
        app.include_router(module.router)
    return app
