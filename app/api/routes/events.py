"""GET /jobs/{id}/events: a job's life as Server-Sent Events, in both execution modes.

The stream reads the job record from the store (process memory or Redis), so it follows a job
wherever it runs. Each event carries an id that grows with the job's state; a client that
reconnects with ``Last-Event-ID`` gets only what changed since, any other connection starts with
a snapshot of the record.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from app.api.deps import CallerDep, ServicesDep
from app.api.examples import EVENTS_RESPONSES, JOB_EXAMPLE
from app.api.views import JobView
from app.errors import Problem
from app.jobs import read_job
from app.stream_slots import LEASE_S, free_slot, take_slot
from workers.contract import JobRecord, JobStatus
from workers.errors import StoreUnavailable

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_S = 0.2  # how often the record is read; the worker writes progress at most every 0.25 s
KEEPALIVE_S = 15.0  # a comment line keeps proxies from closing an idle stream
RETRY_MS = 1000  # the reconnection delay a browser's EventSource uses
_RANK = {JobStatus.queued: 0, JobStatus.running: 1, JobStatus.succeeded: 2, JobStatus.failed: 2,
         JobStatus.cancelled: 2}

EXAMPLE = (
    f"retry: {RETRY_MS}\n\n"
    "id: 0-0000\nevent: status\ndata: {\"id\": \"3f1c...\", \"status\": \"queued\", ...}\n\n"
    "id: 1-0000\nevent: status\ndata: {\"id\": \"3f1c...\", \"status\": \"running\", ...}\n\n"
    "id: 1-0412\nevent: progress\ndata: {\"id\": \"3f1c...\", \"status\": \"running\", "
    "\"progress\": 0.412, \"eta_s\": 3.1}\n\n"
    f"id: 2-1000\nevent: completed\ndata: {json.dumps(JOB_EXAMPLE)}\n\n"
)

# one event of the stream (its data is JSON: the job view, or for progress id, status, progress, eta_s)
EVENT_SCHEMA = {"type": "object", "required": ["event", "id", "data"], "properties": {
    "event": {"type": "string", "enum": ["status", "progress", "completed"]},
    "id": {"type": "string", "pattern": "^[0-2]-[0-9]{4}$"},
    "data": {"type": "string", "contentMediaType": "application/json"}}}


def state_id(rec: JobRecord) -> str:
    """An event id that sorts with the job's state: status rank, then progress in tenths of a percent."""
    return f"{_RANK[rec.status]}-{round(rec.progress * 1000):04d}"


def frame(event: str, data: dict[str, Any], event_id: str) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def next_frame(rec: JobRecord, last: JobRecord | None, last_id: str | None) -> str | None:
    """The event for ``rec`` given what the client has seen: None when it has seen this state."""
    sid = state_id(rec)
    if sid == last_id:
        return None
    view = JobView.of(rec).model_dump(mode="json")
    if rec.status.terminal:
        return frame("completed", view, sid)
    if last is None or last.status != rec.status:
        return frame("status", view, sid)  # a status change, or the snapshot a stream starts with
    return frame("progress", {"id": rec.id, "status": rec.status.value, "progress": rec.progress,
                              "eta_s": rec.eta_s}, sid)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"description": "A text/event-stream; events status, progress and completed "
                                            "(the final record with links), then the stream ends",
                             "content": {"text/event-stream": {"schema": EVENT_SCHEMA, "example": EXAMPLE}}},
                       **EVENTS_RESPONSES})
async def job_events(
    job_id: str, request: Request, caller: CallerDep, services: ServicesDep,
    last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None,
) -> StreamingResponse:
    """Follow a job live: a snapshot, status changes, progress with an ETA, then the final record."""
    store = services.store
    # an unknown job answers 404 here, before the stream starts; a key holding all its streams 429
    first = await run_in_threadpool(read_job, job_id, caller, store)
    slot = await run_in_threadpool(take_slot, services.streams, services.settings, caller)

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        rec: JobRecord = first
        last: JobRecord | None = None
        last_id = last_event_id
        quiet_since = renewed = anyio.current_time()
        while True:
            text = next_frame(rec, last, last_id)
            if text is not None:
                yield text
                last, last_id, quiet_since = rec, state_id(rec), anyio.current_time()
            elif last is None:
                last = rec  # resumed at the current state: later events follow from it
            if rec.status.terminal:
                return
            if anyio.current_time() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = anyio.current_time()
            if slot is not None and anyio.current_time() - renewed > LEASE_S / 3:
                with suppress(StoreUnavailable):  # a broker away a moment: the slot outlives it
                    await run_in_threadpool(services.streams.renew, caller.client, slot)
                renewed = anyio.current_time()
            await anyio.sleep(POLL_S)
            if await request.is_disconnected():
                return
            try:
                rec = await run_in_threadpool(read_job, job_id, caller, store)
            except Problem:
                return  # the record expired while the stream was open

    async def release() -> None:
        await run_in_threadpool(free_slot, services.streams, caller, slot)

    return SlotStream(stream(), release, media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class SlotStream(StreamingResponse):
    """A stream that frees its slot however it ends, even when the client left before the first byte."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], Awaitable[None]], *,
                 media_type: str, headers: dict[str, str]) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()
