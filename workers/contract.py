"""The job contract shared by the API and the workers (plain pydantic, no torch).

A job is a spec (what to do) plus a record (what happened). Image bytes live in the store under
the job id; broker messages carry the id only.
"""

from __future__ import annotations

import time
import uuid
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.catalog import CatalogEntry
from models.stages import Strength, parse_pipeline
from models.vocab import MEDIA_TYPES, Format
from workers.errors import ErrorCode

Device = Literal["auto", "cpu", "gpu"]
QUEUES: tuple[str, ...] = ("cpu", "gpu")
TASK_NAME = "bbcu.restore"
# webhook events a job can send: it started, it progressed, it ended (succeeded, failed or cancelled)
WebhookEvent = Literal["start", "progress", "completed"]
WEBHOOK_EVENTS: tuple[str, ...] = ("start", "progress", "completed")
# a job whose worker died (or no longer runs it) is queued again this many times, then failed worker_lost
LOST_WORKER_RETRIES = 2


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


ACTIVE = (JobStatus.queued, JobStatus.running)  # a job holding its input: it counts against admission


def new_job_id() -> str:
    """Server-side ids only: a client can never collide with an existing job."""
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class StageSpec(BaseModel):
    """One stage as the API resolved and costed it: the network (catalogue name and weights checksum)
    and, for a color photo's deblock, the color network its chroma comes from."""

    task: str
    scale: int = 1
    model: str
    sha256: str
    chroma_model: str | None = None
    chroma_sha256: str | None = None

    @classmethod
    def of(cls, entry: CatalogEntry, partner: CatalogEntry | None) -> StageSpec:
        return cls(task=entry.task, scale=entry.scale, model=entry.name, sha256=entry.sha256(),
                   chroma_model=partner.name if partner else None,
                   chroma_sha256=partner.sha256() if partner else None)


class JobSpec(BaseModel):
    """What a worker needs to run a job (the input image is the blob stored under ``id``)."""

    id: str
    task: str = Field(description="one task, or a pipeline run in order such as deblock,sr")
    scale: int = 1
    variant: str | None = None
    format: Format = "png"
    quality: int | None = Field(default=None, ge=1, le=100, description="JPEG/WebP quality")
    strength: Strength | None = Field(default=None, description="denoise strength 0..1 or auto")
    queue: Literal["cpu", "gpu"] = "cpu"
    tile: int | None = None
    callback_url: str | None = None
    callback_events: list[WebhookEvent] = Field(default=["completed"])
    filename: str | None = Field(default=None, description="the uploaded file's name")
    owner: str | None = Field(default=None, description="the API key's owner id that made the job "
                                                        "(None when keys are off); never the key")
    stages: list[StageSpec] = Field(default_factory=list, description="the networks the worker runs, "
                                    "exactly those the API costed")

    @property
    def tasks(self) -> tuple[str, ...]:
        if self.stages:
            return tuple(s.task for s in self.stages)
        return parse_pipeline(self.task)  # a job queued before its stages were resolved by the API


class ImageFacts(BaseModel):
    width: int
    height: int
    bytes: int
    format: str
    frames: int = Field(default=1, ge=1, description="frames of an animation or a video; 1 for a still")
    fps: float | None = Field(default=None, description="a video's frame rate")


class JobError(BaseModel):
    code: ErrorCode
    detail: str


class Timings(BaseModel):
    """Milliseconds spent in each stage (the Server-Timing header shows the same numbers)."""

    queue: float | None = None
    load: float | None = None
    decode: float | None = None
    inference: float | None = None
    encode: float | None = None
    total: float | None = None

    def server_timing(self) -> str:
        parts = [f"{k};dur={v:.1f}" for k, v in self.model_dump().items() if v is not None]
        return ", ".join(parts)


class StageRecord(BaseModel):
    """One stage of a job: model, inference time, tiling, strength (denoise: from the noise estimate;
    deblock: from the JPEG quality)."""

    task: str
    model: str
    inference_ms: float
    tile: int
    tiles: int
    redundancy: float = Field(description="pixels computed per image pixel (tile overlap); 1: none")
    sigma: float | None = Field(default=None, description="estimated noise sigma (0..255), auto strength")
    strength: float | None = None
    chroma_model: str | None = Field(
        default=None, description="deblock of a color photo: the color network its chroma came from")
    jpeg_quality: int | None = Field(
        default=None, description="deblock of a JPEG file: its quality, which set the strength")


class JobRecord(BaseModel):
    """The public state of a job, as ``GET /jobs/{id}`` shows it."""

    id: str
    status: JobStatus
    task: str
    queue: str
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    eta_s: float | None = Field(default=None, description="Seconds left, from the measured tile rate")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    attempt: int = Field(default=1, ge=1, description="The run: 2 and up once a lost job was queued again")
    timings: Timings = Field(default_factory=Timings)
    model: dict[str, Any] | None = Field(default=None, description="the model of the last stage")
    stages: list[StageRecord] = Field(default_factory=list)
    frames_by_worker: dict[str, int] | None = Field(
        default=None, description="an animation or a video spread over the workers (Celery mode): the "
                                  "frames each worker restored")
    input: ImageFacts | None = None
    output: ImageFacts | None = None
    error: JobError | None = None
    spec: JobSpec

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES[self.spec.format]

    def for_clients(self) -> dict[str, Any]:
        """The record as clients see it (``GET /jobs/{id}``, webhooks): no owner id, no resolved networks
        (the record's model and stages name them once it ran), and the worker's name without the host
        it runs on (``worker-cpu@host`` shows as ``worker-cpu``)."""
        shown = self.model_dump(mode="json", exclude={"spec": {"owner", "stages"}})
        shown["worker"] = _unhosted(self.worker) if self.worker else None
        if self.frames_by_worker is not None:
            counts: dict[str, int] = {}
            for w, n in self.frames_by_worker.items():  # one name on two hosts adds up
                counts[_unhosted(w)] = counts.get(_unhosted(w), 0) + n
            shown["frames_by_worker"] = counts
        return shown


def _unhosted(worker: str) -> str:
    """A Celery node name without its host (``worker-cpu@host`` -> ``worker-cpu``)."""
    return worker.split("@", 1)[0]
