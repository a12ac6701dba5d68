"""The restoration page at ``/``: static HTML, CSS and JavaScript served by the API (no CDN, no build)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The page keeps the API key in sessionStorage: only its own script may run (no inline code, nothing
# from another host), it talks to this origin only, and no other site may frame it (clickjacking).
# Images and videos come from blob: URLs the script makes of uploads and results.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob: data:",
    "media-src blob:",
    "connect-src 'self' blob:", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"))
PAGE_HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/static``."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
