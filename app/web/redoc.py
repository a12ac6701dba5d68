"""ReDoc at ``/redoc`` with nothing from another host.

fastapi-offline ships ReDoc's bundle, but the bundle still shows the Redocly logo from a CDN (an
``<img>`` that hides itself when it does not load): offline that is a failed request, online a
request to a third party. The bundle is served here with that one address replaced.
"""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

BUNDLE = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
SCRIPT_URL = "/static-docs/redoc.standalone.js"
FAVICON_URL = "/static-offline-docs/favicon.png"  # fastapi-offline's own mount


@functools.cache
def _bundle() -> bytes:
    """ReDoc's bundle with the logo's address made an empty data URL (no request; the image hides)."""
    return BUNDLE.read_bytes().replace(CDN_LOGO, b"data:,")


def install(app: FastAPI) -> None:
    """Serve ``/redoc`` and its script (create the app with ``redoc_url=None``)."""

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url=SCRIPT_URL, redoc_favicon_url=FAVICON_URL, with_google_fonts=False)

    @app.get(SCRIPT_URL, include_in_schema=False)
    def script() -> Response:
        return Response(_bundle(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})
