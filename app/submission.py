"""Submitting a restore job: admit the upload, store and enqueue it, wait for it, hand back the result.

The route reads the HTTP request; everything it then does to a job is here, so that the
synchronous and the asynchronous answers share one path and a job nobody will run is never left
queued.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app import idempotency
from app.access import Caller
from app.callbacks import callback_fields
from app.errors import Problem, refused
from app.jobs import job_problem, result_expired
from app.params import RestoreParams
from app.services import Services
from app.throttle import claim_job
from app.uploads import read_upload
from models import catalog, cost, media
from models.config import NetworkConfig, config_for
from models.errors import BBCUError, ImageTooLargeError, JobTooCostlyError
from models.stages import check_options
from models.vocab import Format
from workers.contract import ImageFacts, JobRecord, JobSpec, JobStatus, StageSpec, new_job_id
from workers.errors import QueueFull, ServiceError
from workers.lifecycle import Lifecycle
from workers.settings import Settings

# a retry whose first try is still storing its job waits this long for the record, then gets a 409
_FIRST_TRY_WAIT_S = 5.0


@dataclass(frozen=True)
class Resolved:
    """The networks a request runs, looked up once: the job carries them to the worker."""

    stages: list[StageSpec]
    variant: str | None  # as asked, or the one network's (a single task)
    ops_per_pixel: float  # what one input pixel costs all the networks (each at the input's size)

    @property
    def scale(self) -> int:
        """The pipeline's SR scale (sr comes last; 1 without it)."""
        return self.stages[-1].scale


@dataclass(frozen=True)
class Admitted:
    """An upload that passed every check: the model exists and the bytes are an image within limits."""

    params: RestoreParams
    caller: Caller | None  # who asked: the job is its owner's, and counts against its quota
    networks: Resolved
    data: bytes
    facts: ImageFacts
    filename: str | None
    callback: dict[str, Any]  # the job spec's callback fields
    format: Format  # the output's: as asked, else the input's container (animations, videos) or Accept's
    idempotency_key: str | None = None  # a retry with the same key gets the first try's job


def check_models(weights_dir: Path, tasks: tuple[str, ...], scale: int | None,
                 variant: str | None) -> Resolved:
    """Each stage's network from the catalogue and what the pipeline costs; UnknownModelError if a
    stage has no shipped network."""
    found = catalog.pipeline(tasks, scale, variant, weights_dir)
    # a color photo through the gray deblocker also runs the color one for its chroma: count it
    networks = [e for pair in found for e in pair if e is not None]
    ops = sum(cost.per_pixel(_config(e)).ops for e in networks)
    return Resolved([StageSpec.of(e, p) for e, p in found],
                    variant or (found[0][0].variant if len(found) == 1 else None), ops)


def _config(entry: catalog.CatalogEntry) -> NetworkConfig:
    """The network configuration a weights file records (the task's standard one if it has none)."""
    recorded = entry.metadata.get("config")
    if recorded:
        return NetworkConfig.from_dict(recorded)
    return config_for(entry.task, entry.scale, entry.variant)


def check_cost(facts: ImageFacts, ops_per_pixel: float, settings: Settings) -> None:
    """A job's work is bounded as well as its sizes: a model with many operations per pixel (or a
    pipeline of several) on a large input, or on many frames, would hold workers for minutes."""
    pixels = facts.width * facts.height * facts.frames
    gops = pixels * ops_per_pixel / 1e9
    if gops > settings.max_job_gops:
        most = int(settings.max_job_gops * 1e9 / ops_per_pixel)
        frames = f"{facts.frames} frames of " if facts.frames > 1 else ""
        raise JobTooCostlyError(
            f"the job would take about {gops:.0f} G operations ({ops_per_pixel / 1e3:.1f} K per input "
            f"pixel on {frames}{facts.width}x{facts.height}), over the limit of {settings.max_job_gops:g} G "
            f"(BBCU_MAX_JOB_GOPS); send at most {most} input pixels (frames x width x height) for this task",
            gops=gops, max_gops=settings.max_job_gops)


