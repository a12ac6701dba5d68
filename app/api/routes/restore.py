"""POST /restore: upload an image, get it restored (synchronously, or as a job to poll)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app import idempotency, submission
from app.api.deps import CallerDep, ServicesDep
from app.api.examples import RESTORE_REQUEST_BODY, RESTORE_RESPONSES
from app.api.negotiation import negotiate_format, parse_prefer, wait_preference
from app.api.views import accepted, image_response, still_running
from models.vocab import Format
from workers.contract import Device

router = APIRouter(tags=["restore"])


@router.post("/restore", status_code=200, responses=RESTORE_RESPONSES, openapi_extra=RESTORE_REQUEST_BODY,
             response_class=Response)
async def restore(
    request: Request, services: ServicesDep, caller: CallerDep,
    task: Annotated[str, Query(description="sr, denoise or deblock, or a pipeline run in order: "
                                           "deblock,sr or denoise,sr")],
    scale: Annotated[int | None, Query(description="sr only: 2, 3 or 4 (default 4)")] = None,
    variant: Annotated[str | None, Query(min_length=1, description="network variant, e.g. l or m")] = None,
    strength: Annotated[str | None, Query(description="denoise only: auto (default: from the estimated "
                                                      "noise) or 0..1 (0 keeps the input)")] = None,
    format: Annotated[Format | None, Query(
        description="png (default for a still), webp, jpeg, tiff or gif (png and tiff keep a 16-bit input "
                    "16-bit); an animation or a video keeps its container by default (gif/png/webp; "
                    "mp4/webm/mov)")] = None,
    quality: Annotated[int | None, Query(ge=1, le=100, description="jpeg/webp quality (default 95)")] = None,
    device: Annotated[Device, Query(description="auto picks a GPU worker when one is alive")] = "auto",
    tile: Annotated[int | None, Query(ge=32, le=8192, description="tile size in input pixels")] = None,
    async_: Annotated[bool, Query(alias="async", description="answer 202 with a job at once")] = False,
    callback_url: Annotated[str | None, Query(description="POST the signed job record here")] = None,
    callback_events: Annotated[str | None, Query(
        description="comma list of start, progress, completed (default completed)")] = None,
    prefer: Annotated[str | None, Header(description="respond-async: 202 at once; wait=N: the result "
                                                     "within N s, else 202")] = None,
    accept: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(
        alias=idempotency.HEADER, pattern=idempotency.KEY_PATTERN,
        description="1-255 printable characters: a retry with the same key and request gets the "
                    "first try's job (its answer), kept as long as job records; another request "
                    "with the key is a 422")] = None,
) -> Response:
    """Restore an image: the result or an error status; 202 and a job only when asked for."""
    options = submission.RestoreOptions(task=task, scale=scale, variant=variant, device=device, tile=tile,
                                        format=negotiate_format(format, accept), format_asked=format,
                                        strength=strength,
                                        quality=quality, callback_url=callback_url,
                                        callback_events=callback_events, caller=caller,
                                        idempotency_key=idempotency_key)
    prefs = parse_prefer(prefer)
    wait_pref = wait_preference(prefs)
    job = await submission.admit(request, services, options)
    if async_ or "respond-async" in prefs:
        rec = await run_in_threadpool(submission.submit, services, job)
        return accepted(rec, preference_applied="respond-async" in prefs)
    # a client that sent neither respond-async nor wait gets the image or an error, never a 202
    wait_s = services.settings.sync_wait_s if wait_pref is None else min(services.settings.sync_wait_s,
                                                                          wait_pref)
    done = await run_in_threadpool(submission.submit_and_wait, services, job, wait_s)
    if not done.status.terminal:
        if wait_pref is not None:
            return accepted(done, preference_applied=False)
        raise still_running(done.id, wait_s)
    data = await run_in_threadpool(submission.result, services, done)
    return image_response(done, data)
