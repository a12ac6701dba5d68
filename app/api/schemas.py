"""Typed bodies of the answers that are not job records: problems, the catalogue, limits, readiness."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FieldError(BaseModel):
    """One invalid input of a 422: where it is, what is wrong, pydantic's error type."""

    loc: list[str | int]
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """An error (RFC 9457), with the members this service adds where they apply."""

    model_config = ConfigDict(extra="allow", title="ProblemDetails")

    type: str = Field(description="urn:bbcu:problem:<slug>, e.g. urn:bbcu:problem:image-too-large")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = Field(default=None, description="the request path")
    job_id: str | None = Field(default=None, description="the job the problem is about")
    status_of_job: str | None = Field(default=None, description="409: the job's status")
    error: dict[str, Any] | None = Field(default=None, description="409 on a failed job: its error")
    errors: list[FieldError] | None = Field(default=None, description="422: each invalid input")
    retry_after_s: int | None = Field(default=None, description="429/503: the Retry-After in seconds")
    limit_per_min: float | None = Field(default=None, description="429: the key's request rate")
    max_active_jobs: int | None = Field(default=None, description="429: the key's queued and running jobs")
    max_event_streams: int | None = Field(default=None, description="429: the key's open event streams")
    pixels: int | None = Field(default=None, description="413: the image's pixels")
    max_pixels: int | None = Field(default=None, description="413: the most pixels accepted for it")
    gops: float | None = Field(default=None, description="413: the job's estimated giga-operations")
    max_gops: float | None = Field(default=None, description="413: the most accepted")
    max_upload_bytes: int | None = Field(default=None, description="413: the upload limit")
    received_bytes: int | None = Field(default=None, description="413: the declared upload size")


class ModelSummary(BaseModel):
    """A shipped network: identity, checksum, architecture, evaluation and provenance."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    task: str
    scale: int
    variant: str
    file: str
    size_bytes: int
    sha256: str
    config: dict[str, Any] | None = Field(default=None, description="the network's architecture")
    # as the weights file records them (JSON of any shape: a training run's own report)
    eval: Any = None
    training: Any = None
    provenance: Any = None


class ModelList(BaseModel):
    models: list[ModelSummary]


class Limits(BaseModel):
    """The largest upload, image and job accepted."""

    max_upload_bytes: int
    max_input_pixels: int
    max_output_pixels: int
    max_input_pixels_by_task: dict[str, int] = Field(description="denoise, deblock, sr_x2, sr_x3, sr_x4")
    max_job_gops: float = Field(description="giga-operations: the network's per pixel times the pixels")


class Readiness(BaseModel):
    """What the readiness check found (a 503 carries the same members in a problem)."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    mode: str = Field(description="celery or embedded")
    broker: str = Field(description="ok or unreachable")
    required_queues: list[str]
    workers: dict[str, int] | None = Field(default=None, description="live, preloaded workers by queue")
    starting: dict[str, int] | None = Field(default=None, description="workers still preloading")
    models: int | None = Field(default=None, description="model files found")
    detail: str | None = None
