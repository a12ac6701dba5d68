"""Reading what a client asks for in its headers: the image type (Accept) and preferences (Prefer)."""

from __future__ import annotations

import re

from app.errors import Problem
from models.vocab import MEDIA_TYPES, Format

# delta-seconds (RFC 9110): ASCII digits only; str.isdigit() also takes '²', which float() refuses
_DELTA_SECONDS = re.compile(r"[0-9]{1,9}")


def negotiate_format(explicit: Format | None, accept: str | None) -> Format:
    """The ``format`` option if given, else the best image type in ``Accept``, else png."""
    if explicit:
        return explicit
    best: Format = "png"
    best_q = 0.0
    by_type = {ct: fmt for fmt, ct in MEDIA_TYPES.items()}
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        fmt = by_type.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for p in params:
            key, _, value = p.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = fmt, q
    return best


def parse_prefer(header: str | None) -> dict[str, str]:
    """RFC 7240 preferences, e.g. ``respond-async, wait=10`` -> {"respond-async": "", "wait": "10"}."""
    prefs: dict[str, str] = {}
    for item in (header or "").split(","):
        token, _, value = item.split(";")[0].strip().partition("=")
        if token:
            prefs[token.lower()] = value.strip().strip('"')
    return prefs


def wait_preference(prefs: dict[str, str]) -> float | None:
    """The seconds of ``Prefer: wait=N``; None when not sent, 400 when N is not whole seconds."""
    value = prefs.get("wait")
    if value is None:
        return None
    if not _DELTA_SECONDS.fullmatch(value):
        raise Problem(400, "Invalid preference", f"Prefer: wait takes whole seconds (0-999999999), "
                      f"got {value[:40]!r}", slug="invalid-preference")
    return float(value)
