"""POST /restore: upload an image, get it restored (synchronously, or as a job to poll)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import DispatcherDep, MetricsDep, SettingsDep, StoreDep
from app.api.views import JOB_EXAMPLE, accepted, image_response, job_problem
from app.errors import Problem
from app.uploads import read_upload
from models import catalog, imageio
from models.errors import ImageDecodeError, ImageTooLargeError, UnknownModelError
from models.vocab import MEDIA_TYPES, SR_SCALES, Format, Task, scale_for
from workers.contract import (
    Device,
    ErrorCode,
    ImageFacts,
    JobError,
    JobSpec,
    JobStatus,
    new_job_id,
    now,
)
from workers.errors import QueueFull
from workers.store import ACTIVE

router = APIRouter(tags=["restore"])


def _problem_example(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"application/problem+json": {"example": {"type": "urn:bbcu:problem:...", "title": title,
                                                     "status": status, "detail": detail, **extra}}}


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The restored image", "content": {ct: {} for ct in MEDIA_TYPES.values()},
          "headers": {"X-Job-Id": {"description": "The job id", "schema": {"type": "string"}},
                      "Server-Timing": {"description": "queue, load, decode, inference, encode, total (ms)",
                                        "schema": {"type": "string"}},
                      "X-Model": {"description": "Model name and weights SHA-256",
                                  "schema": {"type": "string"}},
                      "Link": {"description": "The job resource", "schema": {"type": "string"}}}},
    202: {"description": "Accepted: poll the Location", "content": {"application/json": {"example": {
        **JOB_EXAMPLE, "status": "queued", "progress": 0.0}}}},
    413: {"description": "Upload or image too large", "content": _problem_example(
        413, "Image too large", "image is 5000x4000 = 20000000 pixels, over the limit of 4194304 pixels",
        pixels=20000000, max_pixels=4194304)},
    415: {"description": "Not an image", "content": _problem_example(
        415, "Unsupported media type", "not a readable image")},
    422: {"description": "Unknown task, scale or variant", "content": _problem_example(
        422, "Unknown model", "no shipped weights for task=sr scale=3 variant=m")},
    503: {"description": "Broker unreachable or queue full (see Retry-After)", "content": _problem_example(
        503, "Service unavailable", "Redis unreachable", retry_after_s=5)},
}

REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "The image file"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


def negotiate_format(explicit: str | None, accept: str | None) -> str:
    """The ``format`` option if given, else the best image type in ``Accept``, else png."""
    if explicit:
        return explicit
    best, best_q = "png", 0.0
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


def _check_model(weights_dir: Any, task: str, scale: int | None, variant: str | None) -> tuple[int, str]:
    if task == "sr":
        scale = scale_for(task, scale)
        if scale not in SR_SCALES:
            raise Problem(422, "Unknown model", f"scale {scale} is not supported for sr; "
                          f"choose from {', '.join(map(str, SR_SCALES))}", slug="unknown-model")
    elif scale not in (None, 1):
        raise Problem(422, "Unknown model", f"scale applies to sr only (task {task} has scale 1)",
                      slug="unknown-model")
    try:
        entry = catalog.find(task, scale, variant, weights_dir)
    except UnknownModelError as e:
        raise Problem(422, "Unknown model", str(e), slug="unknown-model") from e
    return entry.scale, entry.variant


def _probe(data: bytes, max_pixels: int) -> ImageFacts:
    try:
        width, height, fmt = imageio.probe(data, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        raise Problem(413, "Image too large", str(e), slug="image-too-large", pixels=e.pixels,
                      max_pixels=e.max_pixels) from e
    except ImageDecodeError as e:
        raise Problem(415, "Unsupported media type", str(e), slug="not-an-image") from e
    return ImageFacts(width=width, height=height, bytes=len(data), format=fmt.lower())


@router.post("/restore", status_code=200, responses=RESPONSES, openapi_extra=REQUEST_BODY,
             response_class=Response)
async def restore(
    request: Request, settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep, metrics: MetricsDep,
    task: Annotated[Task, Query(description="sr, denoise or deblock")],
    scale: Annotated[int | None, Query(description="sr only: 2, 3 or 4 (default 4)")] = None,
    variant: Annotated[str | None, Query(description="network variant, e.g. l or m")] = None,
    format: Annotated[Format | None, Query(description="png (default), webp or jpeg")] = None,
    device: Annotated[Device, Query(description="auto picks a GPU worker when one is alive")] = "auto",
    tile: Annotated[int | None, Query(ge=32, le=8192, description="tile size in input pixels")] = None,
    async_: Annotated[bool, Query(alias="async", description="answer 202 with a job at once")] = False,
    prefer: Annotated[str | None, Header(description="respond-async: 202 at once; wait=N: wait less")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Restore an image: the result when done within the wait limit, else 202 and a job to poll."""
    prefs = parse_prefer(prefer)
    want_async = async_ or "respond-async" in prefs
    wait_s = settings.sync_wait_s
    if prefs.get("wait", "").isdigit():
        wait_s = min(wait_s, float(prefs["wait"]))
    try:
        scale_, variant_ = await run_in_threadpool(_check_model, settings.weights_dir, task, scale, variant)
        upload = await read_upload(request, settings.max_upload_bytes)
        facts = await run_in_threadpool(_probe, upload.data, settings.max_pixels)
    except Problem as p:
        metrics.inc("bbcu_uploads_rejected_total", reason=p.slug)
        raise
    queue = await run_in_threadpool(dispatcher.pick_queue, device)
    spec = JobSpec(id=new_job_id(), task=task, scale=scale_, variant=variant_,
                   format=negotiate_format(format, accept), queue=queue, tile=tile)  # type: ignore[arg-type]
    rec = await run_in_threadpool(store.create, spec, facts, upload.data)
    try:
        await run_in_threadpool(dispatcher.submit, spec.id, queue)
    except QueueFull as e:  # nobody will run it: do not leave a queued record behind
        await run_in_threadpool(store.transition, spec.id, JobStatus.failed, ACTIVE,
                                error=JobError(code=ErrorCode.internal, detail=str(e)), finished_at=now())
        raise
    metrics.inc("bbcu_jobs_submitted_total", task=task, queue=queue)
    if want_async:
        return accepted(rec, preference_applied="respond-async" in prefs)
    done = await run_in_threadpool(store.wait, spec.id, wait_s)
    if done is None or not done.status.terminal:
        return accepted(done or rec, preference_applied=False)
    metrics.inc("bbcu_jobs_finished_total", status=done.status.value)
    if done.status != JobStatus.succeeded:
        raise job_problem(done)
    data = await run_in_threadpool(store.result, spec.id)
    if data is None:
        raise Problem(410, "Result expired", "the result expired before it could be sent", slug="expired")
    return image_response(done, data)
