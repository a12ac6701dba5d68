"""The webhook options of ``POST /restore``, checked before a job is accepted."""

from __future__ import annotations

from typing import Any

from app.errors import Problem
from workers.callback_urls import CallbackRefused, allow_list, check_callback
from workers.contract import WEBHOOK_EVENTS
from workers.settings import Settings


def _invalid(detail: str) -> Problem:
    return Problem(422, "Invalid callback", detail, slug="invalid-callback")


def callback_fields(settings: Settings, url: str | None, events: str | None) -> dict[str, Any]:
    """The job spec's callback fields; 422 when the URL or an event is refused."""
    if url is None:
        if events is not None:
            raise _invalid("callback_events needs a callback_url")
        return {}
    if settings.webhook_secret is None:
        raise _invalid("this server sends no webhooks: BBCU_WEBHOOK_SECRET is not set")
    chosen = [e.strip() for e in (events or "completed").split(",") if e.strip()]
    unknown = [e for e in chosen if e not in WEBHOOK_EVENTS]
    if unknown or not chosen:
        raise _invalid(f"unknown callback event(s) {', '.join(unknown) or '(none)'}; "
                       f"choose from {', '.join(WEBHOOK_EVENTS)}")
    try:
        check_callback(url, allow_list(settings.webhook_host_list))
    except CallbackRefused as e:
        raise _invalid(str(e)) from e
    return {"callback_url": url, "callback_events": list(dict.fromkeys(chosen))}
