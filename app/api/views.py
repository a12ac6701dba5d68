"""Response bodies and headers shared by the routes."""

from __future__ import annotations

import re
from pathlib import PurePath

from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field

from app.api.examples import JOB_EXAMPLE
from app.jobs import job_url, monitor_headers
from models.stages import STRENGTH_TASK
from workers.contract import JobRecord, JobSpec, JobStatus, StageRecord, StageSpec


class PublicSpec(JobSpec):
    """A job's options as the API shows them: without the owner (only its owner sees the job), and
    without the resolved networks (the record's model and stages name them once the job ran)."""

    owner: str | None = Field(default=None, exclude=True)
    stages: list[StageSpec] = Field(default_factory=list, exclude=True)


class JobView(JobRecord):
    """A job as the API shows it: the record plus links to itself and its result."""

    spec: PublicSpec
    links: dict[str, str]

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    @classmethod
    def of(cls, rec: JobRecord) -> JobView:
        links = {"self": job_url(rec.id)}
        if rec.status == JobStatus.succeeded:
            links["result"] = job_url(rec.id) + "/result"
        return cls(**rec.for_clients(), links=links)


def job_headers(rec: JobRecord) -> dict[str, str]:
    """X-Job-Id, Link, Server-Timing and X-Model (name and weights checksum) of a job."""
    headers = monitor_headers(rec.id)
    timing = ", ".join(filter(None, [rec.timings.server_timing()] + [
        f'{s.task};desc="{_stage_models(s)}";dur={s.inference_ms:.1f}' for s in rec.stages]))
    if timing:
        headers["Server-Timing"] = timing
    if rec.model:
        headers["X-Model"] = f'{rec.model.get("name")}; sha256={rec.model.get("sha256")}'
    for stage in rec.stages:
        if stage.strength is not None and stage.task == STRENGTH_TASK:  # deblock's: in the job's stages
            headers["X-Strength"] = f"{stage.strength:.3f}"
        if stage.sigma is not None:
            headers["X-Noise-Sigma"] = f"{stage.sigma:.2f}"
    return headers


def _stage_models(stage: StageRecord) -> str:
    """The stage's network, and the color network a color photo's chroma came from (deblock)."""
    return f"{stage.model}, chroma {stage.chroma_model}" if stage.chroma_model else stage.model


def accepted(rec: JobRecord, *, preference_applied: bool) -> JSONResponse:
    """202 with the job and where to poll it."""
    headers = {"Location": job_url(rec.id), "Retry-After": "1", **job_headers(rec)}
    if preference_applied:
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(JobView.of(rec).model_dump(mode="json"), status_code=202, headers=headers)


def download_name(rec: JobRecord) -> str:
    """The uploaded file's stem, the tasks and the output extension, e.g. ``photo-deblock-sr.png``."""
    stem = PurePath((rec.spec.filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or rec.id
    return f"{stem}-{rec.spec.task.replace(',', '-')}.{rec.spec.format}"


def image_response(rec: JobRecord, data: bytes) -> Response:
    headers = {**job_headers(rec), "Content-Disposition": f'inline; filename="{download_name(rec)}"'}
    return Response(data, media_type=rec.content_type, headers=headers)
