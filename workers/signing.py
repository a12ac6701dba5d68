"""The webhook signature: HMAC-SHA256 over ``"<timestamp>." + body`` with the shared secret.

Signing the timestamp with the body lets a receiver refuse replays of an old delivery. Standard
library only, so a receiver can import it (``bbcu_client.verify_webhook``) without the service.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-BBCU-Signature"
TIMESTAMP_HEADER = "X-BBCU-Timestamp"
EVENT_HEADER = "X-BBCU-Event"
DELIVERY_HEADER = "X-BBCU-Delivery"
_SCHEME = "sha256="


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None, *,
           tolerance_s: float = 300.0, at: float | None = None) -> bool:
    """True when ``signature`` is ours for ``body`` and ``timestamp`` is within ``tolerance_s`` of now."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if at is None else at) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
