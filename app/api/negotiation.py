"""Reading what a client asks for in its headers: the image type (Accept) and preferences (Prefer)."""

from __future__ import annotations

from models.vocab import MEDIA_TYPES, Format


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
