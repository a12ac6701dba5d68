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
from app.api.views import accepted, image_response
from app.jobs import still_running
from app.params import RestoreParams

router = APIRouter(tags=["restore"])


@router.post("/restore", status_code=200, responses=RESTORE_RESPONSES, openapi_extra=RESTORE_REQUEST_BODY,
             response_class=Response)
async def restore(
    request: Request, services: ServicesDep, caller: CallerDep, params: Annotated[RestoreParams, Query()],
    prefer: Annotated[str | None, Header(description="respond-async: 202 at once; wait=N: the result "
                                                     "within N s, else 202")] = None,
    accept: Annotated[str | None, Header(description="image/png, image/webp, image/jpeg or image/tiff: "
                                                     "the format when format= is not given")] = None,
    idempotency_key: Annotated[str | None, Header(
        alias=idempotency.HEADER, pattern=idempotency.KEY_PATTERN,
        description="1-255 printable characters: a retry with the same key and request gets the "
                    "first try's job (its answer), kept as long as job records; another request "
                    "with the key is a 422")] = None,
) -> Response:
    """Restore an image: the result or an error status; 202 and a job only when asked for."""
    prefs = parse_prefer(prefer)
    wait_pref = wait_preference(prefs)
    job = await submission.admit(request, services, params, negotiate_format(None, accept), caller,
                                 idempotency_key)
    if params.async_ or "respond-async" in prefs:
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
