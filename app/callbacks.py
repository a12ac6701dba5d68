"""The webhook options of ``POST /restore``, checked before a job is accepted."""

from __future__ import annotations

import re
from typing import Any

from app.errors import Problem
from workers.callback_urls import CallbackRefused, allow_list, check_callback
from workers.contract import WEBHOOK_EVENTS
from workers.settings import Settings

# one event name, then more after commas: the OpenAPI schema's pattern and this module's check
EVENTS_PATTERN = "^({0})(,({0}))*$".format("|".join(WEBHOOK_EVENTS))


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
    text = "completed" if events is None else events
    chosen = text.split(",")
    unknown = [e.strip() for e in chosen if e.strip() not in WEBHOOK_EVENTS]
    if unknown:
        raise _invalid(f"unknown callback event(s) {', '.join(filter(None, unknown)) or '(none)'}; "
                       f"choose from {', '.join(WEBHOOK_EVENTS)}")
    if not re.fullmatch(EVENTS_PATTERN.strip("^$"), text):
        raise _invalid(f"write callback_events as a comma list without spaces, e.g. start,completed "
                       f"(got {text!r})")
    try:
        check_callback(url, allow_list(settings.webhook_host_list))
    except CallbackRefused as e:
        raise _invalid(str(e)) from e
    return {"callback_url": url, "callback_events": list(dict.fromkeys(chosen))}
