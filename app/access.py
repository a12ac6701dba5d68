"""API keys: who is calling, from ``Authorization: Bearer <key>`` or ``X-API-Key``.

The server holds SHA-256 digests only (``BBCU_API_KEYS``, ``BBCU_API_KEYS_FILE``); a presented key is
hashed and compared with every digest in constant time. Each key has an owner id (its name, or
``key-`` and the digest's first 12 hex digits, never the key): jobs carry it, and a job is visible
to its owner only. With no digests configured the service is open and every caller is anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from app.errors import Problem
from workers.settings import Settings

_DIGEST = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEY_PREFIX = "bbcu_"
# where each kind of client puts its key: the page, the CLI, any HTTP client
WHERE_KEYS_GO = ("type it into the page's API key field, pass --api-key KEY to bbcu restore --url (or set "
                 "BBCU_API_KEY), or send Authorization: Bearer <key> or X-API-Key: <key>")
NO_KEY = f"this service requires an API key: {WHERE_KEYS_GO}"


@dataclass(frozen=True)
class Caller:
    """Who made a request: ``owner`` is None when keys are off (everyone shares the anonymous jobs);
    ``client`` is what rate limits count by (the owner, or the client address when anonymous)."""

    owner: str | None
    client: str
    limited: bool = True  # rate limits and job quotas apply


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and the digest line the server needs (``sha256:<hex>``)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"sha256:{digest(key)}"


def parse_entry(entry: str, where: str) -> tuple[str, str]:
    """(digest, owner) of one configured key: ``[name=]sha256:<hex>`` or ``sha256:<hex> [name]``."""
    text = entry.strip()
    name: str | None = None
    if "=" in text:
        name, text = (part.strip() for part in text.split("=", 1))
    elif " " in text:
        text, name = (part.strip() for part in text.split(None, 1))
    match = _DIGEST.match(text)
    if not match:
        raise ValueError(f"{where}: {entry!r} is not a key digest (sha256:<64 hex digits>; "
                         "`bbcu key new` prints one)")
    if name is not None and not _NAME.match(name):
        raise ValueError(f"{where}: key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    hexdigest = match.group(1).lower()
    return hexdigest, name or f"key-{hexdigest[:12]}"


class KeyRing:
    """The configured key digests and their owners (empty: access is open), and the operator's digest."""

    def __init__(self, entries: dict[str, str], *, anonymous_limits: bool = False,
                 operator: str | None = None) -> None:
        self._owners = entries  # digest -> owner
        self.anonymous_limits = anonymous_limits
        self.operator = operator  # the digest /metrics needs; None: see require_operator

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries: dict[str, str] = {}
        for entry in (e for e in settings.api_keys.split(",") if e.strip()):
            _add(entries, *parse_entry(entry, "BBCU_API_KEYS"), "BBCU_API_KEYS")
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise ValueError(f"BBCU_API_KEYS_FILE: cannot read {path}: {e.strerror}") from e
            for n, line in enumerate(lines, 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    _add(entries, *parse_entry(line, f"{path}:{n}"), f"{path}:{n}")
            if not entries:
                # a file meant to turn keys on must not silently leave the service open
                raise ValueError(f"BBCU_API_KEYS_FILE: {path} holds no key digest")
        operator = None
        if settings.metrics_key.strip():
            operator, _ = parse_entry(settings.metrics_key, "BBCU_METRICS_KEY")
            if operator in entries:
                raise ValueError(f"BBCU_METRICS_KEY is also the key of {entries[operator]}: the operator's "
                                 "key must be a key of its own")
        return cls(entries, anonymous_limits=settings.anonymous_limits, operator=operator)

    @property
    def enabled(self) -> bool:
        return bool(self._owners)

    def owner_of(self, key: str) -> str | None:
        """The owner of ``key``, or None; every digest is compared, so the time does not tell which."""
        presented = digest(key)
        found: str | None = None
        for known, owner in self._owners.items():
            if hmac.compare_digest(known, presented):
                found = owner
        return found

    def identify(self, bearer: str | None, header_key: str | None, address: str) -> Caller:
        """The caller of a request; 401 when keys are on and none, or an unknown one, was sent."""
        if not self.enabled:
            return Caller(owner=None, client=f"ip:{address}", limited=self.anonymous_limits)
        key = bearer or header_key
        if not key:
            raise unauthorized(NO_KEY, 'Bearer realm="bbcu"')
        owner = self.owner_of(key)
        if owner is None:
            raise unauthorized(f"the API key is not valid: check the key you gave ({WHERE_KEYS_GO})",
                               'Bearer realm="bbcu", error="invalid_token"')
        return Caller(owner=owner, client=f"key:{owner}")


def _add(entries: dict[str, str], hexdigest: str, owner: str, where: str) -> None:
    """Add a key; a name two keys share would give them one set of jobs and one quota: it stops the start."""
    if entries.get(hexdigest, owner) != owner:
        raise ValueError(f"{where}: the key of {entries[hexdigest]} is listed again as {owner}")
    if owner in entries.values() and hexdigest not in entries:
        raise ValueError(f"{where}: the key name {owner} is taken by another key (jobs and quotas go by "
                         "name: give each key its own)")
    entries[hexdigest] = owner


def require_operator(ring: KeyRing, bearer: str | None, header_key: str | None) -> None:
    """Let the operator through: with BBCU_METRICS_KEY set, its key only (401 otherwise); without
    it, everyone while keys are off and no one while they are on (403: tenants' keys never do)."""
    if ring.operator is None:
        if ring.enabled:
            raise Problem(403, "Forbidden", "this is for the operator, and no operator key is set "
                          "(BBCU_METRICS_KEY)", slug="operator-only")
        return
    key = bearer or header_key
    if not key or not hmac.compare_digest(digest(key), ring.operator):
        raise unauthorized("this needs the operator key (BBCU_METRICS_KEY); API keys do not open it",
                           'Bearer realm="bbcu-operator"')


def unauthorized(detail: str, challenge: str) -> Problem:
    return Problem(401, "Unauthorized", detail, slug="unauthorized", headers={"WWW-Authenticate": challenge})