def check_output_size(facts: ImageFacts, scale: int, settings: Settings) -> None:
    """SR is limited by the size of what it makes."""
    out = facts.width * facts.height * scale * scale
    if out > settings.max_output_pixels:
        w, h = facts.width * scale, facts.height * scale
        raise ImageTooLargeError(
            f"x{scale} output would be {w}x{h} = {out} pixels, over the limit of "
            f"{settings.max_output_pixels} output pixels; send at most "
            f"{settings.max_output_pixels // (scale * scale)} input pixels for x{scale}",
            pixels=facts.width * facts.height, max_pixels=settings.max_output_pixels // (scale * scale))


def probe(data: bytes, settings: Settings) -> tuple[ImageFacts, media.MediaFacts]:
    """Size, format and frames of an upload, without decoding its pixels."""
    m = media.probe(data, max_pixels=settings.max_pixels, max_frames=settings.max_frames)
    return ImageFacts(width=m.width, height=m.height, bytes=len(data), format=m.format.lower(),
                      frames=m.frames, fps=m.fps), m


async def admit(request: Request, services: Services, params: RestoreParams, accepted: Format,
                caller: Caller | None, idempotency_key: str | None = None) -> Admitted:
    """Check the model, read the upload within its size limit and probe it; refusals are counted.
    ``accepted`` is the format the Accept header asks for (png without one)."""
    settings = services.settings
    try:
        try:
            check_options(params.tasks, params.scale, params.strength)
            networks = await run_in_threadpool(
                check_models, settings.weights_dir, params.tasks, params.scale, params.variant)
            callback = await run_in_threadpool(callback_fields, settings, params.callback_url,
                                               params.callback_events)
            upload = await read_upload(request, settings.max_upload_bytes, settings.http_body_timeout_s)
            facts, kind = await run_in_threadpool(probe, upload.data, settings)
            fmt = media.output_format(kind, params.format, accepted)
            check_output_size(facts, networks.scale, settings)
            check_cost(facts, networks.ops_per_pixel, settings)
        except BBCUError as e:
            raise refused(e) from e
    except Problem as p:
        services.metrics.uploads_rejected.labels(reason=p.slug).inc()
        raise
    return Admitted(params, caller, networks, upload.data, facts, upload.filename, callback, fmt,
                    idempotency_key)


def submit(services: Services, job: Admitted) -> JobRecord:
    """Store the job and enqueue it; with an Idempotency-Key, the job an earlier try with the same
    key and request created (422 if the request differs)."""
    key = job.idempotency_key
    if key is None:
        return _enqueue(services, job, new_job_id())
    name = idempotency.scoped(job.caller.client if job.caller else "anonymous", key)
    # what the job is, not how it is answered (sync or async): a retry may ask for a 202 instead
    asked = {**job.params.model_dump(mode="json", exclude={"async_"}), "format": job.format,
             "filename": job.filename}
    claim = idempotency.Claim(new_job_id(), idempotency.fingerprint(asked, job.data))
    held = services.idempotency.claim(name, claim)
    if held is None:
        try:
            return _enqueue(services, job, claim.job_id)
        except (ServiceError, Problem):
            services.idempotency.release(name, claim.job_id)  # no job was made: a retry may make it
            raise
    if held.fingerprint != claim.fingerprint:
        raise Problem(422, "Idempotency key reused",
                      f"{idempotency.HEADER} {key!r} was sent before with another request (other "
                      "parameters or another image); a new request needs a new key",
                      slug="idempotency-key-reused")
    return _first_try(services, held.job_id)


def _first_try(services: Services, job_id: str) -> JobRecord:
    """The job of an earlier try; its record may still be being stored by that try's request."""
    deadline = time.monotonic() + _FIRST_TRY_WAIT_S
    while (rec := services.store.get(job_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if rec is None:
        raise Problem(409, "Request in progress",
                      f"a request with this {idempotency.HEADER} is still being submitted; retry",
                      slug="idempotency-key-in-progress",
                      headers={"Retry-After": str(services.settings.retry_after_s)})
    return rec


def _enqueue(services: Services, job: Admitted, job_id: str) -> JobRecord:
    """Store the job and enqueue it; a job the queue refuses is failed at once, never left queued."""
    p, caller = job.params, job.caller
    try:
        queue = services.dispatcher.pick_queue(p.device)
    except BBCUError as e:  # device=gpu where no GPU worker is configured
        raise refused(e) from e
    spec = JobSpec(id=job_id, task=p.task, scale=job.networks.scale, variant=job.networks.variant,
                   stages=job.networks.stages, format=job.format,
                   quality=p.quality, strength=p.strength, queue=queue,  # type: ignore[arg-type]
                   tile=p.tile, filename=job.filename, owner=caller.owner if caller else None, **job.callback)
    counted = claim_job(services.throttle, services.settings, caller, spec.id)
    try:
        rec = services.store.create(spec, job.facts, job.data)
    except ServiceError as e:
        if counted:
            services.throttle.release(caller.client, spec.id)  # type: ignore[union-attr]
        if isinstance(e, QueueFull):
            services.metrics.uploads_rejected.labels(reason="queue-full").inc()
        raise
    try:
        services.dispatcher.submit(spec.id, queue)
    except ServiceError as e:
        if isinstance(e, QueueFull):
            services.metrics.uploads_rejected.labels(reason="queue-full").inc()
        Lifecycle(services.store).unsent(spec.id, str(e))  # the client gets a 503 and no job
        raise
    services.metrics.jobs_submitted.labels(queue=queue, task=spec.task).inc()
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
        raise job_problem(done, services.settings.retry_after_s)
    data = services.store.result(done.id)
    if data is None:
        raise result_expired(done.id, services.settings.result_ttl_s)
    return data
