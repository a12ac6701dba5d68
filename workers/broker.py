"""The one place that reads kombu's private Redis structures, for recovery and queue lengths.

Kombu's Redis transport keeps each queue as a Redis list named after it, and the messages workers
received and did not ack in the ``unacked`` hash (the message, exchange and routing key as JSON; the
body is Celery's ``[args, kwargs, embed]``, base64 JSON) with their delivery times in the
``unacked_index`` sorted set; it hands them out again only after the visibility timeout. None of this
is kombu's public API: pyproject.toml pins kombu and celery to the versions it was tested with
(tests/test_job_logic.py reads real messages through it), so an upgrade is a deliberate change.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.redis_store import RedisStore

_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults


def job_of(message: dict[str, Any]) -> str | None:
    """The job id a kombu message carries, or None for a message that is not one of our tasks."""
    try:
        args = json.loads(base64.b64decode(message["body"]))[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return args[0] if args and isinstance(args[0], str) else None


class KombuQueues:
    """The broker's queues and held messages, read from the store's Redis (the broker's own)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def length(self, queue: str) -> int:
        """Messages waiting in a queue."""
        with self.store.guard():
            return int(self.store.client.llen(queue))

    def waiting_jobs(self, queues: tuple[str, ...]) -> set[str]:
        """The job ids of the messages waiting in ``queues``."""
        with self.store.guard():
            raws = [m for q in queues for m in self.store.client.lrange(q, 0, -1)]
        return {job for raw in raws if (job := job_of(json.loads(raw))) is not None}

    def held_messages(self) -> list[tuple[str, str, float]]:
        """(delivery tag, job id, delivered at) of the messages workers received and did not ack."""
        client = self.store.client
        with self.store.guard():
            held = client.hgetall(_UNACKED)
            when = dict(client.zrange(_UNACKED_INDEX, 0, -1, withscores=True))  # type: ignore[arg-type]
        out = []
        for tag, raw in held.items():
            job = job_of(json.loads(raw)[0])
            if job is not None:
                out.append((str(tag, "utf-8") if isinstance(tag, bytes) else tag, job,
                            float(when.get(tag, 0.0))))
        return out

    def drop_held(self, tag: str) -> None:
        """Forget a held message whose worker is dead (its job was sent again)."""
        with self.store.guard():
            self.store.client.hdel(_UNACKED, tag)
            self.store.client.zrem(_UNACKED_INDEX, tag)
