"""Submitting a restore job: admit the upload, store and enqueue it, wait for it, hand back the result.

The route reads the HTTP request; everything it then does to a job is here, so that the
synchronous and the asynchronous answers share one path and a job nobody will run is never left
queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.api.views import job_problem
from app.callbacks import callback_fields
from app.errors import Problem, refused
from app.services import Services
from app.uploads import read_upload
from models import catalog, imageio
from models.errors import BBCUError, ErrorCode, UnknownModelError
from models.vocab import SR_SCALES, Format, Task, scale_for
from workers.contract import Device, ImageFacts, JobError, JobRecord, JobSpec, JobStatus, new_job_id, now
from workers.errors import QueueFull
from workers.store import ACTIVE


@dataclass(frozen=True)
class RestoreOptions:
    """What a client asked for, as the route read it from the query and headers."""

    task: Task
    scale: int | None
    variant: str | None
    format: Format
    device: Device
    tile: int | None
    callback_url: str | None = None
    callback_events: str | None = None  # comma list, as in the query


@dataclass(frozen=True)
class Admitted:
    """An upload that passed every check: the model exists and the bytes are an image within limits."""

    options: RestoreOptions
    scale: int
    variant: str
    data: bytes
    facts: ImageFacts
    callback: dict[str, Any]  # the job spec's callback fields


def check_model(weights_dir: Path, task: str, scale: int | None, variant: str | None) -> tuple[int, str]:
    """The (scale, variant) of the shipped network serving the request; UnknownModelError if none."""
    if task == "sr":
        scale = scale_for(task, scale)
        if scale not in SR_SCALES:
            raise UnknownModelError(f"scale {scale} is not supported for sr; "
                                    f"choose from {', '.join(map(str, SR_SCALES))}")
    elif scale not in (None, 1):
        raise UnknownModelError(f"scale applies to sr only (task {task} has scale 1)")
    entry = catalog.find(task, scale, variant, weights_dir)
    return entry.scale, entry.variant


def probe(data: bytes, max_pixels: int) -> ImageFacts:
    """Size and format of an upload, without decoding its pixels."""
    width, height, fmt = imageio.probe(data, max_pixels=max_pixels)
    return ImageFacts(width=width, height=height, bytes=len(data), format=fmt.lower())


async def admit(request: Request, services: Services, options: RestoreOptions) -> Admitted:
    """Check the model, read the upload within its size limit and probe it; refusals are counted."""
    settings = services.settings
    try:
        try:
            scale, variant = await run_in_threadpool(check_model, settings.weights_dir, options.task,
                                                     options.scale, options.variant)
            callback = await run_in_threadpool(callback_fields, settings, options.callback_url,
                                               options.callback_events)
            data = (await read_upload(request, settings.max_upload_bytes)).data
            facts = await run_in_threadpool(probe, data, settings.max_pixels)
        except BBCUError as e:
            raise refused(e) from e
    except Problem as p:
        services.metrics.uploads_rejected.labels(reason=p.slug).inc()
        raise
    return Admitted(options, scale, variant, data, facts, callback)


def submit(services: Services, job: Admitted) -> JobRecord:
    """Store the job and enqueue it; a job the queue refuses is failed at once, never left queued."""
    o = job.options
    queue = services.dispatcher.pick_queue(o.device)
    spec = JobSpec(id=new_job_id(), task=o.task, scale=job.scale, variant=job.variant, format=o.format,
                   queue=queue, tile=o.tile, **job.callback)  # type: ignore[arg-type]
    rec = services.store.create(spec, job.facts, job.data)
    try:
        services.dispatcher.submit(spec.id, queue)
    except QueueFull as e:
        services.store.transition(spec.id, JobStatus.failed, ACTIVE, finished_at=now(),
                                  error=JobError(code=ErrorCode.internal, detail=str(e)))
        raise
    services.metrics.jobs_submitted.labels(queue=queue, task=o.task).inc()
    return rec


def submit_and_wait(services: Services, job: Admitted, wait_s: float) -> JobRecord:
    """Submit the job and wait up to ``wait_s`` for it; the latest record, terminal or not."""
    rec = submit(services, job)
    done = services.store.wait(rec.id, wait_s)
    if done is None or not done.status.terminal:
        return done or rec
    services.metrics.jobs_finished.labels(status=done.status.value).inc()
    return done


def result(services: Services, done: JobRecord) -> bytes:
    """The encoded image of a finished job; the job's failure, or 410 when the result expired."""
    if done.status != JobStatus.succeeded:
        raise job_problem(done)
    data = services.store.result(done.id)
    if data is None:
        raise Problem(410, "Result expired", "the result expired before it could be sent", slug="expired")
    return data
